"""Training the expanded model (capability ``train``): its first loss is the source
model's loss (the oracle's, on the same batch: the expansion preserved the
function), and a short run on that batch lowers it."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_conformance import _suite as S
from hyperclone_core import reference
from hyperclone_core.testing import random_tokens

pytestmark = pytest.mark.capability("expand", "train")

STEPS = 6
LR = 3e-3


@pytest.mark.parametrize("case", list(S.CASES))
def test_first_loss_is_the_source_loss_and_training_lowers_it(backend, device, case):
    src = S.source(case)
    p = S.plan_or_skip(case, "noisy10", "width2")
    grown = S.expanded(backend, device, case, "noisy10", "width2")
    batch = random_tokens(src.cfg.vocab, batch=S.TOKENS["batch"], seq=S.TOKENS["seq"] + 1, seed=11)
    logits = reference.forward(src.family, src.cfg, src.weights, batch[:, :-1], dtype=np.float64)
    want = S.cross_entropy(logits, batch[:, 1:])
    losses = [float(x) for x in backend.train_steps(src.family, dict(p.config), grown, [batch] * STEPS, LR)]
    assert len(losses) == STEPS, f"train_steps returned {len(losses)} losses for {STEPS} batches"
    assert np.all(np.isfinite(losses)), f"{case}: non-finite losses {losses}"
    assert abs(losses[0] - want) <= S.TRAIN_LOSS_RTOL * want, (
        f"family {p.family} (case {case}): the expanded model's first training loss {losses[0]:.6f} is not the "
        f"source model's loss {want:.6f} (tolerance {S.TRAIN_LOSS_RTOL:g} relative)")
    assert losses[-1] < losses[0], f"family {p.family} (case {case}): {STEPS} steps at lr {LR:g} did not lower " \
                                   f"the loss on one repeated batch: {[round(x, 4) for x in losses]}"
