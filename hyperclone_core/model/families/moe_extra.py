"""More mixture-of-experts families, built from ``moe.py``'s pieces: GLM-4 MoE (GLM-4.5) and the
types transformers runs on its block (SarvamMoE, Param2MoE: a fused qkv under their original
names), MiniMax-M2 (sigmoid routing, full-width qk-norm, partial RoPE), EXAONE-MoE (EXAONE 4's
attention in a pre-norm block over DeepSeek-V3 routing), AFMoE (sandwich norms, a sigmoid output gate on
the attention, RoPE on the sliding layers only, sigmoid routing with an expert bias), Kolibri1 (GLM-4's
sandwich block, EXAONE 4's attention, the correction bias on the router logits) and HY-V3 (Apertus'
attention over MiniMax-M2's routing with shared experts), Laguna (a softplus output gate per head or
per feature, RoPE per layer type, soft-capped sigmoid routing), JetMoE (a mixture of attention heads:
routed query/output projections over shared keys and values; a routed MLP with a bias), Ergo (gated
residual adds around sandwich norms, RoPE on sliding layers only, ungated relu2 experts each RMS-normed,
a normed shared expert; its router and shared expert stored (in, out)).

Each reader reads every key of its config class that changes the maths and refuses the
values this decoder cannot compute, naming the key.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from ...errors import ConfigError
from ..rope import raw_params
from ..spec import DecoderConfig, Family, Role, dense_layer, in_, moe_layer, out
from ._common import KV, LLAMA_KEYS, Q, attention, embeddings, norm, read_llama_like
from .moe import (BLOCK_NORMS, DEEPSEEK_EXPERTS, DEEPSEEK_KEYS, QK_FULL, QK_HEAD, L, checked, correction_bias,
                  deepseek_routing, dense_mlp, experts, first_k_dense, layer_writer, mellum_mlp_types, on, router, shared_mlp,
                  write_first_k)


CLASS_DEFAULTS = {
    "glm4_moe": dict(rms_norm_eps=1e-5, n_shared_experts=1, routed_scaling_factor=1.0, n_group=1, topk_group=1,
                     first_k_dense_replace=1, norm_topk_prob=True, use_qk_norm=False, attention_bias=False,
                     num_experts_per_tok=8, n_routed_experts=128, moe_intermediate_size=1408, rope_theta=10000.0),
    "sarvam_moe": dict(rms_norm_eps=1e-6, n_shared_experts=1, routed_scaling_factor=2.5, n_group=1, topk_group=1,
                       first_k_dense_replace=1, norm_topk_prob=True, use_qk_norm=True, attention_bias=False,
                       num_experts_per_tok=6, n_routed_experts=128, moe_intermediate_size=1024, head_dim=64,
                       rope_theta=8_000_000.0),
    "param2moe": dict(rms_norm_eps=1e-6, n_shared_experts=2, routed_scaling_factor=2.5, n_group=1, topk_group=1,
                      first_k_dense_replace=1, norm_topk_prob=True, use_qk_norm=True, attention_bias=False,
                      num_experts_per_tok=6, n_routed_experts=64, moe_intermediate_size=2048, head_dim=64,
                      tie_word_embeddings=True, rope_theta=500_000.0),
    "minimax_m2": dict(rms_norm_eps=1e-6, head_dim=128, num_experts_per_tok=8, num_local_experts=256,
                       rope_theta=5_000_000.0),
    "afmoe": dict(rms_norm_eps=1e-5, head_dim=128, num_dense_layers=1, num_experts=64, num_experts_per_tok=6,
                  num_shared_experts=2, route_scale=1.0, global_attn_every_n_layers=4, sliding_window=1024,
                  mup_enabled=False, attention_bias=False, moe_intermediate_size=1408),
    "kolibri1": dict(rms_norm_eps=1e-6, head_dim=128, sliding_window=513, num_local_experts=384, num_experts_per_tok=6,
                     norm_topk_prob=False, moe_intermediate_size=512, shared_expert_intermediate_size=512),
    "hy_v3": dict(rms_norm_eps=1e-5, head_dim=128, attention_bias=False, mlp_bias=False, num_experts=192,
                  num_experts_per_tok=8, num_shared_experts=1, moe_intermediate_size=1536, router_scaling_factor=2.826,
                  rope_theta=11_158_840.0),
    "laguna": dict(rms_norm_eps=1e-6, head_dim=128, sliding_window=512, moe_intermediate_size=512,
                   shared_expert_intermediate_size=512, num_experts_per_tok=8, num_experts=256, attention_bias=False,
                   gating=True, moe_routed_scaling_factor=1.0, moe_apply_router_weight_on_input=False,
                   moe_router_logit_softcapping=0.0),
    "exaone_moe": dict(rms_norm_eps=1e-5, sliding_window=4096, sliding_window_pattern=4, max_position_embeddings=2048,
                       first_k_dense_replace=1, moe_intermediate_size=1024, num_experts=64, num_experts_per_tok=8,
                       num_shared_experts=1, norm_topk_prob=True, routed_scaling_factor=2.5, n_group=1, topk_group=1),
}
"""What each type's config class gives a key a config.json leaves out (where it changes the
maths); a key present is read as written."""
ALIASES = {
    "sarvam_moe": dict(num_experts="n_routed_experts", num_local_experts="n_routed_experts",
                       num_shared_experts="n_shared_experts", use_qkv_bias="attention_bias"),
    "param2moe": dict(num_experts="n_routed_experts", num_local_experts="n_routed_experts",
                      num_shared_experts="n_shared_experts", use_qkv_bias="attention_bias"),
    "glm4_moe": dict(num_local_experts="n_routed_experts"),
    "minimax_m2": dict(num_experts="num_local_experts"),
    "kolibri1": dict(num_experts="num_local_experts"),
    "hy_v3": dict(num_local_experts="num_experts"),
}
"""The config classes' attribute_map: a config.json may store a key under its alias."""


