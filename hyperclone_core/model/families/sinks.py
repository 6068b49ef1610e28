"""Decoders with attention sinks, chunked attention and stacked expert tensors: gpt-oss, Llama 4 (text).

gpt-oss: a learned logit per head (``self_attn.sinks``) joins each softmax's
denominator; sliding and full layers alternate; every layer is an MoE whose router
has a bias and whose experts are stored stacked, ``(experts, in, out)``, with gate and
up interleaved in one tensor and joined by a clamped SwiGLU, biases included.

Llama 4 (text): interleaved (complex) RoPE on most layers, which attend within chunks
and L2-normalize q and k after the rotation; the other layers have no RoPE, attend to
everything and scale q up with the position (temperature tuning).  MoE and dense layers
interleave (dense ones have their own ffn size, ``intermediate_size_mlp``); the router
picks top-k by its logits and its sigmoid scales each chosen expert's INPUT; a shared
expert always runs.  Experts are stored stacked ``(experts, in, out)``, gate|up as halves.

Granite SWA (dense) and Granite MoE SWA: Granite's multipliers, sliding and full layers,
sinks on every layer, and a RoPE base per layer (``layer_rope_theta``, 0 = no RoPE): read
as NoPE layers plus at most one base for the full and one for the sliding layers.

MiMo-V2-Flash: sliding layers with twice the kv heads of the full layers and sinks
(``attention_sink_bias``), values narrower than q/k (``v_head_dim``) and scaled
(``attention_value_scale``), partial RoPE with its own base per layer kind, DeepSeek-V3
routing (sigmoid, correction bias, grouped top-k) on the "sparse" layers.

Flint: Qwen2-MoE's stack with per-head qk-norm, sinks (stored ``softmax_offset``), RoPE
on the sliding layers only, sigmoid routing and an ungated shared expert.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import ConfigError
from ..rope import rope_fields, rope_params
from ..spec import DecoderConfig, Family, Role, in_, moe_layer, out
from ._common import LLAMA_KEYS, attention, embeddings, gated_mlp, norm, read_llama_like
from .moe import (DEEPSEEK_EXPERTS, deepseek_routing, dense_mlp, experts, granite_multipliers, on, qwen_mlp_types,
                  router, shared_mlp, write_qwen_layers)

L = "model.layers.{i}"
HEADS = "kv_heads*q_per_kv"
LAYER_KINDS = ("full_attention", "sliding_attention")


def sinks(prefix: str) -> tuple:
    """The per-head sink logits: one per query head, so head growth copies each head's own."""
    return (Role(f"{prefix}.sinks", "attn.sinks", (out(HEADS),)),)


def _defaults(hf: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """``hf`` with the config class's defaults for the keys it lacks (a config.json may omit them)."""
    return dict(defaults, **hf)


def _layer_types(hf: Mapping[str, Any], layers: int, default, allowed=LAYER_KINDS) -> tuple:
    types = tuple(hf.get("layer_types") or (default(i) for i in range(layers)))
    if len(types) != layers:
        raise ConfigError(f"layer_types has {len(types)} entries for {layers} layers")
    unknown = sorted(set(types) - set(allowed))
    if unknown:
        raise ConfigError(f"layer_types {unknown} are not supported; supported: {', '.join(allowed)}")
    return types


# ---------------------------------------------------------------- gpt-oss

MOE = f"{L}.mlp"
GPT_OSS_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + sinks(f"{L}.self_attn")
    + (
        Role(f"{MOE}.router.weight", "moe.router", (out("experts"), in_("hidden")), noiseless=True),
        Role(f"{MOE}.router.bias", "moe.router.bias", (out("experts"),), noiseless=True),
        Role(f"{MOE}.experts.gate_up_proj", "moe.experts.gate_up", (out("experts"), in_("hidden"), out("ffn*2"))),
        Role(f"{MOE}.experts.gate_up_proj_bias", "moe.experts.gate_up.bias", (out("experts"), out("ffn*2"))),
        Role(f"{MOE}.experts.down_proj", "moe.experts.down", (out("experts"), in_("ffn"), out("hidden")),
             writer=True),
        Role(f"{MOE}.experts.down_proj_bias", "moe.experts.down.bias", (out("experts"), out("hidden")),
             writer=True),
    )
    + norm(f"{L}.input_layernorm", "norm.attn_in")
    + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
)
"""``ffn*2``: gate and up of each expert neuron side by side (gate = ``[..., ::2]``), so a
copied neuron carries both."""

