"""Noisy tensor programs run block by block on each device's own shard.

Compiled whole, a noisy program (gathers and scales, one AddNoise, elementwise
ops after it) makes XLA hold the whole shard's threefry counters, normals and
gathered values at once: several times the output per device, and on CPU devices
that is host RAM.  Here every device loops over blocks of rows of its shard of
the grown tensor, so what it holds is its output shard plus one block:

- a block's values are gathered straight from the source with the program's
  index maps composed (the Takes commute with the elementwise ops; scales index
  their coefficients at each stage's coordinates), the same float operations as
  the program run whole;
- its noise is drawn at the block's *global* coordinates by a counter-based
  normal: the value at flat index ``i`` of the draw's shape is
  ``jax.random.normal``'s (partitionable threefry, the key holding all 63 bits of
  the plan's seed), so blocks, shards and devices do not change the draws;
- two passes, because the SNR needs the whole tensor's powers: the first sums
  the signal's and the noise's squares (compensated, then ``psum`` over the mesh),
  the second adds the scaled noise.  A float32 output holds the first pass's raw
  noise in place; other dtypes draw it again.

The law is ``ops.add_noise``'s: k uniform copies take ``helmert(k).T @ u`` with
u ~ N(0, I) over (k-1) x the old size (the noise projected to sum zero), uneven
copies take iid noise minus its group means (drawn along the whole noise axis).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p
from jax.sharding import PartitionSpec

from hyperclone_core.algebra.noise import helmert, noise_factor
from hyperclone_core.algebra.planner import AddNoise, Cast, Offset, Reshape, Scale, Take

from .ops import JaxArrays, jax_dtype

BLOCK_ELEMENTS = 1 << 16
"""Elements of one block per device (256 KiB of float32): XLA's working set per
device is a few blocks, whatever the tensor's size."""

_ARRAYS = JaxArrays()
_PRE = (Take, Scale, Cast, Offset)
_POST = (Scale, Cast, Offset)
_U32 = jnp.uint32


def blockable(ops) -> bool:
    """Whether a program runs here: one AddNoise, gathers/scales/casts/offsets before
    it, elementwise ops after (every noisy program the planner writes)."""
    kinds = [type(op) for op in ops]
    if kinds.count(AddNoise) != 1:
        return False
    k = kinds.index(AddNoise)
    return all(t in _PRE for t in kinds[:k]) and all(t in _POST for t in kinds[k + 1:])


def source_spec(ops, source_shape, shape, target: PartitionSpec) -> PartitionSpec:
    """Where a program's source goes: the destination's mesh axes on the dims the program
    leaves alone, whole along the dims it gathers.  Every device then computes its
    shard from what it holds, and receives only the part of the source it needs."""
    if any(isinstance(op, Reshape) for op in ops):
        return PartitionSpec()
    gathered = {op.axis for op in ops if isinstance(op, Take)}
    dims = tuple(target) + (None,) * (len(shape) - len(target))
    return PartitionSpec(*[None if d in gathered or source_shape[d] != shape[d] else dims[d]
                           for d in range(len(shape))])


# ---------------------------------------------------------------- counter-based normals


def _mul64(a, b: int) -> tuple:
    """(hi, lo) uint32 words of ``a * b mod 2**64`` for uint32 ``a`` and a constant ``b``."""
    b_lo, b_hi = b & 0xFFFFFFFF, (b >> 32) & 0xFFFFFFFF
    a0, a1 = a & _U32(0xFFFF), a >> _U32(16)
    b0, b1 = _U32(b_lo & 0xFFFF), _U32(b_lo >> 16)
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = p01 + p10
    carry_mid = (mid < p01).astype(_U32)
    lo = p00 + (mid << _U32(16))
    carry_lo = (lo < p00).astype(_U32)
    hi = p11 + (mid >> _U32(16)) + (carry_mid << _U32(16)) + carry_lo + a * _U32(b_hi)
    return hi, lo


def counters(coords, shape) -> tuple:
    """(hi, lo) uint32 words of the flat (row-major) index into ``shape`` of every point
    of the grid ``coords`` (one index vector per dim): ``jax.random``'s partitionable
    threefry counter for that element.  64-bit exact without x64."""
    nd = len(shape)
    strides = [math.prod(shape[e + 1:]) for e in range(nd)]
    grid = tuple(len(c) for c in coords)

    def along(c, e):
        return jnp.asarray(c).astype(_U32).reshape([-1 if i == e else 1 for i in range(nd)])

    if math.prod(shape) <= 1 << 32:
        lo = sum(along(c, e) * _U32(s) for e, (c, s) in enumerate(zip(coords, strides)))
        return jnp.zeros(grid, _U32), jnp.broadcast_to(lo, grid)
    hi = lo = jnp.zeros((1,) * nd, _U32)
    for e, (c, s) in enumerate(zip(coords, strides)):
        p_hi, p_lo = _mul64(along(c, e), s)
        new_lo = lo + p_lo
        hi, lo = hi + p_hi + (new_lo < lo).astype(_U32), new_lo
    return jnp.broadcast_to(hi, grid), jnp.broadcast_to(lo, grid)


