"""The suite checks its own coverage of the protocol surface (``_coverage``): every
hook, attribute and keyword the protocol declares or the core probes for, every
``DecoderConfig`` flag and its non-default values, every engine rule has a row
naming tests that exist; each forward case's flag is observable by a wide margin;
and every optional fast path the backend under test has is actually reached."""

from __future__ import annotations

import importlib
from dataclasses import fields, replace

import numpy as np
import pytest

from hyperclone_conformance import _coverage as C
from hyperclone_conformance import _suite as S
from hyperclone_core.model.spec import DecoderConfig
from hyperclone_core.run import reference


def _missing_tests(table) -> list:
    out = []
    for key, tests in table.items():
        assert tests, f"{key}: a row with no test"
        for t in tests:
            module, _, func = t.partition("::")
            mod = importlib.import_module("hyperclone_conformance." + module.removesuffix(".py"))
            if not callable(getattr(mod, func, None)):
                out.append(f"{key} -> {t}")
    return out


def test_every_hook_has_a_case():
    found = C.surface()
    missing, stale = sorted(found - set(C.HOOKS)), sorted(set(C.HOOKS) - found)
    assert not missing, (f"the protocol has {missing} but the coverage table (_coverage.HOOKS) does not: add a case "
                         "that fails when a backend gets each wrong, and its row")
    assert not stale, f"_coverage.HOOKS lists {stale}, which the protocol no longer has: remove the rows"
    assert not _missing_tests(C.HOOKS), f"rows naming tests that do not exist: {_missing_tests(C.HOOKS)}"


def _default() -> DecoderConfig:
    return DecoderConfig("x", 1, 1, 1, 1, 1, 1, 1, 1)


def _default_cases() -> list:
    """The forward cases a run without ``--hyperclone-all-types`` runs: every case but the
    type cases outside the representative set."""
    extra = set(S.TYPE_CASES) - set(S.REPRESENTATIVE)
    return [c for c in list(S.CASES) + list(S.FORWARD_CASES) if c not in extra]


def _read(case):
    hf = S.CASES[case] if case in S.CASES else S.FORWARD_CASES[case]
    family = S.family_for_config(hf)
    return family, family.read(hf)


def _observed() -> dict:
    """flag -> the non-default values the forward cases run by default give it (a tuple
    flag: its items)."""
    default, out = _default(), {}
    for case in _default_cases():
        cfg = _read(case)[1]
        for f in fields(DecoderConfig):
            v = getattr(cfg, f.name)
            if not C.same_value(v, getattr(default, f.name)):
                out.setdefault(f.name, set()).update(C.flag_items(v))
    return out


def test_the_default_selection_covers_every_feature_of_every_type():
    """The representative type cases (``_suite.REPRESENTATIVE``), with the other cases,
    exercise every structural feature (``_coverage.features``: flag values, attention and
    MoE shapes, role-table layouts) that any model type's case exercises, so the default
    run misses no decoder path a type reaches; ``--hyperclone-all-types`` runs them all."""
    covered = set().union(*(C.features(*_read(c)) for c in _default_cases()))
    for case in S.TYPE_CASES:
        missing = C.features(*_read(case)) - covered
        assert not missing, (f"{case} exercises {sorted(missing, key=str)} and no case run by default does: "
                             "_suite.REPRESENTATIVE must include a case for each")
    assert set(S.REPRESENTATIVE) <= set(S.TYPE_CASES)
    unrun = sorted({case for _, case, _, _ in C.SENSITIVE} - set(_default_cases()))
    assert not unrun, f"_coverage.SENSITIVE proves margins on cases a default run does not run: {unrun}"


