"""Shared pieces of the role tables: the axes of a Llama-style block."""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import ConfigError
from ..rope import rope_fields
from ..spec import DecoderConfig, Role, implicit_head_dim, in_, out, require

Q = "kv_heads*q_per_kv*head_dim"
KV = "kv_heads*head_dim"


def has(flag: str):
    return lambda cfg: bool(getattr(cfg, flag))


def embeddings(embed: str, lm_head: str = "lm_head.weight", final_norm: str = "model.norm.weight",
               embed_dim: str = "hidden") -> tuple:
    return (
        Role(embed, "embed", (in_("vocab"), out(embed_dim))),
        Role(final_norm, "norm.final", (out("hidden"),), when=has("final_norm")),
        Role(lm_head, "lm_head", (out("vocab"), in_(embed_dim))),
    )


def attention(prefix: str, o_name: str = "o_proj", bias: bool = False, o_bias: bool = False) -> tuple:
    p = prefix
    roles = [
        Role(f"{p}.q_proj.weight", "attn.q", (out(Q), in_("hidden"))),
        Role(f"{p}.k_proj.weight", "attn.k", (out(KV), in_("hidden"))),
        Role(f"{p}.v_proj.weight", "attn.v", (out(KV), in_("hidden"))),
        Role(f"{p}.{o_name}.weight", "attn.o", (out("hidden"), in_(Q)), writer=True),
    ]
    if bias:
        roles += [
            Role(f"{p}.q_proj.bias", "attn.q.bias", (out(Q),), when=has("qkv_bias")),
            Role(f"{p}.k_proj.bias", "attn.k.bias", (out(KV),), when=has("qkv_bias")),
            Role(f"{p}.v_proj.bias", "attn.v.bias", (out(KV),), when=has("qkv_bias")),
        ]
    if o_bias:
        roles.append(Role(f"{p}.{o_name}.bias", "attn.o.bias", (out("hidden"),), writer=True, when=has("o_bias")))
    return tuple(roles)


def gated_mlp(prefix: str, bias: bool = True) -> tuple:
    """gate/up/down projections; with ``bias``, their biases where the config sets ``mlp_bias``."""
    roles = (
        Role(f"{prefix}.gate_proj.weight", "mlp.gate", (out("ffn"), in_("hidden"))),
        Role(f"{prefix}.up_proj.weight", "mlp.up", (out("ffn"), in_("hidden"))),
        Role(f"{prefix}.down_proj.weight", "mlp.down", (out("hidden"), in_("ffn")), writer=True),
    )
    if bias:
        roles += (
            Role(f"{prefix}.gate_proj.bias", "mlp.gate.bias", (out("ffn"),), when=has("mlp_bias")),
            Role(f"{prefix}.up_proj.bias", "mlp.up.bias", (out("ffn"),), when=has("mlp_bias")),
            Role(f"{prefix}.down_proj.bias", "mlp.down.bias", (out("hidden"),), writer=True, when=has("mlp_bias")),
        )
    return roles


def norm(name: str, kind: str, bias: bool = False) -> tuple:
    roles = [Role(f"{name}.weight", kind, (out("hidden"),))]
    if bias:
        roles.append(Role(f"{name}.bias", kind + ".bias", (out("hidden"),)))
    return tuple(roles)


LLAMA_KEYS = {
    "hidden_size": "hidden", "intermediate_size": "ffn", "num_hidden_layers": "layers",
    "num_attention_heads": "heads", "num_key_value_heads": "kv_heads", "head_dim": "head_dim",
    "vocab_size": "vocab", "max_position_embeddings": "positions",
}


SLIDING_DEFAULTS = {
    "mistral": lambda hf, i: True,
    "mixtral": lambda hf, i: True,
    "phi3": lambda hf, i: True,
    "qwen2": lambda hf, i: i >= int(hf.get("max_window_layers") or 0),
    "qwen3": lambda hf, i: i >= int(hf.get("max_window_layers") or 0),
    "gemma2": lambda hf, i: i % 2 == 0,
}
"""Which layers transformers gives a sliding window when a config sets
``sliding_window`` but has no ``layer_types`` (configs written by 4.x, and
Mistral/Mixtral/Phi-3 in every version); other families have no sliding window."""


def layer_types(hf: Mapping[str, Any], family: str, layers: int, window) -> tuple:
    """Per-layer attention kinds: the config's ``layer_types``, else transformers'
    default for the family when a sliding window is set, else ()."""
    if hf.get("layer_types"):
        return tuple(hf["layer_types"])
    if not window or family not in SLIDING_DEFAULTS:
        return ()
    rule = SLIDING_DEFAULTS[family]
    return tuple("sliding_attention" if rule(hf, i) else "full_attention" for i in range(layers))


def read_llama_like(hf: Mapping[str, Any], family: str, original_default=None, **flags) -> DecoderConfig:
    """Dims and the common flags of a Llama-style config; ``flags`` override.
    ``original_default``: the config class's ``original_max_position_embeddings``
    where it has one (see ``rope.rope_fields``)."""
    require(hf, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    kv = int(hf.get("num_key_value_heads") or heads)
    if heads % kv:
        raise ConfigError(f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})")
    head_dim = implicit_head_dim(hf, hidden, heads)
    positions = int(hf.get("max_position_embeddings") or 2048)
    act = hf.get("hidden_act") or hf.get("hidden_activation") or "silu"
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    if family not in SLIDING_DEFAULTS:
        window = None  # e.g. a Llama config carrying the key: transformers ignores it
    base = dict(
        family=family, vocab=int(hf["vocab_size"]), hidden=hidden, ffn=int(hf["intermediate_size"]),
        layers=int(hf["num_hidden_layers"]), heads=heads, kv_heads=kv, head_dim=head_dim,
        positions=positions,
        norm_eps=float(hf.get("rms_norm_eps", hf.get("layer_norm_eps", 1e-5)) or 1e-5),
        act=act, **rope_fields(hf, head_dim, positions, original_default),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        sliding_window=int(window or 0), layer_types=layer_types(hf, family, int(hf["num_hidden_layers"]), window),
    )
    base.update(flags)
    return DecoderConfig(**base)
