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

import warnings
from importlib import metadata
from typing import Any, Mapping, Optional, Protocol, runtime_checkable

import numpy as np

from .errors import HypercloneError
from .noise import noise_factor
from .program import AddNoise, Cast, Offset, Reshape, Scale, Take, TensorPlan

CAPABILITIES = ("expand", "forward", "train", "distributed")
ENTRY_POINT_GROUP = "hyperclone.backends"


@runtime_checkable
class Backend(Protocol):
    """What every backend provides; the capability protocols below say the rest.
    ``capabilities`` is a subset of ``CAPABILITIES``; the conformance suite skips
    checks a backend does not claim."""

    name: str
    capabilities: frozenset

    def version(self) -> str: ...
    def device_name(self) -> str: ...


@runtime_checkable
class ExpandBackend(Backend, Protocol):
    """Capability ``expand``: the plan primitives, on the backend's arrays.

    ``coeffs`` arrive already broadcast to x's rank; ``groups`` is the plan's index
    array (on the device) mapping each index along ``axis`` to its old index, and
    ``n_groups`` their number (a host int: no device sync, static for tracing);
    ``seed`` is 63-bit (``hyperclone_core.noise.seed_words`` splits it for RNGs that
    take 32-bit words).  ``add_scaled`` may reuse the noise buffer, never x.

    Optional fast paths, used when present and held to the same checks:
    ``scale_(x, coeffs)`` in place on arrays the interpreter produced;
    ``scale_take(x, coeffs, [(axis, index), ...])`` a Scale and the Takes right
    after it in one pass (with ``take_axes``);
    ``add_zero_sum_noise(x, axis, groups, snr_db, seed, n_groups)`` the whole AddNoise
    op (return None to decline); ``take_axes(x, [(axis, index), ...])`` consecutive
    Takes in one pass; ``run_whole_program(tp, arrays, x, device, cache)`` a whole
    tensor program at once (a tracing backend compiles ``apply_ops`` once per program
    and shape), returning None to decline.  Optional ``save_checkpoint(folder,
    hf_config, weights)`` / ``load_checkpoint(folder)``: the HF layout, bit for bit.
    """

    def asarray(self, a: np.ndarray, device: Optional[str] = None) -> Any: ...
    def to_numpy(self, x: Any) -> np.ndarray: ...
    def shape(self, x: Any) -> tuple: ...
    def take(self, x: Any, axis: int, index: Any) -> Any: ...
    def scale(self, x: Any, coeffs: Any) -> Any: ...
    def zero_sum_noise(self, shape: tuple, axis: int, groups: Any, seed: int, like: Any, n_groups: int) -> Any: ...
    def mean_square(self, x: Any) -> float: ...
    def add_scaled(self, x: Any, noise: Any, factor: float) -> Any: ...
    def reshape(self, x: Any, shape: tuple) -> Any: ...
    def cast(self, x: Any, dtype: str) -> Any: ...


@runtime_checkable
class ForwardBackend(Backend, Protocol):
    """Capability ``forward``: logits of the decoder (``hyperclone_core.decoder`` run
    with the backend's ``ArrayOps``), weights given as numpy arrays by checkpoint
    name.  Optional ``dtype=`` keyword ("float32", "bfloat16").  Optional
    ``supports(cfg) -> str | None``: a reason this backend cannot run ``cfg`` (the
    suite skips with it), None when it can."""

    def forward(self, family, cfg, weights: Mapping[str, np.ndarray], tokens) -> np.ndarray: ...


@runtime_checkable
class TrainBackend(Backend, Protocol):
    """Capability ``train``: an engine for the core trainer (``hyperclone_core.train``).

    ``engine(hf_config, weights, config, optimizer)`` -> ``hyperclone_core.train.Engine``
    over numpy ``weights`` by checkpoint name (fresh weights for training from
    scratch come from the core, ``structure.init_weights``, the same on every
    backend).  Capability
    ``distributed`` adds ``launch_command(world, module_args)`` (see
    ``hyperclone_core.train.engine``); an optional ``worker_exits_hard = True``
    makes a launched worker (``hyperclone_core.train.worker``) that has finished
    and written its results leave with ``os._exit``, for runtimes whose teardown
    at interpreter exit is unsafe."""

    def engine(self, hf_config: Mapping[str, Any], weights: Mapping[str, np.ndarray], config: Any,
               optimizer: Any) -> Any: ...


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
    "Backend", "CAPABILITIES", "ENTRY_POINT_GROUP", "ExpandBackend", "ForwardBackend", "TrainBackend",
    "apply_ops", "available_backends", "execute", "broadcast_coeffs", "load_backend", "loadable_backends", "n_groups",
    "run_program",
]

