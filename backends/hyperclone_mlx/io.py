"""mlx arrays to and from the Hugging Face layout, bit for bit (bfloat16 included).

The core's reader and writer do the format (``hyperclone_core.io``: safetensors
only, validated, atomic); this file only moves bits: bfloat16 is read as its
uint16 bits viewed as bfloat16 and written as its exact float32 widening, which
the writer rounds back to the same bits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import mlx.core as mx
import numpy as np

from hyperclone_core.io import AtomicDir, Checkpoint, ShardedWriter, write_json

from .ops import asarray


def read_tensor(ck: Checkpoint, name: str) -> mx.array:
    """One stored tensor as mlx, in its stored dtype."""
    raw = np.asarray(ck.raw(name))
    if ck.dtype(name) == "bfloat16":
        return mx.array(np.ascontiguousarray(raw).view(np.uint16)).view(mx.bfloat16)
    return asarray(np.array(raw))


def dtype_name(x: mx.array) -> str:
    return str(x.dtype).replace("mlx.core.", "")


def storage(x) -> np.ndarray:
    """What ``ShardedWriter`` stores exactly for ``x`` (bfloat16 as its float32 widening)."""
    if isinstance(x, mx.array):
        x = x.astype(mx.float32) if x.dtype == mx.bfloat16 else x
        mx.eval(x)
    return np.asarray(x)


def save_checkpoint(folder, hf_config: Mapping[str, Any], weights: Mapping[str, Any], force: bool = False,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """HF layout, atomically, each tensor in its own dtype."""
    layout = [(n, tuple(w.shape), dtype_name(w) if isinstance(w, mx.array) else str(np.asarray(w).dtype))
              for n, w in weights.items()]
    with AtomicDir(folder, force=force) as tmp:
        writer = ShardedWriter(tmp, layout, max_shard_bytes)
        for n, w in weights.items():
            writer.write(n, storage(w))
        writer.close()
        write_json(tmp / "config.json", dict(hf_config))
    return Path(folder)


def load_checkpoint(folder) -> tuple:
    """(config, {name: mlx array in its stored dtype})."""
    ck = Checkpoint(folder)
    return ck.config, {n: read_tensor(ck, n) for n in ck.names()}


__all__ = ["dtype_name", "load_checkpoint", "read_tensor", "save_checkpoint", "storage"]
