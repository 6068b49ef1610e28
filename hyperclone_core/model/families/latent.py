"""Multi-head latent attention (MLA) families: DeepSeek-V2/V3 and the types built on
their attention (Youtu, MiniCPM3).

MLA (``decoder.latent_attention``): q from ``q_proj`` or from a rank-``q_lora_rank``
latent (``q_a_proj`` -> RMS norm -> ``q_b_proj``); k/v from ``kv_a_proj_with_mqa``, whose
output is a rank-``kv_lora_rank`` latent (RMS-normed, then ``kv_b_proj`` gives each head
its nope part of k and its value) and ``qk_rope_head_dim`` RoPE'd features of k shared
by every head.  Growth doubles hidden and copies heads (``--width`` grows the heads
with it; the per-head dims stay); the latent ranks keep their size: the latent norms
normalize an axis that does not grow, and the projections reading it mix nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional

from ...errors import ConfigError
from ..rope import raw_params, yarn_mscale
from ..spec import DecoderConfig, Family, Role, dense_layer, in_, moe_layer, out
from ._common import embeddings, gated_mlp, has, norm, read_llama_like
from .moe import correction_bias, experts, first_k_dense, router, write_first_k

L = "model.layers.{i}"
A = f"{L}.self_attn"
HEADS = "kv_heads*q_per_kv"


def _q_lora(cfg):
    return bool(cfg.q_lora)


def _no_q_lora(cfg):
    return not cfg.q_lora


MLA_ROLES = (
    Role(f"{A}.q_proj.weight", "attn.q", (out(f"{HEADS}*mla_qk"), in_("hidden")), when=_no_q_lora),
    Role(f"{A}.q_a_proj.weight", "attn.q_a", (out("q_lora"), in_("hidden")), when=_q_lora),
    Role(f"{A}.q_a_proj.bias", "attn.q_a.bias", (out("q_lora"),),
         when=lambda cfg: bool(cfg.q_lora and cfg.qkv_bias)),
    Role(f"{A}.q_a_layernorm.weight", "attn.q_a_norm", (out("q_lora"),), when=_q_lora),
    Role(f"{A}.q_b_proj.weight", "attn.q_b", (out(f"{HEADS}*mla_qk"), in_("q_lora")), when=_q_lora),
    Role(f"{A}.kv_a_proj_with_mqa.weight", "attn.kv_a", (out("kv_lora|head_dim"), in_("hidden"))),
    Role(f"{A}.kv_a_proj_with_mqa.bias", "attn.kv_a.bias", (out("kv_lora|head_dim"),), when=has("qkv_bias")),
    Role(f"{A}.kv_a_layernorm.weight", "attn.kv_a_norm", (out("kv_lora"),)),
    Role(f"{A}.kv_b_proj.weight", "attn.kv_b", (out(f"{HEADS}*mla_kv"), in_("kv_lora"))),
    Role(f"{A}.o_proj.weight", "attn.o", (out("hidden"), in_(f"{HEADS}*v_dim")), writer=True),
    Role(f"{A}.o_proj.bias", "attn.o.bias", (out("hidden"),), writer=True, when=has("o_bias")),
)
BLOCK_NORMS = norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
DENSE_ROLES = embeddings("model.embed_tokens.weight") + MLA_ROLES + gated_mlp(f"{L}.mlp") + BLOCK_NORMS


def _mlp(prefix: str, kind: str, ffn: str, on_layer) -> tuple:
    """gate/up/down (biases where ``mlp_bias``: DeepSeek-V2's MLP class serves dense layers
    and shared experts alike) held by the layers ``on_layer`` picks."""
    roles = []
    for name, k, axes in (("gate_proj", "gate", (out(ffn), in_("hidden"))), ("up_proj", "up", (out(ffn), in_("hidden"))),
                          ("down_proj", "down", (out("hidden"), in_(ffn)))):
        writer = k == "down"
        roles.append(Role(f"{prefix}.{name}.weight", f"{kind}.{k}", axes, writer=writer, on_layer=on_layer))
        roles.append(Role(f"{prefix}.{name}.bias", f"{kind}.{k}.bias", axes[:1], writer=writer, on_layer=on_layer,
                          when=has("mlp_bias")))
    return tuple(roles)


MOE_ROLES = (
    embeddings("model.embed_tokens.weight") + MLA_ROLES
    + _mlp(f"{L}.mlp", "mlp", "ffn", dense_layer)
    + (router(f"{L}.mlp.gate.weight"),) + experts(f"{L}.mlp.experts")
    + _mlp(f"{L}.mlp.shared_experts", "moe.shared", "shared_ffn", moe_layer)
    + BLOCK_NORMS
)
"""DeepSeek's stack: dense layers (the first ``first_k_dense_replace``) and MoE layers
(router, routed experts, always-on shared experts of ``n_shared_experts`` x
``moe_intermediate_size``)."""
V3_ROLES = MOE_ROLES + (correction_bias(f"{L}.mlp.gate.e_score_correction_bias"),)
IDX = f"{A}.indexer"
DSA_ROLES = V3_ROLES + (
    Role(f"{IDX}.wq_b.weight", "attn.index_q", (out("index_heads*index_dim"), in_("q_lora"))),
    Role(f"{IDX}.wk.weight", "attn.index_k", (out("index_dim"), in_("hidden")), noiseless=True),
    Role(f"{IDX}.k_norm.weight", "attn.index_k_norm", (out("index_dim"),)),
    Role(f"{IDX}.k_norm.bias", "attn.index_k_norm.bias", (out("index_dim"),)),
    Role(f"{IDX}.weights_proj.weight", "attn.index_w", (out("index_heads"), in_("hidden")), noiseless=True),
)
"""DeepSeek-V3.2 / GLM-MoE-DSA: DeepSeek-V3's stack plus each layer's sparse-attention
indexer (its projections reading hidden are noiseless: they feed the top-k key choice)."""
AXK1_ROLES = V3_ROLES + (
    Role(f"{L}.post_mlp_layernorm.weight", "norm.mlp_out", (out("hidden"),), on_layer=moe_layer),
)
"""A.X-K1: DeepSeek-V3's stack whose MoE layers norm their MLP output (``post_mlp_layernorm``)."""

