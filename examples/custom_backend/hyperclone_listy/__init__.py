"""listy: a hyperclone backend whose arrays are flat Python ``array('f')`` buffers.

It exists to show what a third-party backend needs (and nothing more): the plan
primitives written natively for its own array type, ``to_numpy``/``asarray`` at the
boundary, and an entry point.  Its ``forward`` reuses the numpy oracle, which is
how a new backend can claim the ``forward`` capability before it has a model of
its own; replace it with yours.  Its ``engine`` (capability ``train``, ``engine.py``)
differentiates the core's decoder maths with a small tape and leaves the training
policy to the core: a framework with autodiff replaces the tape with its own.

Run the conformance suite against it::

    pip install -e examples/custom_backend
    pytest --pyargs hyperclone_conformance --hyperclone-backend listy
"""

from __future__ import annotations

import math
import random
from array import array

import numpy as np

__version__ = "0.1.0"


class Listy:
    """A flat row-major buffer and its shape.  Float data lives in ``array('f')``,
    so every store rounds to float32 exactly as a float32 framework does."""

    __slots__ = ("data", "shape")

    def __init__(self, data, shape):
        self.data = data
        self.shape = tuple(int(s) for s in shape)


def _strides(shape):
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return out[::-1]


class ListyBackend:
    name = "listy"
    capabilities = frozenset({"expand", "forward", "train"})

    def version(self) -> str:
        return __version__

    def device_name(self) -> str:
        return "cpu (python lists)"

    # -- boundary -------------------------------------------------------------
    def asarray(self, a, device=None):
        a = np.asarray(a)
        if a.dtype.kind in "iub":
            return Listy(a.ravel().tolist(), a.shape)
        return Listy(array("f", np.ascontiguousarray(a, dtype=np.float32).tobytes()), a.shape)

    def to_numpy(self, x):
        if isinstance(x.data, array):
            return np.frombuffer(x.data, dtype=np.float32).reshape(x.shape).copy()
        return np.asarray(x.data).reshape(x.shape)

    def shape(self, x):
        return x.shape

    # -- the plan primitives ----------------------------------------------------
    def take(self, x, axis, index):
        idx = self._index(x, index)
        outer = math.prod(x.shape[:axis])
        n = x.shape[axis]
        inner = math.prod(x.shape[axis + 1:])
        out = array("f")
        d = x.data
        for o in range(outer):
            base = o * n
            for j in idx:
                start = (base + j) * inner
                out.extend(d[start:start + inner])
        return Listy(out, x.shape[:axis] + (len(idx),) + x.shape[axis + 1:])

    def _index(self, x, index):
        return list(index.data)

    def scale(self, x, coeffs):
        c = coeffs.data
        if len(c) == 1:
            k = c[0]
            return Listy(array("f", [v * k for v in x.data]), x.shape)
        # coeffs is laid out to x's rank with 1s where it broadcasts
        cs = [st if coeffs.shape[k] != 1 else 0 for k, st in enumerate(_strides(coeffs.shape))]
        xs = _strides(x.shape)
        out = array("f", bytes(4 * len(x.data)))
        for flat, v in enumerate(x.data):
            ci, rem = 0, flat
            for k, st in enumerate(xs):
                q, rem = divmod(rem, st)
                ci += q * cs[k]
            out[flat] = v * c[ci]
        return Listy(out, x.shape)

    def zero_sum_noise(self, shape, axis, groups, seed, like, n_groups):
        """Gaussian noise from Python's own RNG (not numpy's: the suite checks the
        invariants, not the bits), minus its mean over the copies of each group."""
        rng = random.Random(seed)
        n = math.prod(shape)
        noise = [rng.gauss(0.0, 1.0) for _ in range(n)]
        g = [int(v) for v in groups.data]
        m = n_groups
        count = [0] * m
        for v in g:
            count[v] += 1
        outer, size, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
        for o in range(outer):
            for i in range(inner):
                pos = [(o * size + j) * inner + i for j in range(size)]
                sums = [0.0] * m
                for j, p in enumerate(pos):
                    sums[g[j]] += noise[p]
                for j, p in enumerate(pos):
                    noise[p] -= sums[g[j]] / count[g[j]]
        return Listy(noise, shape)

    def mean_square(self, x):
        return math.fsum(v * v for v in x.data) / max(len(x.data), 1)

    def add_scaled(self, x, noise, factor):
        return Listy(array("f", [a + b * factor for a, b in zip(x.data, noise.data)]), x.shape)

    def reshape(self, x, shape):
        if math.prod(shape) != len(x.data):
            raise ValueError(f"cannot reshape {x.shape} to {tuple(shape)}")
        return Listy(x.data, shape)

    def cast(self, x, dtype):
        if dtype == "float32":
            return Listy(array("f", x.data), x.shape)
        if dtype == "bfloat16":  # round to nearest even on the float32 bits; keep as float32 values
            bits = array("I", x.data.tobytes())
            for k, u in enumerate(bits):
                if (u & 0x7F800000) == 0x7F800000 and u & 0x7FFFFF:
                    bits[k] = 0x7FC00000
                else:
                    bits[k] = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16) & 0xFFFFFFFF
            return Listy(array("f", bits.tobytes()), x.shape)
        raise ValueError(f"listy supports float32 and bfloat16, not {dtype!r}")

    # -- model ------------------------------------------------------------------
    def forward(self, family, cfg, weights, tokens):
        """The core's decoder maths, run by numpy in float32: a backend gets its
        forward by handing the maths an array namespace, never by copying it."""
        from hyperclone_core.run import reference

        return reference.forward(family, cfg, weights, tokens, dtype=np.float32)

    # -- training ---------------------------------------------------------------
    def engine(self, hf_config, weights, config, optimizer):
        """A ``ListyEngine`` (``hyperclone_core.train.Engine``) over a float32 copy of ``weights``."""
        from .engine import ListyEngine

        return ListyEngine(hf_config, weights, config, optimizer)


backend = ListyBackend()
