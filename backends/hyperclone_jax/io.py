"""jax arrays to and from the Hugging Face layout, bit for bit (bfloat16 included).

Reading goes through the core's safetensors reader (never a pickle); a bfloat16
tensor's stored bits are viewed as ``ml_dtypes.bfloat16``, not converted.  A
sharded array is written one tensor at a time (the host holds one tensor, never
the model); with ``sharding`` a loaded tensor goes straight to its shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hyperclone_core.io import AtomicDir, Checkpoint, ShardedWriter, write_json


def read_tensor(ck: Checkpoint, name: str, sharding=None) -> jax.Array:
    """One stored tensor as a jax array in its stored dtype."""
    raw = np.asarray(ck.raw(name))
    if ck.dtype(name) == "bfloat16":
        raw = raw.view(jnp.bfloat16)
    return jax.device_put(raw, sharding)


def _storage(x) -> tuple:
    """(numpy array, dtype name) the core's writer stores exactly: bfloat16 goes as
    its float32 widening, which the writer rounds back to the same bits."""
    a = np.asarray(jax.device_get(x))
    if a.dtype == jnp.bfloat16:
        return a.astype(np.float32), "bfloat16"
    return a, str(a.dtype)


def save_checkpoint(folder, hf_config: Mapping[str, Any], weights: Mapping[str, Any], force: bool = False,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """HF layout, atomically, each tensor in its own dtype, pulled to the host one at a time."""
    with AtomicDir(folder, force=force) as tmp:
        layout = [(n, tuple(x.shape), "bfloat16" if x.dtype == jnp.bfloat16 else np.dtype(x.dtype).name)
                  for n, x in weights.items()]
        w = ShardedWriter(tmp, layout, max_shard_bytes)
        for n, x in weights.items():
            w.write(n, _storage(x)[0])
        w.close()
        write_json(tmp / "config.json", dict(hf_config))
    return Path(folder)


def load_checkpoint(folder, shardings: Optional[Callable[[str, tuple], Any]] = None) -> tuple:
    """(config, {name: jax array}) in the stored dtypes; ``shardings(name, shape)``
    (optional) says where each tensor goes."""
    ck = Checkpoint(folder)
    return ck.config, {n: read_tensor(ck, n, shardings(n, ck.shape(n)) if shardings else None) for n in ck.names()}


__all__ = ["load_checkpoint", "read_tensor", "save_checkpoint"]
