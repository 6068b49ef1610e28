"""The one interpreter: a plan's tensor program run with a backend's primitives.

In-memory expansion (``execute``), streaming row blocks (``rowblocks``) and
checkpoint expansion all run programs through ``run_program`` / ``apply_ops``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from ..algebra.noise import noise_factor
from ..algebra.program import AddNoise, Cast, Offset, Reshape, Scale, Take, TensorPlan
from ..errors import HypercloneError


def broadcast_coeffs(c: np.ndarray, axes: tuple, ndim: int) -> np.ndarray:
    """Lay a coefficient array whose dims follow ``axes`` out to rank ``ndim``."""
    if not axes:
        return np.asarray(c)
    order = np.argsort(axes)
    c = np.transpose(c, order) if len(axes) > 1 else c
    shape = [1] * ndim
    for k, ax in enumerate(sorted(axes)):
        shape[ax] = c.shape[k]
    return np.ascontiguousarray(c).reshape(shape)


def run_program(backend: Any, tp: TensorPlan, arrays: Mapping[str, np.ndarray], x: Any,
                device: Optional[str] = None, cache: Optional[dict] = None) -> Any:
    """Execute one tensor's program with ``backend``'s primitives.

    ``cache`` (optional) keeps the plan's index/coefficient arrays on the device
    across tensors, so each is transferred once.
    """
    cache = {} if cache is None else cache
    shape = tuple(backend.shape(x))
    if shape != tuple(tp.source_shape):
        raise HypercloneError(
            f"tensor {tp.source}: the plan expects shape {list(tp.source_shape)}, got {list(shape)}"
        )
    whole = getattr(backend, "run_whole_program", None)
    if whole is not None:
        y = whole(tp, arrays, x, device, cache)
        if y is not None:
            return y
    return apply_ops(backend, tp, arrays, x, device, cache)


def apply_ops(backend: Any, tp: TensorPlan, arrays: Mapping[str, np.ndarray], x: Any,
              device: Optional[str] = None, cache: Optional[dict] = None) -> Any:
    """The interpreter proper: ``tp``'s ops over ``backend``'s primitives, no checks.
    A tracing backend may trace this (its ``add_zero_sum_noise`` then keeps the noise
    on the device: the generic AddNoise path reads two floats back)."""
    cache = {} if cache is None else cache

    def dev(key: str, prepared: Optional[np.ndarray] = None, tag: str = ""):
        ck = (key, tag)
        if ck not in cache:
            cache[ck] = backend.asarray(arrays[key] if prepared is None else prepared, device)
        return cache[ck]

    owned = False  # whether x was produced here (then in-place primitives may reuse it)
    scale_inplace = getattr(backend, "scale_", None)
    fused_noise = getattr(backend, "add_zero_sum_noise", None)
    take_axes = getattr(backend, "take_axes", None)
    scale_take = getattr(backend, "scale_take", None) if take_axes is not None else None
    ops = _group_takes(tp.ops) if take_axes is not None else list(tp.ops)
    k = 0
    while k < len(ops):
        op = ops[k]
        k += 1
        if scale_take is not None and isinstance(op, Scale) and k < len(ops) and isinstance(ops[k], list):
            ndim = len(backend.shape(x))
            c = dev(op.coeffs, broadcast_coeffs(arrays[op.coeffs], op.axes, ndim), f"{op.axes}/{ndim}")
            x = scale_take(x, c, [(t.axis, dev(t.map)) for t in ops[k]])
            k += 1
        elif isinstance(op, list):
            x = take_axes(x, [(t.axis, dev(t.map)) for t in op])
        elif isinstance(op, Take):
            x = backend.take(x, op.axis, dev(op.map))
        elif isinstance(op, Scale):
            ndim = len(backend.shape(x))
            c = dev(op.coeffs, broadcast_coeffs(arrays[op.coeffs], op.axes, ndim), f"{op.axes}/{ndim}")
            x = scale_inplace(x, c) if owned and scale_inplace is not None else backend.scale(x, c)
        elif isinstance(op, AddNoise) and owned and fused_noise is not None and \
                (y := fused_noise(x, op.axis, dev(op.groups), op.snr_db, op.seed, n_groups(arrays, op))) is not None:
            x = y
        elif isinstance(op, AddNoise):
            noise = backend.zero_sum_noise(backend.shape(x), op.axis, dev(op.groups), op.seed, x, n_groups(arrays, op))
            factor = noise_factor(backend.mean_square(x), backend.mean_square(noise), op.snr_db)
            if factor > 0.0:
                x = backend.add_scaled(x, noise, factor)
        elif isinstance(op, Reshape):
            x = backend.reshape(x, op.shape)
        elif isinstance(op, Cast):
            x = backend.cast(x, op.dtype)
        elif isinstance(op, Offset):  # x + value, through the primitives every backend has
            x = backend.add_scaled(x, dev(f"offset:{op.value!r}", np.full(tuple(backend.shape(x)), op.value, np.float32),
                                          str(tuple(backend.shape(x)))), 1.0)
        else:  # pragma: no cover
            raise TypeError(f"unknown op {op!r}")
        owned = True
    return x


def execute(backend: Any, plan, weights: Mapping[str, np.ndarray], device: Optional[str] = None) -> dict:
    """Every program of ``plan`` run by ``backend`` on numpy ``weights`` (by source
    name); the results as numpy by destination name.  The source arrays are never
    written (each program gets its own copy)."""
    cache: dict = {}
    out = {}
    for tp in plan.tensors:
        x = backend.asarray(np.array(weights[tp.source], copy=True), device)
        out[tp.name] = np.asarray(backend.to_numpy(run_program(backend, tp, plan.arrays, x, device, cache)))
    return out


def n_groups(arrays: Mapping[str, np.ndarray], op: AddNoise) -> int:
    """How many old indices an AddNoise's copies come from (a host int)."""
    return int(np.asarray(arrays[op.groups]).max()) + 1


def _group_takes(ops) -> list:
    """``ops`` with each run of consecutive Takes on distinct axes as one list."""
    out: list = []
    for op in ops:
        if isinstance(op, Take) and out and isinstance(out[-1], list) and \
                op.axis not in {t.axis for t in out[-1]}:
            out[-1].append(op)
        else:
            out.append([op] if isinstance(op, Take) else op)
    return out


__all__ = ["apply_ops", "broadcast_coeffs", "execute", "n_groups", "run_program"]
