"""Families told apart by their per-layer patterns: layers without RoPE, a RoPE per layer
type (Gemma 3's local base for sliding layers), interleaved rotary, qk-norm after RoPE.

smollm3 (NoPE layers from ``no_rope_layers``), gemma3_text (Gemma 2's sandwich block with
a 1 + w per-head qk-norm and a sliding layers' RoPE), vaultgemma (Gemma 2's block with
pre-norms only), olmo3 (OLMo 2's block with a sliding-window pattern and a RoPE per layer
type), exaone4 (per-head qk-norm, post-sublayer norms, full layers without RoPE), glm and
glm4 (interleaved partial rotary; GLM-4 with post-sublayer norms too), hunyuan_v1_dense
(per-head qk-norm after RoPE, NTK-alpha base).
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import ConfigError, PlanError
from ..rope import rope_fields
from ..spec import DecoderConfig, Family, Role, implicit_head_dim, in_, out, require
from ._common import KV, LLAMA_KEYS, Q, attention, embeddings, gated_mlp, norm, read_llama_like
from .llama import OLMO2_ROLES

L = "model.layers.{i}"


# ---------------------------------------------------------------- shared readers

CLASS_DEFAULTS = {
    "smollm3": dict(rms_norm_eps=1e-6, num_key_value_heads=4, tie_word_embeddings=True, rope_theta=2_000_000.0,
                    max_position_embeddings=32768),
    "gemma3_text": dict(rms_norm_eps=1e-6, num_key_value_heads=4, head_dim=256, tie_word_embeddings=True,
                        query_pre_attn_scalar=256, sliding_window=4096, max_position_embeddings=131072),
    "vaultgemma": dict(rms_norm_eps=1e-6, num_key_value_heads=4, head_dim=256, tie_word_embeddings=True,
                       query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
                       attn_logit_softcapping=50.0, max_position_embeddings=8192),
    "olmo3": dict(rms_norm_eps=1e-5, sliding_window=4096, max_position_embeddings=2048),
    "exaone4": dict(rms_norm_eps=1e-5, sliding_window=4096, sliding_window_pattern=4, max_position_embeddings=2048),
    "glm": dict(rms_norm_eps=1.5625e-7, num_key_value_heads=2, head_dim=128, attention_bias=True,
                max_position_embeddings=131072),
    "glm4": dict(rms_norm_eps=1.5625e-7, num_key_value_heads=2, head_dim=128, attention_bias=True,
                 max_position_embeddings=131072),
    "hunyuan_v1_dense": dict(rms_norm_eps=1e-5, max_position_embeddings=2048),
}
"""What each type's config class gives a key a config.json leaves out (where it changes
the maths); a key present, even as null, is read as written."""


def _with_defaults(hf: Mapping[str, Any], model_type: str) -> dict:
    return {**CLASS_DEFAULTS[model_type], **hf}


def _refuse(hf: Mapping[str, Any], key: str, bad, why: str) -> None:
    if hf.get(key) is not None and hf.get(key) == bad:
        raise ConfigError(f"{hf.get('model_type')}: {key}={hf.get(key)!r} is not supported ({why})")


def _sliding(hf: Mapping[str, Any], types: tuple) -> dict:
    """``sliding_window`` and ``layer_types`` of a config whose pattern is its ``layer_types``."""
    if "sliding_attention" not in types:
        return dict(sliding_window=0, layer_types=types)
    window = hf.get("sliding_window")
    if not window:
        raise ConfigError(f"{hf.get('model_type')}: layer_types has sliding layers but sliding_window is "
                          f"{window!r}")
    return dict(sliding_window=int(window), layer_types=types)


def _types(hf: Mapping[str, Any], layers: int, default) -> tuple:
    types = tuple(hf.get("layer_types") or (default(i) for i in range(layers)))
    if len(types) != layers:
        raise ConfigError(f"{hf.get('model_type')}: layer_types lists {len(types)} layers, num_hidden_layers "
                          f"is {layers}")
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise ConfigError(f"{hf.get('model_type')}: layer_types {unknown} are not supported; supported: "
                          "full_attention, sliding_attention")
    return types


LAYER_TYPES = ("full_attention", "sliding_attention")


def per_type_rope(hf: Mapping[str, Any], head_dim: int, positions: int, full_theta: float, sliding_theta: float,
                  sliding_theta_key: str = "", full_theta_key: str = "rope_theta", scaling_both: bool = False) -> dict:
    """The decoder's RoPE fields of a config with a RoPE per layer type: transformers 5's
    ``rope_parameters`` keyed by ``full_attention``/``sliding_attention``, or 4.x's top-level
    keys (``rope_theta`` and ``rope_scaling`` for full layers; ``sliding_theta_key``, where the
    type has one, for sliding layers; ``full_theta_key`` in place of rope_theta, and
    ``scaling_both``: rope_scaling for both kinds, where the class says so), resolved as the
    type's config class does.  Returns the
    full layers' fields plus ``rope_sliding`` (the sliding layers' where they differ)."""
    rp = hf.get("rope_parameters")
    if rp is not None and not isinstance(rp, Mapping):
        raise ConfigError(f"rope_parameters must be a mapping, not {type(rp).__name__}")
    rp = dict(rp or {})
    flat = [k for k, v in rp.items() if not isinstance(v, Mapping)]
    if flat:
        raise ConfigError(f"{hf.get('model_type')}: rope_parameters must be keyed by layer type "
                          f"({', '.join(LAYER_TYPES)}); it has {', '.join(sorted(flat))}")
    unknown = sorted(set(rp) - set(LAYER_TYPES))
    if unknown:
        raise ConfigError(f"{hf.get('model_type')}: rope_parameters for layer types {unknown} are not supported; "
                          f"supported: {', '.join(LAYER_TYPES)}")
    full = dict(rp.get("full_attention") or {"rope_type": "default"})
    sliding = dict(rp.get("sliding_attention") or {"rope_type": "default"})
    if hf.get("rope_scaling"):  # transformers: a 4.x rope_scaling goes to the full layers
        full.update(hf["rope_scaling"])
        if scaling_both:
            sliding.update(hf["rope_scaling"])
    full.setdefault("rope_theta", hf.get(full_theta_key) or full_theta)
    sliding.setdefault("rope_theta", (hf.get(sliding_theta_key) if sliding_theta_key else None) or sliding_theta)
    base = {k: v for k, v in hf.items() if k not in ("rope_parameters", "rope_scaling", "rope_theta")}
    fields = [rope_fields(dict(base, rope_parameters=p), head_dim, positions) for p in (full, sliding)]
    other = tuple(sorted(fields[1].items())) if fields[1] != fields[0] else ()
    return dict(fields[0], rope_sliding=other)


def _bias(hf: Mapping[str, Any]) -> dict:
    bias = bool(hf.get("attention_bias", False))
    return dict(qkv_bias=bias, o_bias=bias)


LLAMA_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + gated_mlp(f"{L}.mlp")
    + norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
)
QK_HEAD = (
    Role(f"{L}.self_attn.q_norm.weight", "attn.q_norm", (out("head_dim"),)),
    Role(f"{L}.self_attn.k_norm.weight", "attn.k_norm", (out("head_dim"),)),
)


# ---------------------------------------------------------------- SmolLM3


def _smollm3(hf):
    hf = _with_defaults(hf, "smollm3")
    layers = int(hf["num_hidden_layers"])
    interval = int(hf.get("no_rope_layer_interval") or 4)
    flags = hf.get("no_rope_layers")
    if flags is None:
        flags = [int((i + 1) % interval != 0) for i in range(layers)]
    if len(flags) < layers:
        raise ConfigError(f"smollm3: no_rope_layers lists {len(flags)} layers, num_hidden_layers is {layers}")
    nope = tuple(not bool(f) for f in flags[:layers])
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    types = _types(hf, layers, lambda i: "sliding_attention" if window and nope[i] else "full_attention")
    if "sliding_attention" in types and not hf.get("use_sliding_window"):
        # transformers' eager/sdpa masks slide on these layers while its flash path does not
        raise ConfigError("smollm3: layer_types has sliding layers but use_sliding_window is false (transformers' "
                          "attention implementations disagree on such a config)")
    return read_llama_like(hf, "smollm3", **_bias(hf), mlp_bias=bool(hf.get("mlp_bias", False)),
                           tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                           nope_layers=nope if any(nope) else (), **_sliding(hf, types))


def _smollm3_layers(out: dict, new: DecoderConfig) -> None:
    """``no_rope_layers`` as the grown stack has it (the planner maps ``nope_layers`` by
    source layer), written where the config had the list or transformers' derivation from
    ``no_rope_layer_interval`` would give another pattern."""
    flags = [int(not n) for n in (new.nope_layers or (False,) * new.layers)]
    interval = int(out.get("no_rope_layer_interval") or 4)
    if out.get("no_rope_layers") is not None or flags != [int((i + 1) % interval != 0) for i in range(new.layers)]:
        out["no_rope_layers"] = flags


smollm3 = Family("smollm3", ("smollm3",), LLAMA_ROLES, _smollm3, LLAMA_KEYS, "SmolLM3ForCausalLM",
                 write_layers=_smollm3_layers)


# ---------------------------------------------------------------- Gemma 3 and VaultGemma

GEMMA_SANDWICH = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + gated_mlp(f"{L}.mlp")
    + norm(f"{L}.input_layernorm", "norm.attn_in")
    + norm(f"{L}.post_attention_layernorm", "norm.attn_out")
    + norm(f"{L}.pre_feedforward_layernorm", "norm.mlp_in")
    + norm(f"{L}.post_feedforward_layernorm", "norm.mlp_out")
)


def _gemma_flags(hf) -> dict:
    qpas = hf.get("query_pre_attn_scalar")
    return dict(
        norm_unit_offset=True, embed_scale=True,
        act=hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh",
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        attn_scale=float(qpas) ** -0.5 if qpas else 0.0,
        attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
        final_softcap=float(hf.get("final_logit_softcapping") or 0.0),
        **_bias(hf),
    )


def _gemma3(hf):
    hf = _with_defaults(hf, "gemma3_text")
    if hf.get("use_bidirectional_attention"):
        raise ConfigError("gemma3_text: use_bidirectional_attention=True is not supported (a causal decoder only)")
    layers = int(hf["num_hidden_layers"])
    pattern = int(hf.get("sliding_window_pattern") or 6)
    types = _types(hf, layers, lambda i: "sliding_attention" if (i + 1) % pattern else "full_attention")
    hd = implicit_head_dim(hf, int(hf["hidden_size"]), int(hf["num_attention_heads"]))
    positions = int(hf.get("max_position_embeddings") or 131072)
    rope = per_type_rope(hf, hd, positions, 1_000_000.0, 10_000.0, "rope_local_base_freq")
    hf = dict(hf, rope_parameters=None, rope_scaling=None)
    # transformers' Gemma 3 attention keeps attn_logit_softcapping but never applies it
    flags = dict(_gemma_flags(hf), attn_softcap=0.0)
    cfg = read_llama_like(hf, "gemma3_text", placement="sandwich", qk_norm="head", **flags, **_sliding(hf, types))
    return DecoderConfig(**dict(cfg.to_dict(), **rope))


gemma3_text = Family("gemma3_text", ("gemma3_text",), GEMMA_SANDWICH + QK_HEAD, _gemma3, LLAMA_KEYS,
                     "Gemma3ForCausalLM", rope_keys=())
"""rope_keys=(): the RoPE per layer type has no top-level mirror (mlx-lm reads rope_theta and
rope_local_base_freq, which a grown model keeps from its source where the source had them)."""

VAULT_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + gated_mlp(f"{L}.mlp")
    + norm(f"{L}.input_layernorm", "norm.attn_in")
    + norm(f"{L}.pre_feedforward_layernorm", "norm.mlp_in")
)


def _vaultgemma(hf):
    hf = _with_defaults(hf, "vaultgemma")
    layers = int(hf["num_hidden_layers"])
    types = _types(hf, layers, lambda i: "sliding_attention" if (i + 1) % 2 else "full_attention")
    return read_llama_like(hf, "vaultgemma", **_gemma_flags(hf), **_sliding(hf, types))


vaultgemma = Family("vaultgemma", ("vaultgemma",), VAULT_ROLES, _vaultgemma, LLAMA_KEYS, "VaultGemmaForCausalLM")


# ---------------------------------------------------------------- OLMo 3



def _olmo3(hf):
    hf = _with_defaults(hf, "olmo3")
    layers = int(hf["num_hidden_layers"])
    types = _types(hf, layers, lambda i: "sliding_attention" if (i + 1) % 4 else "full_attention")
    heads = int(hf["num_attention_heads"])
    hd = implicit_head_dim(hf, int(hf["hidden_size"]), heads)
    positions = int(hf.get("max_position_embeddings") or 2048)
    # transformers' Olmo3Config: a top-level rope_theta goes to the full layers only
    rope = per_type_rope(hf, hd, positions, 500_000.0, 500_000.0)
    base = dict(hf, rope_parameters=None, rope_scaling=None)
    cfg = read_llama_like(base, "olmo3", placement="post_sublayer", qk_norm="full", **_bias(hf),
                          **_sliding(hf, types))
    return DecoderConfig(**dict(cfg.to_dict(), **rope))


olmo3 = Family("olmo3", ("olmo3",), OLMO2_ROLES, _olmo3, LLAMA_KEYS,
               "Olmo3ForCausalLM", rope_keys=())


# ---------------------------------------------------------------- EXAONE 4

EXAONE4_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn")
    + gated_mlp(f"{L}.mlp", bias=False)
    + QK_HEAD
    + norm(f"{L}.post_attention_layernorm", "norm.attn_out")
    + norm(f"{L}.post_feedforward_layernorm", "norm.mlp_out")
)


def _exaone4(hf):
    hf = _with_defaults(hf, "exaone4")
    layers = int(hf["num_hidden_layers"])
    window = hf.get("sliding_window")
    pattern = hf.get("sliding_window_pattern")
    if window and not hf.get("layer_types"):
        if not isinstance(pattern, int) or pattern <= 0:
            raise ConfigError(f"exaone4: sliding_window_pattern {pattern!r} without layer_types is not supported "
                              "(transformers derives the pattern from an integer)")
    types = _types(hf, layers, lambda i: "sliding_attention" if (i + 1) % pattern else "full_attention") \
        if window else tuple(hf.get("layer_types") or ("full_attention",) * layers)
    # transformers: with a sliding window, the full layers run without RoPE
    nope = tuple(t != "sliding_attention" for t in types) if window else ()
    sliding = _sliding(hf, types) if window else dict(sliding_window=0, layer_types=types)
    return read_llama_like(hf, "exaone4", placement="post_sublayer", qk_norm="head",
                           nope_layers=nope if any(nope) else (), **sliding)


exaone4 = Family("exaone4", ("exaone4",), EXAONE4_ROLES, _exaone4, LLAMA_KEYS, "Exaone4ForCausalLM")


# ---------------------------------------------------------------- GLM, GLM-4

GLM_ROLES = (
    embeddings("model.embed_tokens.weight")
    + (
        Role(f"{L}.self_attn.q_proj.weight", "attn.q", (out(Q), in_("hidden"))),
        Role(f"{L}.self_attn.k_proj.weight", "attn.k", (out(KV), in_("hidden"))),
        Role(f"{L}.self_attn.v_proj.weight", "attn.v", (out(KV), in_("hidden"))),
        Role(f"{L}.self_attn.q_proj.bias", "attn.q.bias", (out(Q),), when=lambda c: c.qkv_bias),
        Role(f"{L}.self_attn.k_proj.bias", "attn.k.bias", (out(KV),), when=lambda c: c.qkv_bias),
        Role(f"{L}.self_attn.v_proj.bias", "attn.v.bias", (out(KV),), when=lambda c: c.qkv_bias),
        Role(f"{L}.self_attn.o_proj.weight", "attn.o", (out("hidden"), in_(Q)), writer=True),
        Role(f"{L}.mlp.gate_up_proj.weight", "mlp.gate_up", (out("ffn|ffn"), in_("hidden"))),
        Role(f"{L}.mlp.down_proj.weight", "mlp.down", (out("hidden"), in_("ffn")), writer=True),
    )
    + norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
)
GLM4_ROLES = GLM_ROLES + norm(f"{L}.post_self_attn_layernorm", "norm.attn_out") \
    + norm(f"{L}.post_mlp_layernorm", "norm.mlp_out")


def _glm(hf, family="glm", **flags):
    hf = _with_defaults(hf, family)
    rp = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), Mapping) else {}
    if "partial_rotary_factor" not in rp and "partial_rotary_factor" not in hf and not hf.get("rope_scaling"):
        hf = dict(hf, partial_rotary_factor=0.5)  # the config class's default
    return read_llama_like(hf, family, qkv_bias=bool(hf.get("attention_bias", True)), fused_gate_up=True,
                           rope_interleaved=True, **flags)


glm = Family("glm", ("glm",), GLM_ROLES, _glm, LLAMA_KEYS, "GlmForCausalLM")
glm4 = Family("glm4", ("glm4",), GLM4_ROLES, lambda hf: _glm(hf, "glm4", placement="sandwich"), LLAMA_KEYS,
              "Glm4ForCausalLM")


# ---------------------------------------------------------------- HunYuan dense

HUNYUAN_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + gated_mlp(f"{L}.mlp", bias=False)
    + norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
    + (
        Role(f"{L}.self_attn.query_layernorm.weight", "attn.q_norm", (out("head_dim"),)),
        Role(f"{L}.self_attn.key_layernorm.weight", "attn.k_norm", (out("head_dim"),)),
    )
)


def _hunyuan(hf):
    hf = _with_defaults(hf, "hunyuan_v1_dense")
    rp = dict(hf.get("rope_scaling") or hf.get("rope_parameters") or {})
    if (rp.get("rope_type") or rp.get("type")) == "dynamic" and rp.get("alpha"):
        # transformers' NTK-alpha RoPE: a fixed alpha stretches the base, default RoPE otherwise
        hd = hf.get("head_dim")
        if not hd:
            raise ConfigError("hunyuan_v1_dense: NTK-alpha RoPE (rope_type dynamic with alpha) needs head_dim")
        theta = float(rp.get("rope_theta") or hf.get("rope_theta") or 10000.0)
        theta *= float(rp["alpha"]) ** (int(hd) / (int(hd) - 2))
        hf = dict(hf, rope_scaling=None, rope_parameters={"rope_type": "default", "rope_theta": theta})
    return read_llama_like(hf, "hunyuan_v1_dense", qk_norm="head", qk_norm_after_rope=True, **_bias(hf))


hunyuan_v1_dense = Family("hunyuan_v1_dense", ("hunyuan_v1_dense",), HUNYUAN_ROLES, _hunyuan, LLAMA_KEYS,
                          "HunYuanDenseV1ForCausalLM")


# ---------------------------------------------------------------- ModernBERT decoder

MB = "model.layers.{i}"


def _has(flag):
    return lambda cfg: bool(getattr(cfg, flag))


def _ln(name: str, kind: str, **kw) -> tuple:
    return (Role(f"{name}.weight", kind, (out("hidden"),), **kw),
            Role(f"{name}.bias", kind + ".bias", (out("hidden"),), when=_has("norm_bias"), **kw))


def _attn_norm_layer(cfg, i):
    return i != 0 or cfg.first_attn_norm


MODERNBERT_ROLES = (
    Role("model.embeddings.tok_embeddings.weight", "embed", (in_("vocab"), out("hidden"))),
    *_ln("model.embeddings.norm", "norm.embed"),
    *_ln(f"{MB}.attn_norm", "norm.attn_in", on_layer=_attn_norm_layer),
    *attention(f"{MB}.attn", o_name="Wo", bias=True, o_bias=True),
    *_ln(f"{MB}.mlp_norm", "norm.mlp_in"),
    Role(f"{MB}.mlp.Wi.weight", "mlp.gate_up", (out("ffn|ffn"), in_("hidden"))),
    Role(f"{MB}.mlp.Wi.bias", "mlp.gate_up.bias", (out("ffn|ffn"),), when=_has("mlp_bias")),
    Role(f"{MB}.mlp.Wo.weight", "mlp.down", (out("hidden"), in_("ffn")), writer=True),
    Role(f"{MB}.mlp.Wo.bias", "mlp.down.bias", (out("hidden"),), writer=True, when=_has("mlp_bias")),
    *_ln("model.final_norm", "norm.final"),
    Role("lm_head.dense.weight", "head.dense", (out("hidden"), in_("hidden"))),
    Role("lm_head.dense.bias", "head.dense.bias", (out("hidden"),), when=_has("head_dense_bias")),
    *_ln("lm_head.norm", "norm.head"),
    Role("decoder.weight", "lm_head", (out("vocab"), in_("hidden"))),
    Role("decoder.bias", "lm_head.bias", (out("vocab"),), when=_has("head_bias")),
)
MODERNBERT_KEYS = {
    "hidden_size": "hidden", "intermediate_size": "ffn", "num_hidden_layers": "layers",
    "num_attention_heads": "heads", "vocab_size": "vocab", "max_position_embeddings": "positions",
}


def _modernbert(hf):
    require(hf, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    hidden, heads, layers = int(hf["hidden_size"]), int(hf["num_attention_heads"]), int(hf["num_hidden_layers"])
    if hidden % heads:
        raise ConfigError(f"modernbert-decoder: hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads})")
    every = int(hf.get("global_attn_every_n_layers") or 3)
    types = _types(hf, layers, lambda i: "sliding_attention" if i % every else "full_attention")
    local = hf.get("local_attention")
    if "sliding_attention" in types and not local:
        raise ConfigError(f"modernbert-decoder: layer_types has sliding layers but local_attention is {local!r}")
    head_dim, positions = hidden // heads, int(hf.get("max_position_embeddings") or 8192)
    rope = per_type_rope(hf, head_dim, positions, 160_000.0, 10_000.0, "local_rope_theta", "global_rope_theta",
                         scaling_both=True)
    return DecoderConfig(
        family="modernbert-decoder", vocab=int(hf["vocab_size"]), hidden=hidden, ffn=int(hf["intermediate_size"]),
        layers=layers, heads=heads, kv_heads=heads, head_dim=head_dim, positions=positions,
        norm="layer", norm_eps=float(hf.get("norm_eps") or 1e-5), norm_bias=bool(hf.get("norm_bias", False)),
        embed_norm=True, first_attn_norm=False, fused_gate_up=True,
        act=hf.get("hidden_activation") or "gelu", head_act=hf.get("classifier_activation") or "gelu",
        qkv_bias=bool(hf.get("attention_bias", False)), o_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)), head_dense_bias=bool(hf.get("classifier_bias", False)),
        head_bias=bool(hf.get("decoder_bias", True)), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        # transformers: the sliding layers see local_attention // 2 positions back
        sliding_window=int(local) // 2 if "sliding_attention" in types else 0, layer_types=types, **rope,
    )


class _ModernBertFamily(Family):
    def write_config(self, hf, new, layer_src) -> dict:
        if layer_src is not None and list(layer_src).count(0) > 1:
            raise PlanError("modernbert-decoder: depth growth would insert a copy of layer 0, which has no attention "
                            "norm while every later layer needs one; grow by a number of layers that copies later "
                            "ones (layers are copied evenly through the stack)")
        return super().write_config(hf, new, layer_src)


modernbert_decoder = _ModernBertFamily(
    "modernbert-decoder", ("modernbert-decoder",), MODERNBERT_ROLES, _modernbert, MODERNBERT_KEYS,
    "ModernBertDecoderForCausalLM", rope_keys=())


FAMILIES = (smollm3, gemma3_text, vaultgemma, olmo3, exaone4, glm, glm4, hunyuan_v1_dense, modernbert_decoder)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
TINY = {
    "smollm3": dict(_DIMS, num_hidden_layers=4, no_rope_layers=[1, 0, 1, 0], use_sliding_window=True,
                    sliding_window=4, attention_bias=True, mlp_bias=True),
    "gemma3_text": dict(_DIMS, num_hidden_layers=3, head_dim=16, tie_word_embeddings=True,
                        query_pre_attn_scalar=12, sliding_window=4, attn_logit_softcapping=20.0,
                        final_logit_softcapping=15.0, attention_bias=True,
                        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}}),
    "vaultgemma": dict(_DIMS, head_dim=16, tie_word_embeddings=True, query_pre_attn_scalar=12, sliding_window=4,
                       attn_logit_softcapping=20.0, final_logit_softcapping=15.0),
    "olmo3": dict(_DIMS, num_hidden_layers=3, sliding_window=4, attention_bias=True,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                  rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                   "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}),
    "exaone4": dict(_DIMS, num_hidden_layers=3, sliding_window=4,
                    layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "glm": dict(_DIMS, head_dim=16, attention_bias=True, partial_rotary_factor=0.5),
    "glm4": dict(_DIMS, head_dim=16, attention_bias=True, partial_rotary_factor=0.5),
    "modernbert-decoder": dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                               num_attention_heads=4, max_position_embeddings=64, local_attention=8, norm_bias=True,
                               attention_bias=True, mlp_bias=True, classifier_bias=True, classifier_activation="silu",
                               hidden_activation="gelu", tie_word_embeddings=True, cls_token_id=1, sep_token_id=2,
                               layer_types=["full_attention", "sliding_attention", "full_attention"],
                               rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                                                "sliding_attention": {"rope_type": "default", "rope_theta": 20.0}}),
    "hunyuan_v1_dense": dict(_DIMS, head_dim=16, attention_bias=True,
                             rope_parameters={"rope_type": "dynamic", "alpha": 3.0, "factor": 1.0,
                                              "rope_theta": 10000.0}),
}
"""Tiny configs of every type these families grow (``families.TINY``)."""

__all__ = ["FAMILIES", "TINY", "per_type_rope", "exaone4", "gemma3_text", "glm", "glm4",
           "hunyuan_v1_dense", "modernbert_decoder", "olmo3", "smollm3", "vaultgemma"]
