"""The plan primitives written once, over an array namespace.

``ArrayPrimitives`` is the ``ExpandBackend`` surface (``protocol``) with default
bodies over ``self.xp``, the subset of functions numpy, ``jax.numpy`` and
``mlx.core`` share (``take``, ``reshape``, ``mean``, ``concatenate``, ``zeros``,
array methods ``astype``, ``.shape``, ``.size``): einops' ``AbstractBackend`` and
array-api-compat's ``common/`` pattern.  A backend subclasses it and writes only
what its framework makes different: conversion (``asarray``, ``to_numpy``), its
RNG (``normal``), its dtype table (``DTYPES``), and any fused fast path or
framework-specific override (in-place ops, streams, exact casts).  Checkpoints
(``save_checkpoint`` / ``load_checkpoint``) come from the core's HF reader and
writer through the same converters; a backend overrides ``from_stored`` where its
framework can view stored bfloat16 bits without a conversion.
"""

from __future__ import annotations

import functools
import weakref
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from ..algebra.growth import copy_ids, uniform_layout
from ..errors import HypercloneError
from ..io.dtypes import bf16_to_f32
from ..io.hf import load_arrays, save_arrays


class ArrayPrimitives:
    """Plan primitives over ``xp``; subclasses set ``xp`` and ``DTYPES`` (plan dtype
    name -> framework dtype) and supply ``asarray``, ``to_numpy`` and ``normal``."""

    xp: Any = None
    DTYPES: Mapping[str, Any] = {}

    # ---------------------------------------------------------------- what a backend supplies
    def asarray(self, a, device: Optional[str] = None) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.asarray: numpy -> the backend's array")

    def to_numpy(self, x) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__}.to_numpy: the backend's array -> numpy "
                                  "(bfloat16 widened exactly to float32)")

    def normal(self, shape: tuple, seed: int, like) -> Any:
        """iid N(0, 1) float32 of ``shape`` from the backend's RNG seeded by the 63-bit
        ``seed`` (``noise.seed_words`` splits it), on ``like``'s device."""
        raise NotImplementedError(f"{type(self).__name__}.normal: the backend's seeded RNG")

    # ---------------------------------------------------------------- dtypes
    def dtype(self, name) -> Any:
        """The framework dtype of a plan dtype name ("float32", "bfloat16", ...)."""
        if not isinstance(name, str) and any(name is d for d in self.DTYPES.values()):
            return name
        key = str(name).rsplit(".", 1)[-1]
        if key not in self.DTYPES:
            raise HypercloneError(f"dtype {name!r} is not supported by the {getattr(self, 'name', '?')} backend; "
                                  f"use one of {sorted(self.DTYPES)}")
        return self.DTYPES[key]

    def dtype_name(self, x) -> str:
        """The plan/safetensors name of ``x``'s dtype ("float32", "bfloat16", ...)."""
        return str(x.dtype).rsplit(".", 1)[-1]

    def low_precision(self) -> tuple:
        return tuple(getattr(self.xp, n) for n in ("float16", "bfloat16") if hasattr(self.xp, n))

    def astype(self, x, dtype):
        return x.astype(dtype)

    # ---------------------------------------------------------------- the plan primitives
    def shape(self, x) -> tuple:
        return tuple(x.shape)

    def take(self, x, axis: int, index):
        return self.xp.take(x, index, axis=axis)

    def scale(self, x, coeffs):
        """Coefficients cast to x's dtype first, then one multiply (numpy's rounding)."""
        return x * self.astype(coeffs, x.dtype)

    def reshape(self, x, shape):
        return self.xp.reshape(x, tuple(shape))

    def cast(self, x, dtype):
        return self.astype(x, self.dtype(dtype))

    def mean_square(self, x) -> float:
        """mean(x**2), accumulated in float32."""
        if not x.size:
            return 0.0
        xf = self.astype(x, self.xp.float32)
        return float(self.xp.mean(xf * xf))

    def add_scaled(self, x, noise, factor: float):
        """x + factor * noise in x's dtype (computed in float32 for a low-precision x)."""
        wide = self.astype(x, self.xp.float32) if x.dtype in self.low_precision() else x
        return self.astype(wide + self.astype(noise, wide.dtype) * factor, x.dtype)

    def zero_sum_noise(self, shape, axis: int, groups, seed: int, like, n_groups: Optional[int] = None):
        """``normal`` noise projected to sum 0 over the copies of each old index along ``axis``."""
        return self.project_zero_sum(self.normal(tuple(shape), seed, like), axis, groups)

    def project_zero_sum(self, noise, axis: int, groups):
        """Subtract from every element the mean of its copies along ``axis``: a reshape for
        k uniform copies, a gather per copy number for uneven ones (no scatter)."""
        xp = self.xp
        m, uniform, uneven = self._copies(groups)
        shp = tuple(noise.shape)
        if uniform is not None:
            _, k, layout = uniform
            split = shp[:axis] + ((k, m) if layout == "tile" else (m, k)) + shp[axis + 1:]
            v = xp.reshape(noise, split)
            copy_axis = axis if layout == "tile" else axis + 1
            return xp.reshape(v - xp.mean(v, axis=copy_axis, keepdims=True), shp)
        gathers, counts = uneven
        pad = xp.zeros(shp[:axis] + (1,) + shp[axis + 1:], dtype=noise.dtype)
        padded = xp.concatenate([noise, pad], axis=axis)
        sums = functools.reduce(lambda a, b: a + b, (xp.take(padded, pos, axis=axis) for pos in gathers))
        view = [1] * len(shp)
        view[axis] = m
        means = sums / xp.reshape(counts, tuple(view))
        return noise - xp.take(means, groups, axis=axis)

    def _copies(self, groups) -> tuple:
        """(m, uniform (m, k, layout) or None, (per-copy gather maps, counts) for uneven
        copies), memoized per groups array (the interpreter caches those on the device)."""
        memo = self.__dict__.setdefault("_copies_memo", {})
        hit = memo.get(id(groups))
        if hit is not None and hit[0]() is groups:
            return hit[1]
        if len(memo) > 256:
            memo.clear()
        g = np.asarray(self.to_numpy(groups)).astype(np.int64)
        m = int(g.max()) + 1
        uniform = uniform_layout(g)
        uneven = None
        if uniform is None:
            cid = copy_ids(g)
            gathers = []
            for c in range(int(cid.max()) + 1):
                pos = np.full(m, len(g), dtype=np.int32)  # len(g): the zero row appended
                sel = np.flatnonzero(cid == c)
                pos[g[sel]] = sel
                gathers.append(self.asarray(pos))
            uneven = (gathers, self.asarray(np.bincount(g, minlength=m).astype(np.float32)))
        result = (m, uniform, uneven)
        try:
            memo[id(groups)] = (weakref.ref(groups), result)
        except TypeError:  # an array type without weak references: no memo
            pass
        return result

    # ---------------------------------------------------------------- checkpoints
    def from_stored(self, raw: np.ndarray, dtype: str):
        """A stored tensor (bfloat16 as its uint16 bits) as the backend's array in its
        stored dtype; bfloat16 goes through its exact float32 widening."""
        if dtype == "bfloat16":
            return self.cast(self.asarray(bf16_to_f32(raw)), "bfloat16")
        return self.asarray(np.array(raw))

    def save_checkpoint(self, folder, hf_config: Mapping[str, Any], weights: Mapping[str, Any],
                        force: bool = False, max_shard_bytes: int = 5 * 2**30) -> Path:
        """HF layout, atomically, each tensor in its own dtype (bfloat16 included), pulled
        to the host one tensor at a time."""
        return save_arrays(folder, hf_config, weights, self.to_numpy, self.dtype_name, force=force,
                           max_shard_bytes=max_shard_bytes)

    def load_checkpoint(self, folder) -> tuple:
        """(config, {name: the backend's array in its stored dtype})."""
        return load_arrays(folder, self.from_stored)


__all__ = ["ArrayPrimitives"]
