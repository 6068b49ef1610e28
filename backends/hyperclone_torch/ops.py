"""The plan primitives on torch tensors, on the tensor's own device (``TorchArrays``:
what torch makes different from the core's ``ArrayPrimitives``).

Dtype-preserving: a bfloat16 weight stays bfloat16 (coefficients are cast to the
weight's dtype, noise is drawn in float32 and added in the weight's dtype).

The caller's source is never written.  Inside ``inplace_scope()`` (what
``expand_model`` uses) ``scale`` and ``add_scaled`` write into tensors that a
primitive of this module allocated during the scope, saving a fresh allocation
(and its page faults) per op; outside it every op returns a new tensor.  There,
``provide_output`` also hands the next result's storage in (``expand_model``
passes pages faulted in ahead: see ``populate``).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Optional

import numpy as np
import torch

from hyperclone_core.algebra.growth import block_copies, slice_copies, split_takes, uniform_layout
from hyperclone_core.algebra.noise import helmert, noise_factor
from hyperclone_core.run.arrayops import ArrayPrimitives

_SCOPE: dict = {"active": False, "owned": {}, "out": None}


@contextlib.contextmanager
def inplace_scope():
    """Let ops reuse buffers they allocated themselves within this block."""
    _SCOPE["active"] = True
    try:
        yield
    finally:
        _SCOPE["active"] = False
        _SCOPE["owned"].clear()
        _SCOPE["out"] = None


def release() -> None:
    """Forget owned buffers (call when a program's result leaves the executor)."""
    _SCOPE["owned"].clear()
    _SCOPE["out"] = None


def provide_output(t: Optional[torch.Tensor]) -> None:
    """Inside ``inplace_scope``: the storage the next gather writes its result into
    when shape, dtype and device match (else it allocates as usual)."""
    _SCOPE["out"] = t if _SCOPE["active"] else None


def _output(shape, dtype, device) -> torch.Tensor:
    t = _SCOPE["out"]
    if t is not None and tuple(t.shape) == tuple(shape) and t.dtype == dtype and t.device == torch.device(device):
        _SCOPE["out"] = None
        return t
    return torch.empty(tuple(shape), dtype=dtype, device=device)


def _own(t: torch.Tensor) -> torch.Tensor:
    if _SCOPE["active"]:
        _SCOPE["owned"][id(t)] = weakref.ref(t)
    return t


def _owned(t: torch.Tensor) -> bool:
    ref = _SCOPE["owned"].get(id(t)) if _SCOPE["active"] else None
    return ref is not None and ref() is t

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torch_dtype(name) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    key = str(name).replace("torch.", "")
    if key not in DTYPES:
        raise ValueError(f"dtype {name!r} is not supported; use one of {sorted(DTYPES)}")
    return DTYPES[key]


MAX_RUNS = 256
"""Most slice copies one axis's Take may become; beyond it, index_select."""
MAX_BLOCKS = 4096
"""Most block copies one ``take_axes`` may issue (product over its axes)."""

_PATTERNS: dict = {}


def _copy_pattern(index: torch.Tensor):
    """``growth.slice_copies`` of a device index, memoized per index tensor (like
    ``_uniform_copies``): one host sync each."""
    hit = _PATTERNS.get(id(index))
    if hit is not None and hit[0]() is index:
        return hit[1]
    if len(_PATTERNS) > 1024:
        _PATTERNS.clear()
    result = slice_copies(index.cpu().numpy(), MAX_RUNS)
    _PATTERNS[id(index)] = (weakref.ref(index), result)
    return result


_LAYOUTS: dict = {}


def _uniform_copies(groups: torch.Tensor) -> tuple:
    """(m, k, layout) when every old index has k copies laid out as tile
    (copy-major) or interleave (side by side); None otherwise.  Memoized per
    groups tensor (run_program caches those on the device): one host sync each."""
    hit = _LAYOUTS.get(id(groups))
    if hit is not None and hit[0]() is groups:
        return hit[1]
    if len(_LAYOUTS) > 256:
        _LAYOUTS.clear()
    result = _detect_layout(groups.cpu())
    _LAYOUTS[id(groups)] = (weakref.ref(groups), result)
    return result


def _detect_layout(g: torch.Tensor) -> tuple:
    return uniform_layout(g.numpy())


CHUNK = 1 << 22
"""Elements per independently seeded stream of CPU noise: results do not depend on
the thread count, and the streams fill in parallel."""


def gaussian(shape, seed: int, device) -> torch.Tensor:
    """iid N(0, 1) float32 from torch.Generator(s) on ``device``, reproducible per seed.
    On the CPU, fixed-size chunks get their own seeded generator and fill on all
    intra-op threads (torch's normal_ is single-threaded there)."""
    device = torch.device(device)
    seed = int(seed) % (2**63)
    out = torch.empty(tuple(shape), device=device, dtype=torch.float32)
    flat = out.view(-1)
    n = flat.numel()
    if device.type != "cpu" or n <= CHUNK:
        return out.normal_(generator=torch.Generator(device=device).manual_seed(seed))

    def fill(c: int) -> None:
        g = torch.Generator().manual_seed((seed * 1_000_003 + c) % (2**63))
        flat[c * CHUNK:(c + 1) * CHUNK].normal_(generator=g)

    chunks = range((n + CHUNK - 1) // CHUNK)
    workers = torch.get_num_threads()
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, chunks))
    else:
        for c in chunks:
            fill(c)
    return out


