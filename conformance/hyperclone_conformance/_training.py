"""What the trainer checks share: engines built the way ``hyperclone train`` builds
them, a small learnable token stream, and the oracle's loss.  Kept free of pytest."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from hyperclone_core.run import reference
from hyperclone_core.train import TrainConfig, optimizer_for

from . import _suite as S

CONFIG = dict(steps=6, batch_size=4, seq_len=8, lr=3e-3, warmup_steps=2, weight_decay=0.1, grad_clip=1.0,
              eval_every=2, eval_batches=2, seed=5)
"""The trainer checks' run: small enough for a slow BLAS, long enough to cross the warmup."""

LOSS_RTOL = 1e-4
"""float32: the engine's loss vs the numpy oracle's float64 loss on the same weights and batch."""

PARAM_RTOL = 1e-6
"""Accumulation vs one big batch: parameters within this, relative to the largest entry."""

GRAD_RTOL = 1e-5
"""Accumulation vs one big batch: gradients within this, relative to the largest entry
(float32 sums over 16 + 16 tokens vs 32 differ by ~1e-7 of it)."""

ACCUM_EPS = 1e-3
"""AdamW eps of the accumulation check: there a gradient difference dg moves an entry by at
most lr dg / eps (3e-3 x 1.5e-8 / 1e-3 = 5e-8, under PARAM_RTOL x max|p|).  With the default
1e-8 an entry whose gradient is ~eps can move by ~lr on a last-bit difference: the torch
engine then misses PARAM_RTOL for 9 of 12 plan seeds."""

UPDATE_TOL = 1e-4
"""The engine's AdamW update vs the closed form: per entry, |difference| <= UPDATE_TOL x lr_n
+ 1e-6 x |p| (an Adam step moves an entry by about lr_n; float32 keeps ~7 digits of it)."""

FD_STEP = 1e-4
FD_RTOL = 2e-2
FD_ATOL = 2e-5
"""Gradients vs central finite differences of the oracle's float64 loss (step FD_STEP):
|g - fd| <= FD_RTOL |fd| + FD_ATOL on sampled coordinates."""

DIST_TOL = 1e-5
"""``distributed``: losses of 2 workers vs 1 over 5 steps (the issue's bound)."""

DIST_NORM_RTOL = 1e-4
"""``distributed``: each step's gradient norm, 2 workers vs 1 (relative)."""

DIST_MOMENT_RTOL = 1e-3
"""``distributed``: AdamW's moments after 5 steps, 2 workers vs 1, per tensor relative to
its largest entry (float32 all-reduce order; summed gradients give 2x, or 4x in the
second moment)."""


def config(device: Optional[str], **kw) -> TrainConfig:
    """The checks' TrainConfig.  ``threads`` stays 0 (each backend's own policy): a count
    is refused by a backend that fixes its threads when it starts (jax, started by the
    suite's earlier checks) or has only one (mlx)."""
    return TrainConfig(**dict(CONFIG, device=device or "auto", **kw))


def tokens(vocab: int, n: int = 3000, seed: int = 0) -> np.ndarray:
    """A random phrase repeated with noise: learnable in a few steps, every batch distinct."""
    rng = np.random.default_rng(seed)
    out = np.resize(rng.integers(0, vocab, 23), n).astype(np.int64)
    noisy = rng.random(n) < 0.2
    out[noisy] = rng.integers(0, vocab, int(noisy.sum()))
    return out


def engine(backend, hf: Mapping, weights: Mapping[str, np.ndarray], cfg: TrainConfig, plan=None):
    shapes = {n: np.shape(w) for n, w in weights.items()}
    return backend.engine(dict(hf), {n: np.array(w, copy=True) for n, w in weights.items()}, cfg,
                          optimizer_for(cfg, shapes, plan))


def oracle_loss(case: str, cfg, weights: Mapping[str, np.ndarray], batch: np.ndarray) -> float:
    src = S.source(case)
    return reference.loss(src.family, cfg, weights, batch, dtype=np.float64)


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def state_problems(state, shapes: Mapping[str, tuple]) -> list:
    """What is wrong with an exported ``EngineState`` for a model of ``shapes`` (name ->
    shape), each naming the tensor: parameters and both moments for exactly these
    names, each a numpy float32 array of the full shape with finite values."""
    problems = []
    for part in ("params", "exp_avg", "exp_avg_sq"):
        arrays = getattr(state, part)
        extra, missing = sorted(set(arrays) - set(shapes)), sorted(set(shapes) - set(arrays))
        if missing or extra:
            problems.append(f"{part}: tensors {missing[:3]} missing, {extra[:3]} not the model's")
        for n in sorted(set(arrays) & set(shapes)):
            a = arrays[n]
            if not isinstance(a, np.ndarray):
                problems.append(f"{part}[{n}]: a {type(a).__name__}, not a numpy array")
            elif a.dtype != np.float32:
                problems.append(f"{part}[{n}]: dtype {a.dtype}, not float32")
            elif tuple(a.shape) != tuple(shapes[n]):
                problems.append(f"{part}[{n}]: shape {list(a.shape)}, the tensor's is {list(shapes[n])}")
            elif not np.isfinite(a).all():
                problems.append(f"{part}[{n}]: non-finite values")
    return problems