GPT_OSS_DEFAULTS = dict(
    num_hidden_layers=36, num_local_experts=128, vocab_size=201088, hidden_size=2880, intermediate_size=2880,
    head_dim=64, num_attention_heads=64, num_key_value_heads=8, sliding_window=128, tie_word_embeddings=False,
    max_position_embeddings=131072, rms_norm_eps=1e-5, num_experts_per_tok=4, swiglu_alpha=1.702,
    swiglu_limit=7.0, attention_bias=True,
)
GPT_OSS_ROPE = dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                    original_max_position_embeddings=4096)
"""GptOssConfig's defaults (theta 150000): what transformers runs for a config.json without them."""


def _gpt_oss(hf: Mapping[str, Any]) -> DecoderConfig:
    hf = _defaults(hf, GPT_OSS_DEFAULTS)
    if hf.get("head_dim") is None:
        hf["head_dim"] = int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    if not (hf.get("rope_parameters") or hf.get("rope_scaling")):
        hf["rope_parameters"] = dict(GPT_OSS_ROPE, rope_theta=float(hf.get("rope_theta") or 150000.0))
    elif hf.get("rope_theta") is None and "rope_theta" not in (hf.get("rope_scaling") or hf["rope_parameters"]):
        hf["rope_theta"] = 150000.0
    layers = int(hf["num_hidden_layers"])
    types = _layer_types(hf, layers, lambda i: "sliding_attention" if i % 2 == 0 else "full_attention")
    window = hf.get("sliding_window")
    if "sliding_attention" in types and not window:
        raise ConfigError("gpt_oss: layer_types has sliding layers but sliding_window is not set")
    bias = bool(hf["attention_bias"])
    return read_llama_like(
        hf, "gpt_oss", qkv_bias=bias, o_bias=bias, act="silu",
        sliding_window=int(window or 0), layer_types=types,
        experts=int(hf["num_local_experts"]), experts_per_tok=int(hf["num_experts_per_tok"]),
        experts_stacked="in_out", gate_up_interleaved=True, expert_glu="clamped",
        glu_alpha=float(hf["swiglu_alpha"]), glu_limit=float(hf["swiglu_limit"]),
    )


gpt_oss = Family("gpt_oss", ("gpt_oss",), GPT_OSS_ROLES, _gpt_oss, dict(LLAMA_KEYS, num_local_experts="experts"),
                 "GptOssForCausalLM")


# ---------------------------------------------------------------- Llama 4 (text)

FF = f"{L}.feed_forward"
LLAMA4_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + dense_mlp(FF)
    + (router(f"{FF}.router.weight"),)
    + on(moe_layer, (
        Role(f"{FF}.experts.gate_up_proj", "moe.experts.gate_up",
             (out("experts"), in_("hidden"), out("moe_ffn|moe_ffn"))),
        Role(f"{FF}.experts.down_proj", "moe.experts.down", (out("experts"), in_("moe_ffn"), out("hidden")),
             writer=True),
    ))
    + shared_mlp(f"{FF}.shared_expert", ffn="moe_ffn")
    + norm(f"{L}.input_layernorm", "norm.attn_in")
    + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
)
"""Dense layers' MLP has ``intermediate_size_mlp`` (dim ffn); the experts and the shared
expert ``intermediate_size`` (dim moe_ffn)."""

LLAMA4_DEFAULTS = dict(
    vocab_size=202048, hidden_size=5120, intermediate_size=8192, intermediate_size_mlp=16384, num_hidden_layers=48,
    num_attention_heads=40, num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=4096 * 32,
    rms_norm_eps=1e-5, tie_word_embeddings=False, num_experts_per_tok=1, num_local_experts=16,
    interleave_moe_layer_step=1, use_qk_norm=True, no_rope_layer_interval=4, attention_chunk_size=8192,
    attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1, attention_bias=False,
)
"""Llama4TextConfig's defaults (theta 500000)."""
LLAMA4_KINDS = ("full_attention", "chunked_attention")


