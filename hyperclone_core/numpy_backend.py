"""The numpy reference backend: expand + forward, the oracle every backend is held to."""

from __future__ import annotations

import numpy as np

from . import reference
from .dtypes import cast_numpy


class NumpyBackend:
    name = "numpy"
    capabilities = frozenset({"expand", "forward"})

    def version(self) -> str:
        return np.__version__

    def device_name(self) -> str:
        return "cpu (numpy)"

    # array primitives
    def asarray(self, a, device=None):
        return np.asarray(a)

    def to_numpy(self, x):
        return np.asarray(x)

    def shape(self, x):
        return x.shape

    def take(self, x, axis, index):
        return np.take(x, index, axis=axis)

    def scale(self, x, coeffs):
        return np.multiply(x, coeffs.astype(x.dtype, copy=False))

    def scale_(self, x, coeffs):
        return np.multiply(x, coeffs.astype(x.dtype, copy=False), out=x)

    def zero_sum_noise(self, shape, axis, groups, seed, like):
        dtype = like.dtype if like.dtype in (np.float32, np.float64) else np.float32
        return reference.zero_sum_noise(shape, axis, groups, seed, dtype)

    def mean_square(self, x):
        return reference.mean_square(x)

    def add_scaled(self, x, noise, factor):
        noise *= noise.dtype.type(factor)  # the noise buffer is ours: reuse it
        noise += x
        return noise.astype(x.dtype, copy=False)

    def reshape(self, x, shape):
        return x.reshape(shape)

    def cast(self, x, dtype):
        return cast_numpy(x, dtype)

    # model
    def forward(self, family, cfg, weights, tokens):
        return reference.forward(family, cfg, weights, tokens, dtype=np.float64)


backend = NumpyBackend()
