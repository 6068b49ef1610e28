"""Property: the certificate accepts a plan if and only if the oracle shows the
function preserved.  Random role tables (a residual MLP stack whose dims and
directions are drawn), random growths and layouts, and random mixing tables that
are either valid or subtly broken."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperclone_core import CertificateError, DecoderConfig, Family, Growth, Role, Strategy, in_, out, plan
from hyperclone_core.run.reference import execute
from hyperclone_core.algebra.strategy import Mixing


@dataclass(frozen=True)
class RandomTable(Mixing):
    """Random rows; normalized over k_in copies, optionally broken at one entry."""

    seed: int = 0
    broken: float = 0.0
    name = "random_table"

    def table(self, k_out, k_in, rng):
        t = np.random.default_rng(self.seed).random((k_out, k_in)) + 0.1
        t /= t.sum(1, keepdims=True)
        t[0, 0] += self.broken
        return t, False


class Toy(Family):
    """No norms: every dim may grow unevenly, so only coefficients decide exactness."""

    def normalized_axes(self, cfg):
        return {}


def toy_family(n_ffn_layers: int) -> Toy:
    roles = [Role("embed", "embed", (in_("vocab"), out("hidden"))),
             Role("head", "lm_head", (out("vocab"), in_("hidden")))]
    for i in range(n_ffn_layers):
        roles += [Role(f"up{i}", f"mlp.up{i}", (out("ffn"), in_("hidden"))),
                  Role(f"down{i}", f"mlp.down{i}", (out("hidden"), in_("ffn")))]

    def read(hf):
        return DecoderConfig(family="toy", vocab=hf["vocab"], hidden=hf["hidden"], ffn=hf["ffn"], layers=1,
                             heads=1, kv_heads=1, head_dim=hf["hidden"], positions=8)

    return Toy("toy", ("toy",), tuple(roles), read, {"head_dim": "head_dim"}, "Toy")


def toy_forward(w, n, tokens):
    h = w["embed"][tokens]
    for i in range(n):
        h = h + np.tanh(h @ w[f"up{i}"].T) @ w[f"down{i}"].T
    return h @ w["head"].T


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hidden=st.integers(2, 5), hidden_extra=st.integers(0, 6), ffn=st.integers(2, 6), ffn_extra=st.integers(0, 7),
    layout=st.sampled_from(["tile", "interleave"]), layers=st.integers(1, 2),
    mixing=st.sampled_from(["symmetric", "first_copy", "table", "broken"]), seed=st.integers(0, 2**16),
)
def test_certificate_accepts_iff_function_preserved(hidden, hidden_extra, ffn, ffn_extra, layout, layers, mixing,
                                                    seed):
    fam = toy_family(layers)
    hf = {"vocab": 7, "hidden": hidden, "ffn": ffn}
    growth = Growth({"hidden": hidden + hidden_extra, "ffn": ffn + ffn_extra}, layout)
    if mixing in ("table", "broken"):
        strat = Strategy(RandomTable(seed, 0.25 if mixing == "broken" else 0.0))
    else:
        strat = mixing
    p = plan(fam, hf, growth, strat, allow_inexact=True)
    rng = np.random.default_rng(seed)
    w = {r.pattern: rng.standard_normal(r.shape(fam.read(hf).sizes())) for r in fam.roles}
    tokens = np.arange(7)[None]
    ref = toy_forward(w, layers, tokens)
    got = toy_forward(execute(p, w), layers, tokens)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    preserved = rel < 1e-6
    assert p.exact == preserved, f"certificate says exact={p.exact}, oracle shows relative error {rel:.2e}"
    if not p.exact:
        with pytest.raises(CertificateError, match="rule 'coefficients'"):
            plan(fam, hf, growth, strat)


def test_broken_coefficient_is_refused_naming_the_tensor():
    fam = toy_family(1)
    with pytest.raises(CertificateError) as err:
        plan(fam, {"vocab": 7, "hidden": 3, "ffn": 4}, Growth({"hidden": 6, "ffn": 8}), Strategy(RandomTable(1, 0.5)))
    msg = str(err.value)
    assert "rule 'coefficients'" in msg and ("up0" in msg or "down0" in msg or "head" in msg)
