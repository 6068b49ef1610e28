"""The MLX engine for the core trainer: the decoder's loss under
``mx.value_and_grad`` and ``mx.compile``, ``mlx.optimizers.AdamW`` per parameter
group, bfloat16 compute over float32 master weights, data parallel over
``mx.distributed`` (``distributed.py``).

The policy -- schedule, accumulation cadence, clipping rule, clone-aware LRs,
decay mask, evaluation, checkpoints, resume -- is ``hyperclone_core.train``'s;
this file runs steps and moves state to and from numpy.  The optimizer is
``optim.AdamW``'s closed form exactly: one ``mlx.optimizers.AdamW`` (with bias
correction) per (weight decay, LR multiplier) group, its LR set to the step's LR
times the multiplier, gradients scaled by ``optim.clip_coefficient`` first.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np

from hyperclone_core import family_for_config
from hyperclone_core.model.structure import slots
from hyperclone_core.train import (AdamW, EngineState, StepResult, TrainConfig, TrainError, check_state,
                                  clip_coefficient, fixed_threads)

from . import distributed
from . import model as mlx_model
from .ops import use_device


CPU_THREADS = ("mlx has no setting for its CPU threads: its ops run on one stream thread (a preloaded OpenBLAS "
               "takes OPENBLAS_NUM_THREADS from the environment)")
"""Why ``--threads`` other than 1 is refused.  Measured with mlx 0.32 on Linux: a CPU
matmul or elementwise op kept one core busy, the process holding two threads (the
caller and mlx's CPU stream; the wheel's BLAS is the single-threaded reference one).
No set_threads hook: there is nothing for the loop to tune."""


class MlxEngine:
    """Trains the decoder of ``hf_config`` from numpy ``weights`` (see
    ``hyperclone_core.train.Engine``).  Steps are always compiled: ``mx.compile``
    traces once per batch shape and is cheap, unlike torch's opt-in compiler
    (``TrainConfig.compile`` is torch's switch)."""

    backend = "mlx"

    def __init__(self, hf_config: Mapping, weights: Mapping[str, np.ndarray], config: TrainConfig, optimizer: AdamW,
                 par: Optional[distributed.Parallel] = None):
        self.config = dict(hf_config)
        self.cfg, self.spec = config, optimizer
        self.family = family_for_config(self.config)
        self.decoder = self.family.read(self.config)
        table = slots(self.family, self.decoder)
        self.names = list(table)
        missing = [n for n in self.names if n not in weights]
        if missing:
            raise TrainError(f"the weights lack tensors their {self.family.name} config implies: "
                             f"{', '.join(missing[:6])}; are config and weights from the same model?")
        self.shapes = {n: tuple(table[n].shape) for n in self.names}
        bad = [n for n in self.names if tuple(np.shape(weights[n])) != self.shapes[n]]
        if bad:
            raise TrainError(f"tensor {bad[0]} has shape {list(np.shape(weights[bad[0]]))}; the config implies "
                             f"{list(self.shapes[bad[0]])}")
        fixed_threads("mlx", config.threads, 1, CPU_THREADS)
        use_device(config.device)
        self.par = par if par is not None else distributed.setup(config.parallel)
        self.rank, self.world = self.par.rank, self.par.world
        # a copy: the caller's numpy arrays are never written
        self._params = {n: mx.array(np.array(weights[n], dtype=np.float32)) for n in self.names}
        dtype = "bfloat16" if config.dtype == "bfloat16" else None
        fam, dec = self.family, self.decoder

        def loss(params, batch):
            return mlx_model.loss(fam, dec, params, batch, dtype)

        self._value_and_grad = mx.compile(mx.value_and_grad(loss))
        self._loss = mx.compile(loss)
        self._groups = []
        for wd, mult, eps, names in optimizer.groups(self.names):
            opt = optim.AdamW(learning_rate=0.0, betas=list(optimizer.betas), eps=eps, weight_decay=wd,
                              bias_correction=True)
            opt.init({n: self._params[n] for n in names})
            self._groups.append((opt, mult, names))
        state = [opt.state for opt, _, _ in self._groups]

        def apply(params, grads, coef):
            out = {}
            for opt, _, names in self._groups:
                out.update(opt.apply_gradients({n: grads[n] * coef for n in names}, {n: params[n] for n in names}))
            return out

        self._apply = mx.compile(apply, inputs=state, outputs=state)
        mx.eval(self._params, state)

    # ------------------------------------------------------------ steps
    def _batch(self, b) -> mx.array:
        return mx.array(np.asarray(b, dtype=np.int32))

    def _grads(self, micro_batches: Sequence[np.ndarray]) -> tuple:
        """(mean loss over micro-batches and replicas, mean gradients), evaluated."""
        total, grads = None, None
        for b in micro_batches:
            loss, g = self._value_and_grad(self._params, self._batch(b))
            total = loss if total is None else total + loss
            grads = g if grads is None else {n: grads[n] + g[n] for n in grads}
            mx.eval(total, grads)  # one micro-batch's graph at a time
        n = len(micro_batches)
        grads = self.par.average({k: v / n for k, v in grads.items()})
        mx.eval(grads)
        return self.par.mean(float(total.item()) / n), grads

    def step(self, micro_batches: Sequence[np.ndarray], lr: float) -> StepResult:
        loss, grads = self._grads(micro_batches)
        if not math.isfinite(loss):
            return StepResult(loss, math.nan, False)
        norm = _global_norm(grads, self.spec.clip_weight)
        if not math.isfinite(norm):
            return StepResult(loss, norm, False)
        for opt, mult, _ in self._groups:
            opt.learning_rate = lr * mult
        coef = mx.array(clip_coefficient(norm, self.spec.grad_clip), dtype=mx.float32)
        self._params = dict(self._params, **self._apply(self._params, grads, coef))
        mx.eval(self._params, [opt.state for opt, _, _ in self._groups])
        return StepResult(loss, norm, True)

    def gradients(self, micro_batches: Sequence[np.ndarray]) -> dict:
        _, grads = self._grads(micro_batches)
        return {n: np.array(grads[n]) for n in self.names}

    def evaluate(self, batches: Sequence[np.ndarray]) -> float:
        losses = [float(self._loss(self._params, self._batch(b)).item()) for b in batches]
        return self.par.mean(float(np.mean(losses)))

    # ------------------------------------------------------------ state
    def params(self, names: Optional[Sequence[str]] = None) -> dict:
        return {n: np.array(self._params[n]) for n in (names or self.names)}

    def export_state(self) -> EngineState:
        m, v = {}, {}
        steps = set()
        for opt, _, names in self._groups:
            steps.add(int(opt.state["step"].item()))
            for n in names:
                m[n], v[n] = np.array(opt.state[n]["m"]), np.array(opt.state[n]["v"])
        if len(steps) > 1:  # pragma: no cover - every group steps together
            raise TrainError(f"the parameter groups hold different step counts {sorted(steps)}; cannot export")
        return EngineState(self.params(), m, v, steps.pop() if steps else 0)

    def import_state(self, state: EngineState) -> None:
        check_state(state, self.names, self.shapes)
        self._params = {n: mx.array(np.array(state.params[n], dtype=np.float32)) for n in self.names}
        for opt, _, names in self._groups:
            opt.state["step"] = mx.array(int(state.adam_step), dtype=mx.uint64)
            for n in names:
                zero = np.zeros(self.shapes[n], np.float32)
                first = state.exp_avg[n] if state.adam_step else zero
                second = state.exp_avg_sq[n] if state.adam_step else zero
                opt.state[n] = {"m": mx.array(np.array(first, dtype=np.float32)),
                                "v": mx.array(np.array(second, dtype=np.float32))}
        mx.eval(self._params, [opt.state for opt, _, _ in self._groups])

    def barrier(self) -> None:
        self.par.barrier()

    def close(self) -> None:
        pass


def _global_norm(grads: Mapping[str, mx.array], weights: Optional[Mapping[str, float]] = None) -> float:
    """L2 norm over every gradient entry (float32 sums per tensor, added in float64);
    with ``weights`` (``AdamW.clip_weight``) each tensor's square sum is weighted
    (``optim.global_norm``: a grown clone's source-equivalent norm)."""
    names = list(grads)
    sums = [mx.sum(mx.square(grads[n].astype(mx.float32))) for n in names]
    mx.eval(sums)
    if not weights:
        return math.sqrt(sum(float(s.item()) for s in sums))
    return math.sqrt(sum(float(weights.get(n, 1.0)) * float(s.item()) for n, s in zip(names, sums)))


__all__ = ["MlxEngine"]