_LOW = np.nextafter(np.float32(-1.0), np.float32(0.0))


def normals(key, coords, shape):
    """``jax.random.normal(key, shape, float32)`` at the grid ``coords`` only (``key``:
    the two uint32 words of a threefry key), computed as jax does under
    ``jax_threefry_partitionable``: bits = xor of threefry2x32 of the flat index,
    a uniform on (-1, 1) from 23 of them, sqrt(2) erfinv."""
    hi, lo = counters(coords, shape)
    b1, b2 = threefry2x32_p.bind(key[0], key[1], hi, lo)
    bits = (b1 ^ b2) >> _U32(9) | _U32(0x3F800000)
    floats = jax.lax.bitcast_convert_type(bits, jnp.float32) - jnp.float32(1.0)
    u = jnp.maximum(_LOW, floats * (np.float32(1.0) - _LOW) + _LOW)
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(u)


# ---------------------------------------------------------------- a program in blocks


def _take(a, index, axis: int):
    return jnp.take(a, index, axis=axis, mode="clip")  # indices are in range by construction


def _sumsq(v):
    return jnp.sum(jnp.square(v.astype(jnp.float32)))


def _kahan(acc: tuple, v) -> tuple:
    s, c = acc
    y = v - c
    t = s + y
    return t, (t - s) - y


