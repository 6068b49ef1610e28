"""Mixture-of-experts families: routed experts (per-expert or stacked tensors), softmax or
sigmoid routing, renormalised or not, grouped top-k and correction biases, shared experts
(always on, or behind a sigmoid gate), dense layers inside the MoE stack.

Which layers are MoE is ``DecoderConfig.mlp_types`` (read from each type's own keys); the
roles of dense and MoE layers carry ``on_layer`` so each layer holds only its own tensors,
and ``write_layers`` writes the grown stack's pattern back in the type's keys.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping

from ...errors import ConfigError
from ..spec import DecoderConfig, Family, Role, dense_layer, in_, moe_layer, out
from ._common import KV, LLAMA_KEYS, Q, attention, embeddings, norm, read_llama_like

L = "model.layers.{i}"
BLOCK_NORMS = norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")


def on(pred: Callable, roles: tuple) -> tuple:
    """``roles`` held only by the layers ``pred(cfg, i)`` picks."""
    return tuple(replace(r, on_layer=pred) for r in roles)


def _mlp_bias(cfg: DecoderConfig) -> bool:
    return cfg.mlp_bias


def _biases(prefix: str, kind: str, ffn: str, when: Callable = _mlp_bias) -> tuple:
    """gate/up/down biases of a gated MLP where ``when`` (the config's ``mlp_bias``)."""
    return (
        Role(f"{prefix}.gate_proj.bias", f"{kind}.gate.bias", (out(ffn),), when=when),
        Role(f"{prefix}.up_proj.bias", f"{kind}.up.bias", (out(ffn),), when=when),
        Role(f"{prefix}.down_proj.bias", f"{kind}.down.bias", (out("hidden"),), writer=True, when=when),
    )


def dense_mlp(prefix: str = f"{L}.mlp", ffn: str = "ffn", bias: bool = False) -> tuple:
    """A dense layer's gated MLP inside an MoE stack (gate/up/down; with ``bias``, their
    biases where the config sets ``mlp_bias``)."""
    return on(dense_layer, (
        Role(f"{prefix}.gate_proj.weight", "mlp.gate", (out(ffn), in_("hidden"))),
        Role(f"{prefix}.up_proj.weight", "mlp.up", (out(ffn), in_("hidden"))),
        Role(f"{prefix}.down_proj.weight", "mlp.down", (out("hidden"), in_(ffn)), writer=True),
    ) + (_biases(prefix, "mlp", ffn) if bias else ()))


def router(name: str) -> Role:
    """The router's (experts, hidden) weight: noiseless, so its top-k choices never move."""
    return Role(name, "moe.router", (out("experts"), in_("hidden")), noiseless=True, on_layer=moe_layer)


def experts(prefix: str, ffn: str = "moe_ffn", names: tuple = ("gate_proj", "up_proj", "down_proj")) -> tuple:
    """One gate/up/down triple per expert: ``{prefix}.{e}.<name>.weight``."""
    g, u, d = names
    return on(moe_layer, (
        Role(f"{prefix}.{{e}}.{g}.weight", "moe.gate", (out(ffn), in_("hidden"))),
        Role(f"{prefix}.{{e}}.{u}.weight", "moe.up", (out(ffn), in_("hidden"))),
        Role(f"{prefix}.{{e}}.{d}.weight", "moe.down", (out("hidden"), in_(ffn)), writer=True),
    ))


def shared_mlp(prefix: str, ffn: str = "shared_ffn", bias: bool = False) -> tuple:
    """The always-on shared expert's gate/up/down (``moe.shared.*``), where the config has one
    (with ``bias``: their biases where it sets ``mlp_bias``)."""
    has = lambda cfg: cfg.shared_ffn > 0  # noqa: E731
    return on(moe_layer, (
        Role(f"{prefix}.gate_proj.weight", "moe.shared.gate", (out(ffn), in_("hidden")), when=has),
        Role(f"{prefix}.up_proj.weight", "moe.shared.up", (out(ffn), in_("hidden")), when=has),
        Role(f"{prefix}.down_proj.weight", "moe.shared.down", (out("hidden"), in_(ffn)), writer=True, when=has),
    ) + (_biases(prefix, "moe.shared", ffn, lambda cfg: cfg.shared_ffn > 0 and cfg.mlp_bias) if bias else ()))


def correction_bias(name: str) -> Role:
    """DeepSeek-V3's ``e_score_correction_bias``: added to the scores for the choice only."""
    return Role(name, "moe.correction.bias", (out("experts"),), on_layer=moe_layer)


# ---------------------------------------------------------------- which layers are MoE


def _ints(hf: Mapping[str, Any], key: str) -> list:
    value = hf.get(key)
    return [int(v) for v in value] if value else []


def layer_writer(rule: Callable, rewrite: Callable, what: str) -> Callable:
    """A ``Family.write_layers``: where ``rule(config, layers, experts)`` (the type's own
    reading of its keys) no longer gives the grown stack's ``mlp_types`` (depth growth
    inserted layers), ``rewrite(config, mlp_types)`` sets the keys; a pattern they cannot
    express (``what`` says which) is refused."""
    def write(out_cfg: dict, new: DecoderConfig) -> None:
        if not new.mlp_types:
            return
        try:
            if rule(out_cfg, new.layers, new.experts) == new.mlp_types:
                return
        except ConfigError:  # the source's keys do not fit the grown depth (a list per layer)
            pass
        rewrite(out_cfg, new.mlp_types)
        if rule(out_cfg, new.layers, new.experts) != new.mlp_types:
            raise ConfigError(f"the grown stack's dense/MoE layers {list(new.mlp_types)} cannot be written as {what}; "
                              "grow the depth so that inserted layers keep the pattern, or grow the width alone")
    return write


def qwen_mlp_types(hf: Mapping[str, Any], layers: int, experts: int) -> tuple:
    """Qwen-MoE's rule: MoE unless listed in ``mlp_only_layers`` or off ``decoder_sparse_step``."""
    dense = set(_ints(hf, "mlp_only_layers"))
    step = int(hf.get("decoder_sparse_step") or 1)
    return tuple("moe" if i not in dense and experts > 0 and (i + 1) % step == 0 else "dense" for i in range(layers))


def _qwen_rewrite(out_cfg: dict, types: tuple) -> None:
    out_cfg["decoder_sparse_step"] = 1
    out_cfg["mlp_only_layers"] = [i for i, t in enumerate(types) if t == "dense"]


write_qwen_layers = layer_writer(qwen_mlp_types, _qwen_rewrite, "mlp_only_layers")


def first_k_dense(hf: Mapping[str, Any], layers: int, experts: int = 1, key: str = "first_k_dense_replace",
                  freq_key: str = "moe_layer_freq") -> tuple:
    """DeepSeek's rule: the first k layers dense, then MoE (every ``freq_key``-th layer where set)."""
    k = int(hf.get(key) or 0)
    freq = int(hf.get(freq_key) or 1)
    return tuple("moe" if experts and i >= k and i % freq == 0 else "dense" for i in range(layers))


def write_first_k(key: str = "first_k_dense_replace", freq_key: str = "moe_layer_freq") -> Callable:
    """The writer of ``first_k_dense``'s keys (``key`` dense layers first, then MoE every
    ``freq_key``-th; a grown stack is written with a frequency of 1)."""
    def rule(hf, layers, experts):
        return first_k_dense(hf, layers, experts, key, freq_key)

    def rewrite(out_cfg, types):
        out_cfg[key] = types.index("moe") if "moe" in types else len(types)
        if freq_key in out_cfg:
            out_cfg[freq_key] = 1
    return layer_writer(rule, rewrite, f"{key} dense layers, then MoE")


def interval_mlp_types(hf: Mapping[str, Any], layers: int, experts: int) -> tuple:
    """Ernie 4.5's rule: MoE from ``moe_layer_start_index`` to ``moe_layer_end_index`` (-1: the
    last layer) on every ``moe_layer_interval``-th layer."""
    start = int(hf.get("moe_layer_start_index", 1) or 0)
    end = hf.get("moe_layer_end_index", -1)
    end = layers - 1 if end is None or int(end) == -1 else int(end)
    step = int(hf.get("moe_layer_interval") or 1)
    return tuple("moe" if experts and (i + 1) % step == 0 and start <= i <= end else "dense" for i in range(layers))


def _interval_rewrite(out_cfg: dict, types: tuple) -> None:
    moe = [i for i, t in enumerate(types) if t == "moe"]
    if moe:
        out_cfg.update(moe_layer_start_index=moe[0], moe_layer_end_index=moe[-1], moe_layer_interval=1)


write_interval_layers = layer_writer(interval_mlp_types, _interval_rewrite,
                                     "one run of MoE layers (moe_layer_start_index..moe_layer_end_index)")


def _refuse(hf: Mapping[str, Any], **unsupported) -> None:
    """Refuse a config whose key holds a value this decoder cannot compute (key=predicate)."""
    for key, bad in unsupported.items():
        if key in hf and hf[key] is not None and bad(hf[key]):
            raise ConfigError(f"{hf.get('model_type')}: {key}={hf[key]!r} is not supported")


# ---------------------------------------------------------------- Qwen2-MoE, Qwen3-MoE

QWEN_MOE_KEYS = dict(LLAMA_KEYS, num_experts="experts", num_local_experts="experts", moe_intermediate_size="moe_ffn")
QWEN2_MOE_KEYS = dict(QWEN_MOE_KEYS, shared_expert_intermediate_size="shared_ffn")
QK_HEAD = (
    Role(f"{L}.self_attn.q_norm.weight", "attn.q_norm", (out("head_dim"),)),
    Role(f"{L}.self_attn.k_norm.weight", "attn.k_norm", (out("head_dim"),)),
)
QWEN_EXPERTS = (router(f"{L}.mlp.gate.weight"),) + experts(f"{L}.mlp.experts")
QWEN2_MOE_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True)
    + dense_mlp() + QWEN_EXPERTS + shared_mlp(f"{L}.mlp.shared_expert")
    + on(moe_layer, (Role(f"{L}.mlp.shared_expert_gate.weight", "moe.shared.router", (out("1"), in_("hidden")),
                          when=lambda cfg: cfg.shared_ffn > 0),))
    + BLOCK_NORMS
)