def _llama4_layers(hf: Mapping[str, Any], layers: int) -> tuple:
    """(nope_layers, layer_types, mlp_types) as Llama4TextConfig derives them."""
    flags = hf.get("no_rope_layers")
    if flags:
        if len(flags) < layers:
            raise ConfigError(f"llama4_text: no_rope_layers lists {len(flags)} layers, num_hidden_layers is {layers}")
        uses_rope = [bool(int(f)) for f in flags[:layers]]
    else:
        interval = int(hf["no_rope_layer_interval"])
        uses_rope = [(i + 1) % interval != 0 for i in range(layers)]
    chunk = hf.get("attention_chunk_size")
    types = _layer_types(hf, layers, lambda i: "chunked_attention" if uses_rope[i] and chunk else "full_attention",
                         LLAMA4_KINDS)
    if "chunked_attention" in types and not chunk:
        raise ConfigError("llama4_text: layer_types has chunked layers but attention_chunk_size is not set")
    moe = hf.get("moe_layers")
    if moe is None:
        step = int(hf["interleave_moe_layer_step"])
        moe = range(step - 1, layers, step)
    moe = {int(i) for i in moe}
    mlp_types = tuple("moe" if i in moe else "dense" for i in range(layers))
    return tuple(not r for r in uses_rope), types, mlp_types


def _llama4(hf: Mapping[str, Any]) -> DecoderConfig:
    hf = _defaults(hf, LLAMA4_DEFAULTS)
    if hf.get("head_dim") is None:
        hf["head_dim"] = int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    if not (hf.get("rope_parameters") or hf.get("rope_scaling")):
        hf["rope_parameters"] = dict(rope_type="default", rope_theta=float(hf.get("rope_theta") or 500000.0))
    elif hf.get("rope_theta") is None and "rope_theta" not in (hf.get("rope_scaling") or hf["rope_parameters"]):
        hf["rope_theta"] = 500000.0
    layers = int(hf["num_hidden_layers"])
    nope, types, mlp_types = _llama4_layers(hf, layers)
    bias = bool(hf["attention_bias"])
    tuning = bool(hf["attn_temperature_tuning"]) and any(nope)
    experts = int(hf["num_local_experts"])
    if experts < 1 and "moe" in mlp_types:
        raise ConfigError("llama4_text: num_local_experts must be at least 1 where moe_layers lists layers")
    return read_llama_like(
        hf, "llama4_text", ffn=int(hf["intermediate_size_mlp"]), qkv_bias=bias, o_bias=bias,
        layer_types=types, attn_chunk=int(hf.get("attention_chunk_size") or 0), rope_interleaved=True,
        nope_layers=nope if any(nope) else (),
        qk_norm="head" if hf["use_qk_norm"] else "", qk_norm_after_rope=bool(hf["use_qk_norm"]),
        qk_norm_skip_nope=bool(hf["use_qk_norm"]),
        attn_temp_floor=int(hf["floor_scale"]) if tuning else 0,
        attn_temp_scale=float(hf["attn_scale"]) if tuning else 0.0,
        experts=experts, experts_per_tok=int(hf["num_experts_per_tok"]),
        mlp_types=mlp_types if len(set(mlp_types)) > 1 else (), moe_ffn=int(hf["intermediate_size"]),
        shared_ffn=int(hf["intermediate_size"]), moe_scoring="sigmoid", moe_renorm=False,
        moe_input_weighted=True, experts_stacked="in_out",
    )


def _write_llama4_layers(out_cfg: dict, new: DecoderConfig) -> None:
    """The grown stack's per-layer keys, explicit (an inserted layer keeps its source's)."""
    out_cfg["no_rope_layers"] = [int(not n) for n in (new.nope_layers or (False,) * new.layers)]
    out_cfg["moe_layers"] = [i for i in range(new.layers) if moe_layer(new, i)]


llama4_text = Family("llama4_text", ("llama4_text",), LLAMA4_ROLES, _llama4,
                     dict(LLAMA_KEYS, intermediate_size="moe_ffn", intermediate_size_mlp="ffn",
                          num_local_experts="experts"),
                     "Llama4ForCausalLM", write_layers=_write_llama4_layers)


# ---------------------------------------------------------------- Granite SWA, Granite MoE SWA

