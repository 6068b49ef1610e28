"""The plan primitives on jax arrays, and each tensor program compiled whole.

The primitives are ``jax.numpy`` functions.  Run one at a time they would each
compile per shape and dispatch per call; ``run_whole_program`` instead traces the
core's interpreter (``hyperclone_core.backend.apply_ops``) over them once per
program *structure* and jits the result.  The structure is the program with its
array names replaced by positions and its noise seeds by slots: the index maps,
coefficients and seeds are traced arguments, so every layer's q projection (say)
runs the same executable.  Noise is drawn from ``jax.random`` keys made of all 63
bits of the plan's seed (``noise.seed_words``), projected to sum zero over the
copies, and scaled on the device.

With a ``Mesh`` the executable gets ``out_shardings``: each device computes only
its shard of the grown tensor, and nothing the size of the grown tensor passes
through the host.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hyperclone_core.backend import apply_ops, broadcast_coeffs, n_groups
from hyperclone_core.errors import HypercloneError
from hyperclone_core.growth import uniform_layout
from hyperclone_core.noise import noise_factor, seed_words
from hyperclone_core.plan import AddNoise, Reshape, Scale, Take, TensorPlan

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16, "float64": jnp.float64}
PLATFORMS = {"cuda": "gpu", "rocm": "gpu"}
QUICK_COMPILE = {"xla_backend_optimization_level": 0}
"""XLA options for small programs, whose compile (tens of ms to seconds) outweighs
their run: LLVM's optimizations off (the same arithmetic, about half the compile)."""
QUICK_BELOW = 1 << 20
"""Programs on tensors with fewer elements than this compile with ``QUICK_COMPILE``."""


def jax_dtype(name) -> Any:
    key = str(name).replace("jnp.", "")
    if key not in DTYPES:
        raise HypercloneError(f"dtype {name!r} is not supported by the jax backend; use one of {sorted(DTYPES)}")
    return DTYPES[key]


def device_of(device: Optional[str]) -> Optional[jax.Device]:
    """A jax device from a ``--device`` string (``cpu``, ``gpu:1``, ``cuda``, ``tpu:3``); None: the default."""
    if device is None or device == "auto":
        return None
    if isinstance(device, jax.Device):
        return device
    platform, _, index = str(device).partition(":")
    platform = PLATFORMS.get(platform, platform)
    try:
        devices = jax.devices(platform)
    except RuntimeError as exc:
        raise HypercloneError(f"device {device!r}: jax has no {platform} devices ({exc}); "
                              f"available: {', '.join(str(d) for d in jax.devices())}") from None
    k = int(index) if index else 0
    if not 0 <= k < len(devices):
        raise HypercloneError(f"device {device!r}: jax sees {len(devices)} {platform} device(s)")
    return devices[k]


def asarray(a, device=None, sharding=None) -> jax.Array:
    """Host or device data on ``sharding`` (a NamedSharding), else on ``device``.
    Integers become int32 and float64 float32 unless jax runs with x64."""
    if isinstance(a, jax.Array) and sharding is None and device is None:
        return a
    where = sharding if sharding is not None else device_of(device)
    return jax.device_put(a if isinstance(a, jax.Array) else np.asarray(a), where)


def to_numpy(x) -> np.ndarray:
    """A host numpy array; bfloat16 widens exactly to float32 (what the core's writers take)."""
    a = np.asarray(jax.device_get(x))
    return a.astype(np.float32) if a.dtype == jnp.bfloat16 else a


# ---------------------------------------------------------------- primitives


def take(x, axis: int, index):
    return jnp.take(x, index, axis=axis)


def scale(x, coeffs):
    return x * coeffs.astype(x.dtype)


def reshape(x, shape):
    return jnp.reshape(x, tuple(shape))


def cast(x, dtype):
    """``x`` as ``dtype``; float64 without jax's x64 mode stays float32 (the values a
    float64 cast of them holds exactly: the program computed in float32)."""
    dt = jax_dtype(dtype)
    if dt == jnp.float64 and not jax.config.jax_enable_x64:
        dt = jnp.float32
    return x.astype(dt)


def rng_key(seed) -> jax.Array:
    """A jax.random key holding every bit of a 63-bit plan seed."""
    return jax.random.wrap_key_data(jnp.asarray(np.asarray(seed_words(seed), np.uint32)))


def project_zero_sum(noise, axis: int, groups, count: int, layout: Optional[tuple]):
    """Subtract from every element the mean of its copy group along ``axis``.
    ``layout`` (``growth.uniform_layout``) makes the groups a reshape; uneven
    copies take a segment sum over ``groups``."""
    if layout is not None:
        m, k, kind = layout
        shape = noise.shape
        split = shape[:axis] + ((k, m) if kind == "tile" else (m, k)) + shape[axis + 1:]
        v = noise.reshape(split)
        v = v - v.mean(axis=axis if kind == "tile" else axis + 1, keepdims=True)
        return v.reshape(shape)
    moved = jnp.moveaxis(noise, axis, 0)
    sums = jax.ops.segment_sum(moved, groups, num_segments=count)
    sizes = jax.ops.segment_sum(jnp.ones(moved.shape[0], moved.dtype), groups, num_segments=count)
    means = sums / sizes.reshape((count,) + (1,) * (moved.ndim - 1))
    return jnp.moveaxis(moved - jnp.take(means, groups, axis=0), 0, axis)


