"""Decoders with attention sinks, chunked attention and stacked expert tensors: gpt-oss, Llama 4 (text).

gpt-oss: a learned logit per head (``self_attn.sinks``) joins each softmax's
denominator; sliding and full layers alternate; every layer is an MoE whose router
has a bias and whose experts are stored stacked, ``(experts, in, out)``, with gate and
up interleaved in one tensor and joined by a clamped SwiGLU, biases included.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import ConfigError
from ..spec import DecoderConfig, Family, Role, in_, out
from ._common import LLAMA_KEYS, attention, embeddings, norm, read_llama_like

L = "model.layers.{i}"
HEADS = "kv_heads*q_per_kv"
LAYER_KINDS = ("full_attention", "sliding_attention")


def sinks(prefix: str) -> tuple:
    """The per-head sink logits: one per query head, so head growth copies each head's own."""
    return (Role(f"{prefix}.sinks", "attn.sinks", (out(HEADS),)),)


def _defaults(hf: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """``hf`` with the config class's defaults for the keys it lacks (a config.json may omit them)."""
    return dict(defaults, **hf)


def _layer_types(hf: Mapping[str, Any], layers: int, default, allowed=LAYER_KINDS) -> tuple:
    types = tuple(hf.get("layer_types") or (default(i) for i in range(layers)))
    if len(types) != layers:
        raise ConfigError(f"layer_types has {len(types)} entries for {layers} layers")
    unknown = sorted(set(types) - set(allowed))
    if unknown:
        raise ConfigError(f"layer_types {unknown} are not supported; supported: {', '.join(allowed)}")
    return types


# ---------------------------------------------------------------- gpt-oss

MOE = f"{L}.mlp"
GPT_OSS_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + sinks(f"{L}.self_attn")
    + (
        Role(f"{MOE}.router.weight", "moe.router", (out("experts"), in_("hidden")), noiseless=True),
        Role(f"{MOE}.router.bias", "moe.router.bias", (out("experts"),), noiseless=True),
        Role(f"{MOE}.experts.gate_up_proj", "moe.experts.gate_up", (out("experts"), in_("hidden"), out("ffn*2"))),
        Role(f"{MOE}.experts.gate_up_proj_bias", "moe.experts.gate_up.bias", (out("experts"), out("ffn*2"))),
        Role(f"{MOE}.experts.down_proj", "moe.experts.down", (out("experts"), in_("ffn"), out("hidden")),
             writer=True),
        Role(f"{MOE}.experts.down_proj_bias", "moe.experts.down.bias", (out("experts"), out("hidden")),
             writer=True),
    )
    + norm(f"{L}.input_layernorm", "norm.attn_in")
    + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
)
"""``ffn*2``: gate and up of each expert neuron side by side (gate = ``[..., ::2]``), so a
copied neuron carries both."""

GPT_OSS_DEFAULTS = dict(
    num_hidden_layers=36, num_local_experts=128, vocab_size=201088, hidden_size=2880, intermediate_size=2880,
    head_dim=64, num_attention_heads=64, num_key_value_heads=8, sliding_window=128, tie_word_embeddings=False,
    max_position_embeddings=131072, rms_norm_eps=1e-5, num_experts_per_tok=4, swiglu_alpha=1.702,
    swiglu_limit=7.0, attention_bias=True,
)
GPT_OSS_ROPE = dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                    original_max_position_embeddings=4096)
"""GptOssConfig's defaults (theta 150000): what transformers runs for a config.json without them."""


def _gpt_oss(hf: Mapping[str, Any]) -> DecoderConfig:
    hf = _defaults(hf, GPT_OSS_DEFAULTS)
    if hf.get("head_dim") is None:
        hf["head_dim"] = int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    if not (hf.get("rope_parameters") or hf.get("rope_scaling")):
        hf["rope_parameters"] = dict(GPT_OSS_ROPE, rope_theta=float(hf.get("rope_theta") or 150000.0))
    elif hf.get("rope_theta") is None and "rope_theta" not in (hf.get("rope_scaling") or hf["rope_parameters"]):
        hf["rope_theta"] = 150000.0
    layers = int(hf["num_hidden_layers"])
    types = _layer_types(hf, layers, lambda i: "sliding_attention" if i % 2 == 0 else "full_attention")
    window = hf.get("sliding_window")
    if "sliding_attention" in types and not window:
        raise ConfigError("gpt_oss: layer_types has sliding layers but sliding_window is not set")
    bias = bool(hf["attention_bias"])
    return read_llama_like(
        hf, "gpt_oss", qkv_bias=bias, o_bias=bias, act="silu",
        sliding_window=int(window or 0), layer_types=types,
        experts=int(hf["num_local_experts"]), experts_per_tok=int(hf["num_experts_per_tok"]),
        experts_stacked="in_out", gate_up_interleaved=True, expert_glu="clamped",
        glu_alpha=float(hf["swiglu_alpha"]), glu_limit=float(hf["swiglu_limit"]),
    )


gpt_oss = Family("gpt_oss", ("gpt_oss",), GPT_OSS_ROLES, _gpt_oss, dict(LLAMA_KEYS, num_local_experts="experts"),
                 "GptOssForCausalLM")

FAMILIES = (gpt_oss,)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
TINY = {
    "gpt_oss": dict(_DIMS, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                    swiglu_limit=0.3, swiglu_alpha=1.5, attention_bias=True,
                    rope_parameters=dict(GPT_OSS_ROPE, rope_theta=10000.0, factor=4.0,
                                         original_max_position_embeddings=16)),
}
"""Tiny configs (``families.TINY``): a SwiGLU limit small enough that the clamps bite."""

__all__ = ["FAMILIES", "TINY", "gpt_oss", "sinks"]
