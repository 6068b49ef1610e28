"""The MLX backend object: plan primitives (``ops.MlxArrays``), the decoder
forward, the training engine and its launcher; checkpoints bit for bit come with
the primitives (the core's ``ArrayPrimitives``).  Runs on MLX's default
device: the GPU (Metal) on Apple silicon, the CPU elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping

import mlx.core as mx
import numpy as np

from . import ops


class MlxBackend(ops.MlxArrays):
    name = "mlx"
    # distributed: data parallel over mx.distributed (ring, under mlx.launch)
    capabilities = frozenset({"expand", "forward", "train", "distributed"})
    parallel_modes = ("none", "ddp")  # ddp: data parallel over mx.distributed, under mlx.launch

    def check_device(self, device: str) -> None:
        """Refuse a --device MLX does not have, by name, before any work (MLX has one cpu
        and at most one Metal gpu: no index but 0)."""
        from hyperclone_core.errors import UsageError

        kind, _, index = str(device).partition(":")
        if index not in ("", "0"):
            raise UsageError(f"MLX has one {kind or 'cpu'} device; use {kind or 'cpu'} without an index")
        try:
            ops.use_device(kind)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

    def version(self) -> str:
        return mx.__version__

    def device_name(self) -> str:
        dev = mx.default_device()
        return f"{'gpu (Metal)' if dev.type == mx.gpu else 'cpu'} (mlx)"

    # ---------------------------------------------------------------- model
    def forward(self, family, cfg, weights: Mapping[str, np.ndarray], tokens, dtype: str = "float32") -> np.ndarray:
        """Logits as float32 numpy, from the compiled decoder in ``dtype`` ("float32", "bfloat16")."""
        from .model import forward

        return forward(family, cfg, weights, tokens, dtype)

    # ---------------------------------------------------------------- training
    def engine(self, hf_config, weights, config, optimizer):
        """An ``MlxEngine`` over a float32 copy of ``weights``."""
        from .engine import MlxEngine

        slow_path_note()
        return MlxEngine(hf_config, weights, config, optimizer)

    def launch_command(self, world, module_args):
        from .distributed import launch_command

        return launch_command(world, module_args)


OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
_NOTED: list = []


def slow_path(maps: str = "", platform: str = sys.platform) -> bool:
    """True where MLX trains on its Linux CPU wheel's bundled BLAS: no OpenBLAS mapped
    into this process (``maps``: /proc/self/maps)."""
    if not platform.startswith("linux"):
        return False
    if not maps:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return False
    return "openblas" not in maps.lower()


def slow_path_note(stream=None) -> bool:
    """Say once per process, on stderr, that training runs on the slow path and how to
    leave it; returns whether it said so."""
    if _NOTED or not slow_path():
        return False
    _NOTED.append(True)
    print("hyperclone: note: MLX on Linux multiplies matrices with its wheel's bundled BLAS, about 15x slower than "
          f"OpenBLAS here; for anything but tiny models: apt-get install libopenblas0-pthread, then run with "
          f"LD_PRELOAD={OPENBLAS} (backends/hyperclone_mlx/README.md)", file=stream or sys.stderr)
    return True


backend = MlxBackend()

__all__ = ["MlxBackend", "backend", "slow_path", "slow_path_note"]
