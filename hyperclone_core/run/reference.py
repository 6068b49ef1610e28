"""The numpy oracle: plans executed by the numpy backend, and the one decoder
definition (``hyperclone_core.model.decoder``) run by numpy.

Every backend is held to these functions.  They favour clarity over speed.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..model import decoder
from ..algebra.planner import Plan
from ..algebra.program import TensorPlan
from ..model.spec import DecoderConfig, Family
from ..model.structure import Params

_OPS = decoder.NumpyOps()


def expand_tensor(tp: TensorPlan, arrays: Mapping[str, np.ndarray], w: np.ndarray) -> np.ndarray:
    """Execute one tensor's program on a numpy array (float32/float64)."""
    from .interpreter import run_program
    from .numpy_backend import backend

    return run_program(backend, tp, arrays, np.asarray(w))


def execute(plan: Plan, weights: Mapping[str, np.ndarray]) -> dict:
    """Expand a whole state dict (name -> array) with the numpy oracle."""
    return {t.name: expand_tensor(t, plan.arrays, np.asarray(weights[t.source])) for t in plan.tensors}


def params(family: Family, cfg: DecoderConfig, weights: Mapping[str, np.ndarray], dtype=np.float64) -> Params:
    """Weights by slot, as ``dtype`` numpy arrays."""
    return Params(family, cfg, weights, convert=lambda w: np.asarray(w).astype(dtype))


def forward(family: Family, cfg: DecoderConfig, weights: Mapping[str, np.ndarray], tokens,
            dtype=np.float32) -> np.ndarray:
    """Logits (batch, seq, vocab) of the decoder on ``tokens`` (batch, seq), in ``dtype``."""
    return decoder.forward(cfg, params(family, cfg, weights, dtype), np.asarray(tokens), _OPS)


def loss(family: Family, cfg: DecoderConfig, weights: Mapping[str, np.ndarray], batch,
         dtype=np.float64) -> float:
    """Mean next-token cross entropy of a (B, T+1) token batch (the trainer's loss)."""
    batch = np.asarray(batch)
    logits = forward(family, cfg, weights, batch[:, :-1], dtype)
    return float(decoder.cross_entropy(_OPS, logits, batch[:, 1:]))


__all__ = ["execute", "expand_tensor", "forward", "loss", "params"]
