"""Values checked where they enter: config.json fields and command-line numbers.

The family readers convert with ``int()`` / ``float()`` / ``bool()``, which would
turn 64.7 into 64, "true" into True and -1e-5 into a working epsilon.  Every key
a family reads is checked here first, by type and range, so a bad value is
refused with the key's name instead of producing a different model, a huge
allocation or an exception deep in the planner.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from ..errors import ConfigError, UsageError

MAX_DIM = 2**22
"""Largest size of any dim (hidden, ffn, vocab, heads, ...), before and after growth: 4M,
well past every published model, small enough to be refused before allocating."""
MAX_LAYERS = 4096
MAX_POSITIONS = 2**31 - 1
MAX_RATIO = 1024.0
MAX_SEQ = 65536

_SIZE = ("int", 1, MAX_DIM)
_SCHEMA: dict = {
    "hidden_size": _SIZE, "intermediate_size": _SIZE, "ffn_dim": _SIZE, "num_attention_heads": _SIZE,
    "num_key_value_heads": _SIZE, "head_dim": _SIZE, "vocab_size": _SIZE, "word_embed_proj_dim": _SIZE,
    "num_hidden_layers": ("int", 1, MAX_LAYERS),
    "max_position_embeddings": ("int", 1, MAX_POSITIONS),
    "original_max_position_embeddings": ("int", 1, MAX_POSITIONS),
    "num_local_experts": ("int", 1, 4096), "num_experts_per_tok": ("int", 1, 4096),
    "sliding_window": ("int", 0, MAX_POSITIONS), "max_window_layers": ("int", 0, MAX_LAYERS),
    "rms_norm_eps": ("pos", 0.0, 1.0), "layer_norm_eps": ("pos", 0.0, 1.0),
    "rope_theta": ("pos", 0.0, 1e12), "rotary_emb_base": ("pos", 0.0, 1e12),
    "rotary_pct": ("pos", 0.0, 1.0), "partial_rotary_factor": ("pos", 0.0, 1.0),
    "attn_logit_softcapping": ("pos", 0.0, 1e6), "final_logit_softcapping": ("pos", 0.0, 1e6),
    "clip_qkv": ("pos", 0.0, 1e6), "query_pre_attn_scalar": ("pos", 0.0, 1e12),
    "tie_word_embeddings": ("bool",), "do_layer_norm_before": ("bool",), "use_parallel_residual": ("bool",),
    "attention_bias": ("bool",), "enable_bias": ("bool",), "use_sliding_window": ("bool",),
    "mlp_bias": ("bool",), "layer_norm_elementwise_affine": ("bool",), "_remove_final_layer_norm": ("bool",),
    "hidden_act": ("str",), "hidden_activation": ("str",), "activation_function": ("str",),
    "rope_parameters": ("dict",), "rope_scaling": ("dict",), "layer_types": ("list",),
    # phi, stablelm, starcoder2, persimmon, cohere, cohere2, falcon, gptj, codegen (families/parallel.py)
    "qk_layernorm": ("bool",), "use_qkv_bias": ("bool",), "use_bias": ("bool",), "use_qk_norm": ("bool",),
    "multi_query": ("bool",), "parallel_attn": ("bool",), "new_decoder_architecture": ("bool",), "alibi": ("bool",),
    "bias": ("bool",), "norm_epsilon": ("pos", 0.0, 1.0), "layer_norm_epsilon": ("pos", 0.0, 1.0),
    "logit_scale": ("pos", 0.0, 1e6), "sliding_window_pattern": ("int", 0, MAX_LAYERS),
    "num_ln_in_parallel_attn": ("int", 1, 2), "ffn_hidden_size": _SIZE, "num_kv_heads": _SIZE, "activation": ("str",),
    "n_embd": _SIZE, "n_inner": _SIZE, "n_head": _SIZE, "n_layer": ("int", 1, MAX_LAYERS),
    "n_positions": ("int", 1, MAX_POSITIONS), "rotary_dim": _SIZE,
    # Granite's multipliers and the other Llama-like families (families/llamalike.py)
    "embedding_multiplier": ("pos", 0.0, 1e6), "residual_multiplier": ("pos", 0.0, 1e6),
    "logits_scaling": ("pos", 0.0, 1e6), "attention_multiplier": ("pos", 0.0, 1e6), "use_post_norm": ("bool",),
    "attention_out_bias": ("bool",), "norm_eps": ("pos", 0.0, 1.0), "num_layers": ("int", 1, MAX_LAYERS),
    "output_vocab_size": _SIZE,
    # multi-head latent attention and DeepSeek's MoE (families/latent.py)
    "kv_lora_rank": _SIZE, "q_lora_rank": _SIZE, "qk_nope_head_dim": ("int", 0, MAX_DIM), "qk_rope_head_dim": _SIZE,
    "v_head_dim": _SIZE, "n_routed_experts": ("int", 1, 4096), "n_shared_experts": ("int", 0, 4096),
    "first_k_dense_replace": ("int", 0, MAX_LAYERS), "n_group": ("int", 1, 4096),
    "topk_group": ("int", 1, 4096), "routed_scaling_factor": ("pos", 0.0, 1e6), "norm_topk_prob": ("bool",),
    "rope_interleave": ("bool",), "topk_method": ("str",), "index_topk": ("int", 1, MAX_POSITIONS),
    "index_n_heads": _SIZE, "index_head_dim": _SIZE, "scale_emb": ("pos", 0.0, 1e6), "scale_depth": ("pos", 0.0, 1e6),
    "dim_model_base": _SIZE,
    # MoE families (families/moe.py)
    "moe_intermediate_size": _SIZE, "shared_expert_intermediate_size": ("int", 0, MAX_DIM),
    "shared_intermediate_size": ("int", 0, MAX_DIM), "decoder_sparse_step": ("int", 1, MAX_LAYERS),
    "moe_num_experts": ("int", 1, 4096), "moe_k": ("int", 1, 4096), "moe_num_shared_experts": ("int", 0, 4096),
    "moe_layer_start_index": ("int", 0, MAX_LAYERS), "moe_layer_interval": ("int", 1, MAX_LAYERS),
    "qkv_bias": ("bool",), "lm_head_bias": ("bool",),
    # diffllama, gemma4_text / gemma4_unified_text, doge (families/dense_extra.py)
    "attention_dropout": ("num", 0.0, 1.0), "keep_window_size": ("int", 1, MAX_POSITIONS), "is_moe": ("bool",),
    "enable_moe_block": ("bool",), "hidden_size_per_layer_input": ("int", 0, MAX_DIM),
    "num_kv_shared_layers": ("int", 0, MAX_LAYERS), "attention_k_eq_v": ("bool",), "global_head_dim": _SIZE,
    # glm4_moe, sarvam_moe, param2moe, minimax_m2, exaone_moe, afmoe, kolibri1, hy_v3, laguna, jetmoe (families/moe_extra.py)
    # num_experts: up to 2**20 -- DogeConfig's default is 16384 (its product-key MoE, off unless is_moe), in
    # every doge config.json
    "num_experts": ("int", 0, 2**20), "num_shared_experts": ("int", 0, 4096), "route_scale": ("pos", 0.0, 1e6),
    "num_dense_layers": ("int", 0, MAX_LAYERS), "global_attn_every_n_layers": ("int", 1, MAX_LAYERS),
    "mup_enabled": ("bool",), "router_scaling_factor": ("pos", 0.0, 1e6), "moe_routed_scaling_factor": ("pos", 0.0, 1e6),
    "moe_router_logit_softcapping": ("num", 0.0, 1e6), "moe_apply_router_weight_on_input": ("bool",),
    "kv_channels": _SIZE, "first_dense_intermediate_size": _SIZE, "num_dense_blocks": ("int", 0, MAX_LAYERS),
    "global_attention_every_n_layers": ("int", 1, MAX_LAYERS), "global_attention_scale": ("pos", 0.0, 1e6),
}
_ROPE_KEYS = ("rope_theta", "partial_rotary_factor")
LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention", "indexed_attention")
"""chunked: Llama 4; indexed: DeepSeek sparse attention (V3.2, GLM-MoE-DSA); each reader checks its own."""


def _bad(path, key, value, want) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return ConfigError(f"{path}: {key} = {shown} is invalid: it must be {want}; fix config.json")


_NOT_NULL = frozenset({"rope_theta", "rotary_emb_base", "partial_rotary_factor", "rotary_pct"})
"""Keys the readers convert without a fallback for null."""


def _check(path, key: str, value, rule) -> None:
    kind = rule[0]
    if value is None and key.rpartition(".")[2] not in _NOT_NULL:
        return  # absent: the family's default applies
    if kind == "int":
        lo, hi = rule[1], rule[2]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
            raise _bad(path, key, value, f"an integer in [{lo}, {hi}]")
        if not lo <= value <= hi:
            raise _bad(path, key, value, f"an integer in [{lo}, {hi}]")
    elif kind == "pos":
        lo, hi = rule[1], rule[2]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo < value <= hi:  # (None lands here too, for the keys that may not be null)
            raise _bad(path, key, value, f"a finite number > {lo:g} and <= {hi:g}")
    elif kind == "num":  # a finite number in [lo, hi]
        lo, hi = rule[1], rule[2]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise _bad(path, key, value, f"a number in [{lo:g}, {hi:g}]")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _bad(path, key, value, "true or false")
    elif kind == "str":
        if not isinstance(value, str) or not value or len(value) > 200:
            raise _bad(path, key, value, "a non-empty name")
    elif kind == "dict":
        if not isinstance(value, dict):
            raise _bad(path, key, value, "an object (or null)")
        for k in _ROPE_KEYS:
            if k in value:
                _check(path, f"{key}.{k}", value[k], _SCHEMA[k])
        if "rope_type" in value and value["rope_type"] is not None and not isinstance(value["rope_type"], str):
            raise _bad(path, f"{key}.rope_type", value["rope_type"], "a name")
        if "type" in value and value["type"] is not None and not isinstance(value["type"], str):
            raise _bad(path, f"{key}.type", value["type"], "a name")
    elif kind == "list":
        if not isinstance(value, list) or not all(v in LAYER_TYPES for v in value):
            raise _bad(path, key, value, f"a list of {' / '.join(LAYER_TYPES)}")


def check_config(hf: Mapping[str, Any], path: str = "config.json") -> None:
    """Refuse a config whose fields a family reads have the wrong type or range."""
    if not isinstance(hf, Mapping):
        raise ConfigError(f"{path}: expected a JSON object")
    mt = hf.get("model_type")
    if not isinstance(mt, str) or not mt:
        raise ConfigError(f"{path}: model_type must be a name such as \"llama\"; fix config.json")
    for key, rule in _SCHEMA.items():
        if key in hf:
            _check(path, key, hf[key], rule)
    layers, types = hf.get("num_hidden_layers"), hf.get("layer_types")
    if types and layers is not None and len(types) != layers:
        raise ConfigError(f"{path}: layer_types lists {len(types)} layers, num_hidden_layers is {layers}")
    heads, kv = hf.get("num_attention_heads"), hf.get("num_key_value_heads")
    if heads and kv and heads % kv:
        raise ConfigError(f"{path}: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})")
    hidden = hf.get("hidden_size")
    if heads and hidden and not hf.get("head_dim") and hidden % heads:
        raise ConfigError(f"{path}: hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads}) "
                          "and there is no head_dim")
    k, e = hf.get("num_experts_per_tok"), hf.get("num_local_experts")
    if k and e and k > e:
        raise ConfigError(f"{path}: num_experts_per_tok ({k}) exceeds num_local_experts ({e})")
    for key in ("hidden_act", "hidden_activation", "activation_function"):
        if isinstance(hf.get(key), str):
            _check_activation(path, key, hf[key])


def _check_activation(path, key: str, name: str) -> None:
    from . import decoder

    try:
        decoder.activation_key(name)
    except (ValueError, KeyError, ConfigError) as exc:
        raise ConfigError(f"{path}: {key} = {name!r}: {exc}") from None


def read_model(hf: Mapping[str, Any], path: str = "config.json") -> tuple:
    """(family, DecoderConfig) of an HF config, every value checked first.  Whatever
    a family reader still finds wrong comes out as a ConfigError naming the file."""
    from .families import family_for_config

    check_config(hf, path)
    family = family_for_config(hf)
    try:
        cfg = family.read(hf)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError, OverflowError) as exc:
        raise ConfigError(f"{path}: unsupported {family.name} config ({type(exc).__name__}: {exc})") from None
    return family, cfg


# ---------------------------------------------------------------- command-line numbers


def finite(option: str, text, lo: Optional[float] = None, hi: Optional[float] = None,
           lo_open: bool = False) -> float:
    """A float option: finite and within [lo, hi] (``lo_open``: > lo)."""
    try:
        x = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {text!r}: not a number") from None
    if not math.isfinite(x):
        raise UsageError(f"{option} {text!r}: must be a finite number")
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise UsageError(f"{option} {text!r}: must be {'>' if lo_open else '>='} {lo:g}")
    if hi is not None and x > hi:
        raise UsageError(f"{option} {text!r}: must be <= {hi:g}")
    return x


def integer(option: str, text, lo: int, hi: int) -> int:
    """An integer option within [lo, hi] (no silent rounding of 2.5)."""
    try:
        x = int(str(text).strip(), 10)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {text!r}: not an integer") from None
    if not lo <= x <= hi:
        raise UsageError(f"{option} {text!r}: must be between {lo} and {hi}")
    return x


def depth(text) -> str:
    """``--layers``: a total depth N or ``+K`` more, both bounded by MAX_LAYERS."""
    s = str(text).strip()
    if s.startswith("+"):
        return "+" + str(integer("--layers", s[1:], 0, MAX_LAYERS))
    return str(integer("--layers", s, 1, MAX_LAYERS))


__all__ = ["MAX_DIM", "MAX_LAYERS", "MAX_RATIO", "MAX_SEQ", "check_config", "depth", "finite", "integer",
           "read_model"]