BLOCK_NORMS = norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
GRANITE_SWA_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + sinks(f"{L}.self_attn")
    + gated_mlp(f"{L}.mlp")
    + BLOCK_NORMS
)
GMOE = f"{L}.block_sparse_moe"
_has_shared = lambda cfg: cfg.shared_ffn > 0  # noqa: E731
GRANITEMOE_SWA_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + sinks(f"{L}.self_attn")
    + (
        router(f"{GMOE}.router.weight"),
        Role(f"{GMOE}.experts.gate_up_proj", "moe.experts.gate_up", (out("experts"), out("ffn|ffn"), in_("hidden"))),
        Role(f"{GMOE}.experts.down_proj", "moe.experts.down", (out("experts"), out("hidden"), in_("ffn")), writer=True),
        Role(f"{L}.shared_mlp.input_linear.weight", "moe.shared.gate_up", (out("shared_ffn|shared_ffn"), in_("hidden")),
             when=_has_shared),
        Role(f"{L}.shared_mlp.output_linear.weight", "moe.shared.down", (out("hidden"), in_("shared_ffn")),
             writer=True, when=_has_shared),
    )
    + BLOCK_NORMS
)


def _granite_layers(hf: Mapping[str, Any], global_theta: float) -> dict:
    """layer_types and the per-layer RoPE bases as decoder flags: NoPE layers (theta 0), the
    full layers' base as rope_theta and the sliding layers' own as rope_sliding; refused
    where one kind of layer mixes bases (the decoder has one table per kind)."""
    layers = int(hf["num_hidden_layers"])
    types = _layer_types(hf, layers, lambda i: "full_attention" if i % 4 == 0 else "sliding_attention")
    if "sliding_attention" in types and not hf.get("sliding_window"):
        raise ConfigError(f"{hf['model_type']}: layer_types has sliding layers but sliding_window is not set")
    thetas = [float(t or 0) for t in (hf.get("layer_rope_theta") or [global_theta] * layers)]
    if len(thetas) != layers:
        raise ConfigError(f"layer_rope_theta has {len(thetas)} entries for {layers} layers")
    nope = tuple(t == 0 for t in thetas)
    bases = {kind: sorted({t for t, k in zip(thetas, types) if t and k == kind}) for kind in LAYER_KINDS}
    if any(len(b) > 1 for b in bases.values()):
        raise ConfigError(f"layer_rope_theta {thetas}: layers of one kind (full or sliding) with different RoPE "
                          "bases are not supported; supported: one base for the full and one for the sliding layers")
    full, sliding = (bases[k][0] if bases[k] else None for k in LAYER_KINDS)
    theta = full or sliding or global_theta
    flags = dict(sliding_window=int(hf.get("sliding_window") or 0), layer_types=types,
                 nope_layers=nope if any(nope) else (), rope_theta=theta)
    if sliding is not None and sliding != theta:
        flags["rope_sliding"] = (("rope_theta", sliding),)
    return flags


def _write_granite_layers(out_cfg: dict, new: DecoderConfig) -> None:
    """The grown stack's layer_rope_theta (an inserted layer keeps its source's base)."""
    local = dict(new.rope_sliding).get("rope_theta", new.rope_theta)
    out_cfg["layer_rope_theta"] = [
        0.0 if new.nope_layers and new.nope_layers[i] else (local if t == "sliding_attention" else new.rope_theta)
        for i, t in enumerate(new.layer_types)]


def _granite_swa(hf: Mapping[str, Any], family: str = "granite_swa", **flags) -> DecoderConfig:
    hf = _defaults(hf, dict(tie_word_embeddings=family == "granite_swa", sliding_window=128,
                            rms_norm_eps=1e-5 if family == "granite_swa" else 1e-6))
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(
        hf, family, qkv_bias=bias, o_bias=bias, **granite_multipliers(hf),
        **_granite_layers(hf, rope_params(hf)["theta"]), **flags,
    )


def _granitemoe_swa(hf: Mapping[str, Any]) -> DecoderConfig:
    hf = _defaults(hf, dict(num_local_experts=8, num_experts_per_tok=2))
    return _granite_swa(hf, "granitemoe_swa", experts=int(hf["num_local_experts"]),
                        experts_per_tok=int(hf["num_experts_per_tok"]), experts_stacked="out_in",
                        shared_ffn=int(hf.get("shared_intermediate_size") or 0))


granite_swa = Family("granite_swa", ("granite_swa",), GRANITE_SWA_ROLES,
                     lambda hf: _granite_swa(hf, mlp_bias=bool(hf.get("mlp_bias", False))), LLAMA_KEYS,
                     "GraniteSWAForCausalLM", write_layers=_write_granite_layers)
