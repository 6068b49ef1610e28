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
    """Copies in different layers must get independent noise, or their symmetry breaks
    identically everywhere (the plan gives each tensor its own seed): the noise of two
    tensors of one kind must be uncorrelated (|correlation| < 0.3; independent draws
    of this size give ~0.01)."""
    p = S.plan_or_skip(case, "noisy10", "width2")
    got = S.expanded(backend, device, case, "noisy10", "width2")
    w = S.source_weights(case)
    by_kind: dict = {}
    for t in (t for t in p.tensors if S.has_noise(t) and not S.split_at_noise(t)[2]):
        by_kind.setdefault(t.kind, []).append(t)
    pairs = [ts[:2] for ts in by_kind.values() if len(ts) >= 2]
    assert pairs, f"{case}: the noisy plan has no two noisy tensors of one kind"
    for a, b in pairs:
        na = (got[a.name] - S.oracle_tensor(p, a, w, S.split_at_noise(a)[0])).ravel().astype(np.float64)
        nb = (got[b.name] - S.oracle_tensor(p, b, w, S.split_at_noise(b)[0])).ravel().astype(np.float64)
        corr = float(np.corrcoef(na, nb)[0, 1])
        assert abs(corr) < 0.3, (f"tensors {a.name} and {b.name} got correlated noise (correlation {corr:.3f}): "
                                 "the backend ignores the tensor's seed")


@pytest.mark.parametrize("case,strategy,growth", [("llama", "symmetric", "width3"), ("phi3", "random_split1", "ffn1.5"),
                                                  ("gpt_neox", "first_copy", "width2")])
def test_bfloat16_programs_are_bit_for_bit(backend, device, case, strategy, growth):
    """A plan ending in ``cast(bfloat16)`` equals the oracle bit for bit: round to
    nearest even, never truncation (1/3 and random splits make the last bit matter)."""
    p = S.plan_or_skip(case, strategy, growth, "bfloat16")
    got = S.expanded(backend, device, case, strategy, growth, "bfloat16")
    w = S.source_weights(case, "bfloat16")
    bad = []
    for tp in p.tensors:
        want = S.oracle_tensor(p, tp, w).astype(np.float32)
        have = np.asarray(got[tp.name], np.float32)
        if have.shape != want.shape or not np.array_equal(have.view(np.uint32), want.view(np.uint32)):
            n = int((have != want).sum()) if have.shape == want.shape else -1
            bad.append(f"{tp.name} ({n} elements differ)")
    assert not bad, f"{case} {strategy} {growth} bfloat16: not the oracle's bits: " + "; ".join(bad[:4])


def test_reshape_programs_match_the_oracle(backend, device):
    """Programs that reshape between gathers (row-major order, as numpy's reshape):
    the plan format allows them, so every backend must execute them exactly."""
    from hyperclone_core.algebra.planner import Reshape, Scale, Take, TensorPlan

    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    arrays = {"a": np.array([0, 1, 2, 0, 1, 2, 3, 4, 5]), "b": np.array([0, 1, 2, 3, 0, 1]),
              "c": rng.standard_normal(9).astype(np.float32), "d": np.array([0, 1, 2, 0, 2, 1, 1])}
    progs = [
        (Take(0, "a"), Reshape((9, 2, 4)), Take(2, "b"), Reshape((9, 12)), Scale((0,), "c")),
        (Reshape((3, 16)), Reshape((48,)), Reshape((4, 12))),
        (Reshape((2, 3, 8)), Take(1, "d"), Reshape((14, 8))),
    ]
    for ops in progs:
        shape = S.run_shapes(x.shape, ops, arrays)
        tp = TensorPlan("t", "t", "test", x.shape, shape, tuple(ops))
        want = S.oracle_tensor(None, tp, {"t": x}, arrays=arrays)
        have = np.asarray(backend.to_numpy(S.run_program(backend, tp, arrays, backend.asarray(x.copy(), device),
                                                         device)))
        assert have.shape == want.shape and np.array_equal(have, want), (
            f"program {[type(o).__name__ for o in ops]}: differs from the oracle (reshape must keep row-major order)")


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
