"""The plan primitives on jax arrays, and each tensor program compiled whole.

The primitives are the core's ``ArrayPrimitives`` over ``jax.numpy``; ``JaxArrays``
adds only conversion, the RNG, the x64-aware cast and the fused noise op.  Run one at a time they would each
compile per shape and dispatch per call: ``programs.run_whole_program`` compiles
each tensor program whole (``blocks`` runs the noisy ones block by block).  Noise
is drawn from ``jax.random`` keys made of all 63 bits of the plan's seed
(``noise.seed_words``), projected to sum zero over the copies, and scaled on the
device.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hyperclone_core.errors import HypercloneError
from hyperclone_core.algebra.growth import uniform_layout
from hyperclone_core.algebra.noise import helmert, noise_factor, seed_words
from hyperclone_core.run.arrayops import ArrayPrimitives

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


class JaxArrays(ArrayPrimitives):
    """What jax makes different from ``ArrayPrimitives`` (``take``, ``scale``,
    ``reshape``, ``mean_square``, ``add_scaled``, ``zero_sum_noise`` are its defaults
    over ``jax.numpy``): conversion, the RNG, and float64 without x64."""

    xp = jnp
    DTYPES = DTYPES

    def asarray(self, a, device=None):
        return asarray(a, device)

    def to_numpy(self, x) -> np.ndarray:
        """A host numpy array; bfloat16 widens exactly to float32 (what the core's writers take)."""
        a = np.asarray(jax.device_get(x))
        return a.astype(np.float32) if a.dtype == jnp.bfloat16 else a

    def from_stored(self, raw: np.ndarray, dtype: str, sharding=None) -> jax.Array:
        """A stored tensor in its stored dtype (bfloat16 bits viewed as ``ml_dtypes.bfloat16``,
        not converted), on ``sharding`` when given."""
        return jax.device_put(raw.view(jnp.bfloat16) if dtype == "bfloat16" else raw, sharding)

    def cast(self, x, dtype):
        """``x`` as ``dtype``; float64 without jax's x64 mode stays float32 (the values a
        float64 cast of them holds exactly: the program computed in float32)."""
        dt = jax_dtype(dtype)
        if dt == jnp.float64 and not jax.config.jax_enable_x64:
            dt = jnp.float32
        return x.astype(dt)

    def normal(self, shape, seed: int, like):
        return jax.random.normal(rng_key(seed), tuple(shape), jnp.float32)


__all__ = ["DTYPES", "JaxArrays", "QUICK_BELOW", "QUICK_COMPILE", "add_noise", "asarray", "device_of", "host_layout",
           "jax_dtype", "project_zero_sum", "rng_key"]
