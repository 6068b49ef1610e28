"""Llama-like families that differ from Llama in names, biases, a few scalars or one
block variant: Granite's multipliers (granite, hyperclovax with peri-layer norms),
interleaved RoPE (helium, ernie4_5), attention/output biases (seed_oss), sliding-window
patterns (ministral, cwm; ministral3 with Llama 4's q scale), EXAONE's names, relu² MLPs
(arcee, nemotron with LayerNorm-1p, jais2 with LayerNorm, nanochat with weightless
norms), xIELU (apertus, apertus1p5_text).  Each reader first completes a config.json as
its config class would (``CLASS_DEFAULTS``)."""

from __future__ import annotations

from ...errors import ConfigError
from ..rope import raw_params
from ..spec import Family, Role, in_, out
from ._common import LLAMA_KEYS, attention, embeddings, gated_mlp, has, norm, read_llama_like

L = "model.layers.{i}"
BLOCK_NORMS = norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
LLAMA_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + gated_mlp(f"{L}.mlp")
    + BLOCK_NORMS
)


def plain_mlp(prefix: str, up: str = "up_proj", down: str = "down_proj") -> tuple:
    """A non-gated MLP (up, act, down); biases where the config sets ``mlp_bias``."""
    return (
        Role(f"{prefix}.{up}.weight", "mlp.up", (out("ffn"), in_("hidden"))),
        Role(f"{prefix}.{down}.weight", "mlp.down", (out("hidden"), in_("ffn")), writer=True),
        Role(f"{prefix}.{up}.bias", "mlp.up.bias", (out("ffn"),), when=has("mlp_bias")),
        Role(f"{prefix}.{down}.bias", "mlp.down.bias", (out("hidden"),), writer=True, when=has("mlp_bias")),
    )


def _float(hf, key, default):
    value = hf.get(key)
    return float(default if value is None else value)


LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, original_max_position_embeddings=8192, low_freq_factor=1.0,
                  high_freq_factor=4.0)
CLASS_DEFAULTS = {
    "granite": dict(rms_norm_eps=1e-6, max_position_embeddings=2048),
    "hyperclovax": dict(rms_norm_eps=1e-6, max_position_embeddings=2048),
    "helium": dict(head_dim=128, rms_norm_eps=1e-8, max_position_embeddings=4096, rope=1e5),
    "ernie4_5": dict(head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=131072, rope=5e5),
    "seed_oss": dict(head_dim=128, rms_norm_eps=1e-6, max_position_embeddings=524288),
    "ministral": dict(rms_norm_eps=1e-6, max_position_embeddings=131072, sliding_window=4096),
    "ministral3": dict(head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=262144, rope_dict=lambda hf: dict(
        rope_type="yarn", rope_theta=1e6, factor=16.0, original_max_position_embeddings=16384,
        max_position_embeddings=hf["max_position_embeddings"], beta_fast=32.0, beta_slow=1.0, mscale_all_dim=1.0,
        mscale=1.0, llama_4_scaling_beta=0.1)),
    "cwm": dict(head_dim=128, rms_norm_eps=1e-5, max_position_embeddings=131072, sliding_window=8192, rope=1e6,
                rope_dict=lambda hf: dict(LLAMA3_ROPE, rope_theta=1e6, factor=16.0)),
    "exaone": dict(rms_norm_eps=1e-5, max_position_embeddings=4096, rope=5e5),
    "arcee": dict(hidden_act="relu2", max_position_embeddings=4096),
    "jais2": dict(hidden_act="relu2", max_position_embeddings=8192, layer_norm_eps=1e-5),
    "nemotron": dict(hidden_act="relu2", max_position_embeddings=4096, norm_eps=1e-5, partial_rotary_factor=0.5),
    "apertus": dict(hidden_act="xielu", max_position_embeddings=65536, rope=12e6,
                    rope_dict=lambda hf: dict(LLAMA3_ROPE, rope_theta=12e6)),
    "apertus1p5_text": dict(hidden_act="xielu", max_position_embeddings=65536, rope=12e6,
                            rope_dict=lambda hf: dict(LLAMA3_ROPE, rope_theta=12e6)),
    "nanochat": dict(hidden_act="relu2", rms_norm_eps=1e-6, max_position_embeddings=2048, final_logit_softcapping=15.0),
}
"""What each config class gives a key a config.json leaves out, where Llama's reader
would assume otherwise; ``rope``: the RoPE base where neither the RoPE dict nor the
config has ``rope_theta`` (default 10000); ``rope_dict``: the whole RoPE dict the class
sets when the config has none (a top-level ``rope_theta`` is then ignored, as the class
does)."""


