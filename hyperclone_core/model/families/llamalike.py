"""Llama-like families that differ from Llama in names or in a few scalars and block
variants: Granite's multipliers, relu² and xIELU MLPs, LayerNorm-1p, peri-layer norms."""

from __future__ import annotations

from ..spec import Family
from ._common import LLAMA_KEYS, attention, embeddings, gated_mlp, norm, read_llama_like

L = "model.layers.{i}"
BLOCK_NORMS = norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
LLAMA_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + gated_mlp(f"{L}.mlp")
    + BLOCK_NORMS
)


def _float(hf, key, default):
    value = hf.get(key)
    return float(default if value is None else value)


def _granite(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(
        hf, "granite", qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)),
        embed_multiplier=_float(hf, "embedding_multiplier", 1.0),
        residual_multiplier=_float(hf, "residual_multiplier", 1.0),
        logit_scale=1.0 / _float(hf, "logits_scaling", 1.0),
        attn_scale=_float(hf, "attention_multiplier", 1.0),
    )


granite = Family("granite", ("granite",), LLAMA_ROLES, _granite, LLAMA_KEYS, "GraniteForCausalLM")

FAMILIES = (granite,)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
TINY = {
    "granite": dict(_DIMS, attention_bias=True, mlp_bias=True, embedding_multiplier=3.0, residual_multiplier=0.5,
                    logits_scaling=4.0, attention_multiplier=0.2),
}
"""Tiny configs of every type these families grow (``families.TINY``)."""

__all__ = ["FAMILIES", "TINY", "granite"]