def gaussian_zero_sum(shape, axis: int, groups, key, count: int, layout: Optional[tuple]):
    return project_zero_sum(jax.random.normal(key, tuple(shape), jnp.float32), axis, groups, count, layout)


def helmert(k: int) -> np.ndarray:
    """(k-1, k) orthonormal rows spanning the vectors that sum to zero."""
    h = np.zeros((k - 1, k))
    for r in range(1, k):
        h[r - 1, :r] = 1.0
        h[r - 1, r] = -r
        h[r - 1] /= np.sqrt(r * (r + 1))
    return h


def add_noise(x, axis: int, groups, snr_db: float, key, count: int, layout: Optional[tuple]):
    """The whole AddNoise op on the device: zero-sum noise scaled to ``snr_db`` below
    x's power (``noise.noise_factor``'s formula; no noise when either power is 0).

    For k uniform copies the noise is ``H^T u`` (``helmert(k)`` rows, u ~ N(0, I) of
    (k-1)/k of x's size): the law of iid noise projected to sum zero, from fewer draws
    and no projection pass, and with exactly u's power (H's rows are orthonormal)."""
    xf = x.astype(jnp.float32)
    if layout is None:
        noise = gaussian_zero_sum(x.shape, axis, groups, key, count, layout)
        p_noise = jnp.mean(noise * noise)
    else:
        m, k, kind = layout
        u = jax.random.normal(key, (k - 1,) + x.shape[:axis] + (m,) + x.shape[axis + 1:], jnp.float32)
        p_noise = jnp.sum(u * u) / x.size
        h = helmert(k)
        copies = [sum(float(h[r, c]) * u[r] for r in range(k - 1)) for c in range(k)]  # each (..., m, ...)
        noise = (jnp.concatenate(copies, axis=axis) if kind == "tile"
                 else jnp.stack(copies, axis=axis + 1).reshape(x.shape))
    p_sig = jnp.mean(xf * xf)
    unit = noise_factor(1.0, 1.0, snr_db)  # sqrt(p_sig / p_noise) times this
    ok = (p_sig > 0) & (p_noise > 0)
    factor = jnp.where(ok, unit * jnp.sqrt(p_sig / jnp.where(ok, p_noise, 1.0)), 0.0)
    return (xf + factor * noise).astype(x.dtype)


def host_layout(groups) -> Optional[tuple]:
    u = uniform_layout(np.asarray(groups))
    return u if u is not None and u[1] > 1 else None


# the generic (eager) path, used only where the whole-program hook declines


def zero_sum_noise(shape, axis: int, groups, seed: int, like, count: Optional[int] = None):
    g = np.asarray(groups)
    count = int(g.max()) + 1 if count is None else count
    return gaussian_zero_sum(shape, axis, jnp.asarray(g), rng_key(seed), count, host_layout(g))


def mean_square(x) -> float:
    xf = jnp.asarray(x, jnp.float32)
    return float(jnp.mean(xf * xf)) if xf.size else 0.0


def add_scaled(x, noise, factor: float):
    return (x.astype(jnp.float32) + noise * factor).astype(x.dtype)


# ---------------------------------------------------------------- whole programs


@dataclass(frozen=True)
class Structure:
    """A program with its data taken out: what one executable is compiled for.

    ``ops``: the program with array names replaced by ``a0, a1, ...`` and each
    AddNoise's seed by its slot in the seeds argument; ``arrays``: the shape and
    dtype of each placeholder; ``args``: the interpreter's cache keys the traced
    arguments stand for, in order; ``noise``: per AddNoise, the group count and the
    copy layout (static: they shape the program); ``sharding``: the output's."""

    ops: tuple
    arrays: tuple
    args: tuple
    noise: tuple
    sharding: Any = None
    quick: bool = False