def _with_defaults(hf: Mapping[str, Any], model_type: str) -> dict:
    hf = dict(hf)
    for alias, key in ALIASES.get(model_type, {}).items():
        if hf.get(key) is None and hf.get(alias) is not None:
            hf[key] = hf[alias]
    try:
        rp = raw_params(hf)
    except ConfigError:  # a RoPE per layer type (Laguna): its reader resolves it
        rp = {}
    defaults = dict(CLASS_DEFAULTS[model_type])
    if rp.get("rope_theta") is not None or hf.get("rope_theta") is not None:
        defaults.pop("rope_theta", None)
    return {**defaults, **hf}


def _has_qk_norm(cfg) -> bool:
    return cfg.qk_norm == "head"


def _partial(hf: Mapping[str, Any], default: float) -> dict:
    """``hf`` with its rotary fraction made explicit: the config class's ``default`` where
    neither rope_parameters nor the top level sets one."""
    rp = raw_params(hf)
    if rp.get("partial_rotary_factor") is None and hf.get("partial_rotary_factor") is None:
        return dict(hf, partial_rotary_factor=default)
    return dict(hf)


def _shared_experts(hf: Mapping[str, Any], default: int = 1) -> int:
    n = hf.get("n_shared_experts", default)
    n = default if n is None else int(n)
    if n < 1:  # transformers still builds the shared MLP, with zero-width tensors
        raise ConfigError(f"{hf.get('model_type')}: n_shared_experts={n} is not supported (at least one shared expert)")
    return n


# ---------------------------------------------------------------- GLM-4 MoE (GLM-4.5), SarvamMoE, Param2MoE


def _glm4_block(hf: Mapping[str, Any], model_type: str, partial: float):
    """GLM-4 MoE's block as transformers runs it for ``model_type`` (its defaults, its rotary fraction)."""
    hf = _partial(_with_defaults(hf, model_type), partial)
    layers = int(hf["num_hidden_layers"])
    _shared_experts(hf)
    flags = deepseek_routing(hf, layers)
    flags["moe_renorm"] = bool(hf.get("norm_topk_prob"))
    flags["moe_scale"] = float(hf["routed_scaling_factor"])
    return read_llama_like(hf, model_type, qkv_bias=bool(hf.get("attention_bias")),
                           qk_norm="head" if hf.get("use_qk_norm") else "", **flags)


def _glm4_moe(hf):
    return _glm4_block(hf, "glm4_moe", 0.5)