def _completed(model_type: str, read, aliases=None):
    """``read`` of a config completed by its class's defaults (``CLASS_DEFAULTS``), after
    its ``aliases`` (key -> the key it stands for) are resolved."""
    def complete(hf):
        defaults = dict(CLASS_DEFAULTS.get(model_type, {}))
        theta, rope_dict = defaults.pop("rope", 10000.0), defaults.pop("rope_dict", None)
        hf = dict(hf)
        for alias, key in (aliases or {}).items():
            if hf.get(key) is None and hf.get(alias) is not None:
                hf[key] = hf[alias]
        for key, value in defaults.items():
            if key not in hf:
                hf[key] = value
        rp = raw_params(hf)
        rp = dict(rp or (rope_dict(hf) if rope_dict else {}))
        if rp.get("rope_theta") is None:
            rp["rope_theta"] = float(hf["rope_theta"]) if hf.get("rope_theta") is not None else theta
        if rp.get("partial_rotary_factor") is None and hf.get("partial_rotary_factor") is not None:
            rp["partial_rotary_factor"] = hf["partial_rotary_factor"]
        rp.setdefault("rope_type", "default")
        return read(dict(hf, rope_parameters=rp, rope_scaling=None))
    return complete


def _window(hf) -> int:
    """Transformers' ``sliding_window`` for configs whose ``layer_types`` say which layers slide."""
    return int(hf.get("sliding_window") or 0)


# ---------------------------------------------------------------- Granite, HyperCLOVA X


def _attention_multiplier(hf, default):
    value = hf.get("attention_multiplier")
    if value is not None and float(value) == 0.0:
        raise ConfigError(f"{hf.get('model_type')} config sets attention_multiplier=0 (every attention score 0): "
                          "not supported")
    return default if value is None else float(value)


def _granite(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(
        hf, "granite", qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)),
        embed_multiplier=_float(hf, "embedding_multiplier", 1.0),
        residual_multiplier=_float(hf, "residual_multiplier", 1.0),
        logit_scale=1.0 / _float(hf, "logits_scaling", 1.0),
        attn_scale=_attention_multiplier(hf, 1.0),
    )


granite = Family("granite", ("granite",), LLAMA_ROLES, _completed("granite", _granite), LLAMA_KEYS, "GraniteForCausalLM")

HCX_ROLES = LLAMA_ROLES + tuple(
    Role(r.pattern, r.kind, r.axes, when=lambda c: c.placement == "sandwich")
    for r in norm(f"{L}.post_norm1", "norm.attn_out") + norm(f"{L}.post_norm2", "norm.mlp_out")
)


def _hyperclovax(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(
        hf, "hyperclovax", qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)),
        placement="sandwich" if hf.get("use_post_norm", True) else "pre",
        embed_multiplier=_float(hf, "embedding_multiplier", 1.0),
        residual_multiplier=_float(hf, "residual_multiplier", 1.0),
        logit_scale=_float(hf, "logits_scaling", 1.0),  # a multiplier here (Granite divides)
        attn_scale=_attention_multiplier(hf, 0.0),  # None: head_dim ** -0.5, which DecoderConfig's 0 means
    )


hyperclovax = Family("hyperclovax", ("hyperclovax",), HCX_ROLES, _completed("hyperclovax", _hyperclovax), LLAMA_KEYS,
                     "HyperCLOVAXForCausalLM")

# ---------------------------------------------------------------- renamed or re-biased Llamas


def _helium(hf):
    cfg = read_llama_like(hf, "helium", rope_interleaved=True, qkv_bias=bool(hf.get("attention_bias", False)),
                          mlp_bias=bool(hf.get("mlp_bias", False)))
    if cfg.heads * cfg.head_dim != cfg.hidden:  # transformers' Helium cannot run it either
        raise ConfigError(f"helium's o_proj is hidden_size x hidden_size: num_attention_heads ({cfg.heads}) x head_dim "
                          f"({cfg.head_dim}) must equal hidden_size ({cfg.hidden})")
    return cfg


