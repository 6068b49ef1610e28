"""The decoder run on weights read from a checkpoint when the maths asks for them.

``decoder.forward`` already walks the model one layer at a time through a getter
(``params.layer(i)``); here the getter reads each tensor from the checkpoint at the
moment a block asks for it and keeps no reference, so only the tensor at hand is
resident.  A matrix bigger than ``block_bytes`` in the compute dtype is not read
whole: ``StreamOps`` (the numpy ops with ``linear`` / ``embed`` hooks that take
``RowBlocks``) runs it a block of rows at a time.  This is how verification of a
model bigger than memory runs the one decoder definition, with the same numbers as
the whole model in memory: the maths is unchanged, only residency differs.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from ..model import decoder
from ..model.spec import DecoderConfig, Family
from ..model.structure import Params

BLOCK_BYTES = 64 * 2**20


class StoredTensor:
    """One tensor of a ``Checkpoint``, read (as float32, exactly as ``Checkpoint.read``
    gives it, non-finite values refused) only when asked."""

    def __init__(self, ck, name: str):
        self.ck, self.name = ck, name
        self.shape = tuple(ck.shape(name))
        self.ndim = len(self.shape)

    def read(self) -> np.ndarray:
        return self.ck.read(self.name)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        return self.ck.read_rows(self.name, lo, hi)

    def __repr__(self) -> str:
        return f"StoredTensor({self.name!r}, {list(self.shape)})"


def checkpoint_weights(ck, names) -> dict:
    """name -> ``StoredTensor`` for every tensor of ``ck`` that ``names`` lists."""
    return {n: StoredTensor(ck, n) for n in ck.names() if n in names}


class RowBlocks:
    """A stored matrix as consecutive blocks of rows, each converted when read."""

    def __init__(self, tensor: StoredTensor, convert: Callable, rows: int):
        self.tensor, self.convert, self.step = tensor, convert, max(1, rows)
        self.shape = tensor.shape

    def __iter__(self) -> Iterator:
        for lo in range(0, self.shape[0], self.step):
            hi = min(lo + self.step, self.shape[0])
            yield lo, hi, self.convert(self.tensor.rows(lo, hi))


class StreamOps(decoder.NumpyOps):
    """numpy's ops whose ``linear`` and ``embed`` also take ``RowBlocks``: each output
    column block is ``x @ rows.T`` (the same dot products as the whole matrix), an
    embedding row is picked from the block that holds it."""

    def linear(self, x, w, b=None):
        if not isinstance(w, RowBlocks):
            return super().linear(x, w, b)
        y = np.concatenate([decoder.NumpyOps.linear(self, x, rows) for _, _, rows in w], axis=-1)
        return y if b is None else y + b

    def embed(self, table, ids):
        if not isinstance(table, RowBlocks):
            return super().embed(table, ids)
        ids = np.asarray(ids)
        out = None
        for lo, hi, rows in table:  # every block is read: non-finite weights are refused as in a whole read
            if out is None:
                out = np.zeros(ids.shape + rows.shape[1:], rows.dtype)
            inside = (ids >= lo) & (ids < hi)
            out[inside] = rows[ids[inside] - lo]
        return out


class LazyParams:
    """``structure.Params`` (same slots, same missing-tensor error) whose getter
    converts a weight on each access; a ``StoredTensor`` is read then, a matrix past
    ``block_bytes`` comes back as ``RowBlocks``.  Nothing read is kept."""

    def __init__(self, family: Family, cfg: DecoderConfig, weights: Mapping[str, Any], convert: Callable,
                 itemsize: int, block_bytes: Optional[int] = None):
        self.params = Params(family, cfg, weights)
        self.convert, self.itemsize = convert, itemsize
        self.block_bytes = block_bytes or BLOCK_BYTES

    def _get(self, w):
        if w is None:
            return None
        if not isinstance(w, StoredTensor):
            return self.convert(w)
        row = self.itemsize * int(np.prod(w.shape[1:], dtype=np.int64))
        if w.ndim == 2 and w.shape[0] * row > self.block_bytes:
            return RowBlocks(w, self.convert, self.block_bytes // row)
        return self.convert(w.read())

    def __call__(self, kind: str, layer=None, expert=None):
        return self._get(self.params(kind, layer, expert))

    def layer(self, i: int) -> Callable:
        return lambda kind, expert=None: self._get(self.params(kind, i, expert))


OPS = StreamOps()


def forward(family: Family, cfg: DecoderConfig, weights: Mapping[str, Any], tokens, convert: Callable,
            itemsize: int, block_bytes: Optional[int] = None) -> np.ndarray:
    """Logits of ``tokens`` by the one decoder definition, numpy running it; ``weights``
    maps checkpoint names to arrays or ``StoredTensor`` handles, ``convert`` turns a
    read array into the compute dtype (``itemsize`` bytes an element)."""
    params = LazyParams(family, cfg, weights, convert, itemsize, block_bytes)
    return decoder.forward(cfg, params, np.asarray(tokens), OPS)


__all__ = ["BLOCK_BYTES", "LazyParams", "RowBlocks", "StreamOps", "StoredTensor", "checkpoint_weights",
           "forward"]
