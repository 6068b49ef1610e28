"""Data-parallel training over ``mx.distributed`` (the ring backend, started by
``mlx.launch``): every process holds the whole model, takes its share of each
global batch, and gradients are averaged with ``all_sum`` before the update, so
all replicas take the same step.  With ``parallel="none"`` every collective is
the identity: the engine has one code path.

The same code runs across Macs (``mlx.launch --hostfile``, Thunderbolt or
Ethernet rings) and on one machine (``-n 2``, what the suite tests).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import mlx.core as mx
from mlx.nn import average_gradients

from hyperclone_core.errors import ConfigError

MODES = ("none", "ddp")


@dataclass
class Parallel:
    """This process's place among the data-parallel replicas."""

    mode: str = "none"
    group: Optional[Any] = None
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def average(self, grads: dict) -> dict:
        """Gradients averaged over the replicas (all_sum / world, bucketed).  Passed as a
        list: mlx's tree utilities would split the dotted checkpoint names into a nest."""
        if self.world == 1:
            return grads
        return dict(zip(grads, average_gradients(list(grads.values()), self.group)))

    def mean(self, value: float) -> float:
        """A host float averaged over the replicas (the global loss)."""
        if self.world == 1:
            return value
        total = mx.distributed.all_sum(mx.array([value], dtype=mx.float32), group=self.group)
        return float(total.item()) / self.world

    def barrier(self) -> None:
        if self.world > 1:
            mx.eval(mx.distributed.all_sum(mx.zeros(1), group=self.group))


def setup(mode: str) -> Parallel:
    """``none``: one process.  ``ddp``: the global group ``mlx.launch`` set up (a
    lone process, started without a launcher, is a group of one)."""
    if mode not in MODES:
        raise ConfigError(f"parallel {mode!r} is not a mode of the mlx backend; use one of {', '.join(MODES)} "
                          "(ddp: data parallel over mx.distributed, started with mlx.launch)")
    if mode == "none":
        return Parallel()
    hostfile = os.environ.get("MLX_HOSTFILE")
    if hostfile and os.path.isfile(hostfile) and not Path(hostfile).read_text().strip():
        return Parallel(mode)  # ``mlx.launch -n 1`` writes an empty ring: one process
    group = mx.distributed.init()
    return Parallel(mode, group, group.rank(), group.size())


def free_port_base(n: int, tries: int = 64) -> int:
    """A base port with ``n`` consecutive ports free on 127.0.0.1 (the ring backend
    listens on base + rank)."""
    for _ in range(tries):
        base = random.randint(20000, 60000 - n)
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports on 127.0.0.1 for the mlx ring backend")


def launcher() -> list:
    """``mlx.launch`` of this interpreter's environment (its console script beside the
    interpreter, else on PATH, else its entry point run by this interpreter)."""
    here = Path(sys.executable).with_name("mlx.launch")
    if here.is_file():
        return [str(here)]
    found = shutil.which("mlx.launch")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]


def launch_command(world: int, module_args: Sequence[str]) -> tuple:
    """``world`` ring processes of ``python MODULE_ARGS`` on this host: ``mlx.launch
    --backend ring -n WORLD`` through ``hyperclone_mlx.launch``, which adds the exit
    codes mlx.launch drops (``--`` keeps the module's options, e.g. ``--backend``,
    away from the launchers)."""
    argv = [sys.executable, "-m", "hyperclone_mlx.launch", "-n", str(int(world)), "--", *module_args]
    return argv, {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}, {"parallel": "ddp"}


__all__ = ["MODES", "Parallel", "free_port_base", "launch_command", "launcher", "setup"]
