"""Dense decoders with their own attention or block layout: diffllama (differential attention),
gemma4_text and gemma4_unified_text (Gemma 3's sandwich block with plain RMS gains, value norms,
unit attention scale, a stored per-layer output scalar; full layers with their own head size
(global_head_dim) and kv heads, reading their keys as values under attention_k_eq_v; the MoE
block, per-layer input embeddings and KV sharing refused by key), doge (dynamic-mask attention:
a bias per kv head on each key from its values, top keep_window_size keys; learned residual
gains; its cross-domain MoE refused)."""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import ConfigError
from ..spec import DecoderConfig, Family, Role, implicit_head_dim, in_, out
from ._common import LLAMA_KEYS, attention, embeddings, gated_mlp, has, norm, read_llama_like
from .patterns import _sliding, _types, per_type_rope

L = "model.layers.{i}"

# ---------------------------------------------------------------- diffllama

DQ = "2*kv_half*q_per_kv*head_dim"  # query head h = (half, kv head of the half, its query): h and h + heads/2 a pair
DKV = "2*kv_half*head_dim"
DOUT = "kv_half*q_per_kv*2*head_dim"  # per pair (the first half's query head), its outputs of the two value halves
A = f"{L}.self_attn"
DIFF_ROLES = (
    embeddings("model.embed_tokens.weight")
    + tuple(Role(f"{A}.{p}_proj.weight", f"attn.{p}", (out(ax), in_("hidden")))
            for p, ax in (("q", DQ), ("k", DKV), ("v", DKV)))
    + tuple(Role(f"{A}.{p}_proj.bias", f"attn.{p}.bias", (out(ax),), when=has("qkv_bias"))
            for p, ax in (("q", DQ), ("k", DKV), ("v", DKV)))
    + (
        Role(f"{A}.o_proj.weight", "attn.o", (out("hidden"), in_(DOUT)), writer=True),
        Role(f"{A}.o_proj.bias", "attn.o.bias", (out("hidden"),), writer=True, when=has("o_bias")),
    )
    + tuple(Role(f"{A}.lambda_{n}", f"attn.lambda_{n}", (out("head_dim"),)) for n in ("q1", "k1", "q2", "k2"))
    + gated_mlp(f"{L}.mlp", bias=False)
    + norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
)


def _diffllama(hf):
    heads = int(hf.get("num_attention_heads") or 0)
    kv = int(hf.get("num_key_value_heads") or heads)
    if kv % 2:
        raise ConfigError(f"diffllama: num_key_value_heads ({kv}) must be even (differential attention splits the "
                          "values in two halves of the kv heads)")
    if float(hf.get("attention_dropout") or 0.0):
        raise ConfigError("diffllama: attention_dropout > 0 has no differential-attention semantics (transformers "
                          "refuses it too)")
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(hf, "diffllama", qkv_bias=bias, o_bias=bias, diff_attn=True)


diffllama = Family(
    "diffllama", ("diffllama",), DIFF_ROLES, _diffllama, LLAMA_KEYS, "DiffLlamaForCausalLM",
    depth_inexact="DiffLlama's lambda_init = 0.8 - 0.6 exp(-0.3 i) is a function of the layer index i, so an "
                  "inserted layer shifts the lambda of every later layer; restoring it would need a weight change "
                  "that depends on the weights' values (log(exp(lambda_q2 . lambda_k2) + shift)), which a growth "
                  "plan's copies and scales cannot express",
)

# ---------------------------------------------------------------- gemma4_text

def _has_v(cfg: DecoderConfig, i: int) -> bool:
    """Whether layer i has a value projection (under attention_k_eq_v full layers read their keys)."""
    return not (cfg.k_eq_v and cfg.layer_types and cfg.layer_types[i] == "full_attention")


