"""The backend's decoder equals the numpy oracle's (``reference.forward``, float64)
on random weights, for every family in ``hyperclone_core.model.testing.CASES``."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_conformance import _suite as S
from hyperclone_core.run import reference

pytestmark = pytest.mark.capability("forward")


@pytest.mark.parametrize("case", list(S.CASES))
def test_forward_matches_oracle(backend, case):
    src = S.source(case)
    want = reference.forward(src.family, src.cfg, src.weights, src.tokens, dtype=np.float64)
    got = S.forward(backend, src.family, src.cfg, dict(src.weights), src.tokens)
    assert got.shape == want.shape, f"{case}: logits shape {got.shape}, the oracle gives {want.shape}"
    d, rel = S.logits_diff(want, got)
    assert rel <= S.F32_BOUND, (f"family {src.family.name} (case {case}): the backend's logits differ from the "
                                f"oracle's by {d:.3g} ({rel:.3g} of max|logit|, bound {S.F32_BOUND:g})")