helium = Family("helium", ("helium",), LLAMA_ROLES, _completed("helium", _helium), LLAMA_KEYS, "HeliumForCausalLM")


def _ernie(hf):
    bias = bool(hf.get("use_bias", False))
    return read_llama_like(hf, "ernie4_5", rope_interleaved=True, qkv_bias=bias, o_bias=bias, mlp_bias=bias,
                           tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


ernie4_5 = Family("ernie4_5", ("ernie4_5",), LLAMA_ROLES, _completed("ernie4_5", _ernie), LLAMA_KEYS, "Ernie4_5ForCausalLM")


def _seed_oss(hf):
    return read_llama_like(hf, "seed_oss", qkv_bias=bool(hf.get("attention_bias", True)),
                           o_bias=bool(hf.get("attention_out_bias", False)), mlp_bias=bool(hf.get("mlp_bias", False)))


seed_oss = Family("seed_oss", ("seed_oss",), LLAMA_ROLES, _completed("seed_oss", _seed_oss), LLAMA_KEYS, "SeedOssForCausalLM")


def _sliding(family, mlp_bias):
    """Ministral and CWM: Mistral/Llama blocks without attention biases (CWM's Llama MLP
    reads ``mlp_bias``), each layer full or sliding as ``layer_types`` says."""
    def read(hf):
        kinds = hf.get("layer_types")
        if not kinds:  # the class's pattern: Ministral slides everywhere (if a window is set), CWM every layer but 4i
            n, window = int(hf["num_hidden_layers"]), hf.get("sliding_window")
            kinds = ["full_attention" if not window or (family == "cwm" and i % 4 == 0) else "sliding_attention"
                     for i in range(n)]
        return read_llama_like(dict(hf, layer_types=list(kinds)), family, sliding_window=_window(hf),
                               mlp_bias=mlp_bias and bool(hf.get("mlp_bias", False)))
    return read


ministral = Family("ministral", ("ministral",), LLAMA_ROLES, _completed("ministral", _sliding("ministral", False)), LLAMA_KEYS,
                   "MinistralForCausalLM")
cwm = Family("cwm", ("cwm",), LLAMA_ROLES, _completed("cwm", _sliding("cwm", True)), LLAMA_KEYS, "CwmForCausalLM")



def _ministral3(hf):
    """Mistral's block (every layer slides when ``sliding_window`` is set; ``layer_types``
    is ignored, as transformers does) and Llama 4's position-dependent q scale."""
    rp = raw_params(hf)
    beta, period = rp.get("llama_4_scaling_beta"), rp.get("original_max_position_embeddings")
    if beta is None or not period:
        raise ConfigError("ministral3 configs need rope_parameters.llama_4_scaling_beta and "
                          "rope_parameters.original_max_position_embeddings (its attention scale reads both)")
    window, layers = _window(hf), int(hf["num_hidden_layers"])
    return read_llama_like(hf, "ministral3", sliding_window=window,
                           layer_types=("sliding_attention",) * layers if window else (),
                           q_scale_beta=float(beta), q_scale_period=int(period))


ministral3 = Family("ministral3", ("ministral3",), LLAMA_ROLES, _completed("ministral3", _ministral3), LLAMA_KEYS,
                    "Ministral3ForCausalLM")

X = "transformer.h.{i}"
EXAONE_ROLES = (
    embeddings("transformer.wte.weight", final_norm="transformer.ln_f.weight")
    + attention(f"{X}.attn.attention", o_name="out_proj", bias=True, o_bias=True)
    + (
        Role(f"{X}.mlp.c_fc_0.weight", "mlp.gate", (out("ffn"), in_("hidden"))),
        Role(f"{X}.mlp.c_fc_1.weight", "mlp.up", (out("ffn"), in_("hidden"))),
        Role(f"{X}.mlp.c_proj.weight", "mlp.down", (out("hidden"), in_("ffn")), writer=True),
        Role(f"{X}.mlp.c_fc_0.bias", "mlp.gate.bias", (out("ffn"),), when=has("mlp_bias")),
        Role(f"{X}.mlp.c_fc_1.bias", "mlp.up.bias", (out("ffn"),), when=has("mlp_bias")),
        Role(f"{X}.mlp.c_proj.bias", "mlp.down.bias", (out("hidden"),), writer=True, when=has("mlp_bias")),
    )
    + norm(f"{X}.ln_1", "norm.attn_in") + norm(f"{X}.ln_2", "norm.mlp_in")
)
EXAONE_ALIASES = {"num_layers": "num_hidden_layers", "layer_norm_epsilon": "rms_norm_eps",
                  "activation_function": "hidden_act"}
"""EXAONE's own config keys (its remote-code configs) for Llama's."""


def _exaone(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(hf, "exaone", qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))


exaone = Family("exaone", ("exaone",), EXAONE_ROLES, _completed("exaone", _exaone, EXAONE_ALIASES),
                dict(LLAMA_KEYS, num_layers="layers"), "LlamaForCausalLM")
"""transformers runs EXAONE 3 as Llama (and names that architecture) but keeps EXAONE's
tensor names in the checkpoint."""

# ---------------------------------------------------------------- non-gated MLPs: relu², xIELU

ARCEE_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + plain_mlp(f"{L}.mlp")
    + BLOCK_NORMS
)