def _g4_attention(hd: str, kind_of, when=None, kv_dim: str = "kv_heads") -> tuple:
    """q/k/v/o (and biases) and the q/k norms of the layers ``kind_of(cfg, i)`` holds, heads of size
    ``hd``, ``kv_dim`` kv heads, in configs ``when`` accepts."""
    a, q, kv = f"{L}.self_attn", f"kv_heads*q_per_kv*{hd}", f"{kv_dim}*{hd}"

    def has_v(cfg, i):
        return kind_of(cfg, i) and _has_v(cfg, i)

    def biased(cfg):
        return cfg.qkv_bias and (when is None or when(cfg))
    return (
        Role(f"{a}.q_proj.weight", "attn.q", (out(q), in_("hidden")), on_layer=kind_of, when=when),
        Role(f"{a}.k_proj.weight", "attn.k", (out(kv), in_("hidden")), on_layer=kind_of, when=when),
        Role(f"{a}.v_proj.weight", "attn.v", (out(kv), in_("hidden")), on_layer=has_v, when=when),
        Role(f"{a}.o_proj.weight", "attn.o", (out("hidden"), in_(q)), writer=True, on_layer=kind_of, when=when),
        Role(f"{a}.q_proj.bias", "attn.q.bias", (out(q),), when=biased, on_layer=kind_of),
        Role(f"{a}.k_proj.bias", "attn.k.bias", (out(kv),), when=biased, on_layer=kind_of),
        Role(f"{a}.v_proj.bias", "attn.v.bias", (out(kv),), when=biased, on_layer=has_v),
        Role(f"{a}.q_norm.weight", "attn.q_norm", (out(hd),), on_layer=kind_of, when=when),
        Role(f"{a}.k_norm.weight", "attn.k_norm", (out(hd),), on_layer=kind_of, when=when),
    )


def _full(cfg: DecoderConfig, i: int) -> bool:
    return cfg.layer_types[i] == "full_attention"


def _own_full(cfg: DecoderConfig) -> bool:
    """Whether the full layers' heads differ from the sliding layers' (size or kv count)."""
    return bool(cfg.full_head_dim or cfg.full_kv_heads)


def _full_dims(cfg: DecoderConfig) -> tuple:
    return ("full_head_dim" if cfg.full_head_dim else "head_dim", "full_kv" if cfg.full_kv_heads else "kv_heads")


GEMMA4_ROLES = (
    embeddings("model.embed_tokens.weight")
    # one head size and kv head count everywhere, or full layers of their own (full_head_dim: global_head_dim;
    # full_kv: num_global_key_value_heads)
    + _g4_attention("head_dim", lambda cfg, i: not (_own_full(cfg) and _full(cfg, i)))
    + sum((_g4_attention(hd, lambda cfg, i: _own_full(cfg) and _full(cfg, i),
                         lambda cfg, hd=hd, kv=kv: _full_dims(cfg) == (hd, kv), kv)
           for hd in ("head_dim", "full_head_dim") for kv in ("kv_heads", "full_kv")
           if (hd, kv) != ("head_dim", "kv_heads")), ())
    + (Role(f"{L}.self_attn.o_proj.bias", "attn.o.bias", (out("hidden"),), writer=True, when=has("o_bias")),)
    + gated_mlp(f"{L}.mlp", bias=False)
    + norm(f"{L}.input_layernorm", "norm.attn_in")
    + norm(f"{L}.post_attention_layernorm", "norm.attn_out")
    + norm(f"{L}.pre_feedforward_layernorm", "norm.mlp_in")
    + norm(f"{L}.post_feedforward_layernorm", "norm.mlp_out")
    + (
        Role(f"{L}.layer_scalar", "layer.scalar", (out("1"),), identity=1.0),
    )
)
_G4 = {"rms_norm_eps": 1e-6, "num_key_value_heads": 4, "head_dim": 256, "tie_word_embeddings": True,
       "hidden_activation": "gelu_pytorch_tanh"}
