"""GPT-style decoders: learned (or ALiBi) positions, LayerNorm with biases, a plain MLP.

- gpt2 / gpt-sw3: Conv1D-stored (in, out) weights, fused q|k|v, optional 1 / (layer + 1)
  attention scale (``scale_attn_by_inverse_layer_idx``) and unscaled attention;
- gpt_bigcode: nn.Linear weights, multi-query (one kv head: q|k|v) or per-head fused qkv;
- gpt_neo: unscaled attention, global and local (sliding window) layers;
- openai-gpt: Conv1D weights, post-LN blocks, no final norm;
- biogpt: learned positions with an offset of 2, embeddings times sqrt(hidden);
- bloom and mpt: ALiBi (heads keep their slopes: width grows head_dim), bloom's LayerNorm
  on the embeddings and per-head fused qkv, mpt's bias-free LayerNorm and q|k|v.

In openai-gpt, bloom and mpt the MLP is 4 x hidden by the model's code (no config key):
growth keeps that ratio or is refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from ...errors import ConfigError, PlanError
from ..spec import DecoderConfig, Family, Role, in_, out, require
from ._common import Q

KV = "kv_heads*head_dim"
QKV = f"{Q}|{KV}|{KV}"                       # q | k | v, each head-major
PER_HEAD = "kv_heads*q_per_kv*3*head_dim"    # per head: its q, k, v


def _fixed_ffn(name: str, ratio: int = 4):
    """``write_layers`` of a family whose MLP is ``ratio`` x hidden in the model's code (no
    config key): a growth that breaks the ratio cannot be written."""
    def check(cfg: dict, new: DecoderConfig) -> None:
        if new.ffn != ratio * new.hidden:
            raise PlanError(f"{name}'s MLP is {ratio} x hidden in the model's code (no config key): ffn {new.ffn} "
                            f"with hidden {new.hidden} cannot be written; grow --ffn with --width")
    return check


def _bigcode_heads(cfg: dict, new: DecoderConfig) -> None:
    """gpt_bigcode has no kv-head count: one kv head under multi_query, else one per head."""
    kv = 1 if cfg.get("multi_query", True) else new.heads
    if new.kv_heads != kv:
        raise PlanError(f"gpt_bigcode configs have no kv-head count: {new.kv_heads} kv heads for {new.heads} heads "
                        f"cannot be written (multi_query={bool(cfg.get('multi_query', True))} gives {kv}); "
                        "leave out --kv-heads")


# ---------------------------------------------------------------- role builders


def _lin(name: str, kind: str, o: str, i: str, writer: bool = False, bias: bool = True, conv: bool = False) -> tuple:
    """A projection: weight (out, in), or (in, out) where stored as a Conv1D; its bias."""
    axes = (in_(i), out(o)) if conv else (out(o), in_(i))
    roles = (Role(f"{name}.weight", kind, axes, writer=writer),)
    if bias:
        roles += (Role(f"{name}.bias", kind + ".bias", (out(o),), writer=writer),)
    return roles


def _ln(name: str, kind: str, bias: bool = True) -> tuple:
    roles = (Role(f"{name}.weight", kind, (out("hidden"),)),)
    if bias:
        roles += (Role(f"{name}.bias", kind + ".bias", (out("hidden"),)),)
    return roles


def _embeddings(embed: str, pos: str = "", lm_head: str = "lm_head.weight") -> tuple:
    roles = (Role(embed, "embed", (in_("vocab"), out("hidden"))),
             Role(lm_head, "lm_head", (out("vocab"), in_("hidden"))))
    if pos:
        roles += (Role(pos, "pos_embed", (in_("positions"), out("hidden"))),)
    return roles


def _refuse(hf: Mapping[str, Any], key: str, bad, why: str) -> None:
    value = hf.get(key)
    if value is not None and (bad(value) if callable(bad) else value == bad):
        raise ConfigError(f"{hf.get('model_type')}: {key}={value!r} is not supported ({why})")


def _no_cross_attention(hf: Mapping[str, Any]) -> None:
    _refuse(hf, "add_cross_attention", True, "cross-attention layers read an encoder; this is a decoder-only grower")


def _dims(hf: Mapping[str, Any], hidden: str, heads: str, layers: str) -> tuple:
    require(hf, hidden, heads, layers, "vocab_size")
    h, n = int(hf[hidden]), int(hf[heads])
    if h % n:
        raise ConfigError(f"{hf.get('model_type')}: {hidden} ({h}) is not a multiple of {heads} ({n})")
    return h, n, int(hf[layers]), int(hf["vocab_size"])


# ---------------------------------------------------------------- gpt2, gpt-sw3

T = "transformer"
H = f"{T}.h.{{i}}"

GPT2_ROLES = (
    *_embeddings(f"{T}.wte.weight", f"{T}.wpe.weight"),
    *_ln(f"{T}.ln_f", "norm.final"),
    *_ln(f"{H}.ln_1", "norm.attn_in"),
    *_ln(f"{H}.ln_2", "norm.mlp_in"),
    *_lin(f"{H}.attn.c_attn", "attn.qkv", QKV, "hidden", conv=True),
    *_lin(f"{H}.attn.c_proj", "attn.o", "hidden", Q, writer=True, conv=True),
    *_lin(f"{H}.mlp.c_fc", "mlp.up", "ffn", "hidden", conv=True),
    *_lin(f"{H}.mlp.c_proj", "mlp.down", "hidden", "ffn", writer=True, conv=True),
)

GPT2_KEYS = {
    "n_embd": "hidden", "n_inner": "ffn", "n_layer": "layers", "n_head": "heads", "vocab_size": "vocab",
    "n_positions": "positions",
}


def _gpt(hf, family: str, **flags) -> DecoderConfig:
    """The GPT-2 shape (n_embd, n_head, n_inner ...): gpt2 and gpt_bigcode."""
    _no_cross_attention(hf)
    hidden, heads, layers, vocab = _dims(hf, "n_embd", "n_head", "n_layer")
    base = dict(
        family=family, vocab=vocab, hidden=hidden, ffn=int(hf.get("n_inner") or 4 * hidden), layers=layers,
        heads=heads, kv_heads=heads, head_dim=hidden // heads, positions=int(hf.get("n_positions") or 1024),
        norm="layer", norm_eps=float(hf.get("layer_norm_epsilon") or 1e-5), norm_bias=True,
        mlp="plain", act=hf.get("activation_function") or "gelu_new", pos="learned", qkv_layout="concat",
        qkv_bias=True, o_bias=True, mlp_bias=True,
        attn_scale=0.0 if hf.get("scale_attn_weights", True) else 1.0,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )
    base.update(flags)
    return DecoderConfig(**base)


def read_gpt2(hf) -> DecoderConfig:
    # reorder_and_upcast_attn scales k before q.k and upcasts to float32: the same function
    return _gpt(hf, "gpt2", transposed_linear=True,
                attn_scale_inverse_layer=bool(hf.get("scale_attn_by_inverse_layer_idx", False)))


gpt2 = Family("gpt2", ("gpt2", "gpt-sw3"), GPT2_ROLES, read_gpt2, GPT2_KEYS, "GPT2LMHeadModel", rope_keys=())


# ---------------------------------------------------------------- gpt_bigcode


def _mqa(c: DecoderConfig) -> bool:
    return c.qkv_layout == "concat"


BIGCODE_ROLES = (
    *_embeddings(f"{T}.wte.weight", f"{T}.wpe.weight"),
    *_ln(f"{T}.ln_f", "norm.final"),
    *_ln(f"{H}.ln_1", "norm.attn_in"),
    *_ln(f"{H}.ln_2", "norm.mlp_in"),
    Role(f"{H}.attn.c_attn.weight", "attn.qkv", (out(QKV), in_("hidden")), when=_mqa),
    Role(f"{H}.attn.c_attn.bias", "attn.qkv.bias", (out(QKV),), when=_mqa),
    Role(f"{H}.attn.c_attn.weight", "attn.qkv", (out(PER_HEAD), in_("hidden")), when=lambda c: not _mqa(c)),
    Role(f"{H}.attn.c_attn.bias", "attn.qkv.bias", (out(PER_HEAD),), when=lambda c: not _mqa(c)),
    *_lin(f"{H}.attn.c_proj", "attn.o", "hidden", Q, writer=True),
    *_lin(f"{H}.mlp.c_fc", "mlp.up", "ffn", "hidden"),
    *_lin(f"{H}.mlp.c_proj", "mlp.down", "hidden", "ffn", writer=True),
)


def read_bigcode(hf) -> DecoderConfig:
    # attention_softmax_in_fp32 / scale_attention_softmax_in_fp32: precision only, the same function
    mq = bool(hf.get("multi_query", True))
    cfg = _gpt(hf, "gpt_bigcode", act=hf.get("activation_function") or "gelu_pytorch_tanh",
               qkv_layout="concat" if mq else "per_head")
    return replace(cfg, kv_heads=1) if mq else cfg


gpt_bigcode = Family("gpt_bigcode", ("gpt_bigcode",), BIGCODE_ROLES, read_bigcode, GPT2_KEYS,
                     "GPTBigCodeForCausalLM", rope_keys=(), write_layers=_bigcode_heads)


# ---------------------------------------------------------------- gpt_neo

NEO_ROLES = (
    *_embeddings(f"{T}.wte.weight", f"{T}.wpe.weight"),
    *_ln(f"{T}.ln_f", "norm.final"),
    *_ln(f"{H}.ln_1", "norm.attn_in"),
    *_ln(f"{H}.ln_2", "norm.mlp_in"),
    *_lin(f"{H}.attn.attention.q_proj", "attn.q", Q, "hidden", bias=False),
    *_lin(f"{H}.attn.attention.k_proj", "attn.k", KV, "hidden", bias=False),
    *_lin(f"{H}.attn.attention.v_proj", "attn.v", KV, "hidden", bias=False),
    *_lin(f"{H}.attn.attention.out_proj", "attn.o", "hidden", Q, writer=True),
    *_lin(f"{H}.mlp.c_fc", "mlp.up", "ffn", "hidden"),
    *_lin(f"{H}.mlp.c_proj", "mlp.down", "hidden", "ffn", writer=True),
)

NEO_KEYS = {
    "hidden_size": "hidden", "intermediate_size": "ffn", "num_layers": "layers", "num_heads": "heads",
    "vocab_size": "vocab", "max_position_embeddings": "positions",
}


def _neo_layers(hf, layers: int) -> tuple:
    kinds = hf.get("attention_layers")
    if not kinds:
        types = hf.get("attention_types") or [[["global", "local"], 12]]
        kinds = [k for item in types for _ in range(int(item[1])) for k in item[0]]
    if layers is not None and len(kinds) != layers:
        raise ConfigError(f"gpt_neo: attention_types give {len(kinds)} layers, num_layers is {layers}")
    bad = sorted(set(kinds) - {"global", "local"})
    if bad:
        raise ConfigError(f"gpt_neo: attention_types {bad} are not supported (global and local are)")
    return tuple("sliding_attention" if k == "local" else "full_attention" for k in kinds)


def _neo_write_layers(cfg: dict, new: DecoderConfig) -> None:
    """The layer pattern lives in attention_types (never layer_types); rewritten, run-length,
    only where depth changed it (a width growth leaves it as written)."""
    cfg.pop("layer_types", None)
    src = _neo_layers(cfg, len(cfg.get("attention_layers") or []) or None)
    if tuple(new.layer_types) == src:
        return
    kinds = ["local" if t == "sliding_attention" else "global" for t in new.layer_types]
    runs: list = []
    for kind in kinds:  # [[[kind], count], ...]
        if runs and runs[-1][0] == [kind]:
            runs[-1][1] += 1
        else:
            runs.append([[kind], 1])
    cfg["attention_types"] = runs
    if "attention_layers" in cfg:
        cfg["attention_layers"] = kinds


def read_neo(hf) -> DecoderConfig:
    hidden, heads, layers, vocab = _dims(hf, "hidden_size", "num_heads", "num_layers")
    return DecoderConfig(
        family="gpt_neo", vocab=vocab, hidden=hidden, ffn=int(hf.get("intermediate_size") or 4 * hidden),
        layers=layers, heads=heads, kv_heads=heads, head_dim=hidden // heads,
        positions=int(hf.get("max_position_embeddings") or 2048),
        norm="layer", norm_eps=float(hf.get("layer_norm_epsilon") or 1e-5), norm_bias=True,
        mlp="plain", act=hf.get("activation_function") or "gelu_new", pos="learned",
        o_bias=True, mlp_bias=True, attn_scale=1.0,  # GPT-Neo does not scale q.k
        sliding_window=int(hf.get("window_size") or 256), layer_types=_neo_layers(hf, layers),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


gpt_neo = Family("gpt_neo", ("gpt_neo",), NEO_ROLES, read_neo, NEO_KEYS, "GPTNeoForCausalLM", rope_keys=(),
                 write_layers=_neo_write_layers)


# ---------------------------------------------------------------- openai-gpt

OPENAI_ROLES = (
    *_embeddings(f"{T}.tokens_embed.weight", f"{T}.positions_embed.weight"),
    *_ln(f"{H}.ln_1", "norm.attn_in"),
    *_ln(f"{H}.ln_2", "norm.mlp_in"),
    *_lin(f"{H}.attn.c_attn", "attn.qkv", QKV, "hidden", conv=True),
    *_lin(f"{H}.attn.c_proj", "attn.o", "hidden", Q, writer=True, conv=True),
    *_lin(f"{H}.mlp.c_fc", "mlp.up", "ffn", "hidden", conv=True),
    *_lin(f"{H}.mlp.c_proj", "mlp.down", "hidden", "ffn", writer=True, conv=True),
)
OPENAI_ACT = {"gelu": "gelu_new", "relu": "relu", "silu": "silu", "swish": "silu"}
"""openai-gpt's own ``afn`` names: its "gelu" is the tanh approximation."""


