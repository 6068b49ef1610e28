"""Torch tensors to and from the Hugging Face layout, bit for bit (bfloat16 included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from hyperclone_core.io import Checkpoint, write_hf_folder


def read_tensor(ck: Checkpoint, name: str) -> torch.Tensor:
    """One stored tensor as torch, in its stored dtype (bfloat16 bits viewed, not converted)."""
    raw = np.asarray(ck.raw(name))
    if ck.dtype(name) == "bfloat16":
        return torch.from_numpy(raw.copy()).view(torch.bfloat16)
    return torch.from_numpy(raw.copy())


def _storage(t: torch.Tensor) -> tuple:
    """(numpy array, dtype name) that ShardedWriter stores exactly: bfloat16 goes
    as its float32 widening, which the writer rounds back to the same bits."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().cpu().numpy(), "bfloat16"
    arr = t.cpu().numpy()
    return arr, str(arr.dtype)


def save_checkpoint(folder, hf_config: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
                    force: bool = False, max_shard_bytes: int = 5 * 2**30) -> Path:
    """HF layout, atomically, each tensor in its own dtype (bfloat16 included)."""
    return write_hf_folder(folder, hf_config, {n: _storage(t) for n, t in weights.items()}, force=force,
                           max_shard_bytes=max_shard_bytes)


__all__ = ["read_tensor", "save_checkpoint"]
