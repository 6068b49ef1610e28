"""`hyperclone demo --quick` end to end (about 25 s on 2 free cores), its summary
numbers, and the embedded corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperclone_core.demo import corpus as hcorpus

torch = pytest.importorskip("torch")
from hyperclone_core import demo  # noqa: E402
from hyperclone_core.demo import report  # noqa: E402


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("demo") / "out"
    import contextlib
    import io

    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = demo.main(["--quick", "--out", str(out)])
    return rc, buf.getvalue(), out, err.getvalue()


def test_demo_runs_and_writes_results(demo_run):
    rc, text, out, _ = demo_run
    assert rc == 0, text
    doc = json.loads((out / "results.json").read_text())
    st = doc["settings"]
    steps = list(range(0, st["steps"] + 1, st["eval_every"]))
    if steps[-1] != st["steps"]:
        steps.append(st["steps"])
    for run in report.RUNS:
        curve = np.asarray(doc[run], dtype=float)
        assert curve.shape == (len(steps), 2), run
        assert curve[:, 0].tolist() == steps, run          # same eval steps for all three
        assert np.isfinite(curve[:, 1]).all(), run
        assert curve[-1, 1] < curve[0, 1], f"{run} did not learn: {curve[:, 1]}"
    # the clone starts where the small model is: function preservation, seen in the val loss
    assert doc["clone"][0][1] == pytest.approx(doc["small_continue"][0][1], abs=1e-4)
    assert doc["summary"]["preservation_error"] < 1e-4
    assert doc["random"][0][1] > doc["clone"][0][1]
    # what --quick promises: the clone is ahead of the random twin at the end
    assert doc["clone"][-1][1] < doc["random"][-1][1]
    assert st["pretrain_steps"] == demo.PRESETS["quick"].pretrain_steps
    assert doc["corpus"]["sha256"] and doc["corpus"]["train_bytes"] > 0
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_demo_prints_table_and_summary(demo_run):
    rc, text, out, err = demo_run
    doc = json.loads((out / "results.json").read_text())
    assert "corpus: python" in text and "sha256" in text
    header = next(line for line in text.splitlines() if line.split()[:1] == ["step"])
    assert header.split() == ["step", *report.RUNS]
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 4]
    assert [int(r[0]) for r in rows] == [s for s, _ in doc["clone"]]
    assert float(rows[-1][2]) == pytest.approx(doc["random"][-1][1], abs=1e-4)
    for needle in ("clone vs random twin", "small-continue vs random", "forgetting dip", "symmetry monitor (last)",
                   "margin over the small model"):
        assert needle in text
    # the headline is a number with its definition, and the bar covered the whole race
    head = next(line for line in text.splitlines() if line.startswith("speed-up: "))
    h = doc["summary"]["headline"]
    assert isinstance(h["value"], float) and h["definition"] and f"{h['value']:.0f}" in head
    assert "demo: pretrain small" in err and "demo: train small_continue" in err
    total = doc["settings"]["pretrain_steps"] + 3 * doc["settings"]["steps"]
    assert f"{total}/{total} steps" in err


def test_results_json_has_no_null_without_a_reason(demo_run):
    doc = json.loads((demo_run[2] / "results.json").read_text())

    def walk(o, path):
        if isinstance(o, dict):
            nulls = [k for k, v in o.items() if v is None]
            assert not nulls or "reason" in o, f"{path}: {nulls} null without a reason"
            for k, v in o.items():
                walk(v, f"{path}.{k}")
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")

    walk(doc, "results")


def test_headline_is_a_number_in_every_case():
    twin = [[0, 5.0], [10, 3.0], [20, 2.0]]
    ahead = report.headline({"random": twin, "clone": [[0, 2.0], [10, 1.9], [20, 1.8]]})
    assert ahead["kind"] == "steps_saved" and ahead["value"] == pytest.approx(20.0) and not ahead["lower_bound"]
    beyond = report.headline({"random": twin, "clone": [[0, 1.9], [20, 1.8]]})
    assert beyond["kind"] == "steps_saved" and beyond["value"] == 20.0 and beyond["lower_bound"]
    sooner = report.headline({"random": twin, "clone": [[0, 2.5], [10, 1.9], [20, 1.8]]})
    assert sooner["kind"] == "speedup" and sooner["value"] == pytest.approx(20 / (10 * 0.5 / 0.6))
    slower = report.headline({"random": twin, "clone": [[0, 5.0], [20, 2.5]]})
    assert slower["kind"] == "speedup" and slower["value"] == pytest.approx(15.0 / 20.0)


def test_demo_refuses_a_foreign_out_folder(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    rc = demo.main(["--preset", "tiny", "--out", str(tmp_path)])
    assert rc == 4  # the output class
    assert "not a previous demo output" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_steps_to_reach_interpolates():
    curve = [[0, 5.0], [10, 3.0], [20, 2.0]]
    assert report.steps_to_reach(curve, 2.5) == pytest.approx(15.0)
    assert report.steps_to_reach(curve, 3.0) == 10.0
    assert report.steps_to_reach(curve, 1.0) is None
    assert report.speedup(curve, [[0, 9.0], [20, 4.0]])["speedup"] == pytest.approx(20 / 5)
    ahead = report.speedup(curve, [[0, 9.0], [20, 6.0]])
    assert ahead["speedup"] is None and "step 0" in ahead["reason"]
    dip = report.forgetting_dip([[0, 2.0], [10, 2.3], [20, 1.9]])
    assert dip["dip"] == pytest.approx(0.3) and dip["peak_step"] == 10


def test_corpus_split_is_stable_and_disjoint():
    docs = [f"document number {i} " * 5 for i in range(400)]
    a = hcorpus.split("x", docs)
    b = hcorpus.split("x", list(reversed(docs)))
    assert a.sha256 != b.sha256  # the hash covers the order
    val_a = {d for d in docs if hcorpus.in_val(d)}
    assert 10 < len(val_a) < 80   # ~10% of 400
    assert all(d.encode() in a.val for d in val_a)
    assert not any(d.encode() in a.train for d in val_a)
    assert set(a.val.split(b"\n")) == set(b.val.split(b"\n"))


def test_default_corpus_is_deterministic():
    a = hcorpus.default_corpus()
    b = hcorpus.split(a.name, hcorpus.stdlib_documents())  # a second, uncached extraction
    assert a.sha256 == b.sha256 and a.train == b.train and a.val == b.val
    assert len(a.train) > 200_000 and len(a.val) > 20_000
    a.train.decode("utf-8")


def test_corpus_file_errors(tmp_path):
    with pytest.raises(hcorpus.CorpusError, match="no such file"):
        hcorpus.from_file(tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(hcorpus.CorpusError, match="not UTF-8"):
        hcorpus.from_file(bad)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("one short paragraph")
    with pytest.raises(hcorpus.CorpusError, match="empty"):
        hcorpus.from_file(tiny)


def test_speedup_benchmark_on_a_token_file(tmp_path, capsys):
    """benchmarks/speedup.py: the same comparison from a .npy token file."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "speedup.py"
    spec = importlib.util.spec_from_file_location("hyperclone_bench_speedup", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text = hcorpus.default_corpus().train[:200_000]
    np.save(tmp_path / "tokens.npy", np.frombuffer(text, dtype=np.uint8).astype(np.uint16))
    out = tmp_path / "bench"
    rc = bench.main(["--preset", "tiny", "--tokens", str(tmp_path / "tokens.npy"), "--vocab", "256",
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    doc = json.loads((out / "results.json").read_text())
    assert doc["corpus"]["tokens"].endswith("tokens.npy") and doc["corpus"]["val_tokens"] == 10_000
    assert [s for s, _ in doc["clone"]] == [s for s, _ in doc["random"]] == [s for s, _ in doc["small_continue"]]
    assert doc["clone"][0][1] == pytest.approx(doc["small_continue"][0][1], abs=1e-4)
    summary = json.loads(printed.strip().splitlines()[-1])  # the last line is valid JSON
    assert summary["clone_beats_small"] == (doc["clone"][-1][1] < doc["small_continue"][-1][1])
