"""The backend protocol, the program interpreter, and backend discovery.

A backend supplies array primitives (the five plan ops plus conversion to and
from numpy) and, optionally, a decoder forward and a trainer.  The interpreter
that walks a plan program lives here, once; backends never re-implement it.

Backends register through the entry-point group ``hyperclone.backends``: the
entry point names an object (module attribute) satisfying ``Backend``.  The
built-in ones register the same way a third party does.  A plugin that fails to
load warns and is skipped; it does not break the others.
"""

from __future__ import annotations

import math
import warnings
from importlib import metadata
from typing import Any, Mapping, Optional, Protocol, runtime_checkable

import numpy as np

from .errors import HypercloneError
from .plan import AddNoise, Cast, Reshape, Scale, Take, TensorPlan

CAPABILITIES = ("expand", "forward", "train", "distributed")
ENTRY_POINT_GROUP = "hyperclone.backends"


@runtime_checkable
class Backend(Protocol):
    """What a backend provides.  ``capabilities`` is a subset of
    ``("expand", "forward", "train", "distributed")``; the conformance suite skips
    checks a backend does not claim.

    Array primitives (``expand``): ``asarray(np_array, device)`` and ``to_numpy(x)``;
    ``shape(x)``, ``take(x, axis, index)``, ``scale(x, coeffs)`` (``coeffs`` already
    broadcast to x's rank), ``zero_sum_noise(shape, axis, groups, seed, like)``,
    ``mean_square(x) -> float``, ``add_scaled(x, noise, factor)`` (may reuse the noise
    buffer, never x), ``reshape(x, shape)``, ``cast(x, dtype_name)``.  Optional:
    ``scale_(x, coeffs)``, an in-place scale the interpreter uses on arrays it produced
    itself (saves a destination-sized copy); ``add_zero_sum_noise(x, axis, groups,
    snr_db, seed)``, the whole AddNoise op in place (e.g. block by block, so the noise
    needs no tensor-sized buffer), returning None to decline; ``take_axes(x, takes)``
    with ``takes`` a list of ``(axis, index)`` on distinct axes, the consecutive Takes
    of a program in one pass (e.g. block copies straight into the result, with no
    intermediate array), equal to applying ``take`` for each in order.

    ``forward(family, cfg, weights, tokens) -> np.ndarray`` (``forward``): logits of
    the neutral decoder, weights given as numpy arrays by checkpoint name.

    ``train_steps(family, hf_config, weights, batches, lr) -> list[float]``
    (``train``): losses of consecutive AdamW steps, one per batch of tokens
    (``batches``: a list of int arrays (batch, seq+1); loss = next-token cross-entropy).

    ``save_checkpoint(folder, hf_config, weights)`` / ``load_checkpoint(folder) ->
    (hf_config, weights)`` (``expand``): the HF layout, weights as the backend's
    arrays by checkpoint name; a round trip must be bit for bit.
    """

    name: str
    capabilities: frozenset

    def version(self) -> str: ...
    def device_name(self) -> str: ...


# ---------------------------------------------------------------- interpreter


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

    def dev(key: str, prepared: Optional[np.ndarray] = None, tag: str = ""):
        ck = (key, tag)
        if ck not in cache:
            cache[ck] = backend.asarray(arrays[key] if prepared is None else prepared, device)
        return cache[ck]

    owned = False  # whether x was produced here (then in-place primitives may reuse it)
    scale_inplace = getattr(backend, "scale_", None)
    fused_noise = getattr(backend, "add_zero_sum_noise", None)
    shape = tuple(backend.shape(x))
    if shape != tuple(tp.source_shape):
        raise HypercloneError(
            f"tensor {tp.source}: the plan expects shape {list(tp.source_shape)}, got {list(shape)}"
        )
    take_axes = getattr(backend, "take_axes", None)
    for op in _group_takes(tp.ops) if take_axes is not None else tp.ops:
        if isinstance(op, list):
            x = take_axes(x, [(t.axis, dev(t.map)) for t in op])
        elif isinstance(op, Take):
            x = backend.take(x, op.axis, dev(op.map))
        elif isinstance(op, Scale):
            ndim = len(backend.shape(x))
            c = dev(op.coeffs, broadcast_coeffs(arrays[op.coeffs], op.axes, ndim), f"{op.axes}/{ndim}")
            x = scale_inplace(x, c) if owned and scale_inplace is not None else backend.scale(x, c)
        elif isinstance(op, AddNoise) and owned and fused_noise is not None and \
                (y := fused_noise(x, op.axis, dev(op.groups), op.snr_db, op.seed)) is not None:
            x = y
        elif isinstance(op, AddNoise):
            noise = backend.zero_sum_noise(backend.shape(x), op.axis, dev(op.groups), op.seed, x)
            p_sig, p_noise = backend.mean_square(x), backend.mean_square(noise)
            if p_sig > 0 and p_noise > 0:
                factor = math.sqrt(p_sig / p_noise / 10.0 ** (op.snr_db / 10.0))
                x = backend.add_scaled(x, noise, factor)
        elif isinstance(op, Reshape):
            x = backend.reshape(x, op.shape)
        elif isinstance(op, Cast):
            x = backend.cast(x, op.dtype)
        else:  # pragma: no cover
            raise TypeError(f"unknown op {op!r}")
        owned = True
    return x


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


# ---------------------------------------------------------------- discovery


def _entry_points():
    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except TypeError:  # pragma: no cover - Python < 3.10
        return list(metadata.entry_points().get(ENTRY_POINT_GROUP, []))


def available_backends() -> dict:
    """name -> entry point, for every registered backend (not loaded yet)."""
    found = {"numpy": None}
    for ep in _entry_points():
        found[ep.name] = ep
    return found


_LOADED: dict = {}


def load_backend(name: str) -> Any:
    """Load a backend by name; ``numpy`` is always there.  Raises with the list of
    registered backends if ``name`` is unknown, and with the cause if it fails."""
    if name in _LOADED:
        return _LOADED[name]
    if name == "numpy":
        from .numpy_backend import backend as obj
    else:
        eps = available_backends()
        if name not in eps:
            raise HypercloneError(
                f"backend {name!r} is not installed; registered backends: {', '.join(sorted(eps))}. "
                f"Install it (e.g. pip install 'hyperclone[{name}]') or register an entry point in "
                f"the group {ENTRY_POINT_GROUP!r}"
            )
        try:
            obj = eps[name].load()
        except Exception as exc:  # a broken plugin must not take the library down
            raise HypercloneError(f"backend {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    missing = [c for c in getattr(obj, "capabilities", ()) if c not in CAPABILITIES]
    if missing:
        warnings.warn(f"backend {name!r} declares unknown capabilities {missing}", stacklevel=2)
    _LOADED[name] = obj
    return obj


def loadable_backends() -> dict:
    """name -> backend object for every backend that loads; broken ones warn."""
    out = {}
    for name in available_backends():
        try:
            out[name] = load_backend(name)
        except HypercloneError as exc:
            warnings.warn(str(exc), stacklevel=2)
    return out


__all__ = [
    "Backend", "CAPABILITIES", "ENTRY_POINT_GROUP", "available_backends", "broadcast_coeffs",
    "load_backend", "loadable_backends", "run_program",
]