GLM4_KEYS = dict(DEEPSEEK_KEYS, num_local_experts="experts")
glm4_moe = Family(
    "glm4_moe", ("glm4_moe",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn", bias=True)
    + tuple(replace(r, when=_has_qk_norm) for r in QK_HEAD)
    + dense_mlp() + DEEPSEEK_EXPERTS + BLOCK_NORMS,
    _glm4_moe, GLM4_KEYS, "Glm4MoeForCausalLM", write_layers=write_first_k(),
)


def _sarvam(model_type: str):
    def read(hf):
        cfg = _glm4_block(hf, model_type, 1.0)
        return replace(cfg, qkv_layout="concat")
    return read


SA = f"{L}.attention"
SARVAM_ROLES = (
    embeddings("model.word_embeddings.weight")
    + (Role(f"{SA}.query_key_value.weight", "attn.qkv", (out(f"{Q}|{KV}|{KV}"), in_("hidden"))),
       Role(f"{SA}.query_key_value.bias", "attn.qkv.bias", (out(f"{Q}|{KV}|{KV}"),), when=lambda c: c.qkv_bias),
       Role(f"{SA}.dense.weight", "attn.o", (out("hidden"), in_(Q)), writer=True),
       Role(f"{SA}.query_layernorm.weight", "attn.q_norm", (out("head_dim"),), when=_has_qk_norm),
       Role(f"{SA}.key_layernorm.weight", "attn.k_norm", (out("head_dim"),), when=_has_qk_norm))
    + dense_mlp()
    + (router(f"{L}.mlp.gate.weight"), correction_bias(f"{L}.mlp.gate.expert_bias"))
    + experts(f"{L}.mlp.experts") + shared_mlp(f"{L}.mlp.shared_experts") + BLOCK_NORMS
)
SARVAM_KEYS = dict(DEEPSEEK_KEYS, num_experts="experts", num_local_experts="experts")
sarvam_moe = Family("sarvam_moe", ("sarvam_moe",), SARVAM_ROLES, _sarvam("sarvam_moe"), SARVAM_KEYS,
                    "Glm4MoeForCausalLM", write_layers=write_first_k())
param2moe = Family("param2moe", ("param2moe",), SARVAM_ROLES, _sarvam("param2moe"), SARVAM_KEYS,
                   "Glm4MoeForCausalLM", write_layers=write_first_k())

# ---------------------------------------------------------------- MiniMax-M2


def _minimax_m2(hf):
    hf = _with_defaults(hf, "minimax_m2")
    rp = raw_params(hf)
    if rp.get("partial_rotary_factor") is None and hf.get("partial_rotary_factor") is None:
        rotary = hf.get("rotary_dim")  # the released checkpoints' legacy key: rotary features per head
        hf["partial_rotary_factor"] = 1.0 if rotary is None else int(rotary) / int(hf["head_dim"])
    # sigmoid scores, the correction bias for the choice, the chosen scores renormalised; no shared expert
    return read_llama_like(hf, "minimax_m2", experts=int(hf["num_local_experts"]),
                           experts_per_tok=int(hf["num_experts_per_tok"]), moe_scoring="sigmoid", moe_renorm=True,
                           qk_norm="full")


MM = f"{L}.block_sparse_moe"
minimax_m2 = Family(
    "minimax_m2", ("minimax_m2",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn") + QK_FULL
    + (router(f"{MM}.gate.weight"), correction_bias(f"{MM}.e_score_correction_bias"))
    + experts(f"{MM}.experts", ffn="ffn", names=("w1", "w3", "w2")) + BLOCK_NORMS,
    _minimax_m2, dict(LLAMA_KEYS, num_local_experts="experts", num_experts="experts"), "MiniMaxM2ForCausalLM",
)

# ---------------------------------------------------------------- EXAONE-MoE


def _exaone_moe(hf):
    from .patterns import _exaone4  # EXAONE 4's attention: per-head qk-norm, sliding layers, full ones without RoPE

    hf = _with_defaults(hf, "exaone_moe")
    layers = int(hf["num_hidden_layers"])
    if not hf.get("mlp_layer_types"):
        k = int(hf.get("first_k_dense_replace") or 0)
        hf["mlp_layer_types"] = ["dense" if i < k else "sparse" for i in range(layers)]
    n_shared = int(hf.get("num_shared_experts") or 0)
    if n_shared < 1:  # transformers still builds the shared MLP, with zero-width tensors
        raise ConfigError(f"exaone_moe: num_shared_experts={n_shared} is not supported (at least one shared expert)")
    flags = deepseek_routing(dict(hf, n_routed_experts=hf["num_experts"], n_shared_experts=n_shared), layers)
    flags.update(moe_renorm=bool(hf.get("norm_topk_prob")), moe_scale=float(hf["routed_scaling_factor"]),
                 mlp_types=mellum_mlp_types(hf, layers, flags["experts"]))
    return replace(_exaone4(hf), family="exaone_moe", placement="pre", **flags)


def _exaone_rewrite(out_cfg: dict, types: tuple) -> None:
    out_cfg["mlp_layer_types"] = ["sparse" if t == "moe" else "dense" for t in types]


exaone_moe = Family(
    "exaone_moe", ("exaone_moe",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn") + QK_HEAD + dense_mlp()
    + (router(f"{L}.mlp.gate.weight"), correction_bias(f"{L}.mlp.e_score_correction_bias"))
    + experts(f"{L}.mlp.experts") + shared_mlp(f"{L}.mlp.shared_experts") + BLOCK_NORMS,
    _exaone_moe, dict(LLAMA_KEYS, num_experts="experts", moe_intermediate_size="moe_ffn"), "ExaoneMoeForCausalLM",
    write_layers=layer_writer(mellum_mlp_types, _exaone_rewrite, "mlp_layer_types"),
)

# ---------------------------------------------------------------- AFMoE


def _afmoe(hf):
    hf = _with_defaults(hf, "afmoe")
    layers = int(hf["num_hidden_layers"])
    types = hf.get("layer_types")
    if not types:
        every = int(hf["global_attn_every_n_layers"])
        types = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(layers)]
    types = tuple(types)
    n_shared = int(hf.get("num_shared_experts") or 0)
    if n_shared < 1:  # transformers still builds the shared MLP, with zero-width tensors
        raise ConfigError(f"afmoe: num_shared_experts={n_shared} is not supported (at least one shared expert)")
    n = int(hf["num_experts"])
    moe_ffn = int(hf["moe_intermediate_size"])
    bias = bool(hf.get("attention_bias"))
    # RoPE on the sliding layers only; the full layers attend without positions
    return read_llama_like(
        hf, "afmoe", placement="sandwich", qk_norm="head", qkv_bias=bias, o_bias=bias,
        embed_scale=bool(hf.get("mup_enabled")), layer_types=types,
        sliding_window=int(hf.get("sliding_window") or 0) if "sliding_attention" in types else 0,
        nope_layers=tuple(t != "sliding_attention" for t in types) if "sliding_attention" in types else (True,) * layers,
        experts=n, experts_per_tok=int(hf["num_experts_per_tok"]), moe_scoring="sigmoid", moe_renorm=True,
        moe_scale=float(hf.get("route_scale") or 1.0), moe_ffn=moe_ffn, shared_ffn=moe_ffn * n_shared,
        mlp_types=first_k_dense(hf, layers, n, "num_dense_layers"),
    )


afmoe = Family(
    "afmoe", ("afmoe",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn", bias=True, o_bias=True) + QK_HEAD
    + (Role(f"{L}.self_attn.gate_proj.weight", "attn.gate", (out(Q), in_("hidden"))),)
    + dense_mlp()
    + (router(f"{L}.mlp.router.gate.weight"), correction_bias(f"{L}.mlp.expert_bias"))
    + experts(f"{L}.mlp.experts") + shared_mlp(f"{L}.mlp.shared_experts")
    + norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.attn_out")
    + norm(f"{L}.pre_mlp_layernorm", "norm.mlp_in") + norm(f"{L}.post_mlp_layernorm", "norm.mlp_out"),
    _afmoe, dict(LLAMA_KEYS, num_experts="experts", moe_intermediate_size="moe_ffn"), "AfmoeForCausalLM",
    write_layers=write_first_k("num_dense_layers"),
)

# ---------------------------------------------------------------- Kolibri1


def _kolibri1(hf):
    hf = _with_defaults(hf, "kolibri1")
    layers = int(hf["num_hidden_layers"])
    types = tuple(hf.get("layer_types") or ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention"
                                            for i in range(layers)])
    window = int(hf.get("sliding_window") or 0)
    if int(hf.get("shared_expert_intermediate_size") or 0) < 1:  # transformers builds a zero-width shared MLP
        raise ConfigError("kolibri1: shared_expert_intermediate_size=0 is not supported (a shared expert is)")
    sliding = window and "sliding_attention" in types
    # EXAONE 4's attention: with a sliding window, the full layers run without RoPE
    return read_llama_like(
        hf, "kolibri1", placement="sandwich", qk_norm="head", layer_types=types if sliding else (),
        sliding_window=window if sliding else 0, nope_layers=tuple(t != "sliding_attention" for t in types)
        if window and "full_attention" in types else (),
        experts=int(hf["num_local_experts"]), experts_per_tok=int(hf["num_experts_per_tok"]), moe_scoring="sigmoid",
        moe_bias_on_logits=True, moe_renorm=bool(hf.get("norm_topk_prob")), moe_ffn=int(hf["moe_intermediate_size"]),
        shared_ffn=int(hf["shared_expert_intermediate_size"]),
    )


kolibri1 = Family(
    "kolibri1", ("kolibri1",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn") + QK_HEAD
    + (router(f"{L}.mlp.gate.weight"), correction_bias(f"{L}.moe.router.expert_bias"))
    + experts(f"{L}.mlp.experts") + shared_mlp(f"{L}.mlp.shared_experts")
    + norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attn_norm", "norm.attn_out")
    + norm(f"{L}.post_attention_layernorm", "norm.mlp_in") + norm(f"{L}.post_ffn_norm", "norm.mlp_out"),
    _kolibri1, dict(LLAMA_KEYS, num_experts="experts", num_local_experts="experts", moe_intermediate_size="moe_ffn",
                    shared_expert_intermediate_size="shared_ffn"), "Kolibri1ForCausalLM",
)

# ---------------------------------------------------------------- HY-V3


def _hy_v3(hf):
    hf = _with_defaults(hf, "hy_v3")
    layers = int(hf["num_hidden_layers"])
    if not hf.get("mlp_layer_types"):
        hf["mlp_layer_types"] = ["dense" if i < 1 else "sparse" for i in range(layers)]
    n_shared = int(hf.get("num_shared_experts") or 0)
    if n_shared < 1:  # transformers still builds the shared MLP, with zero-width tensors
        raise ConfigError(f"hy_v3: num_shared_experts={n_shared} is not supported (at least one shared expert)")
    n = int(hf["num_experts"])
    moe_ffn = int(hf["moe_intermediate_size"])
    bias = bool(hf.get("attention_bias"))
    return read_llama_like(
        hf, "hy_v3", qk_norm="head", qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias")),
        experts=n, experts_per_tok=int(hf["num_experts_per_tok"]), moe_scoring="sigmoid", moe_renorm=True,
        moe_scale=float(hf["router_scaling_factor"]), moe_ffn=moe_ffn, shared_ffn=moe_ffn * n_shared,
        mlp_types=mellum_mlp_types(hf, layers, n),
    )


hy_v3 = Family(
    "hy_v3", ("hy_v3",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn", bias=True, o_bias=True) + QK_HEAD
    + dense_mlp(bias=True)
    + (router(f"{L}.mlp.router.gate.weight"), correction_bias(f"{L}.mlp.expert_bias"))
    + experts(f"{L}.mlp.experts") + shared_mlp(f"{L}.mlp.shared_mlp", bias=True) + BLOCK_NORMS,
    _hy_v3, dict(LLAMA_KEYS, num_experts="experts", num_local_experts="experts", moe_intermediate_size="moe_ffn"),
    "HYV3ForCausalLM", write_layers=layer_writer(mellum_mlp_types, _exaone_rewrite, "mlp_layer_types"),
)

# ---------------------------------------------------------------- Laguna


def _laguna(hf):
    from .patterns import per_type_rope

    hf = _with_defaults(hf, "laguna")
    layers, heads = int(hf["num_hidden_layers"]), int(hf["num_attention_heads"])
    per_layer = hf.get("num_attention_heads_per_layer")
    if per_layer and any(int(h) != heads for h in per_layer):
        raise ConfigError(f"laguna: num_attention_heads_per_layer={list(per_layer)} is not supported (every layer "
                          f"with num_attention_heads={heads} heads is)")
    if hf.get("moe_apply_router_weight_on_input"):  # transformers refuses it too
        raise ConfigError("laguna: moe_apply_router_weight_on_input=True is not supported")
    if int(hf.get("shared_expert_intermediate_size") or 0) < 1:  # transformers builds a zero-width shared MLP
        raise ConfigError("laguna: shared_expert_intermediate_size=0 is not supported (a shared expert is)")
    gating = hf.get("gating")
    if gating not in (True, False, "per-head", "per-element"):
        raise ConfigError(f"laguna: gating={gating!r} is not supported (true, false, 'per-head' or 'per-element')")
    types = tuple(hf.get("layer_types") or ["full_attention"] * layers)
    if not hf.get("mlp_layer_types"):
        hf["mlp_layer_types"] = ["dense" if i < 1 else "sparse" for i in range(layers)]
    hd, positions = int(hf["head_dim"]), int(hf.get("max_position_embeddings") or 131072)
    rope = per_type_rope(dict(hf, rope_parameters=hf.get("rope_parameters") or {
        "full_attention": {"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}}),
        hd, positions, 10000.0, 10000.0)
    n = int(hf["num_experts"])
    bias = bool(hf.get("attention_bias"))
    window = int(hf.get("sliding_window") or 0)
    cfg = read_llama_like(
        dict(hf, rope_parameters=None, rope_scaling=None), "laguna", qk_norm="head", qkv_bias=bias, o_bias=bias,
        layer_types=types if window and "sliding_attention" in types else (),
        sliding_window=window if "sliding_attention" in types else 0,
        attn_gate_act="softplus", attn_gate_per_head=gating in (True, "per-head"),
        experts=n, experts_per_tok=int(hf["num_experts_per_tok"]), moe_scoring="sigmoid", moe_renorm=True,
        moe_scale=float(hf["moe_routed_scaling_factor"]), router_softcap=float(hf["moe_router_logit_softcapping"] or 0),
        moe_ffn=int(hf["moe_intermediate_size"]), shared_ffn=int(hf["shared_expert_intermediate_size"]),
        mlp_types=mellum_mlp_types(hf, layers, n),
    )
    return DecoderConfig(**dict(cfg.to_dict(), **rope))


def _laguna_layers(out_cfg: dict, new) -> None:
    _laguna_mlp(out_cfg, new)
    out_cfg["num_attention_heads_per_layer"] = [new.heads] * new.layers


_laguna_mlp = layer_writer(mellum_mlp_types, _exaone_rewrite, "mlp_layer_types")
laguna = Family(
    "laguna", ("laguna",),
    embeddings("model.embed_tokens.weight") + attention(f"{L}.self_attn", bias=True, o_bias=True) + QK_HEAD
    + (Role(f"{L}.self_attn.g_proj.weight", "attn.gate", (out("kv_heads*q_per_kv"), in_("hidden")),
            when=lambda c: c.attn_gate_per_head),
       Role(f"{L}.self_attn.g_proj.weight", "attn.gate", (out(Q), in_("hidden")),
            when=lambda c: not c.attn_gate_per_head))
    + dense_mlp()
    + (router(f"{L}.mlp.gate.weight"), correction_bias(f"{L}.mlp.experts.e_score_correction_bias"))
    + experts(f"{L}.mlp.experts") + shared_mlp(f"{L}.mlp.shared_expert") + BLOCK_NORMS,
    _laguna, dict(LLAMA_KEYS, num_experts="experts", moe_intermediate_size="moe_ffn",
                  shared_expert_intermediate_size="shared_ffn"), "LagunaForCausalLM", rope_keys=(),
    write_layers=_laguna_layers,
)

# ---------------------------------------------------------------- JetMoE


def _jetmoe(hf):
    hf = {**dict(rms_norm_eps=1e-6, tie_word_embeddings=True, kv_channels=128, num_local_experts=8,
                 num_experts_per_tok=2, activation_function="silu"), **hf}
    eps = float(hf["rms_norm_eps"])
    if eps != 1e-6:  # the block norms keep their class default whatever the config says
        raise ConfigError(f"jetmoe: rms_norm_eps={eps!r} is not supported (the layers' norms use 1e-6, the final "
                          "norm rms_norm_eps; one epsilon for both is)")
    kv = int(hf.get("num_key_value_heads") or 16)
    flat = dict(hf, num_attention_heads=kv, num_key_value_heads=kv, head_dim=int(hf["kv_channels"]),
                hidden_act=hf["activation_function"])
    # a query head of an expert reads its kv head: per expert, kv_heads heads (q_per_kv 1)
    return read_llama_like(flat, "jetmoe", experts=int(hf["num_local_experts"]),
                           experts_per_tok=int(hf["num_experts_per_tok"]), experts_stacked="out_in",
                           tie_embeddings=bool(hf["tie_word_embeddings"]))


def _jetmoe_heads(out_cfg: dict, new) -> None:
    out_cfg["num_attention_heads"] = new.kv_heads * new.experts_per_tok  # as the config class derives it


JA = f"{L}.self_attention"
jetmoe = Family(
    "jetmoe", ("jetmoe",),
    embeddings("model.embed_tokens.weight") + (
        Role(f"{JA}.kv_proj.weight", "attn.kv", (out(f"{KV}|{KV}"), in_("hidden"))),
        Role(f"{JA}.experts.router.layer.weight", "attn.moa.router", (out("experts"), in_("hidden")), noiseless=True),
        Role(f"{JA}.experts.input_linear.weight", "attn.moa.q", (out("experts"), out(KV), in_("hidden"))),
        Role(f"{JA}.experts.output_linear.weight", "attn.moa.o", (out("experts"), out("hidden"), in_(KV)),
             writer=True),
        Role(f"{JA}.experts.bias", "attn.moa.bias", (out("hidden"),), writer=True),
        router(f"{L}.mlp.router.layer.weight"),
        Role(f"{L}.mlp.input_linear.weight", "moe.experts.gate_up", (out("experts"), out("ffn|ffn"), in_("hidden"))),
        Role(f"{L}.mlp.output_linear.weight", "moe.experts.down", (out("experts"), out("hidden"), in_("ffn")),
             writer=True),
        Role(f"{L}.mlp.bias", "moe.bias", (out("hidden"),), writer=True),
    ) + BLOCK_NORMS,
    _jetmoe, {"hidden_size": "hidden", "intermediate_size": "ffn", "num_hidden_layers": "layers",
              "num_key_value_heads": "kv_heads", "kv_channels": "head_dim", "vocab_size": "vocab",
              "max_position_embeddings": "positions", "num_local_experts": "experts"},
    "JetMoeForCausalLM", write_layers=_jetmoe_heads,
)

# ---------------------------------------------------------------- Ergo


def _ergo(hf):
    hf = {**dict(rms_norm_eps=1e-12, sliding_window=512, global_attention_every_n_layers=4, num_dense_blocks=1,
                 num_experts=256, num_experts_per_tok=8, moe_routed_scaling_factor=8 ** 0.5,
                 first_dense_intermediate_size=32768, moe_intermediate_size=4096, shared_intermediate_size=8192,
                 num_key_value_heads=8), **hf}
    layers = int(hf["num_hidden_layers"])
    types = hf.get("layer_types") or ["sliding_attention" if (i + 1) % int(hf["global_attention_every_n_layers"])
                                      else "full_attention" for i in range(layers)]
    types = tuple(types)
    if not hf.get("mlp_layer_types"):
        k = int(hf.get("num_dense_blocks") or 0)
        hf["mlp_layer_types"] = ["dense" if i < k else "sparse" for i in range(layers)]
    rp = hf.get("rope_parameters") or {}
    if isinstance(rp, Mapping) and ("sliding_attention" in rp or "full_attention" in rp):
        if rp.get("full_attention"):  # transformers runs the full layers without positions
            raise ConfigError("ergo: rope_parameters.full_attention is not supported (full layers have no RoPE)")
        rp = rp.get("sliding_attention") or {}
    if int(hf.get("shared_intermediate_size") or 0) < 1:
        raise ConfigError("ergo: shared_intermediate_size=0 is not supported (a shared expert is)")
    scale = hf.get("global_attention_scale")
    n = int(hf["num_experts"])
    sliding = "sliding_attention" in types
    flat = dict(hf, intermediate_size=int(hf["first_dense_intermediate_size"]), rope_parameters=dict(rp) or None,
                hidden_act="relu2", head_dim=None, rope_scaling=None)
    return read_llama_like(
        flat, "ergo", mlp="plain", placement="sandwich", qkv_layout="concat", qk_norm="head", rope_interleaved=True,
        layer_types=types if sliding else (), sliding_window=int(hf.get("sliding_window") or 0) if sliding else 0,
        nope_layers=tuple(t != "sliding_attention" for t in types), full_attn_scale=float(scale or 0.0),
        experts=n, experts_per_tok=int(hf["num_experts_per_tok"]), experts_stacked="in_out", moe_scoring="sigmoid",
        moe_renorm=True, moe_scale=float(hf["moe_routed_scaling_factor"]), moe_ffn=int(hf["moe_intermediate_size"]),
        shared_ffn=int(hf["shared_intermediate_size"]), mlp_types=mellum_mlp_types(hf, layers, n),
        transposed_kinds=("moe.router", "moe.shared.up", "moe.shared.down"),
    )


EL = "layers.{i}"
EF = f"{EL}.feed_forward"
ergo = Family(
    "ergo", ("ergo",),
    embeddings("tok_embeddings.weight", lm_head="output.weight", final_norm="norm.weight") + (
        Role(f"{EL}.attention.wqkv.weight", "attn.qkv", (out(f"{Q}|{KV}|{KV}"), in_("hidden"))),
        Role(f"{EL}.attention.wo.weight", "attn.o", (out("hidden"), in_(Q)), writer=True),
        Role(f"{EL}.attention.q_norm.weight", "attn.q_norm", (out("head_dim"),)),
        Role(f"{EL}.attention.k_norm.weight", "attn.k_norm", (out("head_dim"),)),
        Role(f"{EL}.post_attention_residual.scale", "res.attn_gate", (out("hidden"),), identity=-1e4),
        Role(f"{EL}.post_ffn_residual.scale", "res.mlp_gate", (out("hidden"),), identity=-1e4),
    ) + norm(f"{EL}.attention_norm", "norm.attn_in") + norm(f"{EL}.post_attention_norm", "norm.attn_out")
    + norm(f"{EL}.ffn_norm", "norm.mlp_in") + norm(f"{EL}.post_ffn_norm", "norm.mlp_out")
    + on(dense_layer, (
        Role(f"{EF}.up.weight", "mlp.up", (out("ffn"), in_("hidden"))),
        Role(f"{EF}.down.weight", "mlp.down", (out("hidden"), in_("ffn")), writer=True),
    )) + on(moe_layer, (
        Role(f"{EF}.gate_kernel", "moe.router", (in_("hidden"), out("experts")), noiseless=True),
        Role(f"{EF}.router_bias", "moe.correction.bias", (out("experts"),)),
        Role(f"{EF}.up_proj", "moe.experts.up", (out("experts"), in_("hidden"), out("moe_ffn"))),
        Role(f"{EF}.down_proj", "moe.experts.down", (out("experts"), in_("moe_ffn"), out("hidden")), writer=True),
        Role(f"{EF}.expert_output_norm.scale", "moe.experts.norm", (out("experts"), out("hidden"))),
        Role(f"{EF}.shared_up_proj", "moe.shared.up", (in_("hidden"), out("shared_ffn"))),
        Role(f"{EF}.shared_down_proj", "moe.shared.down", (in_("shared_ffn"), out("hidden")), writer=True),
        Role(f"{EF}.shared_expert_output_norm.scale", "moe.shared.norm", (out("hidden"),)),
    )),
    _ergo, {"hidden_size": "hidden", "first_dense_intermediate_size": "ffn", "num_hidden_layers": "layers",
            "num_attention_heads": "heads", "num_key_value_heads": "kv_heads", "vocab_size": "vocab",
            "max_position_embeddings": "positions", "num_experts": "experts", "moe_intermediate_size": "moe_ffn",
            "shared_intermediate_size": "shared_ffn"},
    "ErgoForCausalLM", rope_keys=(), write_layers=layer_writer(mellum_mlp_types, _exaone_rewrite, "mlp_layer_types"),
)

_ALL = (glm4_moe, sarvam_moe, param2moe, minimax_m2, exaone_moe, afmoe, kolibri1, hy_v3, laguna, jetmoe, ergo)
FAMILIES = tuple(replace(f, read=checked(f.read)) for f in _ALL)
(glm4_moe, sarvam_moe, param2moe, minimax_m2, exaone_moe, afmoe, kolibri1, hy_v3, laguna, jetmoe, ergo) = FAMILIES

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
TINY = {
    "glm4_moe": dict(_DIMS, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=2, moe_intermediate_size=16,
                     first_k_dense_replace=1, n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                     use_qk_norm=True, attention_bias=True, partial_rotary_factor=0.5),
    "sarvam_moe": dict(_DIMS, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16,
                       head_dim=16, n_group=2, topk_group=1, routed_scaling_factor=2.5, attention_bias=True),
    "param2moe": dict(_DIMS, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=2, moe_intermediate_size=16,
                      head_dim=8, norm_topk_prob=False, first_k_dense_replace=2, num_hidden_layers=4,
                      tie_word_embeddings=True),
    "minimax_m2": dict(_DIMS, num_local_experts=4, num_experts_per_tok=2, head_dim=16, rotary_dim=8),
    "afmoe": dict(_DIMS, num_experts=4, num_experts_per_tok=2, num_shared_experts=2, moe_intermediate_size=16,
                  head_dim=8, num_dense_layers=1, num_hidden_layers=4, global_attn_every_n_layers=2, sliding_window=4,
                  attention_bias=True, route_scale=2.0, mup_enabled=True),
    "kolibri1": dict(_DIMS, num_hidden_layers=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                     shared_expert_intermediate_size=24, head_dim=8, sliding_window=4, norm_topk_prob=True,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"]),
    "hy_v3": dict(_DIMS, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, num_shared_experts=2,
                  head_dim=8, attention_bias=True, mlp_bias=True, router_scaling_factor=2.0),
    "laguna": dict(_DIMS, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                   shared_expert_intermediate_size=24, head_dim=8, sliding_window=4, attention_bias=True,
                   layer_types=["sliding_attention", "full_attention", "sliding_attention"], gating=True,
                   moe_routed_scaling_factor=2.0, moe_router_logit_softcapping=1.0,
                   rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 500000.0,
                                                       "partial_rotary_factor": 0.5},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}),
    "jetmoe": dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_key_value_heads=2,
                   kv_channels=8, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
                   tie_word_embeddings=False),
    "ergo": dict(vocab_size=96, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 first_dense_intermediate_size=48, moe_intermediate_size=16, shared_intermediate_size=24,
                 num_experts=4, num_experts_per_tok=2, max_position_embeddings=64, sliding_window=4,
                 global_attention_every_n_layers=2, global_attention_scale=2.0, rms_norm_eps=1e-6),
    "exaone_moe": dict(_DIMS, num_hidden_layers=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                       num_shared_experts=2, sliding_window=4, sliding_window_pattern=2, n_group=2, topk_group=1,
                       mlp_layer_types=["dense", "sparse", "dense", "sparse"]),
}
"""Tiny configs of every type these families grow (``families.TINY``)."""

__all__ = ["FAMILIES", "TINY"] + [f.name for f in FAMILIES]