def _experts(hf: Mapping[str, Any]) -> int:
    return int(hf.get("num_experts") or hf.get("num_local_experts") or 0)


def _qwen_moe(hf, family: str, **flags) -> DecoderConfig:
    n = _experts(hf)
    layers = int(hf["num_hidden_layers"])
    window = int(hf.get("sliding_window") or 0) if hf.get("use_sliding_window") else 0
    return read_llama_like(
        hf, family, experts=n, experts_per_tok=int(hf.get("num_experts_per_tok") or 1),
        moe_ffn=int(hf.get("moe_intermediate_size") or hf["intermediate_size"]),
        moe_renorm=bool(hf.get("norm_topk_prob", False)),
        mlp_types=qwen_mlp_types(hf, layers, n), sliding_window=window, **flags,
    )


def _qwen2_moe(hf):
    cfg = _qwen_moe(hf, "qwen2_moe", qkv_bias=bool(hf.get("qkv_bias", True)),
                    shared_ffn=int(hf.get("shared_expert_intermediate_size") or 0))
    if not cfg.sliding_window:  # layer_types marks sliding layers only where use_sliding_window
        cfg = replace(cfg, layer_types=())
    return cfg


def _qwen3_moe(hf):
    bias = bool(hf.get("attention_bias", False))
    cfg = _qwen_moe(hf, "qwen3_moe", qk_norm="head", qkv_bias=bias, o_bias=bias)
    if cfg.sliding_window:  # every layer slides (the model's one mask)
        cfg = replace(cfg, layer_types=("sliding_attention",) * cfg.layers)
    return cfg


