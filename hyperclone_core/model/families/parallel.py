"""LayerNorm decoders, most with attention and MLP side by side under one norm.

phi (parallel block, biases everywhere, LM-head bias, optional qk LayerNorm), stablelm
(optional parallel block, optional qkv bias, optional per-head qk LayerNorms), starcoder2 (sequential blocks, a plain
biased MLP, sliding window), persimmon (per-head fused qkv, qk LayerNorm, relu²), cohere
(bias-free LayerNorm, per-head qk-norm gains, interleaved RoPE, logit scale), cohere2
(sliding layers with RoPE, full layers without), gptj and codegen (interleaved partial
rotary; CodeGen's fused qkv in 4 blocks), falcon (multi-query, per-head or grouped fused
qkv; parallel under one or two LayerNorms, or sequential), gpt_neox_japanese (sequential
blocks, the last layer's attention output bias).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from ...errors import ConfigError, PlanError
from ..rope import raw_params, rope_fields
from ..spec import DecoderConfig, Family, Role, implicit_head_dim, in_, out, require
from ._common import KV, LLAMA_KEYS, Q, has
from .moe import dense_mlp, experts, router, shared_mlp

M = "model"
L = "model.layers.{i}"


def _lin(name: str, kind: str, o: str, i: str, writer: bool = False, bias=None) -> tuple:
    """A linear layer's weight (out o, in i) and, where ``bias`` (a cfg predicate; True:
    always) says so, its bias."""
    roles = (Role(f"{name}.weight", kind, (out(o), in_(i)), writer=writer),)
    if bias is not None:
        roles += (Role(f"{name}.bias", kind + ".bias", (out(o),), writer=writer,
                       when=None if bias is True else bias),)
    return roles


def _ln(name: str, kind: str, dim: str = "hidden", when=None, bias: bool = True) -> tuple:
    """A LayerNorm's gain and (``bias``) bias over ``dim``."""
    roles = (Role(f"{name}.weight", kind, (out(dim),), when=when),)
    if bias:
        roles += (Role(f"{name}.bias", kind + ".bias", (out(dim),), when=when),)
    return roles


def _qk_ln(prefix: str, q: str, k: str) -> tuple:
    """qk LayerNorms shared over heads (weight and bias over head_dim), where the config has qk-norm."""
    on = has("qk_norm")
    return _ln(f"{prefix}.{q}", "attn.q_norm", "head_dim", on) + _ln(f"{prefix}.{k}", "attn.k_norm", "head_dim", on)


def _with_partial(hf: Mapping[str, Any], default: float) -> dict:
    """The config with the config class's default rotary fraction made explicit where it
    names none (transformers fills it in when it builds the config)."""
    hf = dict(hf)
    if "partial_rotary_factor" not in raw_params(hf) and hf.get("partial_rotary_factor") is None:
        hf["partial_rotary_factor"] = default
    return hf


def _dims(hf: Mapping[str, Any], head_dim_key: bool = True) -> dict:
    require(hf, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    kv = int(hf.get("num_key_value_heads") or heads)
    if heads % kv:
        raise ConfigError(f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})")
    head_dim = implicit_head_dim(hf, hidden, heads) if head_dim_key else hidden // heads
    if not head_dim_key and hidden % heads:
        raise ConfigError(f"hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads})")
    return dict(vocab=int(hf["vocab_size"]), hidden=hidden, ffn=int(hf["intermediate_size"]),
                layers=int(hf["num_hidden_layers"]), heads=heads, kv_heads=kv, head_dim=head_dim,
                positions=int(hf.get("max_position_embeddings") or 2048))


def _eps(hf: Mapping[str, Any], key: str = "layer_norm_eps") -> float:
    value = hf.get(key)
    return float(1e-5 if value is None else value)


# ---------------------------------------------------------------- phi

PHI_ROLES = (
    Role(f"{M}.embed_tokens.weight", "embed", (in_("vocab"), out("hidden"))),
    *_ln(f"{M}.final_layernorm", "norm.final"),
    *_lin("lm_head", "lm_head", "vocab", "hidden", bias=True),
    *_ln(f"{L}.input_layernorm", "norm.attn_in"),
    *_lin(f"{L}.self_attn.q_proj", "attn.q", Q, "hidden", bias=True),
    *_lin(f"{L}.self_attn.k_proj", "attn.k", KV, "hidden", bias=True),
    *_lin(f"{L}.self_attn.v_proj", "attn.v", KV, "hidden", bias=True),
    *_lin(f"{L}.self_attn.dense", "attn.o", "hidden", Q, writer=True, bias=True),
    *_qk_ln(f"{L}.self_attn", "q_layernorm", "k_layernorm"),
    *_lin(f"{L}.mlp.fc1", "mlp.up", "ffn", "hidden", bias=True),
    *_lin(f"{L}.mlp.fc2", "mlp.down", "hidden", "ffn", writer=True, bias=True),
)


