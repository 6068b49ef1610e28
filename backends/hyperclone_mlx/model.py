"""The core's one decoder definition on ``mlx.core``, compiled with ``mx.compile``.

The maths is ``hyperclone_core.model.decoder``; this file supplies MLX's ``ArrayOps``
(fused ``mx.fast`` kernels where they compute the same function) and the
compiled forward / loss over a flat dict of weights by checkpoint name -- MLX's
transforms (``mx.compile``, ``mx.value_and_grad``) take such dicts directly, so no
module tree is needed and names stay the checkpoint's.
"""

from __future__ import annotations

import functools
from typing import Mapping, Optional

import mlx.core as mx
import numpy as np

from hyperclone_core.model import decoder, rope
from hyperclone_core.model.decoder import ArrayOps
from hyperclone_core.model.families import FAMILIES
from hyperclone_core.model.spec import DecoderConfig, Family
from hyperclone_core.model.structure import Params, slots

from .ops import mx_dtype


class MlxOps(ArrayOps):
    """MLX's kernels for the decoder's hooks.

    ``mx.fast.scaled_dot_product_attention`` (causal, sliding windows as a boolean
    mask, GQA without repeating k/v) except under a softcap, which needs the scores;
    ``mx.fast.rms_norm`` / ``layer_norm`` (the same formulas); ``mx.fast.rope`` in
    its non-traditional (rotate-half) form, the only RoPE the families use, from
    ``rope_theta`` (default RoPE) or from the core's frequencies ``rope_freqs`` (a
    scaled variant, its attention factor ``rope_scale`` applied to the rotated
    features) -- with neither (no RoPE, or a variant whose frequencies depend on the
    sequence length) the core's table RoPE runs instead.  ``top_k`` ranks by
    comparison counts: stable (ties to the lower index) on every device, and no
    gradient flows through the indices."""

    def __init__(self, rope_theta: Optional[float] = None, rope_freqs: Optional[tuple] = None,
                 rope_scale: float = 1.0):
        super().__init__(mx)
        self.rope_theta = rope_theta
        self.rope_freqs = None if rope_freqs is None else mx.array(np.asarray(rope_freqs), dtype=mx.float32)
        self.rope_scale = rope_scale

    def compute_dtype(self, dtype):
        return mx.float32 if dtype in (mx.bfloat16, mx.float16) else dtype

    def astype(self, x, dtype):
        return x if x.dtype == dtype else x.astype(dtype)

    def constant(self, array, dtype=None):
        a = np.asarray(array)
        if dtype is None and a.dtype == np.float64:
            dtype = mx.float32  # host float64 tables land in float32 unless asked otherwise
        return mx.array(a, dtype=dtype) if dtype is not None else mx.array(a)

    def stop_gradient(self, x):
        return mx.stop_gradient(x)

    def linear(self, x, w, b=None):
        return x @ w.T if b is None else mx.addmm(b, x, w.T)

    def embed(self, table, ids):
        return mx.take(table, ids, axis=0)

    def rsqrt(self, x):
        return mx.rsqrt(x)

    def erf(self, x):
        return mx.erf(x)

    def silu(self, x):
        return x * mx.sigmoid(x)

    def relu(self, x):
        return mx.maximum(x, 0)

    def softmax(self, x):
        return mx.softmax(x, axis=-1)

    def rms_norm(self, x, w, eps, unit_offset):
        if w is not None and unit_offset:
            w = 1.0 + w
        return mx.fast.rms_norm(x, w, eps)

    def layer_norm(self, x, w, b, eps):
        return mx.fast.layer_norm(x, w, b, eps)

    def rope(self, x, cos, sin, **extra):
        if (self.rope_theta is None and self.rope_freqs is None) or decoder.extras_set(extra):
            return super().rope(x, cos, sin, **extra)
        rd = cos.shape[-1]
        if self.rope_scale != 1.0:  # rope is linear: scaling the rotated features scales cos and sin
            rot = x[..., :rd] * self.rope_scale
            x = mx.concatenate([rot, x[..., rd:]], axis=-1) if x.shape[-1] > rd else rot
        y = mx.fast.rope(mx.swapaxes(x, 1, 2), rd, traditional=False, base=self.rope_theta,
                         scale=1.0, offset=0, freqs=self.rope_freqs)
        return mx.swapaxes(y, 1, 2)

    def attention(self, q, k, v, *, scale, window, softcap, **extra):
        if softcap or decoder.extras_set(extra):
            return super().attention(q, k, v, scale=scale, window=window, softcap=softcap, **extra)
        T = q.shape[1]
        mask = mx.array(decoder.causal_mask(T, window)) if window and window < T else "causal"
        q, k, v = (mx.swapaxes(t, 1, 2) for t in (q, k, v))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return mx.swapaxes(out, 1, 2)

    def top_k(self, x, k):
        E = x.shape[-1]
        idx = mx.arange(E)
        xe, xj = x[..., :, None], x[..., None, :]
        ahead = (xj > xe) | ((xj == xe) & (idx[None, :] < idx[:, None]))  # j ranks before e
        rank = mx.sum(ahead.astype(mx.int32), axis=-1)
        hit = rank[..., None, :] == mx.arange(k)[:, None]  # (..., k, E): which expert holds rank r
        return mx.sum(hit.astype(mx.int32) * idx, axis=-1)