qwen2_moe = Family("qwen2_moe", ("qwen2_moe",), QWEN2_MOE_ROLES, _qwen2_moe, QWEN2_MOE_KEYS,
                   "Qwen2MoeForCausalLM", write_layers=write_qwen_layers)
QWEN3_MOE_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True) + QK_HEAD
    + dense_mlp() + QWEN_EXPERTS
    + BLOCK_NORMS
)
qwen3_moe = Family("qwen3_moe", ("qwen3_moe",), QWEN3_MOE_ROLES, _qwen3_moe, QWEN_MOE_KEYS,
                   "Qwen3MoeForCausalLM", write_layers=write_qwen_layers)

# ---------------------------------------------------------------- OLMoE, FlexOlmo

OLMOE_KEYS = dict(LLAMA_KEYS, num_experts="experts")
QK_FULL = (
    Role(f"{L}.self_attn.q_norm.weight", "attn.q_norm", (out(Q),)),
    Role(f"{L}.self_attn.k_norm.weight", "attn.k_norm", (out(KV),)),
)
OLMOE_EXPERTS = (router(f"{L}.mlp.gate.weight"),) + experts(f"{L}.mlp.experts", ffn="ffn")
OLMOE_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True) + QK_FULL + OLMOE_EXPERTS + BLOCK_NORMS
)


def _olmoe(hf, family="olmoe", **flags):
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(
        hf, family, experts=_experts(hf), experts_per_tok=int(hf.get("num_experts_per_tok") or 1),
        moe_renorm=bool(hf.get("norm_topk_prob", False)), qk_norm="full", qkv_bias=bias, o_bias=bias, **flags,
    )


olmoe = Family("olmoe", ("olmoe",), OLMOE_ROLES,
               lambda hf: _olmoe(hf, clip_qkv=float(hf.get("clip_qkv") or 0.0), clip_after_qk_norm=True),
               OLMOE_KEYS, "OlmoeForCausalLM")
FLEX_OLMO_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True) + QK_FULL + OLMOE_EXPERTS
    + norm(f"{L}.post_attention_layernorm", "norm.attn_out")
    + norm(f"{L}.post_feedforward_layernorm", "norm.mlp_out")
)
flex_olmo = Family("flex_olmo", ("flex_olmo",), FLEX_OLMO_ROLES,
                   lambda hf: _olmoe(hf, "flex_olmo", placement="post_sublayer"), OLMOE_KEYS, "FlexOlmoForCausalLM")

# ---------------------------------------------------------------- DeepSeek-V3-style routing: dots1, Solar Open


def deepseek_routing(hf: Mapping[str, Any], layers: int, scoring: str = "sigmoid") -> dict:
    """The DecoderConfig fields of DeepSeek-V3-style routing (dots1, Solar Open, GLM-4 MoE,
    DeepSeek-V3): ``scoring`` scores of ``n_routed_experts`` experts, the correction bias
    (a ``correction_bias`` role), grouped top-k (``n_group``, ``topk_group``),
    ``norm_topk_prob``, ``routed_scaling_factor``, ``n_shared_experts`` shared experts of
    ``moe_intermediate_size`` each, and the first ``first_k_dense_replace`` layers dense."""
    n = int(hf.get("n_routed_experts") or hf.get("num_local_experts") or 0)
    groups = int(hf.get("n_group") or 1)
    if groups > 1 and n % groups:
        raise ConfigError(f"n_group={groups} does not divide n_routed_experts={n}")
    moe_ffn = int(hf["moe_intermediate_size"])
    return dict(
        experts=n, experts_per_tok=int(hf.get("num_experts_per_tok") or 1), moe_scoring=scoring,
        moe_groups=groups if groups > 1 else 0, moe_topk_groups=int(hf.get("topk_group") or 1) if groups > 1 else 0,
        moe_renorm=bool(hf.get("norm_topk_prob", False)), moe_scale=float(hf.get("routed_scaling_factor") or 1.0),
        moe_ffn=moe_ffn, shared_ffn=moe_ffn * int(hf.get("n_shared_experts") or 0),
        mlp_types=first_k_dense(hf, layers, n),
    )