def _phi(hf) -> DecoderConfig:
    hf = _with_partial(hf, 0.5)
    d = _dims(hf)
    return DecoderConfig(
        family="phi", **d, norm="layer", norm_eps=_eps(hf), norm_bias=True,
        parallel_residual=True, shared_block_norm=True, mlp="plain", act=hf.get("hidden_act") or "gelu_new",
        **rope_fields(hf, d["head_dim"], d["positions"]),
        qk_norm="head" if hf.get("qk_layernorm") else "", qk_norm_type="layer",
        qkv_bias=True, o_bias=True, mlp_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


phi = Family("phi", ("phi",), PHI_ROLES, _phi, LLAMA_KEYS, "PhiForCausalLM")

# ---------------------------------------------------------------- stablelm

STABLELM_ROLES = (
    Role(f"{M}.embed_tokens.weight", "embed", (in_("vocab"), out("hidden"))),
    *_ln(f"{M}.norm", "norm.final"),
    *_lin("lm_head", "lm_head", "vocab", "hidden"),
    *_ln(f"{L}.input_layernorm", "norm.attn_in"),
    *_ln(f"{L}.post_attention_layernorm", "norm.mlp_in", when=lambda c: not c.parallel_residual),
    *_lin(f"{L}.self_attn.q_proj", "attn.q", Q, "hidden", bias=has("qkv_bias")),
    *_lin(f"{L}.self_attn.k_proj", "attn.k", KV, "hidden", bias=has("qkv_bias")),
    *_lin(f"{L}.self_attn.v_proj", "attn.v", KV, "hidden", bias=has("qkv_bias")),
    *_lin(f"{L}.self_attn.o_proj", "attn.o", "hidden", Q, writer=True),
    # qk_layernorm: one bias-free LayerNorm per head, each stored as its own tensor
    Role(f"{L}.self_attn.q_layernorm.norms.{{h}}.weight", "attn.q_norm", (out("head_dim"),), when=has("qk_norm"),
         per_index="kv_heads*q_per_kv"),
    Role(f"{L}.self_attn.k_layernorm.norms.{{h}}.weight", "attn.k_norm", (out("head_dim"),), when=has("qk_norm"),
         per_index="kv_heads"),
    *_lin(f"{L}.mlp.gate_proj", "mlp.gate", "ffn", "hidden"),
    *_lin(f"{L}.mlp.up_proj", "mlp.up", "ffn", "hidden"),
    *_lin(f"{L}.mlp.down_proj", "mlp.down", "hidden", "ffn", writer=True),
)
NO_HEAD_DIM_KEYS = {k: v for k, v in LLAMA_KEYS.items() if v != "head_dim"}


def _stablelm(hf) -> DecoderConfig:
    hf = _with_partial(hf, 0.25)
    d = _dims(hf, head_dim_key=False)
    parallel = bool(hf.get("use_parallel_residual", False))
    return DecoderConfig(
        family="stablelm", **d, norm="layer", norm_eps=_eps(hf), norm_bias=True,
        parallel_residual=parallel, shared_block_norm=parallel, mlp="gated", act=hf.get("hidden_act") or "silu",
        **rope_fields(hf, d["head_dim"], d["positions"]),
        qkv_bias=bool(hf.get("use_qkv_bias", False)),
        qk_norm="head" if hf.get("qk_layernorm") else "", qk_norm_type="layer",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


stablelm = Family("stablelm", ("stablelm",), STABLELM_ROLES, _stablelm, NO_HEAD_DIM_KEYS, "StableLmForCausalLM")

# ---------------------------------------------------------------- starcoder2

STARCODER2_ROLES = (
    Role(f"{M}.embed_tokens.weight", "embed", (in_("vocab"), out("hidden"))),
    *_ln(f"{M}.norm", "norm.final"),
    *_lin("lm_head", "lm_head", "vocab", "hidden"),
    *_ln(f"{L}.input_layernorm", "norm.attn_in"),
    *_ln(f"{L}.post_attention_layernorm", "norm.mlp_in"),
    *_lin(f"{L}.self_attn.q_proj", "attn.q", Q, "hidden", bias=has("qkv_bias")),
    *_lin(f"{L}.self_attn.k_proj", "attn.k", KV, "hidden", bias=has("qkv_bias")),
    *_lin(f"{L}.self_attn.v_proj", "attn.v", KV, "hidden", bias=has("qkv_bias")),
    *_lin(f"{L}.self_attn.o_proj", "attn.o", "hidden", Q, writer=True, bias=has("o_bias")),
    *_lin(f"{L}.mlp.c_fc", "mlp.up", "ffn", "hidden", bias=has("mlp_bias")),
    *_lin(f"{L}.mlp.c_proj", "mlp.down", "hidden", "ffn", writer=True, bias=has("mlp_bias")),
)


def _starcoder2(hf) -> DecoderConfig:
    d = _dims(hf)
    bias = bool(hf.get("use_bias", True))
    window = int(hf.get("sliding_window") or 0)
    return DecoderConfig(
        family="starcoder2", **d, norm="layer", norm_eps=_eps(hf, "norm_epsilon"), norm_bias=True,
        mlp="plain", act=hf.get("hidden_act") or "gelu_pytorch_tanh",
        **rope_fields(hf, d["head_dim"], d["positions"]),
        qkv_bias=bias, o_bias=bias, mlp_bias=bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        # transformers gives every layer the window when the config sets one
        sliding_window=window, layer_types=("sliding_attention",) * d["layers"] if window else (),
    )


starcoder2 = Family("starcoder2", ("starcoder2",), STARCODER2_ROLES, _starcoder2, LLAMA_KEYS, "Starcoder2ForCausalLM")

# ---------------------------------------------------------------- cohere

COHERE_ROLES = (
    Role(f"{M}.embed_tokens.weight", "embed", (in_("vocab"), out("hidden"))),
    *_ln(f"{M}.norm", "norm.final", bias=False),
    *_lin("lm_head", "lm_head", "vocab", "hidden"),
    *_ln(f"{L}.input_layernorm", "norm.attn_in", bias=False),
    *_lin(f"{L}.self_attn.q_proj", "attn.q", Q, "hidden", bias=has("qkv_bias")),
    *_lin(f"{L}.self_attn.k_proj", "attn.k", KV, "hidden", bias=has("qkv_bias")),
    *_lin(f"{L}.self_attn.v_proj", "attn.v", KV, "hidden", bias=has("qkv_bias")),
    *_lin(f"{L}.self_attn.o_proj", "attn.o", "hidden", Q, writer=True, bias=has("o_bias")),
    # per-head qk LayerNorm gains: one row per head
    Role(f"{L}.self_attn.q_norm.weight", "attn.q_norm", (out("kv_heads*q_per_kv"), out("head_dim")), when=has("qk_norm")),
    Role(f"{L}.self_attn.k_norm.weight", "attn.k_norm", (out("kv_heads"), out("head_dim")), when=has("qk_norm")),
    *_lin(f"{L}.mlp.gate_proj", "mlp.gate", "ffn", "hidden"),
    *_lin(f"{L}.mlp.up_proj", "mlp.up", "ffn", "hidden"),
    *_lin(f"{L}.mlp.down_proj", "mlp.down", "hidden", "ffn", writer=True),
)


def _logit_scale(hf: Mapping[str, Any], default: float) -> float:
    if "logit_scale" not in hf:
        return default
    if hf["logit_scale"] is None:
        raise ConfigError("logit_scale = null: transformers multiplies the logits by it; give a number")
    return float(hf["logit_scale"])


def _full_rope(hf: Mapping[str, Any], head_dim: int, positions: int) -> dict:
    """RoPE over the whole head: the rotary embeddings of cohere and falcon read no rotary fraction."""
    rp = {k: v for k, v in raw_params(hf).items() if k != "partial_rotary_factor"}
    hf = {k: v for k, v in hf.items() if k not in ("partial_rotary_factor", "rope_scaling")}
    return rope_fields(dict(hf, rope_parameters=rp), head_dim, positions)


def _cohere(hf) -> DecoderConfig:
    d = _dims(hf)
    bias = bool(hf.get("attention_bias", False))
    return DecoderConfig(
        family="cohere", **d, norm="layer", norm_eps=_eps(hf), parallel_residual=True, shared_block_norm=True,
        mlp="gated", act=hf.get("hidden_act") or "silu", **_full_rope(hf, d["head_dim"], d["positions"]),
        rope_interleaved=True,
        qk_norm="head" if hf.get("use_qk_norm") else "", qk_norm_type="layer", qkv_bias=bias, o_bias=bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), logit_scale=_logit_scale(hf, 0.0625),
    )


cohere = Family("cohere", ("cohere",), COHERE_ROLES, _cohere, LLAMA_KEYS, "CohereForCausalLM")


def _cohere2(hf) -> DecoderConfig:
    """Cohere's block; sliding-window layers with RoPE, full-attention layers without."""
    layers = int(hf.get("num_hidden_layers") or 0)
    types = hf.get("layer_types")
    if types is None:  # configs before layer_types: every pattern-th layer is global
        pattern = int(hf.get("sliding_window_pattern") or 4)
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
    types = tuple(types)
    if len(types) != layers or set(types) - {"sliding_attention", "full_attention"}:
        raise ConfigError(f"cohere2: layer_types must name sliding_attention or full_attention for each of the "
                          f"{layers} layers, not {list(types)}")
    window = int(hf.get("sliding_window") or 0)
    if not window and "sliding_attention" in types:
        raise ConfigError("cohere2: sliding_attention layers need a sliding_window")
    nope = tuple(t == "full_attention" for t in types)
    base = replace(_cohere(dict(hf, use_qk_norm=False)), family="cohere2")
    return replace(base, sliding_window=window, layer_types=types, nope_layers=nope if any(nope) else ())


cohere2 = Family("cohere2", ("cohere2",), COHERE_ROLES, _cohere2, LLAMA_KEYS, "Cohere2ForCausalLM")

# ---------------------------------------------------------------- cohere2_moe: Cohere 2's block, an MoE MLP

_LN_OR_RMS = lambda c: c.norm == "layer"  # noqa: E731  (bias-free LayerNorm, or RMSNorm with rms_norm_eps)
COHERE2_MOE_ROLES = (
    tuple(r for r in COHERE_ROLES if not r.kind.startswith("mlp."))
    + dense_mlp(f"{L}.mlp")
    + (router(f"{L}.mlp.gate.weight"),)
    + experts(f"{L}.mlp.experts")  # saved one tensor per expert (transformers unstacks its 3D parameters)
    + shared_mlp(f"{L}.mlp.shared_experts")
)
COHERE2_MOE_KEYS = dict(LLAMA_KEYS, intermediate_size="moe_ffn", prefix_dense_intermediate_size="ffn",
                        num_experts="experts")


def _pattern_types(layers: int, pattern: int, start: int = 0) -> list:
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(start, layers)]