MLA_KEYS = {
    "hidden_size": "hidden", "intermediate_size": "ffn", "num_hidden_layers": "layers",
    "num_attention_heads": "heads", "num_key_value_heads": "kv_heads", "qk_rope_head_dim": "head_dim",
    "vocab_size": "vocab", "max_position_embeddings": "positions",
}
"""The latent ranks and the per-head dims are not written back: they keep their size."""
MOE_KEYS = dict(MLA_KEYS, n_routed_experts="experts", moe_intermediate_size="moe_ffn")


@dataclass(frozen=True)
class LatentFamily(Family):
    """A Family whose attention is MLA: the grown config keeps one k/v head per query
    head (MLA has no grouped kv heads), and ``rewrite`` fixes the config scalars a
    family derives from grown dims (MiniCPM3's depth and width scales)."""

    rewrite: Optional[Callable[[Mapping[str, Any], dict, DecoderConfig], dict]] = None
    notes: tuple = field(default=(), compare=False)
    """(config key, why the writer changed it) pairs: what the expansion's report says."""

    def write_config(self, hf: Mapping[str, Any], new: DecoderConfig, layer_src) -> dict:
        if new.q_per_kv != 1:
            raise ConfigError(
                f"{self.name}: multi-head latent attention has one k/v head per query head; grow --heads and "
                f"--kv-heads by the same ratio (this growth gives {new.heads} heads, {new.kv_heads} kv heads)")
        out = super().write_config(hf, new, layer_src)
        return self.rewrite(hf, out, new) if self.rewrite is not None else out


def _int(hf, key, default=0) -> int:
    value = hf.get(key)
    return int(default if value is None else value)


