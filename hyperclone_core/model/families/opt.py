"""OPT: learned positions (offset 2), pre-LN (125m/1.3b) and post-LN with a narrow
token embedding behind project_in/project_out (350m)."""

from __future__ import annotations

from ..spec import DecoderConfig, Family, Role, in_, out, require
from ._common import Q, has

D = "model.decoder"
L = f"{D}.layers.{{i}}"


def _lin(name, kind, o, i, writer=False):
    return (
        Role(f"{name}.weight", kind, (out(o), in_(i)), writer=writer),
        Role(f"{name}.bias", kind + ".bias", (out(o),), writer=writer, when=has("qkv_bias")),
    )


def _ln(name, kind):
    return (
        Role(f"{name}.weight", kind, (out("hidden"),), when=lambda c: c.norm == "layer"),
        Role(f"{name}.bias", kind + ".bias", (out("hidden"),), when=lambda c: c.norm == "layer"),
    )


ROLES = (
    Role(f"{D}.embed_tokens.weight", "embed", (in_("vocab"), out("embed"))),
    Role(f"{D}.embed_positions.weight", "pos_embed", (in_("positions"), out("hidden"))),
    Role(f"{D}.project_in.weight", "proj_in", (out("hidden"), in_("embed")), when=has("embed")),
    Role(f"{D}.project_out.weight", "proj_out", (out("embed"), in_("hidden")), when=has("embed")),
    Role("lm_head.weight", "lm_head", (out("vocab"), in_("embed"))),
)
ROLES += tuple(
    Role(r.pattern, r.kind, r.axes, when=lambda c: c.final_norm and c.norm == "layer")
    for r in _ln(f"{D}.final_layer_norm", "norm.final")
)
ROLES += (
    _lin(f"{L}.self_attn.q_proj", "attn.q", Q, "hidden")
    + _lin(f"{L}.self_attn.k_proj", "attn.k", Q, "hidden")
    + _lin(f"{L}.self_attn.v_proj", "attn.v", Q, "hidden")
    + _lin(f"{L}.self_attn.out_proj", "attn.o", "hidden", Q, writer=True)
    + _ln(f"{L}.self_attn_layer_norm", "norm.attn_in")
    + _lin(f"{L}.fc1", "mlp.up", "ffn", "hidden")
    + _lin(f"{L}.fc2", "mlp.down", "hidden", "ffn", writer=True)
    + _ln(f"{L}.final_layer_norm", "norm.mlp_in")
)

KEYS = {
    "hidden_size": "hidden", "ffn_dim": "ffn", "num_hidden_layers": "layers",
    "num_attention_heads": "heads", "vocab_size": "vocab", "max_position_embeddings": "positions",
    "word_embed_proj_dim": "embed",
}


def read(hf) -> DecoderConfig:
    require(hf, "hidden_size", "ffn_dim", "num_hidden_layers", "num_attention_heads", "vocab_size")
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    embed = int(hf.get("word_embed_proj_dim") or hidden)
    pre = bool(hf.get("do_layer_norm_before", True))
    bias = bool(hf.get("enable_bias", True))
    return DecoderConfig(
        family="opt", vocab=int(hf["vocab_size"]), hidden=hidden, ffn=int(hf["ffn_dim"]),
        layers=int(hf["num_hidden_layers"]), heads=heads, kv_heads=heads, head_dim=hidden // heads,
        positions=int(hf.get("max_position_embeddings") or 2048), learned_pos_offset=2,
        embed=embed if embed != hidden else 0,
        norm="layer" if hf.get("layer_norm_elementwise_affine", True) else "layer_noparam",
        norm_eps=1e-5, placement="pre" if pre else "post",
        final_norm=pre and not hf.get("_remove_final_layer_norm", False),
        mlp="plain", act=hf.get("activation_function") or "relu", pos="learned",
        qkv_bias=bias, o_bias=bias, mlp_bias=bias, norm_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


opt = Family("opt", ("opt",), ROLES, read, KEYS, "OPTForCausalLM")

FAMILIES = (opt,)
TINY = {
    "opt": dict(vocab_size=96, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64, word_embed_proj_dim=16, do_layer_norm_before=True,
                activation_function="relu", enable_bias=True, tie_word_embeddings=True),
}
