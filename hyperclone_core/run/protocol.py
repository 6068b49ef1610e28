"""The backend protocol and backend discovery.

A backend supplies array primitives (the plan ops, conversion to and from numpy,
noise) and, optionally, a decoder forward and a trainer.  The interpreter that
walks a plan program is ``interpreter``, once; backends never re-implement it.

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

from ..errors import HypercloneError

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
    ``seed`` is 63-bit (``hyperclone_core.algebra.noise.seed_words`` splits it for RNGs that
    take 32-bit words).  ``add_scaled`` may reuse the noise buffer, never x.

    Optional hooks, used when present and held to the same checks (the interpreter
    and the streaming path read each with ``getattr``; this list is all of them):
    ``scale_(x, coeffs)`` in place on arrays the interpreter produced;
    ``scale_take(x, coeffs, [(axis, index), ...])`` a Scale and the Takes right
    after it in one pass (with ``take_axes``);
    ``add_zero_sum_noise(x, axis, groups, snr_db, seed, n_groups)`` the whole AddNoise
    op (return None to decline); ``add_zero_sum_noise_power(x, axis, groups, power, seed,
    n_groups)`` zero-sum noise of mean power exactly ``power`` added to a row block
    (``rowblocks``; None to decline); ``take_axes(x, [(axis, index), ...])`` consecutive
    Takes in one pass; ``run_whole_program(tp, arrays, x, device, cache)`` a whole
    tensor program at once (a tracing backend compiles ``apply_ops`` once per program
    and shape), returning None to decline.  Optional attributes: ``row_workers`` (int,
    default 1) row blocks computed at once when streaming; ``lazy_weights`` (bool)
    ``forward`` accepts ``lazyweights.StoredTensor`` handles, so verification streams
    the checkpoint.  Optional ``save_checkpoint(folder, hf_config, weights)`` /
    ``load_checkpoint(folder)``: the HF layout, bit for bit.
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
    """Capability ``forward``: logits of the decoder (``hyperclone_core.model.decoder`` run
    with the backend's ``ArrayOps``), weights given as numpy arrays by checkpoint
    name.  Optional ``dtype=`` keyword ("float32", "bfloat16")."""

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
    "available_backends", "load_backend", "loadable_backends",
]

