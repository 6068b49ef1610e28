"""The family registry: model_type -> Family."""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import ConfigError
from ..spec import Family
from .gpt_neox import gpt_neox
from .llama import gemma, gemma2, llama, mistral, mixtral, olmo, olmo2, phi3, qwen2, qwen3
from .opt import opt

FAMILIES: dict = {
    f.name: f
    for f in (llama, mistral, qwen2, qwen3, gemma, gemma2, opt, gpt_neox, olmo, olmo2, phi3, mixtral)
}
_BY_MODEL_TYPE = {mt: f for f in FAMILIES.values() for mt in f.model_types}


def get_family(model_type: str) -> Family:
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ConfigError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(_BY_MODEL_TYPE))}"
        ) from None


def family_for_config(hf: Mapping[str, Any]) -> Family:
    if not isinstance(hf, Mapping) or "model_type" not in hf:
        raise ConfigError("config.json has no model_type; is it a Hugging Face causal LM config?")
    return get_family(hf["model_type"])


__all__ = ["FAMILIES", "get_family", "family_for_config"]
