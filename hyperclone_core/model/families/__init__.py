"""The family registry: model_type -> Family.

Built-in families are data in this package; a user adds one without touching it,
either at run time (``register_family(Family(...))``) or from an installed
distribution through the entry-point group ``hyperclone.families`` (an object that is
a ``Family``, a list of them, or a callable returning either; loaded the first time a
model type is not found, a broken one warns).  ``coverage`` says, for every causal-LM
model type transformers has, whether a family grows it or why it is refused.
"""

from __future__ import annotations

import warnings
from importlib import metadata
from typing import Any, Mapping

from ...errors import ConfigError
from ..spec import Family
from .coverage import COVERAGE
from .gpt_neox import gpt_neox
from .llama import gemma, gemma2, llama, mistral, mixtral, olmo, olmo2, phi3, qwen2, qwen3
from .opt import opt

FAMILIES: dict = {
    f.name: f
    for f in (llama, mistral, qwen2, qwen3, gemma, gemma2, opt, gpt_neox, olmo, olmo2, phi3, mixtral)
}
BUILTIN = dict(FAMILIES)
"""The families this package defines (FAMILIES also holds registered ones)."""
_BY_MODEL_TYPE = {mt: f for f in FAMILIES.values() for mt in f.model_types}
ENTRY_POINT_GROUP = "hyperclone.families"
_plugins_loaded = False


def register_family(family: Family, replace: bool = False) -> Family:
    """Make ``family`` grow its ``model_types`` (and every backend run it: they look
    families up here).  A model type another family already grows is refused unless
    ``replace``.  Returns the family, so a module can write
    ``mine = register_family(Family(...))``."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family takes a Family, not {type(family).__name__}")
    if not family.model_types:
        raise ValueError(f"family {family.name!r} names no model_types")
    clash = FAMILIES.get(family.name)
    taken = [mt for mt in family.model_types if _BY_MODEL_TYPE.get(mt, family) is not family]
    if not replace and ((clash is not None and clash is not family) or taken):
        what = f"model_type {taken[0]!r} is grown by family {_BY_MODEL_TYPE[taken[0]].name!r}" if taken else \
            f"a family named {family.name!r} exists"
        raise ValueError(f"cannot register family {family.name!r}: {what}; pass replace=True to override it")
    FAMILIES[family.name] = family
    for mt in family.model_types:
        _BY_MODEL_TYPE[mt] = family
    return family


def _entry_points() -> list:
    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except TypeError:  # pragma: no cover - Python < 3.10's mapping API
        return list(metadata.entry_points().get(ENTRY_POINT_GROUP, []))


def load_plugins() -> None:
    """Register the families installed distributions declare (once); a broken one warns."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in _entry_points():
        try:
            obj = ep.load()
            obj = obj() if callable(obj) and not isinstance(obj, Family) else obj
            for fam in (obj if isinstance(obj, (list, tuple)) else [obj]):
                register_family(fam)
        except Exception as exc:  # a broken plugin must not take the library down
            warnings.warn(f"family plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)


def get_family(model_type: str) -> Family:
    if model_type not in _BY_MODEL_TYPE:
        load_plugins()
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        row = COVERAGE.get(model_type)
        if row is not None and row.status == "refused":
            raise ConfigError(f"model_type {model_type!r} is not supported: {row.reason}; supported: "
                              f"{', '.join(sorted(_BY_MODEL_TYPE))} (docs/families.md lists every type)") from None
        raise ConfigError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(_BY_MODEL_TYPE))}"
        ) from None


def family_for_config(hf: Mapping[str, Any]) -> Family:
    if not isinstance(hf, Mapping) or "model_type" not in hf:
        raise ConfigError("config.json has no model_type; is it a Hugging Face causal LM config?")
    return get_family(hf["model_type"])


__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "FAMILIES", "family_for_config", "get_family", "load_plugins",
           "register_family"]
