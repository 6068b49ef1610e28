"""Growth of named dims by replication maps, and the index maps of composite axes.

A dim grows from m to M by an onto map ``src: [0, M) -> [0, m)``.  Every new index
is a *copy* of one old index; ``copy_id`` numbers the copies of each old index
0, 1, ... in order of appearance.  A composite axis (a concatenation of segments,
each an ordered product of dims and constants) inherits a map from its dims.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import PlanError
from ..model.spec import Segment


LAYOUTS = ("tile", "interleave")


@dataclass(frozen=True)
class ReplicationMap:
    """How one dim grows: ``src[j]`` is the old index that new index ``j`` copies."""

    old: int
    new: int
    layout: str = "tile"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise PlanError(f"unknown layout {self.layout!r}; use one of {LAYOUTS}")
        if self.new < self.old:
            raise PlanError(
                f"cannot shrink a dim from {self.old} to {self.new}: HyperCloning only grows"
            )
        if self.old < 1:
            raise PlanError(f"a dim of size {self.old} cannot be grown")

    @property
    def uniform(self) -> bool:
        return self.new % self.old == 0

    @property
    def identity(self) -> bool:
        return self.new == self.old

    def src(self) -> np.ndarray:
        j = np.arange(self.new)
        if self.layout == "tile":
            return j % self.old
        # interleave: copies of an old index sit side by side; uneven growth gives
        # the first (new mod old) old indices one extra copy.
        base, extra = divmod(self.new, self.old)
        counts = np.full(self.old, base) + (np.arange(self.old) < extra)
        return np.repeat(np.arange(self.old), counts)

    def copies(self) -> np.ndarray:
        """Number of copies of each old index, shape (old,)."""
        return np.bincount(self.src(), minlength=self.old)


def slice_copies(index: np.ndarray, max_copies: int = 256):
    """A Take along one axis as slice copies: ``[(dst slice, src slice), ...]``
    such that ``out[dst] = x[src]`` for each realises ``out = take(x, index)``;
    None when more than ``max_copies`` would be needed.

    A growth map is a few contiguous runs (tile, uneven, fused segments) or a few
    interleaved progressions (every old index k times side by side), so a
    backend can fill the result with a handful of block copies instead of a
    gather.
    """
    idx = np.asarray(index).astype(np.int64, copy=False).ravel()
    if idx.size == 0:
        return None
    if int(np.count_nonzero(np.diff(idx) != 1)) < max_copies:
        return [(slice(a, b), slice(s, s + b - a)) for a, b, s in _runs(idx)]
    for k in range(2, 17):  # interleave: every index k times side by side
        if idx.size % k:
            continue
        v = idx.reshape(-1, k)
        if not (v == v[:, :1]).all():
            continue
        base = _runs(v[:, 0])
        if len(base) * k > max_copies:
            continue  # e.g. k = 2 of a 4-fold repeat: try a larger k
        return [(slice(a * k + c, (b - 1) * k + c + 1, k), slice(s, s + b - a))
                for a, b, s in base for c in range(k)]
    return None


def _runs(idx: np.ndarray) -> list:
    """(dst start, dst stop, src start) of each maximal run where idx steps by +1."""
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(idx)]])
    return [(int(a), int(b), int(idx[a])) for a, b in zip(starts, stops)]


def slice_len(s: slice) -> int:
    """Length of a slice with explicit start and stop."""
    return len(range(s.start, s.stop, s.step or 1))


def split_takes(takes: Sequence[tuple], patterns=None, max_blocks: int = 4096) -> tuple:
    """Divide Takes ``[(axis, index), ...]`` (distinct axes) into ``(gathers,
    blocks)``: ``gathers`` the ``(axis, index)`` to apply as plain gathers first
    (their maps have no short slice pattern, or the block count would pass
    ``max_blocks``), ``blocks`` the ``(axis, pattern)`` for ``block_copies``.
    ``patterns(index)`` gives an index's slice copies (default ``slice_copies``;
    a backend may pass a memoized one for device arrays)."""
    patterns = patterns or slice_copies
    gathers, blocks = [], []
    for axis, index in takes:
        p = patterns(index)
        if p is None:
            gathers.append((axis, index))
        else:
            blocks.append((axis, p))
    while blocks and math.prod(len(p) for _, p in blocks) > max_blocks:
        axis, p = max(blocks, key=lambda b: len(b[1]))
        blocks.remove((axis, p))
        gathers.append(next(t for t in takes if t[0] == axis))
    return gathers, blocks


def block_copies(shape: Sequence[int], patterns: Sequence[tuple]) -> tuple:
    """Takes on several axes as block copies: ``patterns`` is ``[(axis,
    slice_copies(...)), ...]`` on distinct axes of an array of ``shape``.  Returns
    ``(out_shape, [(dst index tuple, src index tuple), ...])``: ``out[dst] = x[src]``
    for each fills the result, every element written once."""
    out_shape = list(shape)
    for axis, pattern in patterns:
        out_shape[axis] = sum(slice_len(d) for d, _ in pattern)
    copies = []
    for combo in itertools.product(*(p for _, p in patterns)):
        dst = [slice(None)] * len(shape)
        src = [slice(None)] * len(shape)
        for (axis, _), (d, s) in zip(patterns, combo):
            dst[axis], src[axis] = d, s
        copies.append((tuple(dst), tuple(src)))
    return tuple(out_shape), copies


def uniform_layout(groups: np.ndarray):
    """``(m, k, layout)`` when a map of M = k*m indices gives every old index k copies
    laid out as ``tile`` (copy-major: j -> j mod m) or ``interleave`` (side by side:
    j -> j div k); None otherwise (uneven or scattered copies)."""
    groups = np.asarray(groups)
    n = len(groups)
    if n == 0:
        return None
    m = int(groups.max()) + 1
    if n % m:
        return None
    k = n // m
    j = np.arange(n)
    if np.array_equal(groups, j % m):
        return m, k, "tile"
    if np.array_equal(groups, j // k):
        return m, k, "interleave"
    return None


def layout_of(groups: np.ndarray):
    """``"tile"`` / ``"interleave"`` for a uniform map with copies (see ``uniform_layout``), else None."""
    u = uniform_layout(groups)
    return u[2] if u is not None and u[1] > 1 else None


def copy_ids(src: np.ndarray) -> np.ndarray:
    """Number the copies of each old index 0, 1, ... in order of appearance."""
    order = np.argsort(src, kind="stable")
    sorted_src = src[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_src)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(src)]))
    ids = np.empty(len(src), dtype=np.int64)
    ids[order] = np.arange(len(src)) - run_start
    return ids


@dataclass(frozen=True)
class AxisMap:
    """The index map of one tensor axis: new flat index -> old flat index.

    ``src`` gathers the axis; ``copy`` numbers the copies of each old index;
    ``counts[src]`` is how many copies the old index of each new index has.
    """

    src: np.ndarray
    copy: np.ndarray
    old_size: int

    @property
    def new_size(self) -> int:
        return len(self.src)

    @property
    def counts(self) -> np.ndarray:
        return np.bincount(self.src, minlength=self.old_size)

    @property
    def max_copies(self) -> int:
        return int(self.counts.max()) if self.old_size else 1

    @property
    def grown(self) -> bool:
        return self.new_size != self.old_size

    @property
    def uniform(self) -> bool:
        c = self.counts
        return bool((c == c[0]).all())


def axis_map(
    segments: Sequence[Segment],
    growth: Mapping[str, ReplicationMap],
    old_sizes: Mapping[str, int],
) -> AxisMap:
    """Compose per-dim replication maps into one flat map for a composite axis (a group
    factor composes its own segments' map)."""
    srcs, copies = [], []
    offset = 0
    for segment in segments:
        grids_src, grids_copy, old_dims, copy_radix = [], [], [], []
        for f in segment:
            if isinstance(f, tuple):  # a group: a concatenation inside the product
                sub = axis_map(f, growth, old_sizes)
                grids_src.append(sub.src)
                grids_copy.append(sub.copy)
                old_dims.append(sub.old_size)
                copy_radix.append(int(sub.copy.max()) + 1)
                continue
            if isinstance(f, int):
                rmap = ReplicationMap(f, f)
            else:
                rmap = growth.get(f) or ReplicationMap(old_sizes[f], old_sizes[f])
            s = rmap.src()
            grids_src.append(s)
            grids_copy.append(copy_ids(s))
            old_dims.append(rmap.old)
            copy_radix.append(int(np.bincount(s).max()))
        mesh_src = np.meshgrid(*grids_src, indexing="ij")
        mesh_copy = np.meshgrid(*grids_copy, indexing="ij")
        flat_src = np.ravel_multi_index([m.ravel() for m in mesh_src], old_dims) if old_dims else np.zeros(1, int)
        flat_copy = np.ravel_multi_index([m.ravel() for m in mesh_copy], copy_radix) if copy_radix else np.zeros(1, int)
        srcs.append(flat_src + offset)
        copies.append(flat_copy)
        offset += math.prod(old_dims)
    return AxisMap(
        src=np.concatenate(srcs).astype(np.int64),
        copy=np.concatenate(copies).astype(np.int64),
        old_size=offset,
    )