class TorchArrays(ArrayPrimitives):
    """The plan primitives on torch tensors: what torch makes different from
    ``ArrayPrimitives`` (``shape`` and ``reshape`` are its defaults)."""

    xp = torch
    DTYPES = DTYPES

    def dtype(self, name) -> torch.dtype:
        return torch_dtype(name)

    def astype(self, x, dtype):
        return x.to(dtype)

    def asarray(self, a, device=None) -> torch.Tensor:
        if isinstance(a, torch.Tensor):
            return a.to(device) if device is not None else a
        arr = np.asarray(a)
        if arr.dtype == np.uint64:
            arr = arr.astype(np.int64)
        return torch.from_numpy(np.ascontiguousarray(arr).reshape(arr.shape)).to(device)  # a 0-d array stays 0-d

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()

    def from_stored(self, raw: np.ndarray, dtype: str) -> torch.Tensor:
        """A stored tensor as torch, in its stored dtype (bfloat16 bits viewed, not converted)."""
        t = torch.from_numpy(raw.copy())
        return t.view(torch.bfloat16) if dtype == "bfloat16" else t

    def take(self, x: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
        if index.device != x.device:
            index = index.to(x.device)
        return _own(torch.index_select(x, axis, index))

    def take_axes(self, x: torch.Tensor, takes) -> torch.Tensor:
        """Several Takes (distinct axes) in one pass: the result is allocated once and
        filled by block copies, so no intermediate the size of a partial result is
        made and each destination byte is written once.  Axes whose map has no short
        slice pattern go through ``index_select`` first."""
        takes = [(axis, index.to(x.device) if index.device != x.device else index) for axis, index in takes]
        gathers, blocks = split_takes(takes, _copy_pattern, MAX_BLOCKS)
        for axis, index in gathers:
            x = torch.index_select(x, axis, index)
        if not blocks:
            return _own(x)
        shape, copies = block_copies(x.shape, blocks)
        out = _output(shape, x.dtype, x.device)
        for dst, src in copies:
            out[dst].copy_(x[src])
        return _own(out)

    def scale_take(self, x: torch.Tensor, coeffs: torch.Tensor, takes) -> torch.Tensor:
        """A Scale, then Takes on distinct axes, in one pass: every block copy writes
        ``x[src] * coeffs[src]`` straight into the result, so neither a scaled copy of
        the source nor a second pass over the result is made.  Bit for bit the two ops
        (one IEEE multiply per element either way)."""
        c = coeffs.to(device=x.device, dtype=x.dtype)
        if c.dim() < x.dim():
            c = c.reshape((1,) * (x.dim() - c.dim()) + tuple(c.shape))
        takes = [(axis, index.to(x.device) if index.device != x.device else index) for axis, index in takes]
        gathers, blocks = split_takes(takes, _copy_pattern, MAX_BLOCKS)
        if gathers or c.dim() != x.dim() or torch.broadcast_shapes(x.shape, c.shape) != x.shape:
            return self.take_axes(self.scale(x, coeffs), takes)
        shape, copies = block_copies(x.shape, blocks)
        out = _output(shape, x.dtype, x.device)
        for dst, src in copies:
            csrc = tuple(s if c.shape[ax] > 1 else slice(None) for ax, s in enumerate(src))
            torch.mul(x[src], c[csrc], out=out[dst])
        return _own(out)

    def scale(self, x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        c = coeffs.to(device=x.device, dtype=x.dtype)
        if _owned(x) and torch.broadcast_shapes(x.shape, c.shape) == x.shape:
            return x.mul_(c)
        return _own(x * c)

    def scale_(self, x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        """``scale`` in place, on an array the interpreter produced itself."""
        c = coeffs.to(device=x.device, dtype=x.dtype)
        if torch.broadcast_shapes(x.shape, c.shape) != x.shape:
            return self.scale(x, coeffs)
        return x.mul_(c)

    def zero_sum_noise(self, shape, axis: int, groups: torch.Tensor, seed: int, like: torch.Tensor,
                       n_groups: Optional[int] = None) -> torch.Tensor:
        """Gaussian noise (float32, seeded torch.Generator on ``like``'s device),
        projected to sum 0 over the copies of each group along ``axis``."""
        device = like.device
        shape = tuple(shape)
        uniform = _uniform_copies(groups)
        if uniform is not None and uniform[1] > 1:
            # The projection of k iid N(0, 1) onto the zero-sum subspace has the same law
            # as H^T u with u ~ N(0, I_{k-1}) (H: Helmert rows): draw (k-1)/k of the noise.
            m, k, layout = uniform
            inner = shape[:axis] + (m,) + shape[axis + 1:]
            u = gaussian((k - 1,) + inner, seed, device)
            h = torch.from_numpy(helmert(k))  # stays on the host: its entries are scalars
            out = torch.empty(shape, device=device, dtype=torch.float32)
            split = shape[:axis] + ((k, m) if layout == "tile" else (m, k)) + shape[axis + 1:]
            view = out.view(split)
            for c in range(k):
                dst = view.select(axis if layout == "tile" else axis + 1, c)
                torch.mul(u[0], float(h[0, c]), out=dst)
                for r in range(1, k - 1):
                    dst.add_(u[r], alpha=float(h[r, c]))
            return _own(out)
        noise = gaussian(shape, seed, device)
        groups = groups.to(device=device, dtype=torch.long)
        m = int(groups.max()) + 1
        sums_shape = list(shape)
        sums_shape[axis] = m
        sums = torch.zeros(sums_shape, dtype=noise.dtype, device=device).index_add_(axis, groups, noise)
        counts = torch.bincount(groups, minlength=m).to(noise.dtype)
        view = [1] * len(shape)
        view[axis] = m
        means = sums.div_(counts.view(view))
        return _own(noise.sub_(torch.index_select(means, axis, groups)))

    def add_zero_sum_noise(self, x: torch.Tensor, axis: int, groups: torch.Tensor, snr_db: float, seed: int,
                           n_groups: Optional[int] = None):
        """The whole AddNoise op in place, with no noise buffer of x's size: for k uniform copies the noise is H^T u
        (``zero_sum_noise``'s law and seed), and since H's rows are orthonormal its
        power is exactly u's, so x takes ``factor * h[r, c] * u[r]`` copy by copy.
        The interpreter calls it only on arrays it produced itself: x is written.
        Returns None (the interpreter then runs the generic path) for uneven copies,
        non-float32/64 dtypes or a non-contiguous x."""
        uniform = _uniform_copies(groups)
        if uniform is None or uniform[1] < 2 or not x.is_contiguous() or x.dtype not in (torch.float32, torch.float64):
            return None
        m, k, layout = uniform
        shape = tuple(x.shape)
        u = gaussian((k - 1,) + shape[:axis] + (m,) + shape[axis + 1:], seed, x.device)
        factor = noise_factor(self.mean_square(x), self.mean_square(u) * u.numel() / x.numel(), snr_db)
        if factor == 0.0:
            return x
        h = torch.from_numpy(helmert(k))
        split = shape[:axis] + ((k, m) if layout == "tile" else (m, k)) + shape[axis + 1:]
        view = x.view(split)
        for c in range(k):
            dst = view.select(axis if layout == "tile" else axis + 1, c)
            for r in range(k - 1):
                dst.add_(u[r], alpha=factor * float(h[r, c]))
        return x

    def mean_square(self, x: torch.Tensor) -> float:
        """mean(x**2), accumulated in float64."""
        if x.numel() == 0:
            return 0.0
        dt = torch.float32 if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float64
        return float(torch.linalg.vector_norm(x.detach(), dtype=dt).double() ** 2 / x.numel())

    def add_scaled(self, x: torch.Tensor, noise: torch.Tensor, factor: float) -> torch.Tensor:
        if _owned(x) and noise.shape == x.shape:
            return x.add_(noise, alpha=factor)
        if _owned(noise) and noise.dtype == x.dtype:
            return torch.add(x, noise, alpha=factor, out=noise)
        return _own((x.float() + noise * factor).to(x.dtype))


__all__ = ["CHUNK", "DTYPES", "MAX_BLOCKS", "MAX_RUNS", "TorchArrays", "gaussian", "inplace_scope", "provide_output",
           "release", "torch_dtype"]
