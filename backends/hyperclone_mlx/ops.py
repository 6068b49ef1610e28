"""The plan primitives on ``mlx.core`` arrays, on MLX's default device (``MlxArrays``:
what MLX makes different from the core's ``ArrayPrimitives``).

MLX is lazy: a primitive only records its op.  ``to_numpy`` -- the interpreter's
tensor boundary -- evaluates the tensor's whole program at once and hands MLX's
cached buffers back, so streaming expansion holds one tensor's program at a time
(the core's memory bound).  AddNoise, whose factor depends on measured powers,
evaluates in row blocks so its noise never needs a tensor-sized buffer.

Dtype-preserving like the oracle: coefficients are cast to the weight's dtype
before the multiply (numpy's rounding), a bfloat16 weight stays bfloat16 (its
noise is drawn and added in float32).  float64 (a float64 checkpoint) runs on the
CPU stream: Metal has no float64.
"""

from __future__ import annotations

import weakref
from typing import Optional

import mlx.core as mx
import numpy as np

from hyperclone_core.algebra.growth import slice_copies, uniform_layout
from hyperclone_core.algebra.noise import derive_seed, helmert, noise_factor, seed_words
from hyperclone_core.run.arrayops import ArrayPrimitives

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16, "float64": mx.float64}
_NUMPY = {np.dtype(np.float32): mx.float32, np.dtype(np.float16): mx.float16, np.dtype(np.float64): mx.float64}


def mx_dtype(name) -> mx.Dtype:
    if isinstance(name, mx.Dtype):
        return name
    key = str(name).replace("mlx.core.", "")
    if key not in DTYPES:
        raise ValueError(f"dtype {name!r} is not supported by the mlx backend; use one of {sorted(DTYPES)}")
    return DTYPES[key]


def _stream(dtype):
    """float64 work goes to the CPU (Metal has no float64); everything else to the default device."""
    return mx.cpu if dtype == mx.float64 else mx.default_stream(mx.default_device())


DEVICES = {"cpu": "cpu", "gpu": "gpu", "metal": "gpu", "mps": "gpu"}


def use_device(device: Optional[str]) -> None:
    """Make ``device`` MLX's default (MLX places work by default device, not per array):
    None/"auto" keep MLX's choice (the GPU where Metal is available); an unknown or
    absent device is refused by name."""
    if device in (None, "", "auto"):
        return
    kind = DEVICES.get(str(device).split(":")[0].lower())
    if kind is None:
        raise ValueError(f"device {device!r} is not an MLX device; use cpu or gpu (Metal), or leave it out")
    if kind == "gpu" and not mx.metal.is_available():
        raise ValueError(f"device {device!r}: this MLX build has no Metal GPU (MLX's Linux build runs on the cpu)")
    mx.set_default_device(mx.gpu if kind == "gpu" else mx.cpu)


MAX_RUNS = 64
"""Most slice copies one Take becomes; beyond it, a gather."""

_PATTERNS: dict = {}


def _pattern(index: mx.array):
    """How a Take with ``index`` runs: ("tile", k), ("repeat", k), ("runs", [src slices in
    destination order]) or None (a gather); memoized per index array (one host read)."""
    hit = _PATTERNS.get(id(index))
    if hit is not None and hit[0]() is index:
        return hit[1]
    if len(_PATTERNS) > 1024:
        _PATTERNS.clear()
    idx = np.asarray(index).astype(np.int64)
    uniform = uniform_layout(idx) if idx.size and idx.min() == 0 else None
    result = None
    if uniform is not None:
        result = ("tile" if uniform[2] == "tile" else "repeat", uniform[1], uniform[0])
    else:
        copies = slice_copies(idx, MAX_RUNS)
        if copies is not None and all(d.step in (None, 1) for d, _ in copies):
            result = ("runs", [src for _, src in sorted(copies, key=lambda c: c[0].start)], None)
    _PATTERNS[id(index)] = (weakref.ref(index), result)
    return result


def key(seed: int) -> mx.array:
    """The MLX PRNG key of a 63-bit plan seed, every bit kept (``seed_words``)."""
    return mx.array(np.asarray(seed_words(seed), dtype=np.uint32))


