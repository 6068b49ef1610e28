"""Dense decoders with their own attention or block layout: diffllama (differential attention)."""

from __future__ import annotations

from ...errors import ConfigError
from ..spec import Family, Role, in_, out
from ._common import LLAMA_KEYS, embeddings, gated_mlp, has, norm, read_llama_like

L = "model.layers.{i}"

# ---------------------------------------------------------------- diffllama

DQ = "2*kv_half*q_per_kv*head_dim"  # query head h = (half, kv head of the half, its query): h and h + heads/2 a pair
DKV = "2*kv_half*head_dim"
DOUT = "kv_half*q_per_kv*2*head_dim"  # per pair (the first half's query head), its outputs of the two value halves
A = f"{L}.self_attn"
DIFF_ROLES = (
    embeddings("model.embed_tokens.weight")
    + tuple(Role(f"{A}.{p}_proj.weight", f"attn.{p}", (out(ax), in_("hidden")))
            for p, ax in (("q", DQ), ("k", DKV), ("v", DKV)))
    + tuple(Role(f"{A}.{p}_proj.bias", f"attn.{p}.bias", (out(ax),), when=has("qkv_bias"))
            for p, ax in (("q", DQ), ("k", DKV), ("v", DKV)))
    + (
        Role(f"{A}.o_proj.weight", "attn.o", (out("hidden"), in_(DOUT)), writer=True),
        Role(f"{A}.o_proj.bias", "attn.o.bias", (out("hidden"),), writer=True, when=has("o_bias")),
    )
    + tuple(Role(f"{A}.lambda_{n}", f"attn.lambda_{n}", (out("head_dim"),)) for n in ("q1", "k1", "q2", "k2"))
    + gated_mlp(f"{L}.mlp", bias=False)
    + norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
)


def _diffllama(hf):
    heads = int(hf.get("num_attention_heads") or 0)
    kv = int(hf.get("num_key_value_heads") or heads)
    if kv % 2:
        raise ConfigError(f"diffllama: num_key_value_heads ({kv}) must be even (differential attention splits the "
                          "values in two halves of the kv heads)")
    if float(hf.get("attention_dropout") or 0.0):
        raise ConfigError("diffllama: attention_dropout > 0 has no differential-attention semantics (transformers "
                          "refuses it too)")
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(hf, "diffllama", qkv_bias=bias, o_bias=bias, diff_attn=True)


diffllama = Family(
    "diffllama", ("diffllama",), DIFF_ROLES, _diffllama, LLAMA_KEYS, "DiffLlamaForCausalLM",
    depth_inexact="DiffLlama's lambda_init = 0.8 - 0.6 exp(-0.3 i) is a function of the layer index i, so an "
                  "inserted layer shifts the lambda of every later layer; restoring it would need a weight change "
                  "that depends on the weights' values (log(exp(lambda_q2 . lambda_k2) + shift)), which a growth "
                  "plan's copies and scales cannot express",
)

FAMILIES = (diffllama,)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
TINY = {
    "diffllama": dict(_DIMS, attention_bias=True),
}
"""Tiny configs of every type these families grow (``families.TINY``)."""

__all__ = ["FAMILIES", "TINY", "diffllama"]
