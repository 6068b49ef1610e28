"""Verification that means something: a corrupted clone fails, a faithful one passes,
for every family; NaN never passes; --json is strict JSON; noise is checked at parse time."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperclone_core import io
from hyperclone_core.model import testing
from hyperclone_core.cli import main
from hyperclone_core.expand.checkpoint import expand_checkpoint


def strict_json(text):
    def refuse(c):
        raise ValueError(f"not JSON: {c}")
    return json.loads(text, parse_constant=refuse)


def corrupt(folder, out, factor=None, name=None):
    """A copy of ``folder`` with one tensor changed (scaled by ``factor``, or a few
    entries perturbed when ``factor`` is None)."""
    cfg, w = io.load_weights(folder)
    name = name or next(n for n in w if "layers.0" in n and w[n].ndim == 2)
    if factor is None:
        w[name] = w[name].copy()
        w[name].flat[:7] += 0.5
    else:
        w[name] = w[name] * np.float32(factor)
    return io.save_checkpoint(out, cfg, w)


@pytest.mark.parametrize("case", sorted(testing.CASES))
def test_verify_passes_a_faithful_clone_and_fails_a_corrupted_one(case, tmp_path, case_dir, capsys):
    src = case_dir(case)
    expand_checkpoint(src, tmp_path / "clone", progress=False, verify=False)
    assert main(["verify", str(src), str(tmp_path / "clone")]) == 0
    corrupt(tmp_path / "clone", tmp_path / "bad")
    rc = main(["verify", str(src), str(tmp_path / "bad")])
    assert rc == 5, capsys.readouterr().err


@pytest.mark.parametrize("factor", [1.15, 3.0, 1e4])
def test_no_default_tolerance_no_more(factor, tmp_path, case_dir, capsys):
    """The attack found relative 7e-2, 0.65 and 8e4 all passing a bare `verify`."""
    src = case_dir("llama")
    expand_checkpoint(src, tmp_path / "clone", strategy="symmetric", progress=False, verify=False)
    corrupt(tmp_path / "clone", tmp_path / "bad", factor, name="model.layers.1.mlp.down_proj.weight")
    rc = main(["verify", str(src), str(tmp_path / "bad")])
    out = capsys.readouterr()
    assert rc == 5 and "FAIL" in out.err and "tolerance" in out.err


def test_nan_never_passes_and_json_stays_json(tmp_path, case_dir, capsys, monkeypatch):
    from hyperclone_core.run import numpy_backend

    src = case_dir("llama")
    expand_checkpoint(src, tmp_path / "clone", progress=False, verify=False)
    forward = numpy_backend.backend.forward
    calls = []

    def poisoned(*a, **k):
        out = np.array(forward(*a, **k))
        calls.append(1)
        if len(calls) % 2 == 0:  # the second model of each pair
            out[0, 0, 0] = np.nan
        return out

    monkeypatch.setattr(type(numpy_backend.backend), "forward", lambda self, *a, **k: poisoned(*a, **k))
    rc = main(["verify", str(src), str(tmp_path / "clone"), "--tolerance", "1e9", "--json"])
    out = capsys.readouterr()
    doc = strict_json(out.out)
    assert rc == 5 and doc["passed"] is False and doc["finite"] is False
    assert "NaN" in out.err


def test_json_report_is_strict_json_and_names_the_bound(tmp_path, case_dir, capsys):
    src = case_dir("gemma2")
    expand_checkpoint(src, tmp_path / "clone", progress=False, verify=False)
    assert main(["verify", str(src), str(tmp_path / "clone"), "--json"]) == 0
    doc = strict_json(capsys.readouterr().out)
    assert doc["passed"] is True and doc["tolerance"] == pytest.approx(1e-4) and doc["relative"] <= 1e-4


@pytest.mark.parametrize("strategy", ["noisy:-60", "noisy:", "noisy:nan", "noisy:inf", "noisy:-inf",
                                      "diagonal+noise:", "mlp=noisy:-3", "random_split:0", "random_split:nan",
                                      "noisy:1e400"])
def test_bad_noise_is_refused_before_anything_is_written(strategy, tmp_path, case_dir, capsys):
    rc = main(["expand", str(case_dir("llama")), str(tmp_path / "dst"), "--strategy", strategy, "--quiet"])
    assert rc == 2 and "strategy" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


def test_a_rule_that_matches_no_tensor_is_an_error(tmp_path, case_dir, capsys):
    rc = main(["expand", str(case_dir("llama")), str(tmp_path / "dst"), "--strategy",
               "mpl=symmetric,*=noisy:10", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "'mpl'" in err and "matches no tensor" in err and not (tmp_path / "dst").exists()


def test_expand_refuses_to_write_a_clone_that_fails_its_check(tmp_path, case_dir, monkeypatch, capsys):
    """The built-in check fails -> no DST; the report's `exact` is what was measured."""
    from hyperclone_core.run import numpy_backend

    forward = numpy_backend.backend.forward
    calls = []

    def drifting(self, *a, **k):
        out = np.array(forward(*a, **k))
        calls.append(1)
        return out * (1.0 + 1e-2 * (len(calls) % 2 == 0))

    monkeypatch.setattr(type(numpy_backend.backend), "forward", drifting)
    rc = main(["expand", str(case_dir("llama")), str(tmp_path / "dst"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 5 and "tolerance" in err and not (tmp_path / "dst").exists()
    assert io.TMP_MARK not in " ".join(p.name for p in tmp_path.iterdir())


def test_report_exact_records_the_measurement(tmp_path, case_dir):
    src = case_dir("llama")
    rep = expand_checkpoint(src, tmp_path / "dst", progress=False)
    doc = json.loads((tmp_path / "dst" / "hyperclone.json").read_text())
    assert doc["exact"] is True and doc["verification"]["passed"] is True
    assert doc["verification"]["relative"] <= doc["verification"]["tolerance"] == rep["verification"]["tolerance"]
    rep = expand_checkpoint(src, tmp_path / "nv", progress=False, verify=False)
    assert rep["verified"] is False and rep["exact"] is rep["certified_exact"] is True  # the certificate's word


def test_bf16_clone_gets_the_bf16_bound(tmp_path, case_dir, capsys):
    from hyperclone_core.expand import tolerances

    src = case_dir("llama")
    expand_checkpoint(src, tmp_path / "dst", dtype="bfloat16", progress=False, verify=False)
    assert main(["verify", str(src), str(tmp_path / "dst"), "--json"]) == 0
    doc = strict_json(capsys.readouterr().out)
    assert doc["tolerance"] == tolerances.BF16_RELATIVE and doc["dtype"] == "bfloat16"
    assert main(["verify", str(src), str(tmp_path / "dst"), "--tolerance", "1e-9"]) == 5


def test_expand_tolerance_option(tmp_path, case_dir, capsys):
    src = case_dir("llama")
    rc = main(["expand", str(src), str(tmp_path / "dst"), "--quiet", "--tolerance", "1e-12"])
    assert rc == 5 and "1e-12" in capsys.readouterr().err and not (tmp_path / "dst").exists()
    assert main(["expand", str(src), str(tmp_path / "dst"), "--quiet", "--tolerance", "1e-3"]) == 0
    assert json.loads((tmp_path / "dst" / "hyperclone.json").read_text())["verification"]["tolerance"] == 1e-3