def _arcee(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(hf, "arcee", mlp="plain", act=hf.get("hidden_act") or "relu2", qkv_bias=bias, o_bias=bias,
                           mlp_bias=bool(hf.get("mlp_bias", False)))


arcee = Family("arcee", ("arcee",), ARCEE_ROLES, _completed("arcee", _arcee), LLAMA_KEYS, "ArceeForCausalLM")

LAYERNORM_PLAIN_ROLES = (
    embeddings("model.embed_tokens.weight")
    + norm("model.norm", "norm.final", bias=True)[1:]
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + plain_mlp(f"{L}.mlp")
    + norm(f"{L}.input_layernorm", "norm.attn_in", bias=True)
    + norm(f"{L}.post_attention_layernorm", "norm.mlp_in", bias=True)
)
"""Jais 2 and Nemotron: LayerNorms with biases around a non-gated MLP (they differ only in
their readers: Nemotron's LayerNorm-1p gain)."""


def _jais2(hf):
    bias = bool(hf.get("attention_bias", True))
    return read_llama_like(hf, "jais2", mlp="plain", act=hf.get("hidden_act") or "relu2", norm="layer", norm_bias=True,
                           norm_eps=_float(hf, "layer_norm_eps", 1e-5), qkv_bias=bias, o_bias=bias,
                           mlp_bias=bool(hf.get("mlp_bias", True)))


jais2 = Family("jais2", ("jais2",), LAYERNORM_PLAIN_ROLES, _completed("jais2", _jais2), LLAMA_KEYS, "Jais2ForCausalLM")



def _nemotron(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(hf, "nemotron", mlp="plain", act=hf.get("hidden_act") or "relu2", norm="layer",
                           norm_bias=True, norm_unit_offset=True, norm_eps=_float(hf, "norm_eps", 1e-5),
                           qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))


nemotron = Family("nemotron", ("nemotron",), LAYERNORM_PLAIN_ROLES, _completed("nemotron", _nemotron), LLAMA_KEYS,
                  "NemotronForCausalLM")

XIELU = tuple(
    Role(f"{L}.mlp.act_fn.{n}", f"mlp.act.{n}", axes, when=lambda c: c.act == "xielu")
    for n, axes in (("alpha_p", (out("1"),)), ("alpha_n", (out("1"),)), ("beta", ()), ("eps", ()))
)
"""xIELU's learned scalars, per layer: alpha_p and alpha_n of shape (1,), beta and eps 0-d."""
APERTUS_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + (
        Role(f"{L}.self_attn.q_norm.weight", "attn.q_norm", (out("head_dim"),)),
        Role(f"{L}.self_attn.k_norm.weight", "attn.k_norm", (out("head_dim"),)),
        Role(f"{L}.mlp.up_proj.weight", "mlp.up", (out("ffn"), in_("hidden"))),
        Role(f"{L}.mlp.down_proj.weight", "mlp.down", (out("hidden"), in_("ffn")), writer=True),
    )
    + XIELU
    + norm(f"{L}.attention_layernorm", "norm.attn_in") + norm(f"{L}.feedforward_layernorm", "norm.mlp_in")
)