def read_mla(hf: Mapping[str, Any], family: str, rope_interleaved: bool, attention_kinds: tuple = ("full_attention",),
             **flags) -> DecoderConfig:
    """The neutral config of an MLA decoder (``flags`` override).  Refuses what the
    decoder does not compute: grouped kv heads, partial rotary on the RoPE'd part."""
    missing = [k for k in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "num_attention_heads")
               if hf.get(k) is None]
    if missing:
        raise ConfigError(f"config.json lacks {', '.join(missing)} (model_type {hf.get('model_type')!r})")
    heads = int(hf["num_attention_heads"])
    kv = _int(hf, "num_key_value_heads", heads)
    if kv != heads:
        raise ConfigError(f"num_key_value_heads ({kv}) differs from num_attention_heads ({heads}): multi-head "
                          "latent attention expands one k/v head per query head (transformers does too)")
    nope, rope_dim = int(hf["qk_nope_head_dim"]), int(hf["qk_rope_head_dim"])
    v_dim = _int(hf, "v_head_dim", 0) or int(hf["hidden_size"]) // heads
    if rope_dim <= 0 or rope_dim % 2:
        raise ConfigError(f"qk_rope_head_dim ({rope_dim}) must be a positive even number")
    cfg = read_llama_like(dict(hf, head_dim=rope_dim), family, rope_interleaved=rope_interleaved,
                          kv_lora=int(hf["kv_lora_rank"]), q_lora=_int(hf, "q_lora_rank"), nope_dim=nope,
                          v_dim=v_dim, **flags)
    if cfg.rotary_dim:
        raise ConfigError(f"partial_rotary_factor {cfg.rotary_dim / rope_dim:g}: MLA rotates all "
                          f"qk_rope_head_dim ({rope_dim}) features; a partial rotary is not supported")
    if cfg.layer_types and set(cfg.layer_types) - set(attention_kinds):
        raise ConfigError(f"layer_types {sorted(set(cfg.layer_types))}: {family} layers are all "
                          f"{' or '.join(attention_kinds)}")
    # transformers' softmax scale: qk_head_dim ** -0.5, times YaRN's mscale(mscale_all_dim) squared
    scale = (nope + rope_dim) ** -0.5
    rp = raw_params(hf)
    if (rp.get("rope_type") or "default") != "default" and rp.get("mscale_all_dim"):
        m = yarn_mscale(float(dict(cfg.rope_scaling).get("factor", rp.get("factor"))), float(rp["mscale_all_dim"]))
        scale = scale * m * m
    return replace(cfg, attn_scale=scale, layer_types=())


def _moe_flags(hf: Mapping[str, Any], mlp_types: tuple, scoring: str, **flags) -> dict:
    """The MoE fields of a DeepSeek-style config whose layers are ``mlp_types``."""
    n = _int(hf, "n_routed_experts") or _int(hf, "num_experts")
    shared = hf.get("n_shared_experts", hf.get("num_shared_experts"))
    if "moe" in mlp_types and not n:
        raise ConfigError(f"{hf.get('model_type')}: MoE layers need n_routed_experts")
    if "moe" in mlp_types and not shared:
        raise ConfigError(f"{hf.get('model_type')}: n_shared_experts {shared!r}: transformers builds the shared "
                          "experts' MLP at n_shared_experts x moe_intermediate_size (empty tensors at 0); "
                          "supported: at least one shared expert")
    groups, keep = _int(hf, "n_group", 1), _int(hf, "topk_group", 1)
    if n and groups > 1 and n % groups:
        raise ConfigError(f"n_routed_experts ({n}) is not a multiple of n_group ({groups})")
    if "moe" in mlp_types and _int(hf, "num_experts_per_tok", 1) > n:
        raise ConfigError(f"num_experts_per_tok ({_int(hf, 'num_experts_per_tok', 1)}) exceeds n_routed_experts ({n})")
    if "moe" in mlp_types and groups > 1 and keep > groups:
        raise ConfigError(f"topk_group ({keep}) exceeds n_group ({groups})")
    moe_ffn = _int(hf, "moe_intermediate_size")
    return dict(experts=n, experts_per_tok=_int(hf, "num_experts_per_tok", 1), mlp_types=mlp_types,
                moe_ffn=moe_ffn, shared_ffn=moe_ffn * int(shared or 0), moe_scoring=scoring,
                moe_groups=groups if groups > 1 else 0, moe_topk_groups=keep if groups > 1 else 0,
                moe_scale=float(hf.get("routed_scaling_factor") or 1.0), **flags)


