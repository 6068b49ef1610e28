"""The issue-9 acceptance: the project's own attack run (benchmarks/attack_tally.py,
several hundred hostile inputs, options and faults through the CLI in-process) finds
0 tracebacks, 0 data loss, 0 accepted corruptions and 0 hangs, and fails every
attack with the exit code of its class."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tally():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "attack_tally.py"
    spec = importlib.util.spec_from_file_location("hyperclone_attack_tally", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_attack_ends_cleanly(tally, tmp_path):
    attacks = tally.all_attacks()
    assert len(attacks) >= 400
    rows, failures = tally.tally(attacks, keep=str(tmp_path))
    report = [f"{a.category} / {a.name}: rc={v['rc']} {[c for c in tally.COUNTS if v[c]]} {v['stderr'][-160:]!r}"
              for a, v in failures]
    assert not failures, "\n".join(report)
    assert sum(r["attacks"] for r in rows.values()) == len(attacks)


def test_train_demo_resume_and_route_attacks_end_cleanly(tally, tmp_path):
    """Issue 25: the attacks run as real processes (train, demo, resume, the jax/mlx
    routes: concurrency, FIFOs, symlinks, aliasing, truncation under a running job,
    signals) find 0 crashes, 0 data loss, 0 accepted corruptions, 0 hangs and 0 wrong
    exit classes."""
    attacks = tally.process_attacks()
    assert len(attacks) >= 100
    rows, failures = tally.tally(attacks, keep=str(tmp_path))
    report = [f"{a.category} / {a.name}: rc={v['rc']} {[c for c in tally.COUNTS if v[c]]} {v['stderr'][-160:]!r}"
              for a, v in failures]
    assert not failures, "\n".join(report)