def _apertus(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(hf, "apertus", mlp="plain", act=hf.get("hidden_act") or "xielu", qk_norm="head",
                           qkv_bias=bias, o_bias=bias)


apertus = Family("apertus", ("apertus",), APERTUS_ROLES, _completed("apertus", _apertus), LLAMA_KEYS, "ApertusForCausalLM")


def _apertus1p5(hf):
    out_vocab = hf.get("output_vocab_size")
    if out_vocab is not None and int(out_vocab) != int(hf["vocab_size"]):
        raise ConfigError(f"apertus1p5_text config sets output_vocab_size={out_vocab} (a pruned LM head narrower than "
                          f"the vocab, {hf['vocab_size']}): not supported")
    return _apertus(hf)


apertus1p5_text = Family("apertus1p5_text", ("apertus1p5_text",), APERTUS_ROLES,
                         _completed("apertus1p5_text", _apertus1p5), LLAMA_KEYS, "Apertus1p5TextForCausalLM")
"""Apertus 1.5's text decoder: Apertus's block and names; a pruned head (output_vocab_size) is refused."""

NANOCHAT_ROLES = (
    Role("model.embed_tokens.weight", "embed", (in_("vocab"), out("hidden"))),
    Role("lm_head.weight", "lm_head", (out("vocab"), in_("hidden"))),
)
NANOCHAT_ROLES += attention(f"{L}.self_attn", bias=True, o_bias=True) + plain_mlp(f"{L}.mlp", "fc1", "fc2")


def _nanochat(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(hf, "nanochat", mlp="plain", act=hf.get("hidden_act") or "relu2", qk_norm="head",
                           qk_norm_after_rope=True, rope_reverse=True, embed_norm=True,
                           final_softcap=_float(hf, "final_logit_softcapping", 0.0), qkv_bias=bias, o_bias=bias)


nanochat = Family("nanochat", ("nanochat",), NANOCHAT_ROLES, _completed("nanochat", _nanochat), LLAMA_KEYS, "NanoChatForCausalLM")
"""Every norm is a weightless RMS norm (the embeddings' included); qk-norm after RoPE."""

FAMILIES = (granite, hyperclovax, helium, ernie4_5, seed_oss, ministral, ministral3, cwm, exaone, arcee, jais2, nemotron,
            apertus, apertus1p5_text, nanochat)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
TINY = {
    "granite": dict(_DIMS, attention_bias=True, mlp_bias=True, embedding_multiplier=3.0, residual_multiplier=0.5,
                    logits_scaling=4.0, attention_multiplier=0.2),
    "hyperclovax": dict(_DIMS, attention_bias=True, mlp_bias=True, embedding_multiplier=2.0, residual_multiplier=0.7,
                        logits_scaling=0.5, attention_multiplier=0.3, use_post_norm=True),
    "helium": dict(_DIMS, head_dim=8, attention_bias=True, mlp_bias=True),
    "ernie4_5": dict(_DIMS, head_dim=8, use_bias=True, tie_word_embeddings=True),
    "seed_oss": dict(_DIMS, head_dim=8, attention_bias=True, attention_out_bias=True, mlp_bias=True),
    "ministral": dict(_DIMS, head_dim=8, sliding_window=4, num_hidden_layers=3,
                      layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "cwm": dict(_DIMS, head_dim=8, sliding_window=4, num_hidden_layers=3, mlp_bias=True,
                rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0, original_max_position_embeddings=16)),
    "exaone": dict(_DIMS, attention_bias=True, mlp_bias=True),
    "arcee": dict(_DIMS, attention_bias=True, mlp_bias=True),
    "jais2": dict(_DIMS),
    "nemotron": dict(_DIMS, attention_bias=True, mlp_bias=True,
                     rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5)),
    "apertus": dict(_DIMS, attention_bias=True, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=16)),
    "apertus1p5_text": dict(_DIMS, attention_bias=True, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    "ministral3": dict(_DIMS, head_dim=8, sliding_window=4, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=4, beta_fast=32.0,
        beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0, llama_4_scaling_beta=0.1)),
    "nanochat": dict(_DIMS, attention_bias=True, final_logit_softcapping=15.0),
}
"""Tiny configs of every type these families grow (``families.TINY``)."""

__all__ = ["FAMILIES", "TINY", "apertus", "arcee", "cwm", "ernie4_5", "exaone", "granite", "helium", "hyperclovax", "jais2",
           "ministral", "ministral3", "apertus1p5_text", "nanochat", "nemotron", "seed_oss"]
