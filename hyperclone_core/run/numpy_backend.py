"""The numpy reference backend: expand + forward, the oracle every backend is held to.

Its forward is ``hyperclone_core.model.decoder`` run by numpy (``lazyweights``: ``NumpyOps`` whose
linear and embed also take a big matrix in row blocks)."""

from __future__ import annotations

import math
import os

import numpy as np

from .. import io
from . import lazyweights
from .arrayops import ArrayPrimitives
from ..io.dtypes import cast_numpy
from ..algebra.growth import block_copies, split_takes, uniform_layout
from ..algebra.noise import gaussian, helmert, mean_square, noise_factor, zero_sum_noise


class NumpyBackend(ArrayPrimitives):
    name = "numpy"
    xp = np
    lazy_weights = True  # forward takes lazyweights.StoredTensor handles (verification streams)
    capabilities = frozenset({"expand", "forward"})
    row_workers = max(1, min(4, os.cpu_count() or 1))
    """Row blocks a streaming expansion computes at once (``rowblocks.run_rows``):
    numpy's loops release the GIL, so blocks on threads use the cores one block's
    single-threaded loops leave idle.  The output does not depend on it."""
    # bfloat16 checkpoints load as float32 values (numpy has no bfloat16); they save
    # back exactly only through save_checkpoint(..., dtype) of the core's io

    def version(self) -> str:
        return np.__version__

    def device_name(self) -> str:
        return "cpu (numpy)"

    # what numpy makes different (shape, take, scale, reshape: ``ArrayPrimitives``)
    def asarray(self, a, device=None):
        return np.asarray(a)

    def to_numpy(self, x):
        return np.asarray(x)

    def astype(self, x, dtype):
        return x.astype(dtype, copy=False)

    def take_axes(self, x, takes):
        """Consecutive Takes as block copies into one result (see growth.slice_copies)."""
        gathers, blocks = split_takes(takes)
        for axis, index in gathers:
            x = np.take(x, index, axis=axis)
        if not blocks:
            return x
        shape, copies = block_copies(x.shape, blocks)
        out = np.empty(shape, dtype=x.dtype)
        for dst, src in copies:
            out[dst] = x[src]
        return out

    def scale_(self, x, coeffs):
        return np.multiply(x, coeffs.astype(x.dtype, copy=False), out=x)

    def zero_sum_noise(self, shape, axis, groups, seed, like, n_groups=None):
        dtype = like.dtype if like.dtype in (np.float32, np.float64) else np.float32
        return zero_sum_noise(shape, axis, groups, seed, dtype)

    def add_zero_sum_noise(self, x, axis, groups, snr_db, seed, n_groups=None, chunk_elems=1 << 24):
        """AddNoise in place on ``x``, a block of rows at a time, so the noise never
        needs a tensor-sized buffer: pass 1 measures the noise power, pass 2
        regenerates the same blocks (seeded by block number) and adds them."""
        if x.dtype not in (np.float32, np.float64):
            return None  # the interpreter falls back to the generic path
        p_sig = mean_square(x)
        if p_sig == 0.0:
            return x
        row_axis = 0 if axis != 0 or x.ndim == 1 else 1
        rows = x.shape[row_axis] if x.ndim > 1 else 1
        per_row = max(x.size // max(rows, 1), 1)
        step = max(1, chunk_elems // per_row)
        blocks = [slice(a, min(a + step, rows)) for a in range(0, rows, step)] if x.ndim > 1 else [slice(None)]

        def block_noise(b, sl):
            view = x[(slice(None),) * row_axis + (sl,)] if x.ndim > 1 else x
            return view, zero_sum_noise(view.shape, axis, groups, [seed, b], x.dtype)

        total, kept = 0.0, None
        for b, sl in enumerate(blocks):
            _, n = block_noise(b, sl)
            total += mean_square(n) * n.size
            kept = n if len(blocks) == 1 else None  # one block: no need to draw it twice
        factor = x.dtype.type(noise_factor(p_sig, total / x.size, snr_db))
        if factor == 0.0:
            return x
        for b, sl in enumerate(blocks):
            view, n = (x, kept) if kept is not None else block_noise(b, sl)
            n *= factor
            view += n
        return x

    def add_zero_sum_noise_power(self, x, axis, groups, power, seed, n_groups=None, chunk=1 << 16):
        """In place: zero-sum noise of mean power exactly ``power`` (a row block of
        ``hyperclone_core.run.rowblocks``).  Uniform copies only (else None: the generic
        path): the noise is ``H^T u`` (``noise.helmert``), u Box-Muller normals
        (``noise.gaussian``), added a cache-sized chunk at a time."""
        uniform = uniform_layout(groups)
        if uniform is None or uniform[1] < 2 or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
            return None
        m, k, layout = uniform
        shape = x.shape
        u = gaussian((k - 1,) + shape[:axis] + (m,) + shape[axis + 1:], seed)
        p_u = mean_square(u) * u.size / x.size
        if p_u <= 0.0:
            return x
        h = helmert(k) * math.sqrt(power / p_u)
        split = shape[:axis] + ((k, m) if layout == "tile" else (m, k)) + shape[axis + 1:]
        copy_axis = axis if layout == "tile" else axis + 1
        view = x.reshape(split)
        rows = shape[0] if axis > 0 else 1
        step = max(1, chunk // max(x.size // max(rows, 1), 1))
        tmp = None
        for a in range(0, rows, step):  # row chunks (axis > 0), so u and x stay in the cache
            sl = (slice(a, a + step),) if axis > 0 else ()
            for c in range(k):
                dst = view[(slice(None),) * copy_axis + (c,)][sl]
                for r in range(k - 1):
                    src = u[r][sl]
                    if tmp is None or tmp.shape != src.shape:
                        tmp = np.empty(src.shape, x.dtype)
                    np.multiply(src, x.dtype.type(h[r, c]), out=tmp)
                    dst += tmp
        return x

    def mean_square(self, x):
        return mean_square(x)

    def add_scaled(self, x, noise, factor):
        noise *= noise.dtype.type(factor)  # the noise buffer is ours: reuse it
        noise += x
        return noise.astype(x.dtype, copy=False)

    def cast(self, x, dtype):
        return cast_numpy(x, dtype)

    # model
    def forward(self, family, cfg, weights, tokens, dtype="float64"):
        """The oracle; ``dtype="bfloat16"`` rounds the weights to bfloat16 and computes in float32.
        A weight may be a ``lazyweights.StoredTensor``: it is read when a layer needs it
        (big matrices a block of rows at a time), so a model bigger than memory runs."""
        bf16 = dtype == "bfloat16"
        dt = np.dtype("float32" if bf16 else dtype)

        def convert(w):
            w = cast_numpy(np.asarray(w, np.float32), "bfloat16") if bf16 else w
            return np.asarray(w).astype(dt)

        return lazyweights.forward(family, cfg, weights, tokens, convert, dt.itemsize)

    # checkpoints (saved by ``ArrayPrimitives``: float arrays keep their dtype; a
    # bfloat16 checkpoint loads as float32 values and is saved back as float32)
    def load_checkpoint(self, folder):
        ck = io.Checkpoint(folder)
        return ck.config, {n: np.array(ck.raw(n)) if ck.dtype(n) != "bfloat16" else ck.read(n)
                           for n in ck.names()}


backend = NumpyBackend()
