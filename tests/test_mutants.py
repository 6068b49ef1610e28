"""The conformance suite's own strength: every deliberately broken backend in
tests/mutants (one realistic bug each) must fail it, run as a third party runs it
(``pytest --pyargs hyperclone_conformance --hyperclone-backend NAME`` from outside
the source tree).  Kill rate 100% or this fails, naming the survivors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # ~2 minutes: one suite run per mutant, stopping at its first failure

HERE = Path(__file__).resolve().parent / "mutants"
sys.path.insert(0, str(HERE))
from hyperclone_mutants import ALL  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The mutants registered through a bare dist-info, exactly as a pip-installed plugin."""
    shim = tmp_path_factory.mktemp("mutant_shim")
    info = shim / "hyperclone_mutants_shim-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hyperclone-mutants-shim\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[hyperclone.backends]\n" + "".join(f"{m} = hyperclone_mutants:{m}\n" for m in ALL))
    e = dict(os.environ)
    e.pop("HYPERCLONE_TEST_BACKEND", None)
    e["PYTHONPATH"] = os.pathsep.join([str(shim), str(HERE)] + [p for p in [e.get("PYTHONPATH")] if p])
    e["OMP_NUM_THREADS"] = "1"
    return e


def _suite(env, cwd, name):
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "hyperclone_conformance", "--hyperclone-backend", name,
           "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def verdicts(env, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("mutant_runs")
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(ALL, pool.map(lambda m: _suite(env, cwd, m), ALL)))


def test_there_are_at_least_twelve_mutants():
    assert len(ALL) >= 12 and len(set(ALL)) == len(ALL)


@pytest.mark.parametrize("mutant", ALL)
def test_the_suite_kills_the_mutant(verdicts, mutant):
    rc, out = verdicts[mutant]
    failed = re.findall(r"^FAILED (\S+)", out, re.M)
    assert rc == 1 and failed, f"{mutant} survived the conformance suite (exit {rc}):\n{out[-2500:]}"
    print(f"{mutant}: killed by {failed[0]}")


def test_kill_rate_is_total(verdicts):
    survivors = [m for m, (rc, out) in verdicts.items() if rc != 1 or "FAILED" not in out]
    assert not survivors, f"mutants the suite let through: {survivors}"
