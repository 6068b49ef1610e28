"""The neutral random stream that fresh weights are drawn from, on every backend.

Training from scratch (the demo's small model and its random twin, ``hyperclone
train`` without a checkpoint) starts from ``structure.init_weights``, drawn here in
numpy, so that torch, jax, mlx and any third-party backend start from the same
weights for the same seed: a race run on two backends then differs only by the
engines' arithmetic, not by which random numbers each happened to draw.

The stream is the one torch's CPU generator produces, reimplemented: a 32-bit
Mersenne Twister seeded like ``torch.Generator("cpu").manual_seed(seed)``, and
``Tensor.normal_``'s transform on top of it:

* a float32 tensor of at least 16 values takes one uniform per value
  (the low 24 bits of a 32-bit draw, times 2**-24), then Box-Muller over blocks of
  16 (``u1 = 1 - u[j]``, ``u2 = u[j + 8]``; cosine branch into ``j``, sine branch into
  ``j + 8``); when the size is not a multiple of 16, 16 more uniforms redraw the last
  16 values;
* a smaller tensor takes one double-precision Box-Muller pair per two values
  (53-bit uniforms from two 32-bit draws each), the sine branch cached for the
  next value, as torch's ``normal_distribution<double>`` does.

So the weights equal what torch draws on CPU for the same seed, to float32
rounding of log/sin/cos (torch uses SLEEF's vector functions, numpy its own: about
one value in eight differs in the last bit).  Seeds below 2**32 seed the twister as
torch does; larger seeds use every bit (``init_by_array`` over their 32-bit words)
where torch would keep only the low 32.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

_CHUNK = 1 << 22  # values per pass over a large tensor (a multiple of 16)


def _words(seed: int) -> list:
    out = []
    while seed:
        out.append(seed & 0xFFFFFFFF)
        seed >>= 32
    return out


class InitStream:
    """Seeded normal draws, in call order: ``InitStream(seed).normal((rows, cols), 0.02)``."""

    def __init__(self, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"init seed must be a non-negative integer, got {seed!r}")
        seed = int(seed)
        self._rs = np.random.RandomState(seed if seed < (1 << 32) else _words(seed))
        self._cached = None  # the sine branch of the last small-tensor pair

    def _uniform24(self, n: int) -> np.ndarray:
        raw = self._rs.randint(0, 1 << 32, size=n, dtype=np.uint32)
        return (raw & np.uint32(0xFFFFFF)).astype(np.float32) * np.float32(2.0 ** -24)

    def _uniform53(self) -> float:
        hi, lo = (int(x) for x in self._rs.randint(0, 1 << 32, size=2, dtype=np.uint32))
        return (((hi << 32) | lo) & ((1 << 53) - 1)) * 2.0 ** -53

    @staticmethod
    def _box_muller16(u: np.ndarray, std: np.float32) -> np.ndarray:
        blocks = u.reshape(-1, 16)
        radius = np.sqrt(np.float32(-2.0) * np.log(np.float32(1.0) - blocks[:, :8]))
        theta = np.float32(2.0 * np.pi) * blocks[:, 8:]
        out = np.empty_like(blocks)
        np.multiply(radius * np.cos(theta), std, out=out[:, :8])
        np.multiply(radius * np.sin(theta), std, out=out[:, 8:])
        return out.reshape(-1)

    def normal(self, shape, std: float) -> np.ndarray:
        """A float32 array of ``shape`` drawn from N(0, std**2)."""
        n = int(np.prod(shape, dtype=np.int64))
        if n < 16:
            return self._small(n, std).reshape(shape)
        s = np.float32(std)
        out = np.empty(n, np.float32)
        full = n - n % 16
        for at in range(0, full, _CHUNK):
            stop = min(full, at + _CHUNK)
            out[at:stop] = self._box_muller16(self._uniform24(stop - at), s)
        if n % 16:
            self._uniform24(n % 16)  # drawn for the tail, then overwritten
            out[n - 16:] = self._box_muller16(self._uniform24(16), s)
        return out.reshape(shape)

    def _small(self, n: int, std: float) -> np.ndarray:
        out = np.empty(n, np.float32)
        for i in range(n):
            if self._cached is not None:
                z, self._cached = self._cached, None
            else:
                u1, u2 = self._uniform53(), self._uniform53()
                radius = np.sqrt(-2.0 * np.log1p(-u2))
                z = radius * np.cos(2.0 * np.pi * u1)
                self._cached = radius * np.sin(2.0 * np.pi * u1)
            out[i] = z * std
        return out


__all__ = ["InitStream"]