granitemoe_swa = Family("granitemoe_swa", ("granitemoe_swa",), GRANITEMOE_SWA_ROLES, _granitemoe_swa,
                        dict(LLAMA_KEYS, num_local_experts="experts", shared_intermediate_size="shared_ffn"),
                        "GraniteMoeSWAForCausalLM", write_layers=_write_granite_layers)


# ---------------------------------------------------------------- MiMo-V2-Flash


def _sliding(cfg: DecoderConfig, i: int) -> bool:
    return bool(cfg.layer_types) and cfg.layer_types[i] == "sliding_attention"


def _full(cfg: DecoderConfig, i: int) -> bool:
    return not _sliding(cfg, i)


def _mimo_kv(kind: str, kv: str) -> tuple:
    """k or v of the full layers (``kv``) and of the sliding ones (twice the heads: each kv
    head's pair, so query head (g, j) reads sliding head (g, j // (q_per_kv / 2)))."""
    a = f"{L}.self_attn"
    name = {"attn.k": "k_proj", "attn.v": "v_proj"}[kind]
    roles = ()
    for pred, axis in ((_full, f"kv_heads*{kv}"), (_sliding, f"kv_heads*2*{kv}")):
        roles += (
            Role(f"{a}.{name}.weight", kind, (out(axis), in_("hidden")), on_layer=pred),
            Role(f"{a}.{name}.bias", kind + ".bias", (out(axis),), when=lambda c: c.qkv_bias, on_layer=pred),
        )
    return roles


MIMO_ROLES = (
    embeddings("model.embed_tokens.weight")
    + (
        Role(f"{L}.self_attn.q_proj.weight", "attn.q", (out("kv_heads*q_per_kv*head_dim"), in_("hidden"))),
        Role(f"{L}.self_attn.q_proj.bias", "attn.q.bias", (out("kv_heads*q_per_kv*head_dim"),),
             when=lambda c: c.qkv_bias),
        Role(f"{L}.self_attn.o_proj.weight", "attn.o", (out("hidden"), in_("kv_heads*q_per_kv*v_dim")), writer=True),
        Role(f"{L}.self_attn.attention_sink_bias", "attn.sinks", (out(HEADS),), on_layer=_sliding),
    )
    + _mimo_kv("attn.k", "head_dim") + _mimo_kv("attn.v", "v_dim")
    + dense_mlp(f"{L}.mlp")
    + DEEPSEEK_EXPERTS
    + BLOCK_NORMS
)

MIMO_DEFAULTS = dict(
    vocab_size=152576, hidden_size=4096, intermediate_size=16384, num_hidden_layers=48, num_attention_heads=64,
    num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
    attention_bias=False, moe_intermediate_size=2048, num_experts_per_tok=8, n_routed_experts=256,
    routed_scaling_factor=1.0, n_group=1, topk_group=1, norm_topk_prob=True, head_dim=192, v_head_dim=128,
    sliding_window=129, attention_value_scale=0.707,
)
MIMO_ROPE = {"full_attention": dict(rope_type="default", rope_theta=5_000_000.0, partial_rotary_factor=0.334),
             "sliding_attention": dict(rope_type="default", rope_theta=10_000.0, partial_rotary_factor=0.334)}
"""MiMoV2FlashConfig's defaults."""


