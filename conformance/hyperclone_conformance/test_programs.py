"""Plan programs executed by the backend (``run_program`` over its primitives) equal
the numpy oracle: bit for bit where the program is deterministic (take, scale,
reshape, cast are exact in IEEE arithmetic), and in their invariants where it adds
noise from the backend's own RNG (zero sum over the copies, the plan's SNR)."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_conformance import _suite as S

pytestmark = pytest.mark.capability("expand")


@pytest.mark.parametrize("case,strategy,growth", S.matrix())
def test_program_matches_oracle(backend, device, case, strategy, growth):
    p = S.plan_or_skip(case, strategy, growth)
    got = S.expanded(backend, device, case, strategy, growth)
    problems = S.compare_to_oracle(got, p, S.source_weights(case))
    assert not problems, (f"family {p.family} (case {case}), strategy {strategy}, growth {growth}: "
                          f"{len(problems)} tensor(s) wrong; first: " + "; ".join(problems[:3]))


@pytest.mark.parametrize("case", ["llama", "gpt_neox", "mixtral"])
def test_noise_depends_on_the_tensor_seed(backend, device, case):
    """Copies in different layers must get different noise, or their symmetry
    breaks identically everywhere (the plan gives each tensor its own seed)."""
    p = S.plan_or_skip(case, "noisy10", "width2")
    got = S.expanded(backend, device, case, "noisy10", "width2")
    w = S.source_weights(case)
    by_kind: dict = {}
    for t in (t for t in p.tensors if S.has_noise(t) and not S.split_at_noise(t)[2]):
        by_kind.setdefault(t.kind, []).append(t)
    pairs = [ts[:2] for ts in by_kind.values() if len(ts) >= 2]
    assert pairs, f"{case}: the noisy plan has no two noisy tensors of one kind"
    for a, b in pairs:
        na = got[a.name] - S.oracle_tensor(p, a, w, S.split_at_noise(a)[0])
        nb = got[b.name] - S.oracle_tensor(p, b, w, S.split_at_noise(b)[0])
        assert not np.allclose(na / np.abs(na).max(), nb / np.abs(nb).max()), (
            f"tensors {a.name} and {b.name} got the same noise pattern: the backend ignores the seed")


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev extra
    given = None

if given is not None:
    @settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(case=st.sampled_from(["llama", "qwen3", "phi3", "olmo", "gpt_neox", "opt"]),
           ffn=st.integers(48, 130), width=st.sampled_from([1, 2]),
           layout=st.sampled_from(["tile", "interleave"]),
           strategy=st.sampled_from(["symmetric", "first_copy", "random_split:0.5"]))
    def test_random_growth_matches_oracle(backend, device, case, ffn, width, layout, strategy):
        """Arbitrary (uneven) ffn sizes and both layouts: index maps the fixed matrix
        never produces must still be executed exactly."""
        from hyperclone_core import Growth, plan

        if "expand" not in backend.capabilities:
            pytest.skip("backend does not declare expand")
        src = S.source(case)
        g = Growth.of(src.cfg, width=width, ffn_size=ffn, layout=layout)
        p = plan(src.family, src.hf_config, g, strategy, seed=ffn)
        got = S.backend_expand(backend, p, src.weights, device)
        problems = S.compare_to_oracle(got, p, src.weights)
        assert not problems, f"{case} ffn={ffn} width={width} {layout} {strategy}: " + "; ".join(problems[:3])
