"""GPT-NeoX (Pythia): per-head fused qkv, parallel residual, partial rotary."""

from __future__ import annotations

from ..rope import rope_fields
from ..spec import DecoderConfig, Family, Role, in_, out, require
from ._common import Q, has

G = "gpt_neox"
L = f"{G}.layers.{{i}}"
QKV = "kv_heads*q_per_kv*3*head_dim"


def _lin(name, kind, o, i, writer=False):
    return (
        Role(f"{name}.weight", kind, (out(o), in_(i)), writer=writer),
        Role(f"{name}.bias", kind + ".bias", (out(o),), writer=writer, when=has("qkv_bias")),
    )


def _ln(name, kind):
    return (Role(f"{name}.weight", kind, (out("hidden"),)), Role(f"{name}.bias", kind + ".bias", (out("hidden"),)))


ROLES = (
    Role(f"{G}.embed_in.weight", "embed", (in_("vocab"), out("hidden"))),
    Role("embed_out.weight", "lm_head", (out("vocab"), in_("hidden"))),
    *_ln(f"{G}.final_layer_norm", "norm.final"),
    *_ln(f"{L}.input_layernorm", "norm.attn_in"),
    *_ln(f"{L}.post_attention_layernorm", "norm.mlp_in"),
    *_lin(f"{L}.attention.query_key_value", "attn.qkv", QKV, "hidden"),
    *_lin(f"{L}.attention.dense", "attn.o", "hidden", Q, writer=True),
    *_lin(f"{L}.mlp.dense_h_to_4h", "mlp.up", "ffn", "hidden"),
    *_lin(f"{L}.mlp.dense_4h_to_h", "mlp.down", "hidden", "ffn", writer=True),
)

KEYS = {
    "hidden_size": "hidden", "intermediate_size": "ffn", "num_hidden_layers": "layers",
    "num_attention_heads": "heads", "vocab_size": "vocab", "max_position_embeddings": "positions",
}


def read(hf) -> DecoderConfig:
    require(hf, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = hidden // heads
    positions = int(hf.get("max_position_embeddings") or 2048)
    bias = bool(hf.get("attention_bias", True))
    return DecoderConfig(
        family="gpt_neox", vocab=int(hf["vocab_size"]), hidden=hidden, ffn=int(hf["intermediate_size"]),
        layers=int(hf["num_hidden_layers"]), heads=heads, kv_heads=heads, head_dim=head_dim,
        positions=positions,
        norm="layer", norm_eps=float(hf.get("layer_norm_eps") or 1e-5), norm_bias=True,
        parallel_residual=bool(hf.get("use_parallel_residual", True)),
        mlp="plain", act=hf.get("hidden_act") or "gelu", pos="rope", qkv_layout="per_head",
        **rope_fields(hf, head_dim, positions),
        qkv_bias=bias, o_bias=bias, mlp_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


gpt_neox = Family("gpt_neox", ("gpt_neox",), ROLES, read, KEYS, "GPTNeoXForCausalLM",
                  rope_keys=("rotary_emb_base", "rotary_pct"))

FAMILIES = (gpt_neox,)
TINY = {
    "gpt_neox": dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=64, rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                                                  "rope_type": "default"},
                     use_parallel_residual=True, hidden_act="gelu", attention_bias=True, tie_word_embeddings=False),
}