def _mimo(hf: Mapping[str, Any]) -> DecoderConfig:
    hf = _defaults(hf, MIMO_DEFAULTS)
    for key in ("routed_scaling_factor", "attention_value_scale", "head_dim", "v_head_dim"):
        if hf.get(key) is None:
            hf[key] = {"routed_scaling_factor": 1.0, "attention_value_scale": 1.0}.get(key)
    if hf["head_dim"] is None:
        hf["head_dim"] = int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    if hf["v_head_dim"] is None:
        raise ConfigError("mimo_v2_flash: v_head_dim is null")
    if hf.get("sliding_window_size") is not None:
        hf["sliding_window"] = int(hf["sliding_window_size"]) + 1
    layers = int(hf["num_hidden_layers"])
    types = _layer_types(hf, layers, lambda i: "full_attention" if i == 0 or (i + 1) % 6 == 0 else "sliding_attention")
    kinds = hf.get("mlp_layer_types") or ["dense"] + ["sparse"] * (layers - 1)
    if len(kinds) != layers or set(kinds) - {"dense", "sparse"}:
        raise ConfigError(f"mimo_v2_flash: mlp_layer_types {kinds} must give each of the {layers} layers dense or sparse")
    heads, kv = int(hf["num_attention_heads"]), int(hf.get("num_key_value_heads") or hf["num_attention_heads"])
    if "sliding_attention" in types and heads % (2 * kv):
        raise ConfigError(f"mimo_v2_flash: sliding layers have 2 x {kv} kv heads, which do not divide {heads} heads")
    rp = hf.get("rope_parameters") or MIMO_ROPE
    if not all(isinstance(rp.get(k), Mapping) for k in LAYER_KINDS):
        raise ConfigError("mimo_v2_flash: rope_parameters must hold one dict per layer kind (full_attention, "
                          "sliding_attention), as MiMoV2FlashConfig reads it")
    head_dim = int(hf["head_dim"])
    positions = int(hf["max_position_embeddings"])

    def rope_of(kind):
        p = dict(rp[kind])
        p.setdefault("partial_rotary_factor", 0.334)
        return dict(hf, rope_parameters=p, rope_scaling=None, rope_theta=None, partial_rotary_factor=None)

    full, sliding = (rope_fields(rope_of(k), head_dim, positions) for k in LAYER_KINDS)
    own = tuple(sorted((k, v) for k, v in sliding.items() if full[k] != v))
    bias = bool(hf["attention_bias"])
    routing = deepseek_routing(hf, layers)
    routing["mlp_types"] = tuple("moe" if k == "sparse" else "dense" for k in kinds)
    if "moe" not in routing["mlp_types"]:
        routing["mlp_types"] = ()
        routing["experts"] = 0
    return read_llama_like(
        rope_of("full_attention"), "mimo_v2_flash", qkv_bias=bias, o_bias=False, sliding_window=int(hf["sliding_window"]),
        layer_types=types, rope_sliding=own if "sliding_attention" in types else (), v_dim=int(hf["v_head_dim"]),
        v_scale=float(hf["attention_value_scale"]), **routing,
    )


def _write_mimo_layers(out_cfg: dict, new: DecoderConfig) -> None:
    out_cfg["mlp_layer_types"] = ["sparse" if moe_layer(new, i) else "dense" for i in range(new.layers)]


mimo_v2_flash = Family("mimo_v2_flash", ("mimo_v2_flash",), MIMO_ROLES, _mimo,
                       dict(LLAMA_KEYS, n_routed_experts="experts", moe_intermediate_size="moe_ffn",
                            v_head_dim="v_dim"),
                       "MiMoV2FlashForCausalLM", rope_keys=(), write_layers=_write_mimo_layers,
                       interleaved_dims=("q_per_kv",))
"""q_per_kv grows interleaved: query head (g, j) of p per kv head g reads sliding kv head (g, j // (p / 2)),
so a copy of j must sit in j's half of the grown group (tiled copies would land in the other half)."""


# ---------------------------------------------------------------- Flint

FLINT_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + (
        Role(f"{L}.self_attn.q_norm.weight", "attn.q_norm", (out("head_dim"),)),
        Role(f"{L}.self_attn.k_norm.weight", "attn.k_norm", (out("head_dim"),)),
        Role(f"{L}.self_attn.softmax_offset", "attn.sinks", (out(HEADS),)),
    )
    + dense_mlp(f"{L}.mlp")
    + (router(f"{L}.mlp.gate.weight"),)
    + experts(f"{L}.mlp.experts")
    + shared_mlp(f"{L}.mlp.shared_expert")
    + BLOCK_NORMS
)
FLINT_DEFAULTS = dict(
    vocab_size=150144, hidden_size=2048, intermediate_size=6144, num_hidden_layers=49, num_attention_heads=32,
    num_key_value_heads=4, max_position_embeddings=262144, rms_norm_eps=1e-6, tie_word_embeddings=False,
    sliding_window=513, decoder_sparse_step=1, moe_intermediate_size=512, shared_expert_intermediate_size=1024,
    num_experts_per_tok=6, num_experts=256, norm_topk_prob=True, head_dim=128, attention_bias=False,
)
"""FlintConfig's defaults (mlp_only_layers [0, 1] where null)."""


