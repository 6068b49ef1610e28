"""Big tensor programs in blocks of destination rows: the streaming half of the
interpreter (each block runs through ``backend.apply_ops``, fast paths included).

A program qualifies when it has no Reshape, at most one Take on axis 0 and no
AddNoise along axis 0.  Then destination rows ``r0..r1`` depend only on the source
rows that Take maps them to (the same rows when there is none); a Scale along axis
0 takes the matching slice of its coefficients, and every other op is row by row.
Blocks break where the row map jumps (a step other than 0 or +1), so each block
reads one contiguous run of source rows no longer than itself: a safetensors
tensor's rows are contiguous on disk, and only blocks are resident.

AddNoise needs the whole tensor's signal power: a first pass runs the ops before it
block by block and sums their squares (no noise is drawn); the second (starting
from the first pass's blocks while they fit ``KEEP_BYTES``) draws each block's
zero-sum noise from a seed derived from the op's seed and the block's number, and
scales it to exactly the mean power the plan's SNR asks of the whole tensor.  Every
block's noise then has that power, so the tensor's has too (the SNR is exact, as in
the one-block case); the noise law is the backend's, normalized per block.  Results
depend on the plan and ``BLOCK_ELEMS`` only: not on threads, memory or timing.

Blocks are independent once the power is known, so ``workers`` > 1 runs them on a
small thread pool (a bounded window ahead of the consumer, yielded in row order):
numpy releases the GIL in its loops, and a noisy 1B -> 4.9B expansion otherwise kept
one of two cores idle.  The signal power is summed in block order either way.
"""

from __future__ import annotations

import math
from collections import ChainMap, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from .interpreter import apply_ops, n_groups
from ..algebra.noise import derive_seed
from ..algebra.program import AddNoise, Reshape, Scale, Take, TensorPlan

BLOCK_ELEMS = 1 << 21
"""Destination elements per block (8 MiB of float32): the block's ops chain in the
cache.  A tensor that fits one block runs whole."""

KEEP_BYTES = 512 * 2**20
"""A noisy tensor's noiseless blocks kept from the first pass for the second, up to
this many bytes (the rest are read and gathered again): a second read and gather
was ~a fifth of a noisy 1B -> 4.9B expansion's time, and 512 MiB keeps its peak RSS
well inside the streaming bound (2x the largest destination tensor, 0.98 GiB there)."""


@dataclass(frozen=True)
class RowBlock:
    """Destination rows ``rows`` [r0, r1) read source rows ``source`` [lo, hi)."""

    index: int
    rows: tuple
    source: tuple


@dataclass(frozen=True)
class RowProgram:
    """How one tensor's program runs in row blocks (``row_program``)."""

    tp: TensorPlan
    take0: int  # position of the Take on axis 0 in tp.ops, -1 if none
    noise: int  # position of the AddNoise, -1 if none
    blocks: tuple


def gathers_only(tp: TensorPlan) -> bool:
    """True when the program only moves elements (Takes and Reshapes): it can run on
    the stored bits of any dtype, bfloat16 included, with no arithmetic."""
    return all(isinstance(op, (Take, Reshape)) for op in tp.ops)