def read_openai(hf) -> DecoderConfig:
    hidden, heads, layers, vocab = _dims(hf, "n_embd", "n_head", "n_layer")
    afn = hf.get("afn") or "gelu"
    if afn not in OPENAI_ACT:
        raise ConfigError(f"openai-gpt: afn={afn!r} is not supported; supported: {sorted(OPENAI_ACT)}")
    return DecoderConfig(
        family="openai-gpt", vocab=vocab, hidden=hidden, ffn=4 * hidden, layers=layers, heads=heads,
        kv_heads=heads, head_dim=hidden // heads, positions=int(hf.get("n_positions") or 512),
        norm="layer", norm_eps=float(hf.get("layer_norm_epsilon") or 1e-5), norm_bias=True,
        placement="post", final_norm=False, mlp="plain", act=OPENAI_ACT[afn], pos="learned",
        qkv_layout="concat", qkv_bias=True, o_bias=True, mlp_bias=True, transposed_linear=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


openai_gpt = Family("openai-gpt", ("openai-gpt",), OPENAI_ROLES, read_openai,
                    {"n_embd": "hidden", "n_layer": "layers", "n_head": "heads", "vocab_size": "vocab",
                     "n_positions": "positions"},
                    "OpenAIGPTLMHeadModel", rope_keys=(), write_layers=_fixed_ffn("openai-gpt"))


# ---------------------------------------------------------------- biogpt

B = "biogpt"
BL = f"{B}.layers.{{i}}"
BIOGPT_ROLES = (
    *_embeddings(f"{B}.embed_tokens.weight", f"{B}.embed_positions.weight", lm_head="output_projection.weight"),
    *_ln(f"{B}.layer_norm", "norm.final"),
    *_ln(f"{BL}.self_attn_layer_norm", "norm.attn_in"),
    *_ln(f"{BL}.final_layer_norm", "norm.mlp_in"),
    *_lin(f"{BL}.self_attn.q_proj", "attn.q", Q, "hidden"),
    *_lin(f"{BL}.self_attn.k_proj", "attn.k", KV, "hidden"),
    *_lin(f"{BL}.self_attn.v_proj", "attn.v", KV, "hidden"),
    *_lin(f"{BL}.self_attn.out_proj", "attn.o", "hidden", Q, writer=True),
    *_lin(f"{BL}.fc1", "mlp.up", "ffn", "hidden"),
    *_lin(f"{BL}.fc2", "mlp.down", "hidden", "ffn", writer=True),
)
BIOGPT_KEYS = {
    "hidden_size": "hidden", "intermediate_size": "ffn", "num_hidden_layers": "layers",
    "num_attention_heads": "heads", "vocab_size": "vocab", "max_position_embeddings": "positions",
}


def read_biogpt(hf) -> DecoderConfig:
    hidden, heads, layers, vocab = _dims(hf, "hidden_size", "num_attention_heads", "num_hidden_layers")
    require(hf, "intermediate_size")
    return DecoderConfig(
        family="biogpt", vocab=vocab, hidden=hidden, ffn=int(hf["intermediate_size"]), layers=layers,
        heads=heads, kv_heads=heads, head_dim=hidden // heads,
        positions=int(hf.get("max_position_embeddings") or 1024), learned_pos_offset=2,
        # the model's LayerNorms take torch's default epsilon; config.layer_norm_eps is not read
        norm="layer", norm_eps=1e-5, norm_bias=True, mlp="plain", act=hf.get("hidden_act") or "gelu",
        pos="learned", qkv_bias=True, o_bias=True, mlp_bias=True,
        embed_scale=bool(hf.get("scale_embedding", True)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


biogpt = Family("biogpt", ("biogpt",), BIOGPT_ROLES, read_biogpt, BIOGPT_KEYS, "BioGptForCausalLM", rope_keys=())


# ---------------------------------------------------------------- bloom

BLOOM_ROLES = (
    *_embeddings(f"{T}.word_embeddings.weight"),
    *_ln(f"{T}.word_embeddings_layernorm", "norm.embed"),
    *_ln(f"{T}.ln_f", "norm.final"),
    *_ln(f"{H}.input_layernorm", "norm.attn_in"),
    *_ln(f"{H}.post_attention_layernorm", "norm.mlp_in"),
    *_lin(f"{H}.self_attention.query_key_value", "attn.qkv", PER_HEAD, "hidden"),
    *_lin(f"{H}.self_attention.dense", "attn.o", "hidden", Q, writer=True),
    *_lin(f"{H}.mlp.dense_h_to_4h", "mlp.up", "ffn", "hidden"),
    *_lin(f"{H}.mlp.dense_4h_to_h", "mlp.down", "hidden", "ffn", writer=True),
)


def read_bloom(hf) -> DecoderConfig:
    # pretraining_tp / slow_but_exact split the same sums into slices: the same function
    _refuse(hf, "apply_residual_connection_post_layernorm", True,
            "the residual stream would carry each sublayer's normed input")
    hidden, heads, layers, vocab = _dims(hf, "hidden_size", "n_head", "n_layer")
    return DecoderConfig(
        family="bloom", vocab=vocab, hidden=hidden, ffn=4 * hidden, layers=layers, heads=heads, kv_heads=heads,
        head_dim=hidden // heads, positions=int(hf.get("seq_length") or 2048),
        norm="layer", norm_eps=float(hf.get("layer_norm_epsilon") or 1e-5), norm_bias=True, embed_norm=True,
        mlp="plain", act="gelu_tanh", pos="alibi", qkv_layout="per_head", qkv_bias=True, o_bias=True,
        mlp_bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


bloom = Family("bloom", ("bloom",), BLOOM_ROLES, read_bloom,
               {"hidden_size": "hidden", "n_layer": "layers", "n_head": "heads", "vocab_size": "vocab"},
               "BloomForCausalLM", rope_keys=(), write_layers=_fixed_ffn("bloom"))


# ---------------------------------------------------------------- mpt

M = f"{T}.blocks.{{i}}"
MPT_ROLES = (
    *_embeddings(f"{T}.wte.weight"),
    *_ln(f"{T}.norm_f", "norm.final", bias=False),
    *_ln(f"{M}.norm_1", "norm.attn_in", bias=False),
    *_ln(f"{M}.norm_2", "norm.mlp_in", bias=False),
    *_lin(f"{M}.attn.Wqkv", "attn.qkv", QKV, "hidden", bias=False),
    *_lin(f"{M}.attn.out_proj", "attn.o", "hidden", Q, writer=True, bias=False),
    *_lin(f"{M}.ffn.up_proj", "mlp.up", "ffn", "hidden", bias=False),
    *_lin(f"{M}.ffn.down_proj", "mlp.down", "hidden", "ffn", writer=True, bias=False),
)


def read_mpt(hf) -> DecoderConfig:
    """transformers' MPT: bias-free linears and LayerNorms, an MLP of 4 x d_model, ALiBi with
    a maximum bias of 8.  Keys that would make the original MPT code compute something else
    are refused (transformers ignores them)."""
    hidden, heads, layers, vocab = _dims(hf, "d_model", "n_heads", "n_layers")
    ac = dict(hf.get("attn_config") or {})
    ignored = "transformers' MPT ignores it, so the checkpoint's maths would not be what runs"
    _refuse(hf, "expansion_ratio", lambda v: v != 4, "the MLP is 4 x d_model in transformers' MPT")
    _refuse(hf, "no_bias", False, ignored)
    _refuse(hf, "logit_scale", lambda v: v is not None, ignored)
    _refuse(ac, "alibi", False, "ALiBi is what gives MPT positions")
    for key, bad in (("qk_ln", True), ("prefix_lm", True), ("attn_uses_sequence_id", True),
                     ("attn_type", lambda v: v != "multihead_attention"), ("alibi_bias_max", lambda v: v != 8)):
        value = ac.get(key)
        if value is not None and (bad(value) if callable(bad) else value == bad):
            raise ConfigError(f"mpt: attn_config.{key}={value!r} is not supported ({ignored})")
    return DecoderConfig(
        family="mpt", vocab=vocab, hidden=hidden, ffn=4 * hidden, layers=layers, heads=heads, kv_heads=heads,
        head_dim=hidden // heads, positions=int(hf.get("max_seq_len") or 2048),
        norm="layer", norm_eps=float(hf.get("layer_norm_epsilon") or 1e-5), mlp="plain", act="gelu",
        pos="alibi", qkv_layout="concat", attn_scale=float(ac.get("softmax_scale") or 0.0),
        clip_qkv=float(ac.get("clip_qkv") or 0.0), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


mpt = Family("mpt", ("mpt",), MPT_ROLES, read_mpt,
             {"d_model": "hidden", "n_layers": "layers", "n_heads": "heads", "vocab_size": "vocab",
              "max_seq_len": "positions"},
             "MptForCausalLM", rope_keys=(), write_layers=_fixed_ffn("mpt"))


FAMILIES = (gpt2, gpt_bigcode, gpt_neo, openai_gpt, biogpt, bloom, mpt)

_GPT2 = dict(vocab_size=96, n_embd=32, n_head=4, n_layer=2, n_positions=64, n_inner=48)
TINY = {
    "gpt2": dict(_GPT2, activation_function="gelu_new", scale_attn_by_inverse_layer_idx=True,
                 tie_word_embeddings=True),
    "gpt-sw3": dict(_GPT2, activation_function="gelu", tie_word_embeddings=False),
    "gpt_bigcode": dict(_GPT2, multi_query=True, activation_function="gelu_pytorch_tanh"),
    "gpt_neo": dict(vocab_size=96, hidden_size=32, num_heads=4, num_layers=2, max_position_embeddings=64,
                    intermediate_size=48, attention_types=[[["global", "local"], 1]], window_size=4,
                    activation_function="gelu_new"),
    "openai-gpt": dict(vocab_size=96, n_embd=32, n_head=4, n_layer=2, n_positions=64, afn="gelu"),
    "biogpt": dict(vocab_size=96, hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48,
                   max_position_embeddings=64, scale_embedding=True, hidden_act="gelu"),
    "bloom": dict(vocab_size=96, hidden_size=32, n_head=4, n_layer=2),
    "mpt": dict(vocab_size=96, d_model=32, n_heads=4, n_layers=2, max_seq_len=64,
                attn_config={"clip_qkv": 8.0, "softmax_scale": 0.3}),
}
