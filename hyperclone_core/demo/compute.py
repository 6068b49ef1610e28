"""The race's one compute axis: training FLOPs, everything counted.

A training step of a decoder with ``N`` multiplied parameters on ``T`` tokens costs
``6 N T`` FLOPs (forward 2NT, backward 4NT; Kaplan et al.'s count, attention's
``seq_len``-dependent products left out).  ``N`` counts every matrix the forward
multiplies by -- the projections, the MLP and the LM head (a tied head too) -- and
leaves out the input embedding (a lookup) and the norm gains (no products).  Every
run's steps are priced this way, seed stages included, so a speed-up read on this
axis is the charged one.  The axis is printed in *final-model step equivalents*
(FLOPs / (6 N_final T)): the random twin's step is 1, a model 4x smaller costs 1/4.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from ..model.families import family_for_config
from ..model.structure import slots


def matmul_params(hf_config: Mapping) -> int:
    """``N`` of the 6NT count for a model of ``hf_config`` (the module docstring's rule)."""
    fam = family_for_config(dict(hf_config))
    cfg = fam.read(dict(hf_config))
    return int(sum(int(np.prod(s.shape)) for s in slots(fam, cfg, stored_only=False).values()
                   if len(s.shape) == 2 and s.role.kind != "embed"))


def step_flops(hf_config: Mapping, tokens_per_step: int) -> float:
    return 6.0 * matmul_params(hf_config) * tokens_per_step


def on_axis(curve: Sequence, start: float, cost: float) -> list:
    """A run's ``[[step, loss], ...]`` placed on the compute axis: ``start`` + step x
    ``cost`` (both in final-model steps)."""
    return [[start + step * cost, loss] for step, loss in curve]


def loss_at(curve: Sequence, x: float, slack: float = 1.0) -> Optional[float]:
    """The curve's loss at compute ``x``, linear between evaluations; None outside it by
    more than ``slack`` (a run's budget, rounded to whole steps, may end a fraction of a
    final-model step short: its last loss stands there)."""
    if not curve or x < curve[0][0] - slack or x > curve[-1][0] + slack:
        return None
    xs = np.asarray([c for c, _ in curve], float)
    ys = np.asarray([v for _, v in curve], float)
    return float(np.interp(x, xs, ys))


__all__ = ["loss_at", "matmul_params", "on_axis", "step_flops"]