def test_every_decoder_flag_has_its_values_covered():
    names = {f.name for f in fields(DecoderConfig)}
    flags = names - set(C.DIMS)
    missing, stale = sorted(flags - set(C.FLAGS)), sorted(set(C.FLAGS) - flags)
    assert not missing, (f"DecoderConfig flags {missing} have no row in _coverage.FLAGS: add a forward case "
                         "(_suite.FORWARD_CASES) giving each a non-default value, and the row")
    assert not stale, f"_coverage.FLAGS lists {stale}, which DecoderConfig no longer has"
    seen, default = _observed(), _default()
    for flag, values in C.FLAGS.items():
        absent = [v for v in values if not any(v == s or (isinstance(v, float) and isinstance(s, float)
                                                          and abs(v - s) <= 1e-12 * abs(v)) for s in seen.get(flag, ()))]
        assert not absent, f"no forward case gives {flag} the value(s) {absent} _coverage.FLAGS claims"
    for flag, domain in C.flag_domains().items():
        want = domain - {getattr(default, flag)}
        uncovered = sorted(want - set(C.FLAGS[flag]))
        assert not uncovered, (f"DecoderConfig.{flag} can be {uncovered} (its field comment), and no forward "
                               "case covers that: add one")


@pytest.mark.parametrize("flag,case,wrong,k", C.SENSITIVE, ids=[f"{f}-{c}" for f, c, _, _ in C.SENSITIVE])
def test_forward_cases_are_sensitive_to_their_flags(flag, case, wrong, k):
    """The case covering a flag fails a backend that ignores it (or is one off) by at
    least ``k`` times the bound: the oracle with the flag wrong is that far off."""
    src = S.source(case)
    want = reference.forward(src.family, src.cfg, src.weights, src.tokens, dtype=np.float64)
    for value in wrong:
        v = getattr(src.cfg, flag) + 1 if value == "+1" else value
        assert v != getattr(src.cfg, flag), f"{case}: {flag} is already {v!r}"
        got = reference.forward(src.family, replace(src.cfg, **{flag: v}), src.weights, src.tokens, dtype=np.float64)
        _, rel = S.logits_diff(want, got)
        assert rel >= k * S.F32_BOUND, (f"case {case}: {flag}={v!r} in place of {getattr(src.cfg, flag)!r} moves the "
                                        f"logits by only {rel:.3g} of max|logit| (< {k} x the bound {S.F32_BOUND:g})")


def test_every_engine_rule_has_a_case():
    docs = C.engine_docs()
    gone = [r for r in C.ENGINE_RULES if r not in docs]
    assert not gone, f"_coverage.ENGINE_RULES quotes rules the engine docstrings no longer state: {gone}"
    assert not _missing_tests(C.ENGINE_RULES), f"rows naming tests that do not exist: {_missing_tests(C.ENGINE_RULES)}"


class _Recording:
    """The backend, recording which of ``names`` the interpreter called."""

    def __init__(self, backend, names):
        self._backend, self._names, self.called = backend, set(names), set()

    def __getattr__(self, name):
        value = getattr(self._backend, name)
        if name not in self._names or not callable(value):
            return value

        def call(*a, **k):
            self.called.add(name)
            return value(*a, **k)
        return call


@pytest.mark.capability("expand")
def test_every_optional_hook_the_backend_has_is_reached(backend, device):
    """Each optional hook the interpreter and the row blocks probe for
    (``getattr(backend, ...)`` in ``hyperclone_core.run``) that this backend has is
    called by the suite's programs and row blocks, so the fast path is what the checks
    check, not the generic one beside it."""
    from hyperclone_core.run.interpreter import execute
    from hyperclone_core.run.rowblocks import row_program, run_rows

    hooks = sorted(h for h in C.core_probes("run") if callable(getattr(backend, h, None)))
    rec = _Recording(backend, hooks)
    assert isinstance(backend.name, str) and backend.name and isinstance(backend.version(), str) \
        and isinstance(backend.device_name(), str), "name, version() and device_name() are strings"
    for case, strategy, growth in (("llama", "noisy10", "width2"), ("phi3", "random_split1", "ffn1.5"),
                                   ("gpt_neox", "first_copy", "width3")):
        p = S.plan_or_skip(case, strategy, growth)
        weights = S.source_weights(case)
        execute(rec, p, weights, device)
        for tp in p.tensors:
            rp = row_program(tp, p.arrays, 1024)
            if rp is not None:
                list(run_rows(rec, rp, p.arrays, lambda lo, hi, w=weights[tp.source]: np.array(w[lo:hi], copy=True),
                              device))
    unreached = [h for h in hooks if h not in rec.called]
    assert not unreached, (f"backend {backend.name!r} has {unreached} but no program or row block of the suite "
                           "calls it: its checks would test the generic path instead")