def structure(tp: TensorPlan, arrays, sharding=None) -> tuple:
    """(Structure, [(cache key, host array to transfer)], [seed, ...]) of ``tp``."""
    names: dict = {}
    specs: list = []
    args: list = []
    ops: list = []
    seeds: list = []
    noise: list = []
    ndim = len(tp.source_shape)

    def placeholder(name: str) -> str:
        if name not in names:
            names[name] = f"a{len(names)}"
            a = np.asarray(arrays[name])
            specs.append((names[name], a.shape, a.dtype.str))
        return names[name]

    def need(key, host):
        if key not in [k for k, _ in args]:
            args.append((key, host))

    for op in tp.ops:
        if isinstance(op, Take):
            ops.append(Take(op.axis, placeholder(op.map)))
            need((op.map, ""), arrays[op.map])
        elif isinstance(op, Scale):
            ops.append(Scale(op.axes, placeholder(op.coeffs)))
            need((op.coeffs, f"{op.axes}/{ndim}"), broadcast_coeffs(arrays[op.coeffs], op.axes, ndim))
        elif isinstance(op, AddNoise):
            ops.append(AddNoise(op.axis, placeholder(op.groups), op.snr_db, len(seeds)))
            need((op.groups, ""), arrays[op.groups])
            seeds.append(op.seed)
            noise.append((n_groups(arrays, op), host_layout(arrays[op.groups])))
        elif isinstance(op, Reshape):
            ops.append(op)
            ndim = len(op.shape)
        else:  # Cast and any op naming no plan array: static, part of the structure
            ops.append(op)
    keys = tuple((names[k[0]], k[1]) for k, _ in args)
    quick = math.prod(tp.shape) < QUICK_BELOW
    return Structure(tuple(ops), tuple(specs), keys, tuple(noise), sharding, quick), args, seeds


class _Tracing:
    """The primitives ``apply_ops`` calls while a program is traced: every plan
    array is already a traced argument in the interpreter's cache, and AddNoise
    reads its key from the traced seeds by slot."""

    def __init__(self, keys, noise: tuple, constants: frozenset = frozenset()):
        self.keys, self.noise, self.constants = keys, noise, constants

    def asarray(self, a, device=None):
        """Only constants a static op of the program names (an Offset's value, broadcast
        by the interpreter) may enter while tracing; plan data must come in as arguments,
        or one executable would carry one tensor's data to the next."""
        a = np.asarray(a)
        if a.size and float(a.flat[0]) in self.constants and np.all(a == a.flat[0]):
            return jnp.full(a.shape, a.flat[0], a.dtype)
        raise HypercloneError("internal: a plan array was requested that the jax program did not pass in "
                              "(the interpreter's cache keys changed?)")

    shape = staticmethod(lambda x: tuple(x.shape))
    take, scale, reshape, cast = staticmethod(take), staticmethod(scale), staticmethod(reshape), staticmethod(cast)
    add_scaled = staticmethod(add_scaled)

    def add_zero_sum_noise(self, x, axis, groups, snr_db, seed, count=None):
        count, layout = self.noise[seed]
        return add_noise(x, axis, groups, snr_db, jax.random.wrap_key_data(self.keys[seed]), count, layout)


def _stand_ins(st: Structure) -> dict:
    """Host arrays with the placeholders' shapes: the interpreter reads only shapes
    and group counts from them while tracing (the data comes in as arguments)."""
    out = {name: np.zeros(shape, np.dtype(dt)) for name, shape, dt in st.arrays}
    for op, (count, _) in zip([o for o in st.ops if isinstance(o, AddNoise)], st.noise):
        out[op.groups] = np.full(out[op.groups].shape, count - 1, out[op.groups].dtype)
    return out


@functools.lru_cache(maxsize=4096)
def compiled(st: Structure):
    """The jitted program of a structure (jax then specializes it per input shape)."""
    arrays = _stand_ins(st)
    tp = TensorPlan("program", "program", "", (), (), st.ops)

    constants = frozenset(float(op.value) for op in st.ops if isinstance(getattr(op, "value", None), (int, float)))

    def program(x, args, keys):
        cache = dict(zip(st.args, args))
        return apply_ops(_Tracing(keys, st.noise, constants), tp, arrays, x, None, cache)

    kw = {"compiler_options": QUICK_COMPILE} if st.quick else {}
    if st.sharding is not None:
        kw["out_shardings"] = st.sharding
    return jax.jit(program, **kw)


def run_whole_program(tp: TensorPlan, arrays, x, device, cache: dict, sharding=None, put=None):
    """Run ``tp`` on ``x`` as one compiled program; None (the interpreter then runs the
    primitives) for a program that starts with noise, which the fused op cannot take."""
    if not tp.ops or isinstance(tp.ops[0], AddNoise):
        return None
    st, args, seeds = structure(tp, arrays, sharding)
    put = put or (lambda a: asarray(a, device))
    device_args = []
    for key, host in args:
        if key not in cache:
            cache[key] = put(host)
        device_args.append(cache[key])
    keys = put(np.asarray([seed_words(s) for s in seeds], np.uint32).reshape(len(seeds), 2))
    return compiled(st)(x, tuple(device_args), keys)


__all__ = ["DTYPES", "Structure", "add_noise", "add_scaled", "asarray", "cast", "compiled", "device_of", "jax_dtype",
           "mean_square", "project_zero_sum", "reshape", "rng_key", "run_whole_program", "scale", "structure", "take",
           "to_numpy", "zero_sum_noise"]
