"""The MLX backend object: plan primitives, the decoder forward, the training
engine and its launcher, and checkpoints bit for bit.  Runs on MLX's default
device: the GPU (Metal) on Apple silicon, the CPU elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import mlx.core as mx
import numpy as np

from . import io, ops


class MlxBackend:
    name = "mlx"
    # distributed: data parallel over mx.distributed (ring, under mlx.launch)
    capabilities = frozenset({"expand", "forward", "train", "distributed"})

    def version(self) -> str:
        return mx.__version__

    def device_name(self) -> str:
        dev = mx.default_device()
        return f"{'gpu (Metal)' if dev.type == mx.gpu else 'cpu'} (mlx)"

    # ---------------------------------------------------------------- primitives
    asarray = staticmethod(ops.asarray)
    to_numpy = staticmethod(ops.to_numpy)
    shape = staticmethod(ops.shape)
    take = staticmethod(ops.take)
    take_axes = staticmethod(ops.take_axes)
    scale = staticmethod(ops.scale)
    zero_sum_noise = staticmethod(ops.zero_sum_noise)
    add_zero_sum_noise = staticmethod(ops.add_zero_sum_noise)
    mean_square = staticmethod(ops.mean_square)
    add_scaled = staticmethod(ops.add_scaled)
    reshape = staticmethod(ops.reshape)
    cast = staticmethod(ops.cast)

    # ---------------------------------------------------------------- model
    def forward(self, family, cfg, weights: Mapping[str, np.ndarray], tokens, dtype: str = "float32") -> np.ndarray:
        """Logits as float32 numpy, from the compiled decoder in ``dtype`` ("float32", "bfloat16")."""
        from .model import forward

        return forward(family, cfg, weights, tokens, dtype)

    # ---------------------------------------------------------------- training
    def engine(self, hf_config, weights, config, optimizer):
        """An ``MlxEngine`` over a float32 copy of ``weights``."""
        from .engine import MlxEngine

        return MlxEngine(hf_config, weights, config, optimizer)

    def launch_command(self, world, module_args):
        from .distributed import launch_command

        return launch_command(world, module_args)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, folder, hf_config: Mapping[str, Any], weights: Mapping[str, Any], force: bool = False,
                        max_shard_bytes: int = 5 * 2**30) -> Path:
        """HF layout, atomically, each tensor in its own dtype (bfloat16 included)."""
        return io.save_checkpoint(folder, hf_config, weights, force=force, max_shard_bytes=max_shard_bytes)

    def load_checkpoint(self, folder) -> tuple:
        return io.load_checkpoint(folder)


backend = MlxBackend()

__all__ = ["MlxBackend", "backend"]
