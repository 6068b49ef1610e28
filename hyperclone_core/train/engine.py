"""The engine protocol: the small part of training a backend supplies.

The core trainer (``hyperclone_core.train.loop``) owns the policy -- schedule,
accumulation cadence, clipping rule, clone-aware LRs, decay mask, evaluation,
checkpoints and resume, metrics, the symmetry monitor.  An engine owns one model
on one framework and does exactly four things with it: take an optimizer step on
given micro-batches at a given LR, compute gradients, evaluate, and move its
state to and from numpy.  Keras 3's split: the loop once, a ``train_step`` per
framework.

A backend with capability ``train`` builds engines with
``backend.engine(hf_config, weights, config, optimizer)``; with ``distributed``
it also says how to start its workers (``launch_command``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass
class StepResult:
    """What one optimizer step reports.

    ``loss``: mean next-token cross entropy over the step's micro-batches (and over
    data-parallel ranks); ``grad_norm``: global L2 norm of the mean gradient before
    clipping; ``updated``: False when the loss or the gradients were not finite, in
    which case the engine left parameters and optimizer state untouched."""

    loss: float
    grad_norm: float
    updated: bool = True


@dataclass
class EngineState:
    """An engine's whole training state as numpy (full, unsharded arrays by checkpoint
    name): float32 parameters (the master copy), AdamW's first and second moments,
    the number of optimizer steps taken, and optional engine-private arrays that
    other engines ignore (``extra``)."""

    params: dict
    exp_avg: dict
    exp_avg_sq: dict
    adam_step: int
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """One model being trained by one backend.

    Batches are int64 numpy arrays (batch, seq + 1); the loss is the mean
    next-token cross entropy over all positions.  ``step``: for each micro-batch
    (all the same size) compute the loss and gradient, average them (over
    micro-batches, then over data-parallel ranks), clip by the global norm with
    ``optim.clip_coefficient``, and apply ``optim.AdamW`` at ``lr`` times each
    tensor's multiplier -- unless loss or gradient is not finite.  In
    ``config.dtype == "bfloat16"`` the forward and backward run in bfloat16 and the
    parameters and moments stay float32.  ``rank``/``world``: this process's place
    among the processes the loop splits each global batch over (0/1 for one
    process, including a single-controller mesh that shards the batch itself).
    ``params``/``export_state`` return full arrays on every rank (collective when
    sharded).  ``import_state`` then ``step`` continues a run bit for bit on the same
    engine and device.  ``config`` is the HF config dict (what checkpoints' config.json
    gets), ``names``/``shapes`` the trained tensors in checkpoint order, ``backend``
    the backend's registered name."""

    backend: str
    config: Mapping[str, Any]
    names: Sequence[str]
    shapes: Mapping[str, tuple]
    rank: int
    world: int

    def step(self, micro_batches: Sequence[np.ndarray], lr: float) -> StepResult: ...
    def gradients(self, micro_batches: Sequence[np.ndarray]) -> dict: ...
    def evaluate(self, batches: Sequence[np.ndarray]) -> float: ...
    def params(self, names: Optional[Sequence[str]] = None) -> dict: ...
    def export_state(self) -> EngineState: ...
    def import_state(self, state: EngineState) -> None: ...
    def barrier(self) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class Launcher(Protocol):
    """Capability ``distributed``: how the backend starts ``world`` data-parallel
    workers of a Python module.  Returns (argv, extra environment, TrainConfig fields
    the workers set, e.g. ``{"parallel": "ddp"}`` or ``{"parallel": "mesh", "mesh":
    "data=2"}``).  The suite runs ``argv`` with ``module_args`` = ``["-m",
    "hyperclone_core.train.worker", ...]`` and reads the main worker's results file."""

    def launch_command(self, world: int, module_args: Sequence[str]) -> tuple: ...


__all__ = ["Engine", "EngineState", "Launcher", "StepResult"]