def _deepseek_v3(hf, family="deepseek_v3", mlp_types=None, **kw):
    bias = bool(hf.get("attention_bias", False))
    mlp_types = first_k_dense(hf, _int(hf, "num_hidden_layers")) if mlp_types is None else mlp_types
    moe = _moe_flags(hf, mlp_types, "sigmoid", moe_renorm=bool(hf.get("norm_topk_prob", True)))
    rp = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    if (rp.get("rope_type") or rp.get("type")) == "deepseek_yarn":  # sarvam's legacy name of YaRN
        rp = {k: v for k, v in rp.items() if k != "type"} | {"rope_type": "yarn"}
        hf = dict(hf, rope_scaling=None, rope_parameters=rp)
    return read_mla(hf, family, rope_interleaved=bool(hf.get("rope_interleave", True)),
                    qkv_bias=bias, o_bias=bias, norm_eps=float(hf.get("rms_norm_eps") or 1e-6), **moe, **kw)


V2_TOPK = ("greedy", "group_limited_greedy")
"""DeepSeek-V2's routings (topk_method): top-k over the softmax, or over the experts of the
topk_group groups whose best expert scores highest (group_limited_greedy)."""


def _deepseek_v2(hf):
    bias = bool(hf.get("attention_bias", False))
    method = hf.get("topk_method") or "greedy"
    if method not in V2_TOPK:
        raise ConfigError(f"deepseek_v2: topk_method {method!r} is not supported; supported: {', '.join(V2_TOPK)}")
    mlp_types = first_k_dense(hf, _int(hf, "num_hidden_layers"))
    if method == "greedy":
        hf = dict(hf, n_group=1)  # greedy ignores the groups
    elif "moe" in mlp_types:
        groups, keep, n = _int(hf, "n_group", 1), _int(hf, "topk_group", 1), _int(hf, "n_routed_experts")
        if groups < 1 or keep < 1 or keep * (n // groups) < _int(hf, "num_experts_per_tok", 1):
            # transformers would pick masked experts (weight 0) where the kept groups hold too few
            raise ConfigError(f"deepseek_v2: group_limited_greedy keeps topk_group ({keep}) of n_group ({groups}) "
                              f"groups of {n} experts, fewer than num_experts_per_tok")
    # transformers' DeepSeek-V2 router never renormalises (it ignores norm_topk_prob)
    moe = _moe_flags(hf, mlp_types, "softmax", moe_renorm=False, moe_group_top=1)
    return read_mla(hf, "deepseek_v2", rope_interleaved=True, qkv_bias=bias, o_bias=bias,
                    mlp_bias=bool(hf.get("mlp_bias", False)), norm_eps=float(hf.get("rms_norm_eps") or 1e-6), **moe)


def _mlp_layer_types(hf, family: str, default: list) -> tuple:
    """``mlp_layer_types`` ("dense" | "sparse" per layer; ``default`` where the config has none)."""
    layers = _int(hf, "num_hidden_layers")
    types = hf.get("mlp_layer_types") or default
    if sorted(set(types) - {"dense", "sparse"}) or len(types) != layers:
        raise ConfigError(f"{family}: mlp_layer_types {types!r} must give 'dense' or 'sparse' for each of "
                          f"the {layers} layers")
    return tuple("moe" if t == "sparse" else "dense" for t in types)


def _glm4_moe_lite(hf):
    layers = _int(hf, "num_hidden_layers")
    return _deepseek_v3(hf, "glm4_moe_lite", _mlp_layer_types(hf, "glm4_moe_lite", ["dense"] + ["sparse"] * (layers - 1)))


def _axk1(hf):
    # A.X-K1's config class reads legacy first_k_dense_replace (default 1) and moe_layer_freq
    first, freq = _int(hf, "first_k_dense_replace", 1), _int(hf, "moe_layer_freq", 1) or 1
    legacy = ["sparse" if i >= first and i % freq == 0 else "dense" for i in range(_int(hf, "num_hidden_layers"))]
    if not hf.get("q_lora_rank"):
        raise ConfigError("axk1: q_lora_rank must be set (A.X-K1's attention always projects q through its latent)")
    return _deepseek_v3(hf, "axk1", _mlp_layer_types(hf, "axk1", legacy))


def _write_mlp_layer_types(out_cfg: dict, new: DecoderConfig) -> None:
    out_cfg["mlp_layer_types"] = ["sparse" if t == "moe" else "dense" for t in new.mlp_types]


def _dsa(hf, family: str, index_rope_interleaved: bool) -> DecoderConfig:
    """DeepSeek sparse attention: V3's MLA (q latent required, interleaved RoPE) and MoE, and the indexer."""
    if not hf.get("q_lora_rank"):
        raise ConfigError(f"{family}: q_lora_rank must be set (the indexer reads the q latent)")
    layers = _int(hf, "num_hidden_layers")
    dense = min(_int(hf, "first_k_dense_replace", 3), layers)
    types = _mlp_layer_types(hf, family, ["dense"] * dense + ["sparse"] * (layers - dense))
    require_keys = [k for k in ("index_topk", "index_n_heads", "index_head_dim") if not hf.get(k)]
    if require_keys:
        raise ConfigError(f"{family}: config.json lacks {', '.join(require_keys)} (the sparse-attention indexer)")
    rope_dim, index_dim = _int(hf, "qk_rope_head_dim"), _int(hf, "index_head_dim")
    if index_dim < rope_dim:
        raise ConfigError(f"{family}: index_head_dim ({index_dim}) < qk_rope_head_dim ({rope_dim})")
    cfg = _deepseek_v3(dict(hf, rope_interleave=True), family, types, attention_kinds=("indexed_attention",))
    return replace(cfg, index_topk=_int(hf, "index_topk"), index_heads=_int(hf, "index_n_heads"),
                   index_dim=index_dim, index_rope_interleaved=index_rope_interleaved)


def _write_dsa_layers(out_cfg: dict, new: DecoderConfig) -> None:
    _write_mlp_layer_types(out_cfg, new)
    out_cfg["layer_types"] = ["indexed_attention"] * new.layers


def _indexer_types(hf) -> list:
    """GLM-MoE-DSA's per-layer indexer modes as its config class derives them."""
    if hf.get("indexer_types"):
        return list(hf["indexer_types"])
    layers, pattern = _int(hf, "num_hidden_layers"), hf.get("index_topk_pattern")
    if pattern is not None:
        return [{"F": "full", "S": "shared"}.get(c, c) for c in pattern] if isinstance(pattern, str) else list(pattern)
    freq, offset = max(_int(hf, "index_topk_freq", 1), 1), _int(hf, "index_skip_topk_offset", 2)
    return ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(layers)]