GEMMA4_DEFAULTS = {
    "gemma4_text": dict(_G4, sliding_window=512, max_position_embeddings=131072, hidden_size_per_layer_input=256),
    "gemma4_unified_text": dict(_G4, sliding_window=1024, max_position_embeddings=262144),
}
"""The config classes' defaults for the keys the reader needs (a config.json may leave them out);
Gemma4UnifiedTextConfig has no per-layer input embeddings and no MoE block."""
GEMMA4_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}
"""Gemma4TextConfig's RoPE per layer type where the config has none."""


def _gemma4_refuse(hf: Mapping[str, Any], head_dim: int, kv: int, types: tuple) -> tuple:
    """Refuses what the decoder lacks; returns the full layers' head size and kv heads."""
    mt = hf.get("model_type") or "gemma4_text"
    if hf.get("enable_moe_block"):
        raise ConfigError(f"{mt}: enable_moe_block=True is not supported (Gemma 4's MoE block runs beside the dense "
                          "MLP: its router RMS-norms and rescales the residual (router.scale, per_expert_scale), and "
                          "the two outputs are summed under their own norms)")
    if hf.get("hidden_size_per_layer_input"):
        raise ConfigError(f"{mt}: hidden_size_per_layer_input={hf['hidden_size_per_layer_input']!r} is not supported "
                          "(per-layer input embeddings: a table packing every layer's input, whose projection is "
                          "scaled by hidden_size ** -0.5); only configs with it 0 grow")
    if hf.get("num_kv_shared_layers"):
        raise ConfigError(f"{mt}: num_kv_shared_layers={hf['num_kv_shared_layers']!r} is not supported (later "
                          "layers reuse earlier layers' keys and values)")
    if hf.get("use_bidirectional_attention") not in (None, "vision"):  # "vision": text tokens stay causal
        raise ConfigError(f"{mt}: use_bidirectional_attention={hf['use_bidirectional_attention']!r} is not "
                          "supported (a causal decoder only)")
    overrides = hf.get("per_layer_config")
    if overrides is None:  # the class puts global_head_dim (default 512) on its full layers, and under
        # attention_k_eq_v num_global_key_value_heads
        full_kv = hf.get("num_global_key_value_heads") if hf.get("attention_k_eq_v") else None
        return int(hf.get("global_head_dim") or 512), int(full_kv or kv)
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{mt}: per_layer_config must be a mapping, not {type(overrides).__name__}")
    full, full_kv = set(), set()
    for layer, o in overrides.items():
        if not isinstance(o, Mapping):
            raise ConfigError(f"{mt}: per_layer_config[{layer!r}] must be a mapping")
        try:
            kind = types[int(layer)]
        except (ValueError, IndexError):
            raise ConfigError(f"{mt}: per_layer_config has no layer {layer!r}") from None
        for key, value in o.items():
            own = {"head_dim": head_dim, "num_key_value_heads": kv}.get(key)
            if kind == "full_attention" and own is not None and isinstance(value, int) and value > 0:
                (full if key == "head_dim" else full_kv).add(value)
            elif value != own:
                raise ConfigError(f"{mt}: per_layer_config[{layer!r}] sets {key}={value!r}; only the full layers' "
                                  f"head_dim and num_key_value_heads may differ from the config's")
    if len(full) > 1 or len(full_kv) > 1:
        raise ConfigError(f"{mt}: per_layer_config gives the full layers head sizes {sorted(full)} and kv heads "
                          f"{sorted(full_kv)}; one of each is supported")
    full_layers = sum(t == "full_attention" for t in types)
    counts = [sum(1 for layer, o in overrides.items() if key in o and types[int(layer)] == "full_attention")
              for key in ("head_dim", "num_key_value_heads")]
    if any(c not in (0, full_layers) for c in counts):
        raise ConfigError(f"{mt}: per_layer_config overrides some full layers and not others; one kind of full "
                          "layer is supported")
    return (full.pop() if full else head_dim), (full_kv.pop() if full_kv else kv)