def _cohere2_moe(hf) -> DecoderConfig:
    """Cohere 2's parallel block (LayerNorm, or RMSNorm where rms_norm_eps is set) over an MoE
    MLP: top-k of the router's logits, softmax over those k (or sigmoid, renormalised by
    norm_topk_prob), stacked experts, shared experts added or averaged; dense layers
    (mlp_layer_types, or the first first_k_dense_replace) with their own ffn size; full-attention
    layers without RoPE except dense ones under prefix_dense_sliding_window_pattern 1."""
    layers = int(hf.get("num_hidden_layers") or 0)
    k = int(hf.get("first_k_dense_replace") or 0)
    types = hf.get("layer_types")
    if types is None:
        types = (_pattern_types(k, int(hf.get("prefix_dense_sliding_window_pattern") or 1))
                 + _pattern_types(layers - k, int(hf.get("sliding_window_pattern") or 4)))
    mlp = hf.get("mlp_layer_types") or ["dense" if i < k else "sparse" for i in range(layers)]
    if len(types) != layers or set(types) - {"sliding_attention", "full_attention"}:
        raise ConfigError(f"cohere2_moe: layer_types must name sliding_attention or full_attention for each of the "
                          f"{layers} layers, not {list(types)}")
    if len(mlp) != layers or set(mlp) - {"dense", "sparse"}:
        raise ConfigError(f"cohere2_moe: mlp_layer_types must name dense or sparse for each of the {layers} layers, "
                          f"not {list(mlp)}")
    selection = hf.get("expert_selection_fn") or "softmax"
    combine = hf.get("shared_expert_combination_strategy") or "average"
    if selection not in ("softmax", "sigmoid"):
        raise ConfigError(f"cohere2_moe: expert_selection_fn {selection!r} is not supported; supported: softmax, sigmoid")
    if combine not in ("sum", "average"):
        raise ConfigError(f"cohere2_moe: shared_expert_combination_strategy {combine!r} is not supported; "
                          "supported: sum, average")
    window = int(hf.get("sliding_window") or 0)
    if not window and "sliding_attention" in types:
        raise ConfigError("cohere2_moe: sliding_attention layers need a sliding_window")
    force = int(hf.get("prefix_dense_sliding_window_pattern") or 1) == 1
    nope = tuple(t == "full_attention" and not (force and m == "dense") for t, m in zip(types, mlp))
    moe_ffn = int(hf.get("intermediate_size") or 0)
    ffn = int(hf.get("prefix_dense_intermediate_size") or moe_ffn)
    shared = int(hf.get("num_shared_experts") or 0)
    average = shared > 0 and combine == "average"
    rms = hf.get("rms_norm_eps") is not None
    base = _cohere(dict(hf, use_qk_norm=False, intermediate_size=ffn))
    return replace(
        base, family="cohere2_moe", norm="rms" if rms else "layer",
        norm_eps=float(hf["rms_norm_eps"]) if rms else base.norm_eps,
        sliding_window=window, layer_types=tuple(types), nope_layers=nope if any(nope) else (),
        experts=int(hf.get("num_experts") or 0), experts_per_tok=int(hf.get("num_experts_per_tok") or 2),
        mlp_types=tuple("dense" if m == "dense" else "moe" for m in mlp),
        moe_ffn=moe_ffn if moe_ffn != ffn else 0, shared_ffn=moe_ffn * shared, moe_scoring=selection,
        moe_renorm=selection == "softmax" or bool(hf.get("norm_topk_prob", True)),
        moe_scale=0.5 if average else 1.0, shared_scale=0.5 if average else 1.0,
    )