def _glm_moe_dsa(hf):
    modes = _indexer_types(hf)
    if set(modes) != {"full"}:
        raise ConfigError(f"glm_moe_dsa: indexer_types {modes!r}: 'shared' layers reuse an earlier layer's key "
                          "choice, not supported; supported: every layer 'full' (its own indexer)")
    return _dsa(hf, "glm_moe_dsa", True)


def _write_glm_dsa_layers(out_cfg: dict, new: DecoderConfig) -> None:
    _write_dsa_layers(out_cfg, new)
    out_cfg["indexer_types"] = ["full"] * new.layers


def _youtu(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_mla(hf, "youtu", rope_interleaved=bool(hf.get("rope_interleave", True)), qkv_bias=bias, o_bias=bias,
                    norm_eps=float(hf.get("rms_norm_eps") or 1e-6),
                    tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


def _minicpm3(hf):
    bias = bool(hf.get("attention_bias", False))
    layers, hidden = _int(hf, "num_hidden_layers"), _int(hf, "hidden_size")
    depth = hf.get("scale_depth")
    base = hf.get("dim_model_base")
    return read_mla(
        hf, "minicpm3", rope_interleaved=False, qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)),
        norm_eps=float(hf.get("rms_norm_eps") or 1e-5), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        embed_multiplier=float(12 if hf.get("scale_emb") is None else hf["scale_emb"]),
        residual_multiplier=1.0 if depth is None else float(depth) / math.sqrt(layers),
        logit_scale=1.0 if base is None else float(base) / hidden,
    )


