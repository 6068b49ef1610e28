"""The backend's decoder equals the numpy oracle's (``reference.forward``, float64)
on random weights, for every family in ``hyperclone_core.model.testing.CASES``, every
forward-only case and the tiny config of every model type (``_suite.TYPE_CASES``; by
default the representative ones, ``_suite.REPRESENTATIVE``)."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_conformance import _suite as S
from hyperclone_conformance.plugin import type_params
from hyperclone_core.run import reference

pytestmark = pytest.mark.capability("forward")


@pytest.mark.parametrize("case", type_params(list(S.CASES) + list(S.FORWARD_CASES)))
def test_forward_matches_oracle(backend, case):
    src = S.source(case)
    want = reference.forward(src.family, src.cfg, src.weights, src.tokens, dtype=np.float64)
    got = S.forward(backend, src.family, src.cfg, dict(src.weights), src.tokens)
    assert got.shape == want.shape, f"{case}: logits shape {got.shape}, the oracle gives {want.shape}"
    d, rel = S.logits_diff(want, got)
    assert rel <= S.F32_BOUND, (f"family {src.family.name} (case {case}): the backend's logits differ from the "
                                f"oracle's by {d:.3g} ({rel:.3g} of max|logit|, bound {S.F32_BOUND:g})")


@pytest.mark.parametrize("case", ["llama_tied", "opt"])
def test_forward_reads_stored_tensors(backend, tmp_path, case):
    """A backend declaring ``lazy_weights`` takes ``lazyweights.StoredTensor`` handles
    (what ``hyperclone verify`` streams a checkpoint through) and computes the same logits."""
    if not getattr(backend, "lazy_weights", False):
        pytest.skip(f"backend {backend.name!r} does not declare lazy_weights")
    from hyperclone_core.io import Checkpoint, save_checkpoint
    from hyperclone_core.run.lazyweights import checkpoint_weights

    src = S.source(case)
    save_checkpoint(tmp_path / "m", dict(src.hf_config), dict(src.weights))
    ck = Checkpoint(tmp_path / "m")
    want = reference.forward(src.family, src.cfg, src.weights, src.tokens, dtype=np.float64)
    got = S.forward(backend, src.family, src.cfg, checkpoint_weights(ck, ck.names()), src.tokens)
    d, rel = S.logits_diff(want, got)
    assert rel <= S.F32_BOUND, (f"case {case}: logits from StoredTensor handles differ from the oracle's by {d:.3g} "
                                f"({rel:.3g} of max|logit|, bound {S.F32_BOUND:g})")
