"""RoPE variants, once for every family and every backend.

Every ``rope_type`` transformers implements (``modeling_rope_utils.ROPE_INIT_FUNCTIONS``
plus ``default``): a config reader turns an HF config into the decoder's RoPE fields
(``rope_theta``, ``rotary_dim``, ``rope_type`` and ``rope_scaling``: the type's
parameters as sorted ``(key, value)`` pairs, hashable so tracing backends can key
compiled programs by the config), and ``inv_freq`` gives the inverse frequencies and
the attention factor the decoder's host tables are built from (float64 numpy).

Everything transformers derives from other config keys (a YaRN or LongRoPE factor from
``max_position_embeddings``, the attention factor, ``original_max_position_embeddings``
defaults) is resolved when the config is read, so the tables depend on the decoder
config alone and growth (which never changes ``head_dim`` or positions under RoPE)
keeps them exact.  Two variants depend on the sequence length T of a forward:
``dynamic`` (NTK base rescaled past ``max_position_embeddings``) and ``longrope``
(long factors past ``original_max_position_embeddings``).  transformers keeps that
state across calls (a dynamic model that once saw a longer sequence keeps its
frequencies until T drops below the original length); here a forward of length T
gets transformers' frequencies for a fresh model at length T.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..errors import ConfigError


def freeze(value):
    """Lists (and JSON's lists of pairs) as tuples, all the way down: hashable."""
    return tuple(freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def _base_inv(theta: float, dim: int) -> np.ndarray:
    return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def _default(p, theta, dim, head_dim, T):
    return _base_inv(theta, dim), 1.0


def _linear(p, theta, dim, head_dim, T):
    return _base_inv(theta, dim) / p["factor"], 1.0


def _dynamic(p, theta, dim, head_dim, T):
    # NTK-aware base, rescaled once the sequence passes max_position_embeddings
    max_pos, factor = p["max_position_embeddings"], p["factor"]
    seq = max(T, max_pos)
    base = theta * ((factor * seq / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    return _base_inv(base, dim), 1.0


def _yarn(p, theta, dim, head_dim, T):
    factor, orig = p["factor"], p["original_max_position_embeddings"]
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = 1.0 - ramp
    base = _base_inv(theta, dim)
    inv = (base / factor) * (1 - extrapolation) + base * extrapolation
    return inv, p["attention_factor"]


def _longrope(p, theta, dim, head_dim, T):
    ext = p["long_factor"] if T > p["original_max_position_embeddings"] else p["short_factor"]
    ext = np.asarray(ext, dtype=np.float64)
    return 1.0 / (ext * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)), p["attention_factor"]


def _llama3(p, theta, dim, head_dim, T):
    inv = _base_inv(theta, dim)
    factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    orig = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = orig / lo, orig / hi
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (orig / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled), 1.0


def _proportional(p, theta, dim, head_dim, T):
    # Gemma-4 style: frequencies over the whole head (exponent / head_dim), the
    # unrotated share as zero frequencies; the table spans head_dim
    angles = int(p.get("partial_rotary_factor", 1.0) * head_dim // 2)
    inv = 1.0 / (theta ** (np.arange(0, 2 * angles, 2, dtype=np.float64) / head_dim))
    inv = np.concatenate([inv, np.zeros(head_dim // 2 - angles)])
    return inv / p.get("factor", 1.0), 1.0


ROPE_TYPES: dict = {
    "default": _default, "linear": _linear, "dynamic": _dynamic, "yarn": _yarn,
    "longrope": _longrope, "llama3": _llama3, "proportional": _proportional,
}
"""rope_type -> ``f(params, theta, rotary_dim, head_dim, T) -> (inv_freq, attention_factor)``."""

LENGTH_DEPENDENT = frozenset({"dynamic", "longrope"})
"""Types whose frequencies depend on the forward's sequence length."""

_REQUIRED = {
    "linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
    "longrope": ("short_factor", "long_factor"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}
_ORIGINAL = ("llama3", "yarn", "longrope")  # transformers fills original_max_position_embeddings for these
_KEPT = ("rope_theta", "rope_type", "type", "partial_rotary_factor")


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's Eq. 21: ``0.1 * mscale * log(scale) + 1`` (1 for scale <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def raw_params(hf: Mapping[str, Any]) -> dict:
    """The RoPE dict of an HF config as transformers reads it: a 4.x ``rope_scaling``
    wins over ``rope_parameters`` (transformers 5 does the same), ``type`` is read as
    ``rope_type``.  A per-layer-type dict (``{"full_attention": {...}, ...}``) is refused:
    the decoder has one RoPE for all layers."""
    rp = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if not isinstance(rp, Mapping):
        raise ConfigError(f"rope_parameters must be a mapping, not {type(rp).__name__}")
    nested = [k for k, v in rp.items() if isinstance(v, Mapping)]
    if nested:
        raise ConfigError(
            f"per-layer-type RoPE ({', '.join(nested)} each with its own parameters) is not supported "
            "by the neutral decoder yet; supported: one RoPE for every layer"
        )
    rp = dict(rp)
    if "rope_type" not in rp and "type" in rp:
        rp["rope_type"] = rp["type"]
    return rp


def rope_params(hf: Mapping[str, Any]) -> dict:
    """theta, rotary fraction and type from a transformers 5 ``rope_parameters``, a 4.x
    ``rope_scaling`` or the 4.x top-level keys (GPT-NeoX 4.x: ``rotary_emb_base``,
    ``rotary_pct``)."""
    rp = raw_params(hf)
    theta = rp.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    partial = rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
    return dict(theta=float(theta), partial=float(partial), rope_type=rp.get("rope_type") or "default")


def rope_fields(hf: Mapping[str, Any], head_dim: int, positions: int,
                original_default: Optional[int] = None) -> dict:
    """The decoder's RoPE fields (``rope_theta``, ``rotary_dim``, ``rope_type``,
    ``rope_scaling``) of an HF config, every derived value resolved as transformers
    resolves it.  ``original_default``: what ``original_max_position_embeddings`` is
    when a config has none (Phi-3's config class: 4096; else ``max_position_embeddings``).
    An unknown type is refused, naming the known ones."""
    base = rope_params(hf)
    rope_type, theta = base["rope_type"], base["theta"]
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"rope_type {rope_type!r} is not supported; supported: {', '.join(sorted(ROPE_TYPES))}")
    rp = raw_params(hf)
    missing = [k for k in _REQUIRED.get(rope_type, ()) if rp.get(k) is None and not
               (k == "factor" and rope_type == "yarn")]
    if missing:
        raise ConfigError(f"rope_type {rope_type!r} needs {', '.join(missing)} in rope_parameters")
    p = {k: freeze(v) for k, v in rp.items() if k not in _KEPT and v is not None}
    rotary_dim = int(head_dim * base["partial"])
    if rope_type in _ORIGINAL:
        # transformers: a top-level original_max_position_embeddings wins over the dict's
        orig = hf.get("original_max_position_embeddings") or rp.get("original_max_position_embeddings") \
            or original_default or positions
        p["original_max_position_embeddings"] = int(orig)
    if rope_type == "dynamic":
        p["max_position_embeddings"] = int(positions)
    if rope_type == "yarn":
        if p.get("factor") is None:
            p["factor"] = positions / p["original_max_position_embeddings"]
        if p.get("attention_factor") is None:
            m, m_all = p.get("mscale"), p.get("mscale_all_dim")
            p["attention_factor"] = (yarn_mscale(p["factor"], m) / yarn_mscale(p["factor"], m_all)
                                     if m and m_all else yarn_mscale(p["factor"]))
    if rope_type == "longrope":
        factor = p.get("factor") or positions / p["original_max_position_embeddings"]
        if p.get("attention_factor") is None:
            p["attention_factor"] = 1.0 if factor <= 1.0 else \
                math.sqrt(1 + math.log(factor) / math.log(p["original_max_position_embeddings"]))
        for key in ("short_factor", "long_factor"):
            if len(p[key]) != rotary_dim // 2:
                raise ConfigError(f"rope_parameters.{key} has {len(p[key])} entries; the rotary dim "
                                  f"{rotary_dim} needs {rotary_dim // 2}")
    if rope_type == "proportional":
        # the table spans the whole head; the rotated share is a parameter of the frequencies
        p["partial_rotary_factor"] = base["partial"]
        rotary_dim = head_dim
    return dict(rope_theta=theta, rotary_dim=0 if rotary_dim == head_dim else rotary_dim,
                rope_type=rope_type, rope_scaling=tuple(sorted(p.items())))


def inv_freq(cfg, T: int) -> tuple:
    """(inverse frequencies, float64 of length rotary_dim / 2; attention factor) of a
    decoder config for a forward of length ``T``: cos and sin are multiplied by the factor."""
    rd = cfg.rotary_dim or cfg.head_dim
    fn: Callable = ROPE_TYPES[cfg.rope_type]
    inv, factor = fn(dict(cfg.rope_scaling), float(cfg.rope_theta), rd, cfg.head_dim, T)
    return np.asarray(inv, dtype=np.float64), float(factor)


def hf_scaling(hf: Mapping[str, Any]) -> dict:
    """The ``rope_scaling`` mirror of an HF config's RoPE dict (what transformers reads,
    with the type under both ``rope_type`` and ``type``): transformers 4.x and mlx-lm
    read RoPE scaling only there.  {} for default RoPE."""
    rp = raw_params(hf)
    rope_type = rp.get("rope_type") or "default"
    return {} if rope_type == "default" else dict(rp, rope_type=rope_type, type=rope_type)


__all__ = ["ROPE_TYPES", "LENGTH_DEPENDENT", "freeze", "hf_scaling", "inv_freq", "raw_params", "rope_fields", "rope_params",
           "yarn_mscale"]