def _minicpm3_rewrite(hf, out, new: DecoderConfig) -> dict:
    """MiniCPM3 derives its residual scale from the depth (scale_depth / sqrt(layers)) and
    its logit scale from the width (hidden / dim_model_base): both written so they stay."""
    old_layers, old_hidden = int(hf["num_hidden_layers"]), int(hf["hidden_size"])
    if hf.get("scale_depth") is not None and new.layers != old_layers:
        out["scale_depth"] = float(hf["scale_depth"]) * math.sqrt(new.layers / old_layers)
    if hf.get("dim_model_base") is not None and new.hidden != old_hidden:
        base = int(hf["dim_model_base"]) * new.hidden
        if base % old_hidden:
            raise ConfigError(f"minicpm3: dim_model_base ({hf['dim_model_base']}) x {new.hidden} / {old_hidden} is "
                              "not an integer; the logit scale hidden_size / dim_model_base cannot be kept")
        out["dim_model_base"] = base // old_hidden
    return out


FIRST_K = write_first_k("first_k_dense_replace")
_LAYER_NOTES = (
    ("first_k_dense_replace", "the count of leading dense layers, rewritten for the grown depth (each inserted layer "
                              "is dense or MoE as its source)"),
    ("mlp_layer_types", "the per-layer dense/MoE pattern, written for the grown depth (each inserted layer is dense "
                        "or MoE as its source)"),
    ("layer_types", "every layer indexed (sparse) attention, written for the grown depth"),
    ("indexer_types", "every layer runs its own indexer, written for the grown depth"),
)
deepseek_v3 = LatentFamily("deepseek_v3", ("deepseek_v3",), V3_ROLES, _deepseek_v3, MOE_KEYS,
                           "DeepseekV3ForCausalLM", write_layers=FIRST_K, notes=_LAYER_NOTES)
sarvam_mla = LatentFamily("sarvam_mla", ("sarvam_mla",), V3_ROLES, lambda hf: _deepseek_v3(hf, "sarvam_mla"),
                          MOE_KEYS, "DeepseekV3ForCausalLM", write_layers=FIRST_K, notes=_LAYER_NOTES)
"""transformers builds sarvam_mla as DeepseekV3ForCausalLM (its config class also reads the
original Sarvam keys: num_experts, num_shared_experts, deepseek_yarn)."""
glm4_moe_lite = LatentFamily("glm4_moe_lite", ("glm4_moe_lite",), V3_ROLES, _glm4_moe_lite, MOE_KEYS,
                             "Glm4MoeLiteForCausalLM", write_layers=_write_mlp_layer_types, notes=_LAYER_NOTES)
deepseek_v32 = LatentFamily("deepseek_v32", ("deepseek_v32",), DSA_ROLES, lambda hf: _dsa(hf, "deepseek_v32", False),
                            MOE_KEYS, "DeepseekV32ForCausalLM", write_layers=_write_dsa_layers, notes=_LAYER_NOTES)
glm_moe_dsa = LatentFamily("glm_moe_dsa", ("glm_moe_dsa",), DSA_ROLES, _glm_moe_dsa, MOE_KEYS, "GlmMoeDsaForCausalLM",
                           write_layers=_write_glm_dsa_layers, notes=_LAYER_NOTES)
axk1 = LatentFamily("axk1", ("axk1",), AXK1_ROLES, _axk1, MOE_KEYS, "AXK1ForCausalLM",
                   write_layers=_write_mlp_layer_types, notes=_LAYER_NOTES)
