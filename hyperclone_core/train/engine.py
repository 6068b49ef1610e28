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

from ..errors import EXIT_USAGE, HypercloneError


class TrainError(HypercloneError):
    """Training cannot start as asked (options that do not fit the model, the data or the
    run being resumed); says what to change."""

    exit_code = EXIT_USAGE


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
    the backend's registered name.  ``import_state`` starts with ``check_state``.

    Threads (``TrainConfig.threads``, ``--threads``; policy in ``threads.py``): an engine
    whose framework can resize its CPU thread pool at any time has the optional hook
    ``set_threads(n) -> bool``: use ``n`` intra-op threads from the next step on, and
    return whether its steps' speed depends on them (False on a GPU: the loop then
    leaves the count alone).  The loop calls it with an explicit count once, or with
    the automatic policy's counts as it measures them.  An engine without the hook
    settles ``config.threads`` when it is built: honoured where the framework allows
    (jax sizes its pool when it starts), else refused with ``threads.fixed_threads``'s
    usage error; 0 leaves the framework's own count."""

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


def check_state(state: EngineState, names: Sequence[str], shapes: Mapping[str, Sequence[int]]) -> None:
    """Refuse a state that does not fit the model ``names``/``shapes`` describe, naming
    the tensor: every parameter present with the model's shape and a floating dtype, the
    same for both moments unless ``adam_step`` is 0 (a fresh optimizer: engines then
    ignore them), and ``adam_step`` an integer >= 0.  Tensors the model does not have
    are ignored.  What every engine's ``import_state`` checks before its framework work."""
    step = state.adam_step
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise TrainError(f"adam_step: {step!r}, expected an integer >= 0 (the optimizer steps taken)")
    parts = [("params", state.params)]
    if step:
        parts += [("exp_avg", state.exp_avg), ("exp_avg_sq", state.exp_avg_sq)]
    for part, arrays in parts:
        missing = [n for n in names if n not in arrays]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise TrainError(f"{part} lacks {missing[0]!r}{more}: the state is not this model's (or is incomplete)")
        for n in names:
            a = arrays[n]
            have, want = tuple(np.shape(a)), tuple(int(d) for d in shapes[n])
            if have != want:
                raise TrainError(f"{part}[{n!r}]: shape {have}, the model has {want}")
            dtype = a.dtype if isinstance(a, np.ndarray) else np.asarray(a).dtype
            if dtype.kind != "f" and dtype.name != "bfloat16":
                raise TrainError(f"{part}[{n!r}]: dtype {dtype}, expected floating point (float32)")


@runtime_checkable
class Launcher(Protocol):
    """Capability ``distributed``: how the backend starts ``world`` data-parallel
    workers of a Python module.  Returns (argv, extra environment, TrainConfig fields
    the workers set, e.g. ``{"parallel": "ddp"}`` or ``{"parallel": "mesh", "mesh":
    "data=2"}``).  The suite runs ``argv`` with ``module_args`` = ``["-m",
    "hyperclone_core.train.worker", ...]`` and reads the main worker's results file."""

    def launch_command(self, world: int, module_args: Sequence[str]) -> tuple: ...


__all__ = ["Engine", "EngineState", "Launcher", "StepResult", "TrainError", "check_state"]
