"""A small engine written in numpy for the core-only tests of the training loop: a
bigram model (logits = E[x] @ W^T) with exact gradients, updated by the core's own
AdamW closed form.  It implements the whole ``hyperclone_core.train.Engine``
protocol, so the loop's policy (schedule, accumulation, clipping, evaluation,
checkpoints, resume, refusals) is tested with numpy alone (``nox -s core``)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from hyperclone_core.train import (AdamW, EngineState, StepResult, adamw_step, check_state, clip_coefficient,
                                  global_norm)

NAMES = ("embed.weight", "head.weight", "head.bias")


def toy_config(vocab: int = 32, hidden: int = 8) -> dict:
    return {"model_type": "toy_bigram", "vocab_size": vocab, "hidden_size": hidden, "max_position_embeddings": 64}


def toy_weights(config: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    v, h = config["vocab_size"], config["hidden_size"]
    return {"embed.weight": (rng.standard_normal((v, h)) * 0.5).astype(np.float32),
            "head.weight": (rng.standard_normal((v, h)) * 0.5).astype(np.float32),
            "head.bias": np.zeros(v, np.float32)}


def loss_and_grads(p: dict, batch: np.ndarray) -> tuple:
    x, y = batch[:, :-1].reshape(-1), batch[:, 1:].reshape(-1)
    e = p["embed.weight"].astype(np.float64)[x]                       # (N, H)
    logits = e @ p["head.weight"].astype(np.float64).T + p["head.bias"].astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(-1, keepdims=True)
    n = len(x)
    loss = float(-np.log(prob[np.arange(n), y]).mean())
    d = prob
    d[np.arange(n), y] -= 1.0
    d /= n
    g_head = d.T @ e
    g_bias = d.sum(0)
    g_embed = np.zeros(p["embed.weight"].shape)
    np.add.at(g_embed, x, d @ p["head.weight"].astype(np.float64))
    return loss, {"embed.weight": g_embed, "head.weight": g_head, "head.bias": g_bias}


class NumpyEngine:
    backend = "numpy-toy"

    def __init__(self, config: dict, weights: dict, optimizer: AdamW, poison_at: Optional[int] = None):
        self.config = dict(config)
        self.names = list(NAMES)
        self.shapes = {n: tuple(weights[n].shape) for n in self.names}
        self.rank, self.world = 0, 1
        self.opt = optimizer
        self.p = {n: np.array(weights[n], np.float32) for n in self.names}
        self.m = {n: np.zeros_like(self.p[n]) for n in self.names}
        self.v = {n: np.zeros_like(self.p[n]) for n in self.names}
        self.t = 0
        self.poison_at = poison_at  # a step whose loss comes out NaN (to test the guard)
        self.lrs: list = []

    def _mean(self, micro):
        losses, grads = [], None
        for b in micro:
            loss, g = loss_and_grads(self.p, np.asarray(b))
            losses.append(loss)
            grads = g if grads is None else {n: grads[n] + g[n] for n in g}
        return float(np.mean(losses)), {n: g / len(micro) for n, g in grads.items()}

    def step(self, micro_batches: Sequence[np.ndarray], lr: float) -> StepResult:
        self.lrs.append(lr)
        loss, grads = self._mean(micro_batches)
        if self.poison_at is not None and self.t == self.poison_at:
            loss = math.nan
        norm = global_norm(grads, self.opt.clip_weight)  # the source-equivalent norm of a grown run
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return StepResult(loss, norm, False)
        self.t += 1
        p, m, v = adamw_step(self.opt, self.p, grads, self.m, self.v, self.t, lr)
        self.p = {n: a.astype(np.float32) for n, a in p.items()}
        self.m = {n: a.astype(np.float32) for n, a in m.items()}
        self.v = {n: a.astype(np.float32) for n, a in v.items()}
        assert clip_coefficient(norm, self.opt.grad_clip) <= 1.0
        return StepResult(loss, norm, True)

    def gradients(self, micro_batches):
        return {n: g.astype(np.float32) for n, g in self._mean(micro_batches)[1].items()}

    def evaluate(self, batches) -> float:
        return float(np.mean([loss_and_grads(self.p, np.asarray(b))[0] for b in batches]))

    def params(self, names=None) -> dict:
        return {n: self.p[n].copy() for n in (names or self.names)}

    def export_state(self) -> EngineState:
        return EngineState(self.params(), {n: a.copy() for n, a in self.m.items()},
                           {n: a.copy() for n, a in self.v.items()}, self.t)

    def import_state(self, state: EngineState) -> None:
        check_state(state, self.names, self.shapes)
        self.p = {n: np.array(state.params[n], np.float32) for n in self.names}
        self.m = {n: np.array(state.exp_avg[n], np.float32) for n in self.names}
        self.v = {n: np.array(state.exp_avg_sq[n], np.float32) for n in self.names}
        self.t = int(state.adam_step)

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass
