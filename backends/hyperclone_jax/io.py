"""jax arrays to and from the Hugging Face layout under the names ``interop`` uses:
the core's reader and writer through ``JaxArrays``' converters (bfloat16 bits viewed
as ``ml_dtypes.bfloat16``, never converted; a sharded array pulled to the host one
tensor at a time), with a loaded tensor going straight to its shards."""

from __future__ import annotations

import jax
import numpy as np

from hyperclone_core.io import Checkpoint

from .ops import JaxArrays

_ARRAYS = JaxArrays()
save_checkpoint = _ARRAYS.save_checkpoint


def read_tensor(ck: Checkpoint, name: str, sharding=None) -> jax.Array:
    """One stored tensor as a jax array in its stored dtype, on ``sharding`` when given."""
    return _ARRAYS.from_stored(np.asarray(ck.raw(name)), ck.dtype(name), sharding)


__all__ = ["read_tensor", "save_checkpoint"]