DEEPSEEK_KEYS = dict(LLAMA_KEYS, n_routed_experts="experts", moe_intermediate_size="moe_ffn")
DEEPSEEK_EXPERTS = (
    (router(f"{L}.mlp.gate.weight"), correction_bias(f"{L}.mlp.gate.e_score_correction_bias"))
    + experts(f"{L}.mlp.experts") + shared_mlp(f"{L}.mlp.shared_experts")
)


def _dots1(hf):
    bias = bool(hf.get("attention_bias", False))
    layers = int(hf["num_hidden_layers"])
    return read_llama_like(hf, "dots1", qk_norm="head", qkv_bias=bias, o_bias=bias,
                           sliding_window=int(hf.get("sliding_window") or 0), **deepseek_routing(hf, layers))


dots1 = Family(
    "dots1", ("dots1",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn", bias=True, o_bias=True) + QK_HEAD
    + dense_mlp() + DEEPSEEK_EXPERTS + BLOCK_NORMS,
    _dots1, DEEPSEEK_KEYS, "Dots1ForCausalLM", write_layers=write_first_k(),
)


def _solar_open(hf):
    if hf.get("moe_intermediate_size") is None:
        raise ConfigError("solar_open: config.json lacks moe_intermediate_size")
    hf = dict(hf, intermediate_size=hf["moe_intermediate_size"])  # every layer is MoE: the experts' size is ffn
    flags = deepseek_routing(hf, int(hf["num_hidden_layers"]))
    flags.update(moe_ffn=0, mlp_types=())
    return read_llama_like(hf, "solar_open", qkv_bias=bool(hf.get("attention_bias", False)), **flags)


SOLAR_KEYS = {k: v for k, v in DEEPSEEK_KEYS.items() if k != "intermediate_size"}
SOLAR_KEYS["moe_intermediate_size"] = "ffn"
solar_open = Family(
    "solar_open", ("solar_open",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn", bias=True)
    + (router(f"{L}.mlp.gate.weight"), correction_bias(f"{L}.mlp.gate.e_score_correction_bias"))
    + experts(f"{L}.mlp.experts", ffn="ffn") + shared_mlp(f"{L}.mlp.shared_experts") + BLOCK_NORMS,
    _solar_open, SOLAR_KEYS, "SolarOpenForCausalLM",
)

# ---------------------------------------------------------------- Ernie 4.5 MoE


def _ernie(hf):
    bias = bool(hf.get("use_bias", False))
    n = int(hf.get("moe_num_experts") or 0)
    moe_ffn = int(hf.get("moe_intermediate_size") or hf["intermediate_size"])
    layers = int(hf["num_hidden_layers"])
    return read_llama_like(
        hf, "ernie4_5_moe", experts=n, experts_per_tok=int(hf.get("moe_k") or 1), moe_ffn=moe_ffn,
        shared_ffn=moe_ffn * int(hf.get("moe_num_shared_experts") or 0), mlp_types=interval_mlp_types(hf, layers, n),
        rope_interleaved=True, qkv_bias=bias, o_bias=bias, mlp_bias=bias, head_bias=bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
    )


ERNIE_ROLES = (
    embeddings("model.embed_tokens.weight")
    + (Role("lm_head.bias", "lm_head.bias", (out("vocab"),), when=lambda cfg: cfg.head_bias),)
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + dense_mlp(bias=True)
    + (router(f"{L}.mlp.gate.weight"),
       Role(f"{L}.mlp.moe_statics.e_score_correction_bias", "moe.correction.bias", (out("1"), out("experts")),
            on_layer=moe_layer))
    + experts(f"{L}.mlp.experts") + shared_mlp(f"{L}.mlp.shared_experts", bias=True)
    + BLOCK_NORMS
)
ernie4_5_moe = Family(
    "ernie4_5_moe", ("ernie4_5_moe",), ERNIE_ROLES, _ernie,
    dict(LLAMA_KEYS, moe_num_experts="experts", moe_intermediate_size="moe_ffn"), "Ernie4_5_MoeForCausalLM",
    write_layers=write_interval_layers,
)

# ---------------------------------------------------------------- HunYuan MoE V1


def _one(hf: Mapping[str, Any], key: str, default: int) -> int:
    """An int key that may be a per-layer list: refused unless every layer has the same value."""
    value = hf.get(key)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"{hf.get('model_type')}: per-layer {key}={list(value)} is not supported (one value for "
                              "every layer is)")
        value = value[0]
    return int(default if value is None else value)


def _hunyuan_moe(hf):
    from .patterns import _hunyuan  # HunYuan's attention (qk-norm after RoPE, NTK-alpha RoPE) is the dense type's

    cfg = _hunyuan(hf)
    return replace(cfg, family="hunyuan_v1_moe", experts=_one(hf, "num_experts", 1),
                   experts_per_tok=_one(hf, "moe_topk", 1), shared_ffn=cfg.ffn)


hunyuan_v1_moe = Family(
    "hunyuan_v1_moe", ("hunyuan_v1_moe",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + (Role(f"{L}.self_attn.query_layernorm.weight", "attn.q_norm", (out("head_dim"),)),
       Role(f"{L}.self_attn.key_layernorm.weight", "attn.k_norm", (out("head_dim"),)))
    + (router(f"{L}.mlp.gate.wg.weight"),) + experts(f"{L}.mlp.experts", ffn="ffn")
    + shared_mlp(f"{L}.mlp.shared_mlp", ffn="ffn") + BLOCK_NORMS,
    _hunyuan_moe, dict(LLAMA_KEYS, num_experts="experts"), "HunYuanMoEV1ForCausalLM",
)

# ---------------------------------------------------------------- Mellum


def mellum_mlp_types(hf: Mapping[str, Any], layers: int, experts: int) -> tuple:
    """Mellum's ``mlp_layer_types``: "sparse" (MoE) or "dense" per layer (every layer sparse without it)."""
    kinds = list(hf.get("mlp_layer_types") or ["sparse"] * layers)
    if len(kinds) != layers or set(kinds) - {"sparse", "dense"}:
        raise ConfigError(f"mellum: mlp_layer_types {kinds} must give 'sparse' or 'dense' for each of {layers} layers")
    return tuple("moe" if k == "sparse" and experts else "dense" for k in kinds)


def _mellum_rewrite(out_cfg: dict, types: tuple) -> None:
    out_cfg["mlp_layer_types"] = ["sparse" if t == "moe" else "dense" for t in types]


def _mellum(hf):
    from .patterns import per_type_rope

    layers, n = int(hf["num_hidden_layers"]), _experts(hf)
    hd = int(hf.get("head_dim") or 128)
    positions = int(hf.get("max_position_embeddings") or 131072)
    rope = per_type_rope(hf, hd, positions, 500_000.0, 10_000.0)
    types = tuple(hf.get("layer_types") or ["full_attention"] * layers)
    bias = bool(hf.get("attention_bias", False))
    cfg = read_llama_like(
        dict(hf, head_dim=hd, rope_parameters=None, rope_scaling=None), "mellum", experts=n,
        experts_per_tok=int(hf.get("num_experts_per_tok") or 1), moe_ffn=int(hf.get("moe_intermediate_size") or 896),
        moe_renorm=bool(hf.get("norm_topk_prob", True)), mlp_types=mellum_mlp_types(hf, layers, n),
        qk_norm="head", qkv_bias=bias, o_bias=bias, sliding_window=int(hf.get("sliding_window") or 0),
        layer_types=types, norm_eps=float(hf.get("rms_norm_eps") or 1e-6),
    )
    return DecoderConfig(**dict(cfg.to_dict(), **rope))


mellum = Family(
    "mellum", ("mellum",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn", bias=True, o_bias=True) + QK_HEAD
    + dense_mlp() + QWEN_EXPERTS + BLOCK_NORMS,
    _mellum, QWEN_MOE_KEYS, "MellumForCausalLM", rope_keys=(),
    write_layers=layer_writer(mellum_mlp_types, _mellum_rewrite, "mlp_layer_types"),
)

# ---------------------------------------------------------------- MiniCPM5-MoE


def _minicpm5_moe(hf):
    _refuse(hf, use_gated_attention=lambda v: v is False)
    layers = int(hf["num_hidden_layers"])
    if not hf.get("mlp_layer_types"):  # the config class's default: first_k_dense_replace (1) dense layers
        k = int(hf.get("first_k_dense_replace", 1) or 0)
        hf = dict(hf, mlp_layer_types=["dense" if i < k else "sparse" for i in range(layers)])
    flags = deepseek_routing(hf, layers)
    flags["mlp_types"] = mellum_mlp_types(hf, layers, flags["experts"])
    bias = bool(hf.get("attention_bias", False))
    hd = hf.get("head_dim") or int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    return read_llama_like(dict(hf, head_dim=hd), "minicpm5_moe", qkv_bias=bias, o_bias=bias,
                           norm_eps=float(hf.get("rms_norm_eps") or 1e-6), **flags)


GATED_Q = (  # per head: its query rows, then its output gate's (gated attention)
    Role(f"{L}.self_attn.q_proj.weight", "attn.q_gate", (out(f"{Q.replace('*head_dim', '*2*head_dim')}"), in_("hidden"))),
    Role(f"{L}.self_attn.q_proj.bias", "attn.q_gate.bias", (out(f"{Q.replace('*head_dim', '*2*head_dim')}"),),
         when=lambda cfg: cfg.qkv_bias),
)
minicpm5_moe = Family(
    "minicpm5_moe", ("minicpm5_moe",),
    embeddings("model.embed_tokens.weight") + GATED_Q
    + tuple(r for r in attention(f"{L}.self_attn", bias=True, o_bias=True) if r.kind not in ("attn.q", "attn.q.bias"))
    + dense_mlp() + DEEPSEEK_EXPERTS + BLOCK_NORMS,
    _minicpm5_moe, DEEPSEEK_KEYS, "MiniCPM5MoeForCausalLM",
    write_layers=layer_writer(mellum_mlp_types, _mellum_rewrite, "mlp_layer_types"),
)

# ---------------------------------------------------------------- Aria (text)


def _aria_text(hf):
    act = hf.get("hidden_act") or "silu"
    if act not in ("silu", "swish"):  # the routed experts are SiLU-gated whatever hidden_act says
        raise ConfigError(f"aria_text: hidden_act={act!r} is not supported (Aria's routed experts always use SiLU, "
                          "its shared experts hidden_act; one activation for both is)")
    bias = bool(hf.get("attention_bias", False))
    # top-k of the logits, then a softmax over those k: softmax-then-top-k renormalised
    return read_llama_like(hf, "aria_text", experts=int(hf.get("moe_num_experts") or 8),
                           experts_per_tok=int(hf.get("moe_topk") or 2), experts_stacked="in_out",
                           shared_ffn=int(hf["intermediate_size"]) * int(hf.get("moe_num_shared_experts", 2) or 0),
                           qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))


aria_text = Family(
    "aria_text", ("aria_text",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + on(moe_layer, (
        router(f"{L}.mlp.router.weight"),
        Role(f"{L}.mlp.experts.fc1.weight", "moe.experts.gate_up", (out("experts"), in_("hidden"), out("ffn|ffn"))),
        Role(f"{L}.mlp.experts.fc2.weight", "moe.experts.down", (out("experts"), in_("ffn"), out("hidden")),
             writer=True),
    ))
    + shared_mlp(f"{L}.mlp.shared_experts", bias=True) + BLOCK_NORMS,
    _aria_text, dict(LLAMA_KEYS, moe_num_experts="experts"), "AriaTextForCausalLM",
)

# ---------------------------------------------------------------- DBRX


def _sub(hf: Mapping[str, Any], key: str) -> dict:
    value = hf.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"dbrx: {key} must be a mapping, not {type(value).__name__}")
    return dict(value)


def _dbrx(hf):
    attn, ffn = _sub(hf, "attn_config"), _sub(hf, "ffn_config")
    p = ffn.get("moe_normalize_expert_weights", 1.0)
    if p is not None and float(p) != 1.0:  # the weights are divided by their p-norm: p = 1 is their sum
        raise ConfigError(f"dbrx: ffn_config.moe_normalize_expert_weights={p!r} is not supported (1 or null is)")
    act = ffn.get("ffn_act_fn") or {"name": "silu"}
    if not isinstance(act, Mapping) or set(act) - {"name"}:
        raise ConfigError(f"dbrx: ffn_config.ffn_act_fn={act!r} is not supported (only a name, no arguments)")
    heads = int(hf.get("n_heads") or 16)
    flat = dict(
        hf, hidden_size=int(hf.get("d_model") or 2048), intermediate_size=int(ffn.get("ffn_hidden_size") or 3584),
        num_hidden_layers=int(hf.get("n_layers") or 24), num_attention_heads=heads,
        num_key_value_heads=int(attn.get("kv_n_heads") or 1), max_position_embeddings=int(hf.get("max_seq_len") or 2048),
        hidden_act=act.get("name") or "silu", head_dim=None,
    )
    return read_llama_like(
        flat, "dbrx", norm="layer", norm_eps=1e-5, qkv_layout="concat", clip_qkv=float(attn.get("clip_qkv") or 0.0),
        experts=int(ffn.get("moe_num_experts") or 4), experts_per_tok=int(ffn.get("moe_top_k") or 1),
        moe_renorm=p is not None, experts_stacked="flat",
    )


def _dbrx_nested(out_cfg: dict, new: DecoderConfig) -> None:
    """The sizes DBRX keeps in its nested configs: kv_n_heads, ffn_hidden_size (and ffn_config's hidden_size)."""
    out_cfg["attn_config"] = dict(_sub(out_cfg, "attn_config"), kv_n_heads=new.kv_heads)
    ffn = _sub(out_cfg, "ffn_config")
    ffn["ffn_hidden_size"] = new.ffn
    if "hidden_size" in ffn:
        ffn["hidden_size"] = new.hidden
    out_cfg["ffn_config"] = ffn


DB = "transformer.blocks.{i}"
dbrx = Family(
    "dbrx", ("dbrx",),
    embeddings("transformer.wte.weight", final_norm="transformer.norm_f.weight") + (
        Role(f"{DB}.norm_attn_norm.norm_1.weight", "norm.attn_in", (out("hidden"),)),
        Role(f"{DB}.norm_attn_norm.attn.Wqkv.weight", "attn.qkv", (out(f"{Q}|{KV}|{KV}"), in_("hidden"))),
        Role(f"{DB}.norm_attn_norm.attn.out_proj.weight", "attn.o", (out("hidden"), in_(Q)), writer=True),
        Role(f"{DB}.norm_attn_norm.norm_2.weight", "norm.mlp_in", (out("hidden"),)),
        Role(f"{DB}.ffn.router.layer.weight", "moe.router", (out("experts"), in_("hidden")), noiseless=True),
        Role(f"{DB}.ffn.experts.mlp.w1", "moe.experts.gate", (out("experts*ffn"), in_("hidden"))),
        Role(f"{DB}.ffn.experts.mlp.v1", "moe.experts.up", (out("experts*ffn"), in_("hidden"))),
        Role(f"{DB}.ffn.experts.mlp.w2", "moe.experts.down", (in_("experts*ffn"), out("hidden")), writer=True),
    ),
    _dbrx, dict(d_model="hidden", n_heads="heads", n_layers="layers", vocab_size="vocab", max_seq_len="positions",
                num_key_value_heads="kv_heads"),
    "DbrxForCausalLM", write_layers=_dbrx_nested,
)

# ---------------------------------------------------------------- PhiMoE


def _phimoe(hf):
    rp = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = (rp.get("rope_type") or rp.get("type") or "default") if isinstance(rp, Mapping) else "default"
    if kind != "default":  # its scaled RoPE multiplies cos/sin by short_mscale or long_mscale by length
        raise ConfigError(f"phimoe: rope_parameters rope_type {kind!r} is not supported (PhiMoE's short/long mscale "
                          "scaling); default RoPE is")
    window = int(hf.get("sliding_window") or 0)
    bias = bool(hf.get("attention_bias", False))
    # sparsemixer routes to two experts whatever num_experts_per_tok says
    return read_llama_like(
        hf, "phimoe", norm="layer", norm_bias=True, experts=int(hf.get("num_local_experts") or 16),
        experts_per_tok=2, moe_scoring="sparsemixer", router_jitter=float(hf.get("router_jitter_noise") or 0.0),
        qkv_bias=bias, o_bias=bias, sliding_window=window, head_bias=bool(hf.get("lm_head_bias", False)),
        layer_types=("sliding_attention",) * int(hf["num_hidden_layers"]) if window else (),
    )


PM = f"{L}.block_sparse_moe"
phimoe = Family(
    "phimoe", ("phimoe",),
    embeddings("model.embed_tokens.weight")
    + (Role("model.norm.bias", "norm.final.bias", (out("hidden"),)),
       Role("lm_head.bias", "lm_head.bias", (out("vocab"),), when=lambda cfg: cfg.head_bias))
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + (router(f"{PM}.gate.weight"),) + experts(f"{PM}.experts", ffn="ffn", names=("w1", "w3", "w2"))
    + norm(f"{L}.input_layernorm", "norm.attn_in", bias=True)
    + norm(f"{L}.post_attention_layernorm", "norm.mlp_in", bias=True),
    _phimoe,
    dict(LLAMA_KEYS, num_local_experts="experts"), "PhimoeForCausalLM",
)

# ---------------------------------------------------------------- GraniteMoE, GraniteMoeShared


def _float(hf: Mapping[str, Any], key: str, default: float = 1.0) -> float:
    value = hf.get(key)
    return float(default if value is None else value)


def granite_multipliers(hf: Mapping[str, Any]) -> dict:
    """Granite's scalars: embedding, residual and attention multipliers, logits divided by logits_scaling."""
    return dict(embed_multiplier=_float(hf, "embedding_multiplier"), residual_multiplier=_float(hf, "residual_multiplier"),
                logit_scale=1.0 / _float(hf, "logits_scaling"), attn_scale=_float(hf, "attention_multiplier"))


GMOE = f"{L}.block_sparse_moe"
GRANITEMOE_ROLES = (
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + on(moe_layer, (
        router(f"{GMOE}.router.layer.weight"),
        Role(f"{GMOE}.input_linear.weight", "moe.experts.gate_up", (out("experts"), out("ffn|ffn"), in_("hidden"))),
        Role(f"{GMOE}.output_linear.weight", "moe.experts.down", (out("experts"), out("hidden"), in_("ffn")),
             writer=True),
    ))
    + BLOCK_NORMS
)
GRANITEMOE_KEYS = dict(LLAMA_KEYS, num_local_experts="experts")


def _granitemoe(hf, family="granitemoe", **flags):
    bias = bool(hf.get("attention_bias", False))
    # top-k of the logits, then a softmax over those k: softmax-then-top-k renormalised
    return read_llama_like(hf, family, experts=int(hf.get("num_local_experts") or 0),
                           experts_per_tok=int(hf.get("num_experts_per_tok") or 1), experts_stacked="out_in",
                           qkv_bias=bias, o_bias=bias, **granite_multipliers(hf), **flags)


granitemoe = Family("granitemoe", ("granitemoe",), GRANITEMOE_ROLES, _granitemoe, GRANITEMOE_KEYS,
                    "GraniteMoeForCausalLM")
_has_shared = lambda cfg: cfg.shared_ffn > 0  # noqa: E731
granitemoeshared = Family(
    "granitemoeshared", ("granitemoeshared",),
    GRANITEMOE_ROLES + on(moe_layer, (
        Role(f"{L}.shared_mlp.input_linear.weight", "moe.shared.gate_up", (out("shared_ffn|shared_ffn"), in_("hidden")),
             when=_has_shared),
        Role(f"{L}.shared_mlp.output_linear.weight", "moe.shared.down", (out("hidden"), in_("shared_ffn")), writer=True,
             when=_has_shared),
    )),
    lambda hf: _granitemoe(hf, "granitemoeshared", shared_ffn=int(hf.get("shared_intermediate_size") or 0)),
    dict(GRANITEMOE_KEYS, shared_intermediate_size="shared_ffn"), "GraniteMoeSharedForCausalLM",
)



def checked(read: Callable) -> Callable:
    """``read`` followed by the routing's own consistency checks (a config transformers would
    fail on, or route differently from what its keys say, is refused naming the sizes)."""
    def read_checked(hf: Mapping[str, Any]) -> DecoderConfig:
        cfg = read(hf)
        mt = hf.get("model_type")
        if cfg.experts and not 1 <= cfg.experts_per_tok <= cfg.experts:
            raise ConfigError(f"{mt}: {cfg.experts_per_tok} experts per token of {cfg.experts} experts")
        if cfg.moe_groups:
            if cfg.experts % cfg.moe_groups or not 1 <= cfg.moe_topk_groups <= cfg.moe_groups:
                raise ConfigError(f"{mt}: grouped top-k of {cfg.experts} experts in n_group={cfg.moe_groups} groups "
                                  f"keeping topk_group={cfg.moe_topk_groups} is not a valid grouping")
            if cfg.moe_topk_groups * (cfg.experts // cfg.moe_groups) < cfg.experts_per_tok:
                raise ConfigError(f"{mt}: the {cfg.moe_topk_groups} kept groups hold fewer experts than the "
                                  f"{cfg.experts_per_tok} chosen per token")
        if cfg.mlp_types and len(cfg.mlp_types) != cfg.layers:
            raise ConfigError(f"{mt}: {len(cfg.mlp_types)} dense/MoE layer kinds for {cfg.layers} layers")
        return cfg
    return read_checked


FAMILIES = tuple(replace(f, read=checked(f.read)) for f in (
    qwen2_moe, qwen3_moe, olmoe, flex_olmo, dots1, solar_open, granitemoe, granitemoeshared, ernie4_5_moe,
    hunyuan_v1_moe, mellum, minicpm5_moe, aria_text, dbrx, phimoe))
(qwen2_moe, qwen3_moe, olmoe, flex_olmo, dots1, solar_open, granitemoe, granitemoeshared, ernie4_5_moe,
 hunyuan_v1_moe, mellum, minicpm5_moe, aria_text, dbrx, phimoe) = FAMILIES

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
_MOE = dict(num_experts=4, num_experts_per_tok=2)
TINY = {
    "qwen2_moe": dict(_DIMS, **_MOE, num_hidden_layers=3, mlp_only_layers=[1], moe_intermediate_size=24,
                      shared_expert_intermediate_size=40, use_sliding_window=True, sliding_window=4,
                      max_window_layers=2),
    "qwen3_moe": dict(_DIMS, **_MOE, num_hidden_layers=3, mlp_only_layers=[1], moe_intermediate_size=24,
                      head_dim=16, attention_bias=True, norm_topk_prob=True),
    "olmoe": dict(_DIMS, **_MOE, clip_qkv=2.0, attention_bias=True),
    "flex_olmo": dict(_DIMS, **_MOE, norm_topk_prob=True),
    "granitemoe": dict(_DIMS, num_local_experts=4, num_experts_per_tok=2, attention_bias=True,
                       embedding_multiplier=3.0, residual_multiplier=0.5, logits_scaling=4.0, attention_multiplier=0.2),
    "granitemoeshared": dict(_DIMS, num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=40,
                             embedding_multiplier=3.0, residual_multiplier=0.5, logits_scaling=4.0,
                             attention_multiplier=0.2),
    "ernie4_5_moe": dict(_DIMS, moe_num_experts=4, moe_k=2, moe_intermediate_size=24, moe_num_shared_experts=2,
                         num_hidden_layers=3, moe_layer_start_index=1, use_bias=True, tie_word_embeddings=True),
    "hunyuan_v1_moe": dict(_DIMS, num_experts=4, moe_topk=2, head_dim=16, attention_bias=True),
    "mellum": dict(_DIMS, **_MOE, num_hidden_layers=3, head_dim=16, moe_intermediate_size=24, attention_bias=True,
                   norm_topk_prob=False, sliding_window=4, mlp_layer_types=["dense", "sparse", "sparse"],
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "minicpm5_moe": dict(_DIMS, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=2, moe_intermediate_size=16,
                         num_hidden_layers=3, mlp_layer_types=["dense", "sparse", "sparse"], n_group=2, topk_group=1,
                         routed_scaling_factor=2.5, head_dim=16, attention_bias=True),
    "aria_text": dict(_DIMS, moe_num_experts=4, moe_topk=2, moe_num_shared_experts=2, attention_bias=True,
                      mlp_bias=True),
    "dbrx": dict(vocab_size=96, d_model=32, n_heads=4, n_layers=2, max_seq_len=64,
                 attn_config=dict(kv_n_heads=2, clip_qkv=2.0, rope_theta=10000.0),
                 ffn_config=dict(ffn_hidden_size=48, moe_num_experts=4, moe_top_k=2)),
    "phimoe": dict(_DIMS, num_local_experts=4, num_experts_per_tok=2, router_jitter_noise=0.3, attention_bias=True,
                   lm_head_bias=True, sliding_window=4),
    "dots1": dict(_DIMS, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=2, moe_intermediate_size=16,
                  num_hidden_layers=3, first_k_dense_replace=1, n_group=2, topk_group=1, norm_topk_prob=True,
                  routed_scaling_factor=2.5, attention_bias=True, sliding_window=4, max_window_layers=2),
    "solar_open": dict({k: v for k, v in _DIMS.items() if k != "intermediate_size"}, n_routed_experts=4,
                       num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=24, head_dim=16,
                       n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=False, attention_bias=True),
}
"""Tiny configs of every type these families grow (``families.TINY``)."""

__all__ = ["FAMILIES", "TINY", "deepseek_routing", "first_k_dense", "layer_writer", "write_first_k"] + [
    f.name for f in FAMILIES]