def _gemma4(hf, family: str = "gemma4_text") -> DecoderConfig:
    defaults = GEMMA4_DEFAULTS[family]
    hf = {**defaults, **{k: v for k, v in hf.items() if v is not None or k not in defaults}}
    layers = int(hf["num_hidden_layers"])
    types = list(_types(hf, layers, lambda i: "sliding_attention" if (i + 1) % 6 else "full_attention"))
    types[-1] = "full_attention"  # transformers forces the last layer's type
    types = tuple(types)
    hd = implicit_head_dim(hf, int(hf["hidden_size"]), int(hf["num_attention_heads"]))
    kv = int(hf.get("num_key_value_heads") or hf["num_attention_heads"])
    heads = int(hf["num_attention_heads"])
    full_hd, full_kv = _gemma4_refuse(hf, hd, kv, types) if "full_attention" in types else (hd, kv)
    if heads % full_kv:
        raise ConfigError(f"{hf.get('model_type')}: the full layers' {full_kv} kv heads do not divide "
                          f"num_attention_heads={heads}")
    positions = int(hf.get("max_position_embeddings") or 131072)
    # Gemma 4's default RoPE spans the whole head whatever partial_rotary_factor says (transformers ignores it)
    rp = hf.get("rope_parameters") or GEMMA4_ROPE
    if isinstance(rp, Mapping):
        rp = {t: {k: v for k, v in p.items() if not (k == "partial_rotary_factor" and p.get("rope_type", "default")
                                                      == "default")} if isinstance(p, Mapping) else p
              for t, p in rp.items()}
    rope_hf = dict(hf, rope_parameters=rp)
    rope = per_type_rope(rope_hf, full_hd, positions, 1_000_000.0, 10_000.0)  # the full layers' fields
    if full_hd != hd:  # the sliding layers' fields over their own head size
        own = per_type_rope(rope_hf, hd, positions, 1_000_000.0, 10_000.0)
        sliding = dict(own["rope_sliding"]) or {k: own[k] for k in ("rope_theta", "rotary_dim", "rope_type",
                                                                     "rope_scaling")}
        full = {k: rope[k] for k in sliding}
        rope = dict(rope, rope_sliding=tuple(sorted(sliding.items())) if sliding != full else ())
    bias = bool(hf.get("attention_bias", False))
    cfg = read_llama_like(
        dict(hf, rope_parameters=None, rope_scaling=None), family, placement="sandwich", qk_norm="head",
        v_norm=True, attn_scale=1.0, embed_scale=True, act=hf.get("hidden_activation") or "gelu_pytorch_tanh",
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), qkv_bias=bias, o_bias=bias,
        k_eq_v=bool(hf.get("attention_k_eq_v")), full_head_dim=full_hd if full_hd != hd else 0,
        full_kv_heads=full_kv if full_kv != kv else 0,
        final_softcap=float(hf.get("final_logit_softcapping") or 0.0), **_sliding(hf, types),
    )
    return DecoderConfig(**dict(cfg.to_dict(), **rope))


def _gemma4_layers(out_cfg: dict, new: DecoderConfig) -> None:
    """The grown config's per_layer_config, where the source had one: the full layers' head size
    on the grown model's full layers (kv heads: the config's own; nothing else is read)."""
    full = dict(head_dim=new.full_head_dim, num_key_value_heads=new.full_kv_heads)
    full = {k: v for k, v in full.items() if v}
    if out_cfg.get("per_layer_config"):
        out_cfg["per_layer_config"] = {str(i): dict(full) for i, t in enumerate(new.layer_types)
                                       if t == "full_attention" and full}
    if out_cfg.get("num_global_key_value_heads") is not None:
        out_cfg["num_global_key_value_heads"] = new.full_kv_heads or new.kv_heads


GEMMA4_KEYS = LLAMA_KEYS
"""num_global_key_value_heads and per_layer_config: written by ``_gemma4_layers``."""