@functools.lru_cache(maxsize=64)
def mlx_ops(rope_theta: Optional[float], rope_freqs: Optional[tuple] = None, rope_scale: float = 1.0) -> MlxOps:
    return MlxOps(rope_theta, rope_freqs, rope_scale)


def ops_for(cfg: DecoderConfig) -> MlxOps:
    """The fused RoPE where its frequencies are fixed: default RoPE from theta, a scaled
    variant from the core's inverse frequencies (MLX takes their reciprocals)."""
    if cfg.pos != "rope" or cfg.rope_type in rope.LENGTH_DEPENDENT or cfg.rope_type == "proportional" \
            or cfg.rope_sliding or cfg.rope_interleaved or cfg.rope_reverse:
        return mlx_ops(None)  # the core's tables (per-layer-type RoPE: one fused theta would serve every layer)
    if cfg.rope_type == "default":
        return mlx_ops(float(cfg.rope_theta))
    inv, factor = rope.inv_freq(cfg, 0)
    return mlx_ops(None, tuple((1.0 / inv).tolist()), factor)


def logits(family: Family, cfg: DecoderConfig, weights: Mapping[str, mx.array], tokens: mx.array,
           dtype=None) -> mx.array:
    """The decoder's logits (B, T, vocab); weights are cast to ``dtype`` first (their
    gradient flows back to the originals' dtype)."""
    dt = mx_dtype(dtype) if dtype is not None else None
    w = weights if dt is None else {n: a.astype(dt) if a.dtype != dt else a for n, a in weights.items()}
    return decoder.forward(cfg, Params(family, cfg, w), tokens, ops_for(cfg))


def loss(family: Family, cfg: DecoderConfig, weights: Mapping[str, mx.array], batch: mx.array,
         dtype=None) -> mx.array:
    """Mean next-token cross entropy of a (B, T+1) batch (the core's, in float32)."""
    out = logits(family, cfg, weights, batch[:, :-1], dtype)
    return decoder.cross_entropy(ops_for(cfg), out, batch[:, 1:])


@functools.lru_cache(maxsize=256)
def compiled_logits(cfg: DecoderConfig):
    """``logits`` compiled once per config (MLX retraces per input shape and dtype)."""
    return mx.compile(functools.partial(logits, FAMILIES[cfg.family], cfg))


def forward(family: Family, cfg: DecoderConfig, weights: Mapping[str, np.ndarray], tokens,
            dtype: str = "float32") -> np.ndarray:
    """Logits as float32 numpy of numpy weights by checkpoint name (bfloat16: the
    weights rounded to bfloat16, matmuls in bfloat16, norms and softmax in float32)."""
    dt = mx_dtype(dtype)
    names = slots(family, cfg)
    w = {n: mx.array(np.asarray(a, dtype=np.float32)).astype(dt) for n, a in weights.items() if n in names}
    out = compiled_logits(cfg)(w, mx.array(np.asarray(tokens, dtype=np.int32)))
    return np.array(out.astype(mx.float32))


__all__ = ["MlxOps", "compiled_logits", "forward", "logits", "loss", "mlx_ops", "ops_for"]
