"""The optimizer every engine implements: AdamW with per-tensor LR, epsilon and
weight-decay multipliers, a decay mask and global-norm clipping (optionally on a
per-tensor weighted norm), defined once here in closed form.

The epsilon / weight-decay multipliers and the clip weights exist for growth inside
a run (``train.grow``): they make a grown clone's update the source's update.
Empty maps (the default) are today's AdamW bit for bit.

Engines use their framework's optimizer (torch.optim.AdamW, optax, mlx.optimizers)
configured to compute exactly this; ``adamw_step`` is the numpy statement of it
that the conformance suite checks every engine's update against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

ADJUSTMENTS = ("lr_mult", "eps_mult", "wd_mult", "clip_weight")
"""AdamW's per-tensor maps."""

CLIP_EPS = 1e-6
"""Clipping scales gradients by ``min(1, clip / (norm + CLIP_EPS))`` (torch's rule)."""


@dataclass(frozen=True)
class AdamW:
    """Decoupled-weight-decay Adam over tensors named by checkpoint name.

    Per tensor ``n`` at step t (1-based) with learning rate ``lr * lr_mult[n]``:
    ``p *= 1 - lr_n * wd_n``; ``m = b1 m + (1-b1) g``; ``v = b2 v + (1-b2) g^2``;
    ``p -= lr_n * (m / (1-b1^t)) / (sqrt(v) / sqrt(1-b2^t) + eps_n)``, where
    ``wd_n = weight_decay * wd_mult[n]`` for names in ``decay`` and 0 otherwise,
    ``eps_n = eps * eps_mult[n]``, and ``g`` is the mean gradient scaled by
    ``clip_coefficient`` of ``global_norm(grads, clip_weight)`` (norm^2 = sum over
    tensors of ``clip_weight[n] * |g_n|^2``; a missing name weighs 1)."""

    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    decay: frozenset = field(default_factory=frozenset)
    lr_mult: Mapping[str, float] = field(default_factory=dict)
    eps_mult: Mapping[str, float] = field(default_factory=dict)
    wd_mult: Mapping[str, float] = field(default_factory=dict)
    clip_weight: Mapping[str, float] = field(default_factory=dict)

    def mult(self, name: str) -> float:
        return float(self.lr_mult.get(name, 1.0))

    def eps_of(self, name: str) -> float:
        return self.eps * float(self.eps_mult[name]) if name in self.eps_mult else self.eps

    def decay_of(self, name: str) -> float:
        if name not in self.decay:
            return 0.0
        return self.weight_decay * float(self.wd_mult[name]) if name in self.wd_mult else self.weight_decay

    def groups(self, names: Sequence[str]) -> list:
        """Names grouped by (weight decay, LR multiplier, eps), first-seen order: the
        param groups a framework optimizer takes."""
        out: dict = {}
        for n in names:
            out.setdefault((self.decay_of(n), self.mult(n), self.eps_of(n)), []).append(n)
        return [(wd, mult, eps, ns) for (wd, mult, eps), ns in out.items()]

    def adjustments(self) -> dict:
        """The per-tensor maps (what a training checkpoint must keep to resume a grown run)."""
        return {k: {n: float(v) for n, v in getattr(self, k).items()} for k in ADJUSTMENTS}


def decay_mask(shapes: Mapping[str, Sequence[int]]) -> frozenset:
    """Weight decay on matrices (embeddings, projections), not on norms or biases."""
    return frozenset(n for n, s in shapes.items() if len(s) >= 2)


def clip_coefficient(grad_norm: float, clip: float) -> float:
    if clip <= 0 or not math.isfinite(grad_norm):
        return 1.0
    return min(1.0, clip / (grad_norm + CLIP_EPS))


def global_norm(grads: Mapping[str, np.ndarray], weights: Optional[Mapping[str, float]] = None) -> float:
    """L2 norm over all tensors; with ``weights`` (``AdamW.clip_weight``), norm^2 =
    sum of ``weights[n] * |g_n|^2`` (a missing name weighs 1): a grown clone's
    source-equivalent norm."""
    if not weights:
        return math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads.values()))
    return math.sqrt(sum(float(weights.get(n, 1.0)) * float(np.sum(np.asarray(g, np.float64) ** 2))
                         for n, g in grads.items()))


def adamw_step(opt: AdamW, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
               exp_avg: Mapping[str, np.ndarray], exp_avg_sq: Mapping[str, np.ndarray], step: int,
               lr: float) -> tuple:
    """One AdamW step in float64 numpy: ``(params, exp_avg, exp_avg_sq)`` after step
    ``step`` (1-based), from the *unclipped* mean gradients ``grads``."""
    b1, b2 = opt.betas
    coef = clip_coefficient(global_norm(grads, opt.clip_weight), opt.grad_clip)
    bc1, bc2 = 1.0 - b1 ** step, 1.0 - b2 ** step
    new_p, new_m, new_v = {}, {}, {}
    for n, p in params.items():
        g = np.asarray(grads[n], np.float64) * coef
        lr_n = lr * opt.mult(n)
        p = np.asarray(p, np.float64) * (1.0 - lr_n * opt.decay_of(n))
        m = b1 * np.asarray(exp_avg[n], np.float64) + (1.0 - b1) * g
        v = b2 * np.asarray(exp_avg_sq[n], np.float64) + (1.0 - b2) * g * g
        new_p[n] = p - (lr_n / bc1) * m / (np.sqrt(v) / math.sqrt(bc2) + opt.eps_of(n))
        new_m[n], new_v[n] = m, v
    return new_p, new_m, new_v


__all__ = ["ADJUSTMENTS", "AdamW", "CLIP_EPS", "adamw_step", "clip_coefficient", "decay_mask", "global_norm"]
