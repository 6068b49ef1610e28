"""Function preservation: for every case x strategy x growth, the model the backend
expanded computes (with the backend's forward) the source model's logits; and for
every model type's tiny config, ``noisy10`` at ``width2`` and ``depth+1``.

float32: max|dlogit| <= F32_BOUND * max|logit|; bfloat16 (weights stored in
bfloat16, computed in it where the backend's forward takes ``dtype``):
BF16_BOUND.  The bounds and why are in ``_suite.py``; the closing table lists
every measured difference."""

from __future__ import annotations

import pytest

from hyperclone_conformance import _suite as S
from hyperclone_conformance.plugin import type_params

pytestmark = pytest.mark.capability("expand", "forward")


def _check(backend, device, case, strategy, growth, dtype):
    key_dtype = dtype or "float32"
    bound = S.BF16_BOUND if dtype == "bfloat16" else S.F32_BOUND
    p = S.plan_or_skip(case, strategy, growth, dtype)
    src = S.source(case)
    w = S.source_weights(case, dtype)
    try:
        grown = S.expanded(backend, device, case, strategy, growth, dtype)
        before = S.forward(backend, src.family, src.cfg, w, src.tokens, dtype)
        after = S.forward(backend, src.family, p.decoder, grown, src.tokens, dtype)
    except Exception as exc:
        S.record(case, strategy, growth, key_dtype, "error", note=f"{type(exc).__name__}: {exc}")
        raise
    d, rel = S.logits_diff(before, after)
    ok = rel <= bound
    note = ""
    if not ok:
        problems = S.compare_to_oracle(grown, p, w) if dtype is None else []
        note = ("; first tensor off the oracle: " + problems[0]) if problems else ""
    S.record(case, strategy, growth, key_dtype, "pass" if ok else "FAIL", d, rel, bound, note)
    assert ok, (f"family {p.family} (case {case}), strategy {strategy}, growth {growth}, {key_dtype}: the expanded "
                f"model's logits differ from the source's by {d:.3g} ({rel:.3g} of max|logit|, bound {bound:g})"
                + note)


@pytest.mark.parametrize("case,strategy,growth", S.matrix())
def test_function_preservation(backend, device, case, strategy, growth):
    _check(backend, device, case, strategy, growth, None)


@pytest.mark.parametrize("case,strategy,growth", S.BF16_SUBSET)
def test_function_preservation_bf16(backend, device, case, strategy, growth):
    _check(backend, device, case, strategy, growth, "bfloat16")


@pytest.mark.parametrize("case,growth", type_params(S.type_growths()))
def test_type_preservation(backend, device, case, growth):
    """Every model type's tiny config (``_suite.TYPE_CASES``; by default the representative
    ones) grown ``width2`` and, where depth growth is exact, ``depth+1``, with ``noisy10``:
    the grown model computes the source's logits on this backend."""
    _check(backend, device, case, "noisy10", growth, None)