def _write_cohere2_moe_layers(out_cfg: dict, new: DecoderConfig) -> None:
    """The grown stack's dense/MoE layers, written out (depth growth inserts copies)."""
    if new.mlp_types:
        out_cfg["mlp_layer_types"] = ["dense" if t == "dense" else "sparse" for t in new.mlp_types]
        out_cfg.pop("first_k_dense_replace", None)


cohere2_moe = Family("cohere2_moe", ("cohere2_moe",), COHERE2_MOE_ROLES, _cohere2_moe, COHERE2_MOE_KEYS,
                     "Cohere2MoeForCausalLM", write_layers=_write_cohere2_moe_layers)

# ---------------------------------------------------------------- gptj

T = "transformer"
H = "transformer.h.{i}"
GPTJ_ROLES = (
    Role(f"{T}.wte.weight", "embed", (in_("vocab"), out("hidden"))),
    *_ln(f"{T}.ln_f", "norm.final"),
    *_lin("lm_head", "lm_head", "vocab", "hidden", bias=True),
    *_ln(f"{H}.ln_1", "norm.attn_in"),
    *_lin(f"{H}.attn.q_proj", "attn.q", Q, "hidden"),
    *_lin(f"{H}.attn.k_proj", "attn.k", KV, "hidden"),
    *_lin(f"{H}.attn.v_proj", "attn.v", KV, "hidden"),
    *_lin(f"{H}.attn.out_proj", "attn.o", "hidden", Q, writer=True),
    *_lin(f"{H}.mlp.fc_in", "mlp.up", "ffn", "hidden", bias=True),
    *_lin(f"{H}.mlp.fc_out", "mlp.down", "hidden", "ffn", writer=True, bias=True),
)
GPT_KEYS = {"n_embd": "hidden", "n_inner": "ffn", "n_layer": "layers", "n_head": "heads", "vocab_size": "vocab",
            "n_positions": "positions"}