def _flint(hf: Mapping[str, Any]) -> DecoderConfig:
    hf = _defaults(hf, FLINT_DEFAULTS)
    if hf.get("mlp_only_layers") is None:
        hf["mlp_only_layers"] = [0, 1]
    if hf.get("head_dim") is None:
        hf["head_dim"] = int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    layers = int(hf["num_hidden_layers"])
    last = layers - 1
    types = _layer_types(hf, layers, lambda i: "full_attention" if i < 2 or i % 4 == 1 or i == last
                         else "sliding_attention")
    window = int(hf.get("sliding_window") or 0)
    # RoPE only where a layer slides (a config without a window has none anywhere)
    nope = tuple(not (window and t == "sliding_attention") for t in types)
    n = int(hf["num_experts"])
    shared = int(hf["shared_expert_intermediate_size"])
    if n and shared <= 0:
        raise ConfigError("flint: shared_expert_intermediate_size must be positive (the shared expert always runs)")
    mlp_types = qwen_mlp_types(hf, layers, n)
    bias = bool(hf["attention_bias"])
    return read_llama_like(
        hf, "flint", qkv_bias=bias, o_bias=bias, qk_norm="head", sliding_window=window, layer_types=types,
        nope_layers=nope if any(nope) else (), experts=n if "moe" in mlp_types else 0,
        experts_per_tok=int(hf["num_experts_per_tok"]), moe_scoring="sigmoid", moe_renorm=bool(hf["norm_topk_prob"]),
        moe_ffn=int(hf["moe_intermediate_size"]), shared_ffn=shared,
        mlp_types=mlp_types if len(set(mlp_types)) > 1 else (),
    )


flint = Family("flint", ("flint",), FLINT_ROLES, _flint,
               dict(LLAMA_KEYS, num_experts="experts", moe_intermediate_size="moe_ffn",
                    shared_expert_intermediate_size="shared_ffn"),
               "FlintForCausalLM", write_layers=write_qwen_layers)

FAMILIES = (gpt_oss, llama4_text, granite_swa, granitemoe_swa, mimo_v2_flash, flint)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
TINY = {
    "gpt_oss": dict(_DIMS, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                    swiglu_limit=0.3, swiglu_alpha=1.5, attention_bias=True,
                    rope_parameters=dict(GPT_OSS_ROPE, rope_theta=10000.0, factor=4.0,
                                         original_max_position_embeddings=16)),
    "llama4_text": dict(_DIMS, num_hidden_layers=4, head_dim=8, intermediate_size_mlp=64, num_local_experts=4,
                        num_experts_per_tok=2, interleave_moe_layer_step=2, no_rope_layer_interval=2,
                        attention_chunk_size=4, attn_temperature_tuning=True, floor_scale=2, attn_scale=0.5,
                        attention_bias=True, use_qk_norm=True, rms_norm_eps=1e-5),
    "granite_swa": dict(_DIMS, num_hidden_layers=4, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
                        sliding_window=4, layer_types=["full_attention", "sliding_attention"] * 2,
                        layer_rope_theta=[0.0, 10000.0, 100.0, 10000.0], embedding_multiplier=3.0,
                        residual_multiplier=0.5, logits_scaling=4.0, attention_multiplier=0.2),
    "granitemoe_swa": dict(_DIMS, num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=40,
                           sliding_window=4, layer_rope_theta=[100.0, 10000.0], attention_bias=True,
                           embedding_multiplier=2.0, residual_multiplier=0.7, logits_scaling=2.0,
                           attention_multiplier=0.3),
    "mimo_v2_flash": dict(_DIMS, num_hidden_layers=3, head_dim=16, v_head_dim=8, moe_intermediate_size=24,
                          n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1, sliding_window=4,
                          attention_value_scale=0.6, routed_scaling_factor=1.5, attention_bias=True,
                          rope_parameters={
                              "full_attention": dict(rope_type="default", rope_theta=50000.0, partial_rotary_factor=0.5),
                              "sliding_attention": dict(rope_type="default", rope_theta=1000.0,
                                                        partial_rotary_factor=0.25)}),
    "flint": dict(_DIMS, num_hidden_layers=4, head_dim=8, moe_intermediate_size=24, shared_expert_intermediate_size=40,
                  num_experts=4, num_experts_per_tok=2, sliding_window=4, attention_bias=True, norm_topk_prob=False),
}
"""Tiny configs (``families.TINY``): a SwiGLU limit small enough that the clamps bite."""

__all__ = ["FAMILIES", "TINY", "flint", "gpt_oss", "granite_swa", "granitemoe_swa", "llama4_text", "mimo_v2_flash", "sinks"]