class Blocks:
    """The static layout of one blockable program on one shard: stage shapes, the
    block dim and size, which dims are gathered, the noise's window.  ``run`` traces it.

    ``shape``: the source's global shape; ``dtype`` its dtype; ``array_shapes``:
    placeholder -> shape; ``local``: the output shard's shape (the output's shape
    without a mesh); ``block``: elements per block."""

    def __init__(self, st, shape, dtype, local: tuple, block: int):
        self.ops, self.keys, self.count, self.layout = st.ops, st.args, st.noise[0][0], st.noise[0][1]
        shapes = [tuple(shape)]
        dims = dict((name, s) for name, s, _ in st.arrays)
        for op in self.ops:
            s = list(shapes[-1])
            if isinstance(op, Take):
                s[op.axis] = dims[op.map][0]
            shapes.append(tuple(s))
        self.stages, self.shape, self.nd = shapes, shapes[-1], len(shapes[-1])
        self.at = next(i for i, op in enumerate(self.ops) if isinstance(op, AddNoise))
        self.noise = self.ops[self.at]
        self.axis = self.noise.axis
        self.gathered = {op.axis for op in self.ops if isinstance(op, Take)}
        self.local = tuple(local)
        out = np.dtype(dtype)
        for op in self.ops:
            if isinstance(op, Cast):
                out = np.dtype(jax_dtype(op.dtype))
                out = np.dtype(np.float32) if out == np.float64 and not jax.config.jax_enable_x64 else out
        self.out_dtype = out
        self.store = out == np.float32  # the output buffer can hold the raw noise between the passes
        others = [e for e in range(self.nd) if e != self.axis]
        self.dim = max(others, key=lambda e: self.local[e]) if others else None
        w = self.local[self.axis]
        if self.layout is None:
            self.window = self.shape[self.axis]
        else:
            m, k, kind = self.layout
            self.window = min(w, m) if kind == "tile" else min(m, (w + k - 2) // k + 1)
        if self.dim is None:
            self.rows = 1
        else:
            row = math.prod(self.local) // self.local[self.dim]
            src_row = math.prod(shape) // shape[self.dim] if self.dim in self.gathered else row
            draws = row // w * self.window * (1 if self.layout is None else self.layout[1] - 1)
            per_row = max(row, src_row, draws, 1)
            self.rows = max(1, min(self.local[self.dim], block // per_row))

    # -- one block: its coordinates, values and noise

    def _coords(self, offs, start, size) -> list:
        """Per stage, per dim: the global index vector of the block's positions."""
        g = []
        for e in range(self.nd):
            n = size if e == self.dim else self.local[e]
            base = offs[e] + (start if e == self.dim else 0)
            g.append(base + jnp.arange(n, dtype=jnp.int32))
        stages = [g]
        for op in reversed(self.ops):
            cur = list(stages[0])
            if isinstance(op, Take):
                cur[op.axis] = _take(self.cache[(op.map, "")], cur[op.axis], 0).astype(jnp.int32)
            stages.insert(0, cur)
        return stages

    def _apply(self, op, x, coords):
        if isinstance(op, Scale):
            c = self.cache[(op.coeffs, f"{op.axes}/{self.nd}")]
            for e in range(c.ndim):  # a scalar (axes ()) is 0-d: nothing to gather
                if c.shape[e] > 1:
                    c = _take(c, coords[e], e)
            return _ARRAYS.scale(x, c)
        if isinstance(op, Cast):
            return _ARRAYS.cast(x, op.dtype)
        if isinstance(op, Offset):
            return _ARRAYS.add_scaled(x, jnp.full(x.shape, op.value, jnp.float32), 1.0)
        return x  # Take: composed into the gather from the source

    def values(self, src, src_offs, offs, start, size):
        """(the block at the noise stage, the per-stage coordinates)."""
        coords = self._coords(offs, start, size)
        x = src
        order = ([self.dim] if self.dim is not None else []) + [e for e in range(self.nd) if e != self.dim]
        for e in order:
            if e in self.gathered:  # the source is whole along a gathered dim: global indices
                x = _take(x, coords[0][e], e)
            elif e == self.dim:  # sharded like the output: the block's local rows
                x = jax.lax.dynamic_slice_in_dim(x, offs[e] - src_offs[e] + start, size, e)
        for s in range(self.at):
            x = self._apply(self.ops[s], x, coords[s])
        return x, coords

    def draw(self, key, offs, coords):
        """The block's noise (unscaled): zero-sum over the copies along the noise axis."""
        ax, g = self.axis, coords[self.at]
        a, w = offs[ax], self.local[ax]
        grid = [g[e] for e in range(self.nd)]
        if self.layout is None:  # uneven copies: iid along the whole axis, minus the group means
            n = self.shape[ax]
            grid[ax] = jnp.arange(n, dtype=jnp.int32)
            z = jnp.moveaxis(normals(key, grid, self.shape), ax, 0)
            groups = self.cache[(self.noise.groups, "")]
            sums = jax.ops.segment_sum(z, groups, num_segments=self.count)
            sizes = jax.ops.segment_sum(jnp.ones(n, jnp.float32), groups, num_segments=self.count)
            means = sums / sizes.reshape((self.count,) + (1,) * (z.ndim - 1))
            full = jnp.moveaxis(z - _take(means, groups, 0), 0, ax)
            return jax.lax.dynamic_slice_in_dim(full, a, w, ax)
        m, k, kind = self.layout
        t = jnp.arange(w, dtype=jnp.int32)
        if kind == "tile":
            j = (a % m + jnp.arange(self.window, dtype=jnp.int32)) % m
            q = None if self.window == w else np.arange(w) % m  # static
            copy = (a + t) // m
        else:
            j0 = a // k
            j = jnp.minimum(j0 + jnp.arange(self.window, dtype=jnp.int32), m - 1)
            q, copy = (a + t) // k - j0, (a + t) % k
        ushape = (k - 1,) + self.shape[:ax] + (m,) + self.shape[ax + 1:]
        grid[ax] = j
        u = normals(key, [jnp.arange(k - 1, dtype=jnp.int32)] + grid, ushape)
        if q is not None:
            u = _take(u, q, ax + 1)
        h = _take(jnp.asarray(helmert(k), jnp.float32), copy, 1)  # (k-1, w)
        bcast = [1] * self.nd
        bcast[ax] = w
        noise = h[0].reshape(bcast) * u[0]
        for r in range(1, k - 1):
            noise = noise + h[r].reshape(bcast) * u[r]
        return noise

    # -- the whole shard

    def run(self, src, cache: dict, key, offs, src_offs, reduce):
        """The output shard: pass 1 sums the powers (``reduce`` adds them over the
        devices), pass 2 writes ``x + factor * noise`` then the ops after the noise."""
        self.cache = cache
        post = self.ops[self.at + 1:]
        full, rows = (self.local[self.dim] if self.dim is not None else 1), self.rows
        n_full, tail = divmod(full, rows)

        def finish(x, noise, factor, coords):
            y = (x.astype(jnp.float32) + factor * noise).astype(x.dtype)
            for i, op in enumerate(post):
                y = self._apply(op, y, coords[self.at + 1 + i])
            return y

        if n_full == 1 and tail == 0:  # one block: no loop, no second draw
            x, coords = self.values(src, src_offs, offs, 0, rows)
            noise = self.draw(key, offs, coords)
            sx, sn = reduce(_sumsq(x), _sumsq(noise))
            return finish(x, noise, self._factor(sx, sn), coords)

        def put(out, y, start):
            return jax.lax.dynamic_update_slice_in_dim(out, y, start, self.dim)

        def first(start, size, carry):
            out, ax_, an_ = carry
            x, coords = self.values(src, src_offs, offs, start, size)
            noise = self.draw(key, offs, coords)
            if self.store:
                out = put(out, noise, start)
            return out, _kahan(ax_, _sumsq(x)), _kahan(an_, _sumsq(noise))

        def second(start, size, out, factor):
            x, coords = self.values(src, src_offs, offs, start, size)
            if self.store:
                noise = jax.lax.dynamic_slice_in_dim(out, start, size, self.dim)
            else:
                noise = self.draw(key, offs, coords)
            return put(out, finish(x, noise, factor, coords), start)

        out = jnp.zeros(self.local, self.out_dtype)
        zero = (jnp.float32(0.0), jnp.float32(0.0))
        carry = (out, zero, zero)
        carry = jax.lax.fori_loop(0, n_full, lambda i, c: first(i * rows, rows, c), carry)
        if tail:
            carry = first(n_full * rows, tail, carry)
        out, (sx, cx), (sn, cn) = carry
        sx, sn = reduce(sx - cx, sn - cn)
        factor = self._factor(sx, sn)
        out = jax.lax.fori_loop(0, n_full, lambda i, o: second(i * rows, rows, o, factor), out)
        if tail:
            out = second(n_full * rows, tail, out, factor)
        return out

    def _factor(self, sx, sn):
        """``noise.noise_factor``'s formula on the whole tensor's sums (0 when either is 0)."""
        unit = noise_factor(1.0, 1.0, self.noise.snr_db)
        ok = (sx > 0) & (sn > 0)
        return jnp.where(ok, unit * jnp.sqrt(sx / jnp.where(ok, sn, 1.0)), 0.0)


def _axes(entry) -> tuple:
    return () if entry is None else tuple(entry) if isinstance(entry, tuple) else (entry,)


def program(st, mesh=None, spec: Optional[PartitionSpec] = None, block: int = BLOCK_ELEMENTS):
    """fn(x, args, keys) of a blockable structure (the arguments of ``programs.compiled``'s
    programs); with ``mesh``, each device runs the blocks of its shard of ``spec``."""

    slot = next(op.seed for op in st.ops if isinstance(op, AddNoise))

    def run(x, args, keys):
        out_shape = _shape_after(st, x.shape)
        if mesh is None:
            zeros = (0,) * x.ndim
            b = Blocks(st, x.shape, x.dtype, out_shape, block)
            return b.run(x, dict(zip(st.args, args)), keys[slot], zeros, zeros, lambda a, b_: (a, b_))
        out_spec = tuple(spec) + (None,) * (len(out_shape) - len(spec))
        src = source_spec(st.ops, x.shape, out_shape, PartitionSpec(*out_spec))
        src_spec = tuple(src) + (None,) * (x.ndim - len(src))
        ways = [math.prod(mesh.shape[a] for a in _axes(entry)) for entry in out_spec]
        local = tuple(n // w for n, w in zip(out_shape, ways))
        b = Blocks(st, x.shape, x.dtype, local, block)
        summed = tuple(a for entry in out_spec for a in _axes(entry))

        def offsets(entries, extents):
            return tuple(jax.lax.axis_index(_axes(e)) * n if _axes(e) else 0 for e, n in zip(entries, extents))

        def shard(xs, args_, keys_):
            offs = offsets(out_spec, local)
            src_offs = offsets(src_spec, xs.shape)
            reduce = (lambda a, b_: jax.lax.psum((a, b_), summed)) if summed else (lambda a, b_: (a, b_))
            return b.run(xs, dict(zip(st.args, args_)), keys_[slot], offs, src_offs, reduce)

        f = jax.shard_map(shard, mesh=mesh, in_specs=(PartitionSpec(*src_spec), tuple(PartitionSpec() for _ in args),
                                                       PartitionSpec()),
                          out_specs=PartitionSpec(*out_spec), check_vma=False)
        return f(x, tuple(args), keys)

    return run


def _shape_after(st, shape) -> tuple:
    dims = dict((name, s) for name, s, _ in st.arrays)
    s = list(shape)
    for op in st.ops:
        if isinstance(op, Take):
            s[op.axis] = dims[op.map][0]
    return tuple(s)


__all__ = ["BLOCK_ELEMENTS", "Blocks", "blockable", "counters", "normals", "program", "source_spec"]