def _gpt_dims(hf: Mapping[str, Any]) -> dict:
    require(hf, "n_embd", "n_layer", "n_head", "vocab_size")
    hidden, heads = int(hf["n_embd"]), int(hf["n_head"])
    if hidden % heads:
        raise ConfigError(f"n_embd ({hidden}) is not a multiple of n_head ({heads})")
    head_dim = hidden // heads
    rd = hf.get("rotary_dim")
    if rd is None:
        raise ConfigError("rotary_dim = null (the rotary table then spans n_embd, not a head) is not supported; "
                          "give rotary_dim")
    rd = int(rd)
    if not 0 < rd <= head_dim or rd % 2:
        raise ConfigError(f"rotary_dim ({rd}) must be even and in 1..head_dim ({head_dim})")
    return dict(vocab=int(hf["vocab_size"]), hidden=hidden, ffn=int(hf.get("n_inner") or 4 * hidden),
                layers=int(hf["n_layer"]), heads=heads, kv_heads=heads, head_dim=head_dim,
                positions=int(hf.get("n_positions") or 2048),
                rope_theta=10000.0, rotary_dim=0 if rd == head_dim else rd, rope_interleaved=True)


def _gptj(hf) -> DecoderConfig:
    return DecoderConfig(
        family="gptj", **_gpt_dims(hf), norm="layer", norm_eps=_eps(hf, "layer_norm_epsilon"), norm_bias=True,
        parallel_residual=True, shared_block_norm=True, mlp="plain", act=hf.get("activation_function") or "gelu_new",
        mlp_bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


gptj = Family("gptj", ("gptj",), GPTJ_ROLES, _gptj, GPT_KEYS, "GPTJForCausalLM", rope_keys=())

# ---------------------------------------------------------------- codegen: GPT-J's block, a blocked fused qkv

BLOCKS = 4  # CodeGen's fused qkv: 4 blocks (the model-parallel shards it was trained with), each q | v | k
BH = f"{BLOCKS}*block_heads*head_dim"  # the heads, block-major: every per-head axis of the family
CODEGEN_ROLES = (
    Role(f"{T}.wte.weight", "embed", (in_("vocab"), out("hidden"))),
    *_ln(f"{T}.ln_f", "norm.final"),
    *_lin("lm_head", "lm_head", "vocab", "hidden", bias=True),
    *_ln(f"{H}.ln_1", "norm.attn_in"),
    *_lin(f"{H}.attn.qkv_proj", "attn.qkv", f"{BLOCKS}*3*block_heads*head_dim", "hidden"),
    *_lin(f"{H}.attn.out_proj", "attn.o", "hidden", BH, writer=True),
    *_lin(f"{H}.mlp.fc_in", "mlp.up", "ffn", "hidden", bias=True),
    *_lin(f"{H}.mlp.fc_out", "mlp.down", "hidden", "ffn", writer=True, bias=True),
)


def _codegen(hf) -> DecoderConfig:
    d = _gpt_dims(hf)
    if d["heads"] % BLOCKS:
        raise ConfigError(f"codegen: n_head ({d['heads']}) must be a multiple of {BLOCKS} (the fused qkv's blocks)")
    return replace(_gptj(hf), family="codegen", **d, qkv_layout="blocked", qkv_blocks=BLOCKS)


codegen = Family("codegen", ("codegen",), CODEGEN_ROLES, _codegen, GPT_KEYS, "CodeGenForCausalLM", rope_keys=())

# ---------------------------------------------------------------- falcon

F = "transformer.h.{i}"
_two_norms = lambda c: c.parallel_residual and not c.shared_block_norm  # noqa: E731  (new architecture: ln_attn, ln_mlp)
FALCON_ROLES = (
    Role(f"{T}.word_embeddings.weight", "embed", (in_("vocab"), out("hidden"))),
    *_ln(f"{T}.ln_f", "norm.final"),
    *_lin("lm_head", "lm_head", "vocab", "hidden"),
    *_ln(f"{F}.input_layernorm", "norm.attn_in", when=lambda c: not _two_norms(c)),
    *_ln(f"{F}.post_attention_layernorm", "norm.mlp_in", when=lambda c: not c.parallel_residual),
    *_ln(f"{F}.ln_attn", "norm.attn_in", when=_two_norms),
    *_ln(f"{F}.ln_mlp", "norm.mlp_in", when=_two_norms),
)
FALCON_QKV = {
    "per_head": "kv_heads*q_per_kv*3*head_dim",  # heads x (q, k, v) x head_dim
    # new architecture: per kv head its q, its k, its v; with one kv head, multi_query's q rows | k | v
    "grouped": "kv_heads*(q_per_kv*head_dim|head_dim|head_dim)",
}


def _falcon_qkv(layout: str) -> tuple:
    axes = FALCON_QKV[layout]
    on = (lambda c: c.qkv_layout == layout)
    return (
        Role(f"{F}.self_attention.query_key_value.weight", "attn.qkv", (out(axes), in_("hidden")), when=on),
        Role(f"{F}.self_attention.query_key_value.bias", "attn.qkv.bias", (out(axes),),
             when=lambda c: on(c) and c.qkv_bias),
    )


FALCON_ROLES += (
    sum((_falcon_qkv(layout) for layout in FALCON_QKV), ())
    + _lin(f"{F}.self_attention.dense", "attn.o", "hidden", Q, writer=True, bias=has("o_bias"))
    + _lin(f"{F}.mlp.dense_h_to_4h", "mlp.up", "ffn", "hidden", bias=has("mlp_bias"))
    + _lin(f"{F}.mlp.dense_4h_to_h", "mlp.down", "hidden", "ffn", writer=True, bias=has("mlp_bias"))
)
FALCON_KEYS = {"hidden_size": "hidden", "ffn_hidden_size": "ffn", "num_hidden_layers": "layers",
               "num_attention_heads": "heads", "num_kv_heads": "kv_heads", "vocab_size": "vocab",
               "max_position_embeddings": "positions", "num_key_value_heads": "kv_heads"}


def _falcon(hf) -> DecoderConfig:
    """Classic blocks (multi_query: one kv head; else per-head fused qkv; parallel under
    one LayerNorm or sequential) and the new architecture (grouped fused qkv with
    num_kv_heads, parallel under ln_attn and ln_mlp, or one LayerNorm when
    num_ln_in_parallel_attn is 1)."""
    if hf.get("alibi"):
        raise ConfigError("falcon: alibi = true is not supported (supported: rotary falcon configs): falcon divides "
                          "its ALiBi bias by sqrt(head_dim) and the slopes depend on the head count, so no width "
                          "growth (more heads or a wider head) can keep the model's function")
    new_arch = bool(hf.get("new_decoder_architecture", False))
    parallel = bool(hf.get("parallel_attn", True))
    if hf.get("n_embed") is not None:  # the config class's older name of hidden_size, which it prefers
        hf = dict(hf, hidden_size=hf["n_embed"])
    hf = dict(hf, intermediate_size=hf.get("ffn_hidden_size") or 4 * int(hf.get("hidden_size") or 0))
    hf.pop("num_key_value_heads", None)
    hf.pop("head_dim", None)  # a property of the config class: hidden / heads
    if new_arch:
        if not parallel:
            raise ConfigError("falcon: new_decoder_architecture with parallel_attn = false is not a working "
                              "transformers model (its block reads norms it does not build)")
        hf["num_key_value_heads"] = hf.get("num_kv_heads")
        n_ln = hf.get("num_ln_in_parallel_attn") or 2
        if n_ln not in (1, 2):
            raise ConfigError(f"falcon: num_ln_in_parallel_attn must be 1 or 2, not {n_ln}")
        d = _dims(hf, head_dim_key=False)
        layout, shared = "grouped", n_ln == 1
    else:
        if parallel and hf.get("num_ln_in_parallel_attn") == 2:
            raise ConfigError("falcon: num_ln_in_parallel_attn = 2 without new_decoder_architecture is not a working "
                              "transformers model (its block reads input_layernorm, which it does not build)")
        d = _dims(hf, head_dim_key=False)
        mqa = bool(hf.get("multi_query", True))
        if not mqa and hf.get("num_kv_heads") not in (None, d["heads"]):
            raise ConfigError(f"falcon: num_kv_heads ({hf['num_kv_heads']}) must equal num_attention_heads "
                              f"({d['heads']}) without multi_query or new_decoder_architecture (the fused qkv holds "
                              "a key and a value per head)")
        d["kv_heads"] = 1 if mqa else d["heads"]
        # multi_query's q rows | k | v is the grouped layout with one kv head
        layout, shared = ("grouped" if mqa else "per_head"), parallel
    bias = bool(hf.get("bias", False))
    return DecoderConfig(
        family="falcon", **d, norm="layer", norm_eps=_eps(hf, "layer_norm_epsilon"), norm_bias=True,
        parallel_residual=parallel, shared_block_norm=shared, mlp="plain", act=hf.get("activation") or "gelu",
        qkv_layout=layout, **_full_rope(hf, d["head_dim"], d["positions"]),
        qkv_bias=bias, o_bias=bias, mlp_bias=bias, tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


class _FalconFamily(Family):
    def write_config(self, hf, new, layer_src):
        classic = not hf.get("new_decoder_architecture", False)
        out = super().write_config(hf, new, layer_src)
        out.pop("n_embed", None)  # hidden_size is written; the config class would prefer the old width
        if classic and hf.get("multi_query", True) and new.kv_heads != 1:
            # more kv heads than multi_query's one: the new architecture with one LayerNorm computes the same
            # block and reads the grouped fused qkv, which with one kv head is multi_query's layout
            if not new.parallel_residual:
                raise ConfigError(f"falcon with multi_query and sequential blocks (parallel_attn false) has one kv "
                                  f"head; {new.kv_heads} kv heads cannot be written (leave out --kv-heads)")
            out.update(new_decoder_architecture=True, num_ln_in_parallel_attn=1)
            classic = False
        # the classic blocks without multi_query read num_kv_heads as the head count
        out["num_kv_heads"] = new.heads if classic else new.kv_heads
        return out


falcon = _FalconFamily("falcon", ("falcon",), FALCON_ROLES, _falcon, FALCON_KEYS, "FalconForCausalLM")

# ---------------------------------------------------------------- persimmon

PERSIMMON_ROLES = (
    Role(f"{M}.embed_tokens.weight", "embed", (in_("vocab"), out("hidden"))),
    *_ln(f"{M}.final_layernorm", "norm.final"),
    *_lin("lm_head", "lm_head", "vocab", "hidden"),
    *_ln(f"{L}.input_layernorm", "norm.attn_in"),
    *_ln(f"{L}.post_attention_layernorm", "norm.mlp_in"),
    *_lin(f"{L}.self_attn.query_key_value", "attn.qkv", "kv_heads*q_per_kv*3*head_dim", "hidden", bias=True),
    *_lin(f"{L}.self_attn.dense", "attn.o", "hidden", Q, writer=True, bias=True),
    *_qk_ln(f"{L}.self_attn", "q_layernorm", "k_layernorm"),
    *_lin(f"{L}.mlp.dense_h_to_4h", "mlp.up", "ffn", "hidden", bias=True),
    *_lin(f"{L}.mlp.dense_4h_to_h", "mlp.down", "hidden", "ffn", writer=True, bias=True),
)


def _persimmon(hf) -> DecoderConfig:
    hf = _with_partial(hf, 0.5)
    hf.pop("num_key_value_heads", None)  # multi-head attention: the config class has no kv-head count
    d = _dims(hf, head_dim_key=False)
    return DecoderConfig(
        family="persimmon", **d, norm="layer", norm_eps=_eps(hf), norm_bias=True,
        mlp="plain", act=hf.get("hidden_act") or "relu2", qkv_layout="per_head",
        **rope_fields(hf, d["head_dim"], d["positions"]),
        qk_norm="head" if hf.get("qk_layernorm", True) else "", qk_norm_type="layer",
        qkv_bias=True, o_bias=True, mlp_bias=True, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


MHA_KEYS = {k: v for k, v in NO_HEAD_DIM_KEYS.items() if v != "kv_heads"}
persimmon = Family("persimmon", ("persimmon",), PERSIMMON_ROLES, _persimmon, MHA_KEYS, "PersimmonForCausalLM")

# ---------------------------------------------------------------- gpt_neox_japanese

J = "gpt_neox_japanese"
JL = f"{J}.layers.{{i}}"
_last = lambda cfg, i: i == cfg.layers - 1  # noqa: E731  (only the last layer's attention has an output bias)
GPT_NEOX_JAPANESE_ROLES = (
    Role(f"{J}.embed_in.weight", "embed", (in_("vocab"), out("hidden"))),
    Role("embed_out.weight", "lm_head", (out("vocab"), in_("hidden"))),
    *_ln(f"{J}.final_layer_norm", "norm.final"),
    *_ln(f"{JL}.input_layernorm", "norm.attn_in"),
    *_ln(f"{JL}.post_attention_layernorm", "norm.mlp_in"),
    *_lin(f"{JL}.attention.query_key_value", "attn.qkv", "kv_heads*q_per_kv*3*head_dim", "hidden"),
    *_lin(f"{JL}.attention.dense", "attn.o", "hidden", Q, writer=True),
    Role(f"{JL}.attention.dense_bias", "attn.o.bias", (out("hidden"),), writer=True, on_layer=_last),
    *_lin(f"{JL}.mlp.dense_h_to_4h", "mlp.up", "ffn", "hidden"),
    *_lin(f"{JL}.mlp.dense_4h_to_h", "mlp.down", "hidden", "ffn", writer=True),
)
GPT_NEOX_JAPANESE_KEYS = {"hidden_size": "hidden", "num_hidden_layers": "layers", "num_attention_heads": "heads",
                          "vocab_size": "vocab", "max_position_embeddings": "positions"}


def _gpt_neox_japanese(hf) -> DecoderConfig:
    """Pre-LN blocks with a per-head fused qkv, no biases but the last layer's attention output
    bias (added with the residual), an MLP of hidden x intermediate_multiple_size."""
    require(hf, "hidden_size")
    multiple = hf.get("intermediate_multiple_size")
    if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
        raise ConfigError(f"gpt_neox_japanese: intermediate_multiple_size must be a positive integer, not {multiple!r}")
    hf = dict(hf, intermediate_size=int(hf["hidden_size"]) * (4 if multiple is None else multiple))
    hf.pop("num_key_value_heads", None)
    hf.pop("head_dim", None)
    d = _dims(hf, head_dim_key=False)
    return DecoderConfig(
        family="gpt_neox_japanese", **d, norm="layer", norm_eps=_eps(hf), norm_bias=True, mlp="plain",
        act=hf.get("hidden_act") or "gelu", qkv_layout="per_head", **rope_fields(hf, d["head_dim"], d["positions"]),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


class _JapaneseFamily(Family):
    def write_config(self, hf, new, layer_src):
        if layer_src is not None and len(layer_src) > 1 and layer_src[-1] == layer_src[-2]:
            raise PlanError("gpt_neox_japanese: only the last layer has an attention output bias, and this depth "
                              "growth makes a copy the last layer; grow by fewer layers (copies then sit inside)")
        out = super().write_config(hf, new, layer_src)
        if new.ffn % new.hidden:
            raise PlanError(f"gpt_neox_japanese stores its MLP width as hidden_size x intermediate_multiple_size (an "
                              f"integer): {new.ffn} is not a multiple of {new.hidden}; grow --ffn with --width")
        out["intermediate_multiple_size"] = new.ffn // new.hidden
        return out


gpt_neox_japanese = _JapaneseFamily("gpt_neox_japanese", ("gpt_neox_japanese",), GPT_NEOX_JAPANESE_ROLES,
                                    _gpt_neox_japanese, GPT_NEOX_JAPANESE_KEYS, "GPTNeoXJapaneseForCausalLM")

FAMILIES = (phi, stablelm, starcoder2, cohere, cohere2, cohere2_moe, gptj, codegen, falcon, persimmon, gpt_neox_japanese)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=64, tie_word_embeddings=False)
_GQA = dict(_DIMS, num_key_value_heads=2)
TINY = {
    "phi": dict(_GQA, qk_layernorm=True, hidden_act="gelu_new",
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
    "stablelm": dict(_GQA, use_qkv_bias=True, use_parallel_residual=True, qk_layernorm=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}),
    "starcoder2": dict(_GQA, use_bias=True, sliding_window=4, tie_word_embeddings=True),
    "cohere": dict(_GQA, use_qk_norm=True, attention_bias=True, logit_scale=0.25, tie_word_embeddings=True),
    "falcon": dict(vocab_size=96, hidden_size=32, ffn_hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_kv_heads=2, max_position_embeddings=64, new_decoder_architecture=True, parallel_attn=True,
                   num_ln_in_parallel_attn=2, bias=True, alibi=False, activation="gelu", tie_word_embeddings=True),
    "cohere2": dict(_GQA, num_hidden_layers=3, attention_bias=True, logit_scale=0.25, tie_word_embeddings=True,
                    sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "persimmon": dict(_DIMS, qk_layernorm=True, hidden_act="relu2",
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
    "codegen": dict(vocab_size=96, n_embd=32, n_inner=48, n_layer=2, n_head=4, n_positions=64, n_ctx=64, rotary_dim=4,
                    tie_word_embeddings=False),
    "cohere2_moe": dict(_GQA, num_hidden_layers=4, head_dim=8, attention_bias=True, logit_scale=0.25,
                        tie_word_embeddings=True, sliding_window=4, num_experts=4, num_experts_per_tok=2,
                        num_shared_experts=1, shared_expert_combination_strategy="average", prefix_dense_intermediate_size=40,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                        mlp_layer_types=["dense", "dense", "sparse", "sparse"], prefix_dense_sliding_window_pattern=1),
    "gpt_neox_japanese": dict(vocab_size=96, hidden_size=32, intermediate_multiple_size=2, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=64, tie_word_embeddings=False,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                               "partial_rotary_factor": 0.5}),
    "gptj": dict(vocab_size=96, n_embd=32, n_inner=48, n_layer=2, n_head=4, n_positions=64, rotary_dim=4,
                 tie_word_embeddings=False),
}
"""Tiny configs of every type these families grow (``families.TINY``)."""

__all__ = ["FAMILIES", "TINY", "codegen", "cohere", "cohere2", "cohere2_moe", "falcon", "gpt_neox_japanese", "gptj",
           "persimmon", "phi", "stablelm", "starcoder2"]
