"""Zero-sum noise (numpy), its scale, and seeds every framework can take.

The plan gives each noisy tensor a 63-bit seed; each backend draws the noise with
its own RNG (noisy plans agree across backends in their invariants, not bits), so
the one rule that must be shared is how big the noise is (``noise_factor``) and
how a seed becomes framework RNG state without losing bits (``seed_words``).
"""

from __future__ import annotations

import math

import numpy as np


def noise_factor(p_signal: float, p_noise: float, snr_db: float) -> float:
    """The factor that scales noise of mean power ``p_noise`` to ``snr_db`` below a
    signal of mean power ``p_signal`` (0 when either power is 0: nothing to add)."""
    if p_signal <= 0.0 or p_noise <= 0.0:
        return 0.0
    return math.sqrt(p_signal / p_noise / 10.0 ** (snr_db / 10.0))


def seed_words(seed: int, words: int = 2) -> tuple:
    """A non-negative seed (the plan's are 63-bit) as ``words`` 32-bit unsigned ints,
    most significant first.  ``jax.random.PRNGKey(seed)`` keeps only the low 32 bits
    without x64; ``jax.random.wrap_key_data(np.array(seed_words(seed), np.uint32))``
    keeps them all.  Refuses a seed that does not fit."""
    seed = int(seed)
    if seed < 0 or seed >= 1 << (32 * words):
        raise ValueError(f"seed {seed} does not fit in {words} unsigned 32-bit words")
    return tuple((seed >> (32 * (words - 1 - k))) & 0xFFFFFFFF for k in range(words))


def fnv1a63(data: bytes) -> int:
    """The one seed derivation: FNV-1a (64-bit) over ``data``, folded to 63 bits so
    every framework's RNG takes it."""
    h = 1469598103934665603
    for b in data:
        h = ((h ^ b) * 1099511628211) % (1 << 64)
    return h % (1 << 63)


def seed_for(seed: int, name: str) -> int:
    """A tensor's seed: depends only on the plan's seed and the tensor's name."""
    return fnv1a63(f"{seed}:{name}".encode())


def derive_seed(seed: int, *path: int) -> int:
    """A 63-bit seed for a sub-stream (block ``b`` of a tensor, chunk ``c`` ...) that
    depends on every bit of ``seed`` and ``path``."""
    return fnv1a63(b"".join(int(v).to_bytes(16, "little", signed=True) for v in (seed, *path)))


def gaussian(shape, seed) -> np.ndarray:
    """Standard normal float32 by Box-Muller from raw SFC64 bits (24 bits per uniform;
    |z| <= 5.8).  numpy's ``standard_normal`` measured 12-20 ns per float32 normal on
    the 2-core VM, this 7-9 (benchmarks/stream_1b.py): the draw dominates noisy
    streaming expansion.  ``seed``: an int or a list of ints (a SeedSequence)."""
    n = math.prod(int(s) for s in shape)
    half = (n + 1) // 2
    bits = np.random.SFC64(seed).random_raw(half)
    r = (bits >> np.uint64(40)).astype(np.float32)
    r += np.float32(1.0)  # (0, 2^24] / 2^24: log never sees 0
    r *= np.float32(2.0 ** -24)
    theta = (bits & np.uint64(0xFFFFFF)).astype(np.float32)
    del bits
    theta *= np.float32(2.0 * math.pi * 2.0 ** -24)
    np.log(r, out=r)
    r *= np.float32(-2.0)
    np.sqrt(r, out=r)
    out = np.empty(2 * half, np.float32)
    np.cos(theta, out=out[:half])
    out[:half] *= r
    np.sin(theta, out=out[half:])
    out[half:] *= r
    return out[:n].reshape(tuple(int(s) for s in shape))


def helmert(k: int) -> np.ndarray:
    """(k-1, k) orthonormal rows spanning the zero-sum vectors: ``H.T @ u`` for iid
    normal ``u`` is iid normal noise projected to sum 0 over k copies, from (k-1)/k of
    the draws, and its power is exactly ``u``'s."""
    h = np.zeros((k - 1, k))
    for r in range(1, k):
        h[r - 1, :r] = 1.0
        h[r - 1, r] = -r
        h[r - 1] /= math.sqrt(r * (r + 1))
    return h


def zero_sum_noise(shape, axis: int, groups: np.ndarray, seed, dtype=np.float32) -> np.ndarray:
    """Standard Gaussian noise projected to sum 0 over the copies of each group
    (``seed``: an int or a list of ints, as numpy's SeedSequence takes)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape, dtype=np.dtype(dtype))
    project_zero_sum(noise, axis, groups)
    return noise


def project_zero_sum(x: np.ndarray, axis: int, groups: np.ndarray) -> None:
    """In place: subtract from every element the mean of its group along ``axis``."""
    from .growth import copy_ids, layout_of

    n, m = len(groups), int(groups.max()) + 1
    k = n // m
    shape = x.shape[:axis] + (None,) + x.shape[axis + 1:]
    layout = layout_of(groups) if x.flags.c_contiguous else None
    if layout == "tile":  # k blocks of m
        v = x.reshape(shape[:axis] + (k, m) + shape[axis + 1:])
        v -= v.mean(axis=axis, keepdims=True)
        return
    if layout == "interleave":  # m runs of k
        v = x.reshape(shape[:axis] + (m, k) + shape[axis + 1:])
        v -= v.mean(axis=axis + 1, keepdims=True)
        return
    # uneven growth: within one copy number each old index appears once, so a
    # loop over copy numbers (few) needs no scatter
    moved = np.moveaxis(x, axis, -1)
    cid = copy_ids(groups)
    sels = [np.flatnonzero(cid == c) for c in range(int(cid.max()) + 1)]
    sums = np.zeros(moved.shape[:-1] + (m,), dtype=np.float64)
    for sel in sels:
        sums[..., groups[sel]] += moved[..., sel]
    mean = (sums / np.bincount(groups, minlength=m)).astype(x.dtype)
    for sel in sels:
        moved[..., sel] -= mean[..., groups[sel]]


def mean_square(x: np.ndarray, chunk: int = 1 << 20) -> float:
    """mean(x**2) without a float64 copy of x (BLAS dot per chunk, summed in float64)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    total = sum(float(np.dot(flat[k:k + chunk], flat[k:k + chunk])) for k in range(0, flat.size, chunk))
    return total / max(flat.size, 1)


__all__ = ["derive_seed", "fnv1a63", "gaussian", "helmert", "mean_square", "noise_factor", "project_zero_sum",
           "seed_for", "seed_words", "zero_sum_noise"]