deepseek_v2 = LatentFamily("deepseek_v2", ("deepseek_v2",), MOE_ROLES, _deepseek_v2, MOE_KEYS,
                           "DeepseekV2ForCausalLM", write_layers=FIRST_K, notes=_LAYER_NOTES)
youtu = LatentFamily("youtu", ("youtu",), DENSE_ROLES, _youtu, MLA_KEYS, "YoutuForCausalLM")
minicpm3 = LatentFamily(
    "minicpm3", ("minicpm3",), DENSE_ROLES, _minicpm3, MLA_KEYS, "MiniCPM3ForCausalLM", rewrite=_minicpm3_rewrite,
    notes=(("scale_depth", "MiniCPM3 scales each sublayer's output by scale_depth / sqrt(num_hidden_layers): scaled "
                           "with the depth so the residual scale stays"),
           ("dim_model_base", "MiniCPM3 divides the LM head's input by hidden_size / dim_model_base: scaled with the "
                              "width so the logit scale stays")),
)

FAMILIES = (deepseek_v3, deepseek_v2, sarvam_mla, glm4_moe_lite, axk1, deepseek_v32, glm_moe_dsa, youtu, minicpm3)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False,
             q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)
_MOE = dict(num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=24, n_shared_experts=1)
_YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=2.0, original_max_position_embeddings=32,
             mscale=1.0, mscale_all_dim=0.8, beta_fast=32.0, beta_slow=1.0)
TINY = {
    "deepseek_v3": dict(_DIMS, **_MOE, n_group=2, topk_group=1, routed_scaling_factor=2.5, attention_bias=True,
                        rope_parameters=_YARN),
    "deepseek_v2": dict(_DIMS, **_MOE, q_lora_rank=None, routed_scaling_factor=1.5, attention_bias=True,
                        mlp_bias=True, topk_method="group_limited_greedy", n_group=2, topk_group=1),
    "sarvam_mla": dict(_DIMS, **dict(_MOE, n_shared_experts=2), q_lora_rank=None, norm_topk_prob=False),
    "glm4_moe_lite": dict(_DIMS, **_MOE, n_group=2, topk_group=2, routed_scaling_factor=1.8,
                          mlp_layer_types=["dense", "sparse", "sparse"]),
    "axk1": dict(_DIMS, **_MOE, n_group=2, topk_group=1, mlp_layer_types=["dense", "sparse", "sparse"]),
    "deepseek_v32": dict(_DIMS, **_MOE, n_group=2, topk_group=1, mlp_layer_types=["dense", "sparse", "sparse"],
                         index_topk=4, index_n_heads=8, index_head_dim=8),
    "glm_moe_dsa": dict(_DIMS, **_MOE, n_group=2, topk_group=1, mlp_layer_types=["dense", "sparse", "sparse"],
                        index_topk=5, index_n_heads=8, index_head_dim=6),
    "youtu": dict(_DIMS, v_head_dim=16, rope_interleave=False, tie_word_embeddings=True),
    "minicpm3": dict(_DIMS, attention_bias=True, mlp_bias=True, scale_emb=3.0, scale_depth=1.4, dim_model_base=8,
                     tie_word_embeddings=True),
}
"""Tiny configs of every type these families grow (``families.TINY``): small MLA sizes
(q_lora 16, kv_lora 16, nope 8, rope 4, v 8; Youtu's v 16 is wider than q.k's 12); the
MoE types one dense layer then two MoE layers of 4 experts, top-2, shared experts; the
sparse-attention indexers keep 4 or 5 keys of the tests' 12 (8 index heads: with fewer,
relu's zeros tie often, and transformers' torch.topk breaks ties its own way)."""

__all__ = ["FAMILIES", "TINY", "LatentFamily", "read_mla", "axk1", "deepseek_v2", "deepseek_v3", "deepseek_v32",
           "glm_moe_dsa", "glm4_moe_lite", "minicpm3",
           "sarvam_mla", "youtu"]
