"""The torch engine for the core trainer: one ``nn.Module`` trained with
``torch.optim.AdamW`` (fused on CUDA and CPU), bf16 autocast, optional ``torch.compile``,
and DDP / FSDP2 under torchrun (``distributed.py``).

The policy -- schedule, accumulation cadence, evaluation, checkpoints, resume,
metrics, clone-aware LRs -- is ``hyperclone_core.train``'s; this file only runs
steps and moves state to and from numpy.  Any module whose forward maps tokens
[B, T] to logits [B, T, V] (``Decoder``) or to an output with ``.logits``
(``transformers`` models), exposing ``.config`` as a dict or a
``PretrainedConfig``, can be trained.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperclone_core.errors import HypercloneError
from hyperclone_core.model.structure import slots
from hyperclone_core.train import (AdamW, EngineState, StepResult, TrainConfig, TrainError, check_state,
                                  clip_coefficient, optimizer_for)
from hyperclone_core.train import train as core_train

from . import distributed


def model_config(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise TrainError(f"{type(model).__name__} has no .config; train a hyperclone_torch Decoder or a "
                         "transformers model")
    return dict(cfg) if isinstance(cfg, Mapping) else cfg.to_dict()


def logits_of(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def lm_loss(module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of a (B, T+1) batch, in float32."""
    logits = logits_of(module(batch[:, :-1]))
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def trained_names(cfg: Mapping[str, Any], params: Mapping[str, torch.Tensor]) -> list:
    """The checkpoint's tensors, in checkpoint order: the family's stored slots when
    the config is of a supported family (refusing a model that lacks one), else
    every parameter."""
    from hyperclone_core.model.families import family_for_config

    try:
        family = family_for_config(cfg)
        expected = list(slots(family, family.read(cfg)))
    except HypercloneError:
        return list(params)
    missing = [n for n in expected if n not in params]
    if missing:
        raise TrainError(f"the model lacks tensors its {family.name} config implies: {', '.join(missing[:6])}; "
                         "is .config the model's own config?")
    return expected


FUSED_ADAMW = ("cuda", "cpu")
"""Devices whose parameters take torch's fused AdamW kernel: one pass per tensor
instead of foreach's several (on CPU, 1 thread: 5.2 vs 13.9 ms per step for a 3M
model, 23.7 vs 87.3 ms for 30M; benchmarks/train_peers.py shows the whole step)."""