def _mean_square(x: mx.array) -> mx.array:
    """mean(x**2) as a device scalar (float32 accumulation; float64 stays float64)."""
    dt = mx.float64 if x.dtype == mx.float64 else mx.float32
    s = _stream(dt)
    return mx.mean(mx.square(x.astype(dt, stream=s), stream=s), stream=s)


BLOCK_ELEMS = 1 << 22
"""Elements per block of the fused AddNoise: its own key (``derive_seed(seed, block)``)
and the bound on its temporaries."""
KEEP_ELEMS = 1 << 24
"""A tensor whose noise draws fit in this many elements keeps them between the two
passes instead of redrawing (MLX's CPU normal sampler is the slow part)."""


class MlxArrays(ArrayPrimitives):
    """What MLX makes different from ``ArrayPrimitives`` (``shape``, ``reshape`` and
    ``zero_sum_noise``'s projection are its defaults over ``mlx.core``): conversion,
    its RNG, streams (float64 on the CPU), gathers as tiling, the fused noise op."""

    xp = mx
    DTYPES = DTYPES

    def asarray(self, a, device: Optional[str] = None) -> mx.array:
        """A numpy array (or an mlx one, returned as is) as an mlx array of the same
        dtype; integer index maps become int32 when they fit (MLX's native index type).
        ``device`` (cpu, gpu) becomes MLX's default device."""
        use_device(device)
        if isinstance(a, mx.array):
            return a
        arr = np.asarray(a)
        if arr.dtype.kind in "iu" and arr.size and arr.dtype.itemsize > 4 and 0 <= arr.min() and arr.max() < 2**31:
            arr = arr.astype(np.int32)
        if arr.dtype in _NUMPY:
            return mx.array(arr, dtype=_NUMPY[arr.dtype])
        return mx.array(arr)

    def to_numpy(self, x: mx.array) -> np.ndarray:
        """Evaluate ``x`` (the end of a tensor's program) and view it as numpy; bfloat16
        widens exactly to float32.  MLX's freed intermediates go back to the OS here."""
        if x.dtype == mx.bfloat16:
            x = x.astype(mx.float32)
        mx.eval(x)
        out = np.asarray(x)
        if mx.get_cache_memory():
            mx.clear_cache()
        return out

    def from_stored(self, raw: np.ndarray, dtype: str) -> mx.array:
        if dtype == "bfloat16":  # the stored bits viewed as bfloat16, not converted
            return mx.array(np.ascontiguousarray(raw).reshape(raw.shape).view(np.uint16)).view(mx.bfloat16)
        return super().from_stored(raw, dtype)

    def take(self, x: mx.array, axis: int, index: mx.array) -> mx.array:
        """A gather along ``axis`` -- as tiling, repeating or slice concatenation when the
        map is one (growth maps are; MLX's CPU gather along an inner axis is ~10x slower)."""
        p = _pattern(index)
        if p is None:
            return mx.take(x, index, axis=axis)
        kind, k, m = p
        if kind in ("tile", "repeat") and x.shape[axis] == m:
            return mx.concatenate([x] * k, axis=axis) if kind == "tile" else mx.repeat(x, k, axis=axis)
        if kind == "runs":
            lead = (slice(None),) * axis
            parts = [x[lead + (src,)] for src in k]
            return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=axis)
        return mx.take(x, index, axis=axis)

    def take_axes(self, x: mx.array, takes) -> mx.array:
        """Consecutive Takes on distinct axes, the least growing first (the intermediate
        stays as small as the takes allow)."""
        for axis, index in sorted(takes, key=lambda t: t[1].size / max(x.shape[t[0]], 1)):
            x = self.take(x, axis, index)
        return x

    def scale(self, x: mx.array, coeffs: mx.array) -> mx.array:
        s = _stream(x.dtype)
        c = coeffs if coeffs.dtype == x.dtype else coeffs.astype(x.dtype, stream=mx.cpu)
        return mx.multiply(x, c, stream=s)

    def cast(self, x: mx.array, dtype) -> mx.array:
        dt = mx_dtype(dtype)
        if x.dtype == dt:
            return x
        return x.astype(dt, stream=mx.cpu if mx.float64 in (dt, x.dtype) else _stream(dt))

    def normal(self, shape, seed: int, like) -> mx.array:
        """Standard Gaussian float32 from the key of ``seed``."""
        return mx.random.normal(tuple(shape), dtype=mx.float32, key=key(seed))

    def add_zero_sum_noise(self, x: mx.array, axis: int, groups: mx.array, snr_db: float, seed: int,
                           n_groups: Optional[int] = None) -> Optional[mx.array]:
        """The whole AddNoise op for k uniform copies, in blocks along an axis other than
        the noise axis, holding x, the result and one block of noise.  For each block the
        projection of k iid N(0, 1) draws onto the zero-sum subspace is drawn as H^T u with
        u ~ N(0, I_{k-1}) (H: Helmert rows), which has u's power: pass 1 draws u block by
        block for the noise power, pass 2 redraws the same blocks (same keys) and adds them
        at ``noise_factor`` (a small tensor keeps its draws instead, ``KEEP_ELEMS``).  Uneven
        copies return None (the interpreter's generic path)."""
        m, uniform, _ = self._copies(groups)
        if uniform is None or uniform[1] < 2 or x.size == 0:
            return None
        _, k, layout = uniform
        dt = mx.float64 if x.dtype == mx.float64 else mx.float32
        st = _stream(dt)
        mx.eval(x)
        shape = tuple(x.shape)
        row = 0 if axis != 0 or x.ndim == 1 else 1
        step = x.shape[row] if x.ndim == 1 else max(1, BLOCK_ELEMS // max(x.size // x.shape[row], 1))
        blocks = [slice(a, min(a + step, shape[row])) for a in range(0, shape[row], step)] if x.ndim > 1 else [slice(None)]

        def view(b: slice) -> tuple:
            return (slice(None),) * row + (b,) if x.ndim > 1 else (slice(None),)

        def draw(n: int, b: slice) -> mx.array:
            part = list(x[view(b)].shape)
            part[axis] = m
            return mx.random.normal((k - 1, *part), dtype=dt, key=key(derive_seed(seed, n)), stream=st)

        keep = x.size // k * (k - 1) <= KEEP_ELEMS
        kept = []
        p_sig = p_noise = 0.0
        for n, b in enumerate(blocks):
            xb, u = x[view(b)].astype(dt, stream=st), draw(n, b)
            s_x, s_u = mx.sum(mx.square(xb, stream=st), stream=st), mx.sum(mx.square(u, stream=st), stream=st)
            mx.eval(s_x, s_u, u) if keep else mx.eval(s_x, s_u)
            p_sig, p_noise = p_sig + float(s_x.item()), p_noise + float(s_u.item())
            kept.append(u if keep else None)
        factor = noise_factor(p_sig / x.size, p_noise / x.size, snr_db)
        if factor == 0.0:
            return x
        copy_axis = axis if layout == "tile" else axis + 1
        coeffs = factor * helmert(k)  # (k-1, k), host scalars
        out = mx.zeros(shape, dtype=x.dtype, stream=st)
        for n, b in enumerate(blocks):
            xb = x[view(b)]
            part = tuple(xb.shape)
            split = part[:axis] + ((k, m) if layout == "tile" else (m, k)) + part[axis + 1:]
            u = kept[n] if keep else draw(n, b)
            kept[n] = None
            noise = None
            for r in range(k - 1):
                h = mx.array(coeffs[r].reshape([k if d == copy_axis else 1 for d in range(len(split))]), dtype=dt)
                term = h * mx.expand_dims(u[r], copy_axis, stream=st)
                noise = term if noise is None else noise + term
            y = (xb.astype(dt, stream=st).reshape(split) + noise).reshape(part).astype(x.dtype, stream=st)
            out[view(b)] = y
            mx.eval(out)
        return out

    def mean_square(self, x: mx.array) -> float:
        return float(_mean_square(x).item()) if x.size else 0.0

    def add_scaled(self, x: mx.array, noise: mx.array, factor: float) -> mx.array:
        s = _stream(x.dtype)
        wide = x.astype(mx.float32, stream=s) if x.dtype in (mx.bfloat16, mx.float16) else x
        return (wide + noise.astype(wide.dtype, stream=s) * factor).astype(x.dtype, stream=s)


__all__ = ["DEVICES", "DTYPES", "MlxArrays", "key", "mx_dtype", "use_device"]