gemma4_text = Family("gemma4_text", ("gemma4_text",), GEMMA4_ROLES, _gemma4, GEMMA4_KEYS,
                     "Gemma4ForCausalLM", rope_keys=(), write_layers=_gemma4_layers)
gemma4_unified_text = Family("gemma4_unified_text", ("gemma4_unified_text",), GEMMA4_ROLES,
                             lambda hf: _gemma4(hf, "gemma4_unified_text"), GEMMA4_KEYS, "Gemma4UnifiedForCausalLM",
                             rope_keys=(), write_layers=_gemma4_layers)
"""The same text decoder without per-layer input embeddings or MoE (its own causal-LM class)."""

# ---------------------------------------------------------------- doge

DA = f"{L}.self_attn"
DOGE_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(DA, bias=True, o_bias=True)
    + gated_mlp(f"{L}.mlp")
    + norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
    + (
        Role(f"{DA}.q_norm.weight", "attn.q_norm", (out("head_dim"),)),
        Role(f"{DA}.k_norm.weight", "attn.k_norm", (out("head_dim"),)),
        # the dynamic mask reads every kv head's values; its output picks keys (top-k): no noise
        Role(f"{DA}.dt_proj.weight", "attn.dt", (out("kv_heads"), in_("kv_heads*head_dim")), noiseless=True),
        Role(f"{DA}.dt_proj.bias", "attn.dt.bias", (out("kv_heads"),), when=has("qkv_bias"), noiseless=True),
        Role(f"{DA}.A", "attn.dt_a", (out("kv_heads"),)),
        Role(f"{L}.input_residual", "res.attn", (out("hidden"),), identity=1.0),
        Role(f"{L}.post_attention_residual", "res.mlp", (out("hidden"),), identity=1.0),
    )
)


def _doge(hf) -> DecoderConfig:
    if hf.get("is_moe"):
        raise ConfigError("doge: is_moe=True is not supported (its cross-domain MoE: a dense MLP plus product-key "
                          "retrieval of single-neuron experts, num_experts a square, whose key halves do not grow)")
    keep = hf.get("keep_window_size", 2048)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ConfigError(f"doge: keep_window_size must be a positive integer, not {keep!r}")
    window = hf.get("sliding_window")
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(
        {"rms_norm_eps": 1e-6, **{k: v for k, v in hf.items() if v is not None}}, "doge", qk_norm="head",
        qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)), dyn_keep=keep,
        sliding_window=int(window or 0), layer_types=("sliding_attention",) * int(hf["num_hidden_layers"])
        if window else (),
    )


doge = Family("doge", ("doge",), DOGE_ROLES, _doge, LLAMA_KEYS, "DogeForCausalLM")

FAMILIES = (diffllama, gemma4_text, gemma4_unified_text, doge)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
TINY = {
    "diffllama": dict(_DIMS, attention_bias=True),
    "gemma4_text": dict(_DIMS, num_hidden_layers=3, head_dim=16, global_head_dim=32, sliding_window=4,
                        layer_types=["sliding_attention", "full_attention", "full_attention"],
                        hidden_size_per_layer_input=0, attention_bias=True, final_logit_softcapping=15.0,
                        tie_word_embeddings=True),
    "doge": dict(_DIMS, attention_bias=True, mlp_bias=True, keep_window_size=4),
    "gemma4_unified_text": dict(_DIMS, num_hidden_layers=3, head_dim=16, global_head_dim=16, sliding_window=4,
                                layer_types=["sliding_attention", "full_attention", "full_attention"],
                                final_logit_softcapping=15.0, tie_word_embeddings=True, attention_k_eq_v=True,
                                num_global_key_value_heads=1),
}
"""Tiny configs of every type these families grow (``families.TINY``)."""

__all__ = ["FAMILIES", "TINY", "diffllama", "gemma4_text", "gemma4_unified_text", "doge"]