class TorchEngine:
    """Trains ``module`` in place (see ``hyperclone_core.train.Engine``)."""

    backend = "torch"

    def __init__(self, module: nn.Module, config: TrainConfig, optimizer: AdamW,
                 par: Optional[distributed.Parallel] = None):
        self.cfg = config
        self.spec = optimizer
        if config.threads:  # explicit: on every device (host-side work uses them too)
            torch.set_num_threads(config.threads)
        self.par = par if par is not None else distributed.setup(config.parallel, config.device)
        self.module = module
        self.config = model_config(module)
        self.device = self.par.device
        module.to(self.device)
        module.train()
        shapes = distributed.global_shapes(module)
        self.names = trained_names(self.config, dict(module.named_parameters()))
        self.shapes = {n: shapes[n] for n in self.names}
        self.rank, self.world = self.par.rank, self.par.world
        self.wrapped = self.par.wrap(module)  # before the optimizer: FSDP2 replaces parameters with DTensors
        named = dict(module.named_parameters())
        self._params = [named[n] for n in self.names]
        # module order (not checkpoint order) for the norm and the groups: torch sums the
        # global norm in this order, and runs trained this way have always summed so
        in_module_order = [n for n in named if n in self.shapes]
        self._clip_params = [named[n] for n in in_module_order]
        self._clip_weights = [float(optimizer.clip_weight.get(n, 1.0)) for n in in_module_order] \
            if optimizer.clip_weight else None
        groups = [{"params": [named[n] for n in ns], "weight_decay": wd, "lr_mult": mult, "eps": eps, "names": ns}
                  for wd, mult, eps, ns in optimizer.groups(in_module_order)]
        self.optimizer = torch.optim.AdamW(
            [{k: v for k, v in g.items() if k != "names"} for g in groups], lr=1.0, betas=tuple(optimizer.betas),
            eps=optimizer.eps, fused=self.device.type in FUSED_ADAMW or None)
        self._group_names = [g["names"] for g in groups]
        self.forward = torch.compile(self.wrapped) if config.compile else self.wrapped

    def set_threads(self, n: int) -> bool:
        """The loop's thread hook (``hyperclone_core.train.threads``): torch resizes its
        intra-op pool at any time.  Off the CPU the steps do not wait on it: False,
        nothing changed."""
        if self.device.type != "cpu":
            return False
        torch.set_num_threads(int(n))
        return True

    # ------------------------------------------------------------ steps
    def _amp(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.dtype == "bfloat16")

    def _backward(self, micro_batches: Sequence[np.ndarray]) -> float:
        total = 0.0
        n = len(micro_batches)
        for k, b in enumerate(micro_batches):
            batch = torch.from_numpy(np.asarray(b, dtype=np.int64)).to(self.device)
            with self.par.no_sync(self.wrapped, k == n - 1), self._amp():
                loss = lm_loss(self.forward, batch)
                (loss / n).backward()
            total += float(loss.detach())
        return self.par.mean(total / n)

    def _grad_norm(self) -> float:
        clip = self.spec.grad_clip if self.spec.grad_clip > 0 else math.inf
        if self._clip_weights is not None:
            return self._weighted_clip(clip)
        return float(distributed.full_tensor(torch.nn.utils.clip_grad_norm_(self._clip_params, clip)))

    @torch.no_grad()
    def _weighted_clip(self, clip: float) -> float:
        """``optim.global_norm`` with ``clip_weight`` (a grown clone's source-equivalent
        norm), then torch's clip rule on it: clip_grad_norm_ has no per-tensor weights."""
        sq = [float(distributed.full_tensor(torch.linalg.vector_norm(p.grad, dtype=torch.float32))) ** 2 * w
              for p, w in zip(self._clip_params, self._clip_weights) if p.grad is not None]
        norm = math.sqrt(sum(sq))
        coef = clip_coefficient(norm, clip if math.isfinite(clip) else 0.0)
        if coef < 1.0:
            for p in self._clip_params:
                if p.grad is not None:
                    p.grad.mul_(coef)
        return norm

    def step(self, micro_batches: Sequence[np.ndarray], lr: float) -> StepResult:
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_mult"]
        loss = self._backward(micro_batches)
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(loss, math.nan, False)
        norm = self._grad_norm()
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(loss, norm, False)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, norm, True)

    def gradients(self, micro_batches: Sequence[np.ndarray]) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(micro_batches)
        out = {n: _numpy(distributed.full_tensor(p.grad)) if p.grad is not None else np.zeros(self.shapes[n], np.float32)
               for n, p in zip(self.names, self._params)}
        self.optimizer.zero_grad(set_to_none=True)
        return out

    @torch.no_grad()
    def evaluate(self, batches: Sequence[np.ndarray]) -> float:
        self.module.eval()
        try:
            with self._amp():
                losses = [float(lm_loss(self.forward, torch.from_numpy(np.asarray(b, np.int64)).to(self.device)))
                          for b in batches]
        finally:
            self.module.train()
        return self.par.mean(float(np.mean(losses)))

    # ------------------------------------------------------------ state
    def params(self, names: Optional[Sequence[str]] = None) -> dict:
        named = dict(zip(self.names, self._params))
        return {n: _numpy(distributed.full_tensor(named[n].detach())) for n in (names or self.names)}

    def export_state(self) -> EngineState:
        full = distributed.full_model_state(self.module, self.par)
        # Before the first step there are no moments to gather, and torch's helper would
        # initialise them by taking a zero-LR step: the state would say 1 step, and the
        # first real update would use step 2's bias correction.  Every rank steps
        # together, so every rank skips the collective alike.
        fresh = not self.optimizer.state
        opt = {} if fresh else distributed.full_optimizer_state(self.module, self.optimizer, self.par)
        if not self.par.main:
            return EngineState({}, {}, {}, 0)
        st = opt.get("state", {})
        zeros = {n: np.zeros(self.shapes[n], np.float32) for n in self.names}
        m = {n: _numpy(st[n]["exp_avg"]) if n in st else zeros[n] for n in self.names}
        v = {n: _numpy(st[n]["exp_avg_sq"]) if n in st else zeros[n] for n in self.names}
        steps = {int(float(st[n]["step"])) for n in self.names if n in st}
        if len(steps) > 1:
            raise TrainError(f"torch AdamW holds different step counts per tensor {sorted(steps)}; cannot export")
        return EngineState({n: _numpy(full[n]) for n in self.names}, m, v, steps.pop() if steps else 0)

    def import_state(self, state: EngineState) -> None:
        check_state(state, self.names, self.shapes)
        weights = {n: torch.from_numpy(np.ascontiguousarray(state.params[n]).reshape(np.shape(state.params[n])))
                   for n in self.names}  # reshape: ascontiguousarray makes a 0-d array 1-d
        distributed.load_full_model_state(self.module, weights, self.par)
        if state.adam_step == 0:
            self.optimizer.state.clear()
            return
        step = torch.tensor(float(state.adam_step), dtype=torch.float32)
        opt_state = {n: {"step": step.clone(), "exp_avg": torch.from_numpy(np.array(state.exp_avg[n], np.float32)),
                         "exp_avg_sq": torch.from_numpy(np.array(state.exp_avg_sq[n], np.float32))}
                     for n in self.names}
        groups = []
        for g, ns in zip(self.optimizer.param_groups, self._group_names):
            groups.append(dict({k: v for k, v in g.items() if k != "params"}, params=list(ns)))
        distributed.load_full_optimizer_state(self.module, self.optimizer, {"state": opt_state, "param_groups": groups},
                                              self.par)

    def barrier(self) -> None:
        self.par.barrier()

    def close(self) -> None:
        self.par.close()


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy on the host (bfloat16 widens exactly)."""
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.float()
    return t.cpu().numpy().copy()


def train(model: nn.Module, config: TrainConfig, train_data, val_data=None, plan=None, callback=None,
          **kw) -> Any:
    """Train a live module in place with the core trainer (``hyperclone_core.train.train``)."""
    shapes = {n: tuple(s) for n, s in distributed.global_shapes(model).items()}
    par = distributed.setup(config.parallel, config.device)
    try:
        eng = TorchEngine(model, config, optimizer_for(config, shapes, plan), par)
        try:
            return core_train(eng, config, train_data, val_data, plan=plan, callback=callback, **kw)
        except torch.OutOfMemoryError as exc:
            per = config.batch_size // (par.world * config.grad_accum)
            raise TrainError(
                f"out of memory on {par.device} with micro-batches of {per} x {config.seq_len} tokens: lower "
                f"--batch-size (or raise --grad-accum to keep the global batch), lower --seq-len, use --dtype "
                f"bfloat16 or --parallel fsdp ({str(exc).splitlines()[0]})") from None
    finally:
        par.close()


__all__ = ["TorchEngine", "lm_loss", "logits_of", "model_config", "train"]