def row_program(tp: TensorPlan, arrays: Mapping[str, np.ndarray], block_elems: int = BLOCK_ELEMS) -> Optional[RowProgram]:
    """The row-block form of ``tp``, or None when it does not qualify (see the module
    docstring) or fits one block of ``block_elems`` destination elements."""
    ops = tp.ops
    if len(tp.source_shape) < 2 or len(tp.shape) < 2 or math.prod(tp.shape) <= block_elems:
        return None
    if any(isinstance(op, Reshape) for op in ops):
        return None
    takes0 = [k for k, op in enumerate(ops) if isinstance(op, Take) and op.axis == 0]
    noises = [k for k, op in enumerate(ops) if isinstance(op, AddNoise)]
    if len(takes0) > 1 or len(noises) > 1 or any(ops[k].axis == 0 for k in noises):
        return None
    rows = int(tp.shape[0])
    step = max(1, block_elems // max(math.prod(tp.shape[1:]), 1))
    if takes0:
        idx = np.asarray(arrays[ops[takes0[0]].map]).astype(np.int64, copy=False)
        bounds = [0, *(np.flatnonzero((np.diff(idx) != 0) & (np.diff(idx) != 1)) + 1).tolist(), rows]
    else:
        idx, bounds = None, [0, rows]
    if len(bounds) > rows // step + 64:
        return None  # a scattered row map: blocks would be a few rows each
    blocks = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        for r0 in range(a, b, step):
            r1 = min(r0 + step, b)
            src = (r0, r1) if idx is None else (int(idx[r0]), int(idx[r1 - 1]) + 1)
            blocks.append(RowBlock(len(blocks), (r0, r1), src))
    return RowProgram(tp, takes0[0] if takes0 else -1, noises[0] if noises else -1, tuple(blocks))


def _block_ops(rp: RowProgram, block: RowBlock, arrays: Mapping[str, np.ndarray]) -> tuple:
    """(ops, arrays of this block): the Take on axis 0 reads the block's local rows,
    coefficients along axis 0 are sliced (source rows before that Take, destination
    rows after it)."""
    (r0, r1), (lo, hi) = block.rows, block.source
    ops, local = [], {}
    for k, op in enumerate(rp.tp.ops):
        if k == rp.take0:
            name = f"{op.map}@rows"
            local[name] = np.asarray(arrays[op.map])[r0:r1].astype(np.int64) - lo
            ops.append(Take(0, name))
        elif isinstance(op, Scale) and 0 in op.axes:
            before = rp.take0 >= 0 and k < rp.take0
            c = np.asarray(arrays[op.coeffs])
            d = list(op.axes).index(0)
            name = f"{op.coeffs}@rows"
            local[name] = c[(slice(None),) * d + (slice(lo, hi) if before else slice(r0, r1),)]
            ops.append(Scale(op.axes, name))
        else:
            ops.append(op)
    return ops, local


class _BlockCache(dict):
    """apply_ops's device cache for one block: the block's own arrays stay here, the
    plan's shared ones go to (and come from) the tensor-wide cache."""

    def __init__(self, shared: dict, local_names):
        super().__init__()
        self.shared, self.local = shared, set(local_names)

    def _home(self, key) -> dict:
        return self if key[0] in self.local else self.shared

    def __contains__(self, key) -> bool:
        home = self._home(key)
        return dict.__contains__(home, key) if home is self else key in home

    def __getitem__(self, key):
        home = self._home(key)
        return dict.__getitem__(home, key) if home is self else home[key]

    def __setitem__(self, key, value) -> None:
        home = self._home(key)
        if home is self:
            dict.__setitem__(self, key, value)
        else:
            home[key] = value


def _run(backend, tp: TensorPlan, ops, arrays, x, device, cache):
    return apply_ops(backend, replace(tp, ops=tuple(ops)), arrays, x, device, cache) if ops else x


def add_block_noise(backend, x, op: AddNoise, groups, power: float, seed: int, groups_n: int):
    """Zero-sum noise of mean power exactly ``power`` added to the block ``x`` (ours:
    it may be written): the backend's ``add_zero_sum_noise_power`` hook when it has
    one, else its ``zero_sum_noise`` scaled through ``add_scaled``."""
    if power <= 0.0:
        return x
    hook = getattr(backend, "add_zero_sum_noise_power", None)
    if hook is not None:
        y = hook(x, op.axis, groups, power, seed, groups_n)
        if y is not None:
            return y
    noise = backend.zero_sum_noise(backend.shape(x), op.axis, groups, seed, x, groups_n)
    p = backend.mean_square(noise)
    return backend.add_scaled(x, noise, math.sqrt(power / p)) if p > 0.0 else x


def _in_order(fn: Callable, items, pool: Optional[ThreadPoolExecutor], window: int) -> Iterator:
    """``fn(item)`` for each item, in order; with a pool, up to ``window`` run ahead."""
    if pool is None:
        for item in items:
            yield fn(item)
        return
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # the consumer stopped early or a block failed: drop what has not started
        for f in pending:
            f.cancel()


def run_rows(backend: Any, rp: RowProgram, arrays: Mapping[str, np.ndarray],
             read_rows: Callable[[int, int], Any], device: Optional[str] = None,
             cache: Optional[dict] = None, workers: int = 1,
             finish: Optional[Callable[[Any], Any]] = None) -> Iterator[tuple]:
    """Yield ``(block, rows of the result)`` in row order.  ``read_rows(lo, hi)``
    returns fresh source rows [lo, hi) (numpy or the backend's arrays; they may be
    written) and must be safe to call from several threads when ``workers`` > 1;
    ``finish(rows)``, when given, runs on the block's thread and its value is yielded
    (e.g. the rounding to the stored dtype)."""
    if workers > 1 and len(rp.blocks) > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rowblocks") as pool:
            yield from _run_rows(backend, rp, arrays, read_rows, device, cache, pool, workers + 1, finish)
    else:
        yield from _run_rows(backend, rp, arrays, read_rows, device, cache, None, 1, finish)


def _run_rows(backend, rp, arrays, read_rows, device, cache, pool, window, finish) -> Iterator[tuple]:
    cache = {} if cache is None else cache
    finish = finish or (lambda y: y)
    tp = rp.tp
    plans = [_block_ops(rp, b, arrays) for b in rp.blocks]

    def prefix(b: RowBlock, until: int):
        ops, local = plans[b.index]
        x = backend.asarray(read_rows(*b.source), device)
        merged = ChainMap(local, arrays)
        return _run(backend, tp, ops[:until], merged, x, device, _BlockCache(cache, local)), ops, merged, local

    if rp.noise < 0:
        yield from _in_order(lambda b: (b, finish(prefix(b, len(tp.ops))[0])), rp.blocks, pool, window)
        return
    op = tp.ops[rp.noise]

    def measured(b: RowBlock):
        done = prefix(b, rp.noise)
        return b, done, backend.mean_square(done[0]) * math.prod(backend.shape(done[0]))

    total, kept, held = 0.0, {}, 0
    for b, done, power_sum in _in_order(measured, rp.blocks, pool, window):  # pass 1: the signal power
        total += power_sum
        size = getattr(done[0], "nbytes", 4 * math.prod(backend.shape(done[0])))
        if held + size <= KEEP_BYTES:  # pass 2 starts from it instead of reading and gathering again
            kept[b.index], held = done, held + size
    p_signal = total / max(math.prod(tp.shape), 1)
    power = p_signal / 10.0 ** (op.snr_db / 10.0)
    groups_n = n_groups(arrays, op)
    groups = cache.setdefault((op.groups, ""), backend.asarray(arrays[op.groups], device))

    def noisy(b: RowBlock):  # pass 2: the block's noise at that power, then the rest of the program
        x, ops, merged, local = kept.pop(b.index, None) or prefix(b, rp.noise)
        x = add_block_noise(backend, x, op, groups, power, derive_seed(op.seed, b.index), groups_n)
        return b, finish(_run(backend, tp, ops[rp.noise + 1:], merged, x, device, _BlockCache(cache, local)))

    yield from _in_order(noisy, rp.blocks, pool, window)


__all__ = ["BLOCK_ELEMS", "RowBlock", "RowProgram", "add_block_noise", "gathers_only",
           "row_program", "run_rows"]
