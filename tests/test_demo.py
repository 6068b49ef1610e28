"""`hyperclone demo --quick` end to end, its summary numbers on the compute axis, and
the embedded corpus."""

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
    assert [x for x, _ in doc["random"]] == steps  # the twin: one final-model step per unit of compute
    for run in report.RUNS:
        curve = np.asarray(doc[run], dtype=float)
        assert curve[0, 0] == 0 and (np.diff(curve[:, 0]) > 0).all(), run
        assert curve[-1, 0] == pytest.approx(st["steps"], abs=1.0), run   # every run spends the same compute
        assert np.isfinite(curve[:, 1]).all(), run
        assert curve[-1, 1] < curve[0, 1], f"{run} did not learn: {curve[:, 1]}"
    # the small model kept training is the growing run without its last growth: one start, and each
    # growth keeps the function (the val loss before and after it)
    assert doc["clone"][0] == doc["small_continue"][0]
    stages = doc["stages"]
    assert len(stages) == len(st["grow_at"].split(",")) + 1
    for before, after in zip(stages, stages[1:]):
        assert after["curve"][0][1] == pytest.approx(before["curve"][-1][1], abs=1e-4)
        assert after["start"] == pytest.approx(before["end"])
    assert stages[0]["hidden"] * st["seed_width"] == st["hidden"] and stages[-1]["hidden"] == st["hidden"] * 2
    s = doc["summary"]
    assert s["preservation_error"] < 1e-4
    assert s["margin_equal_compute"] == pytest.approx(doc["small_continue"][-1][1] - doc["clone"][-1][1], abs=0.02)
    # the charged speed-up is the twin's compute over the growing run's, seed stages included
    reached = report.steps_to_reach(doc["clone"], doc["random"][-1][1])
    assert s["charged_speedup"] == pytest.approx(st["steps"] / reached)
    assert s["speedup"] is None or s["speedup"] > s["charged_speedup"]
    assert s["headline"]["value"] == pytest.approx(s["charged_speedup"])
    # what --quick promises: the growing run ends ahead of the random twin
    assert doc["clone"][-1][1] < doc["random"][-1][1]
    assert doc["corpus"]["sha256"] and doc["corpus"]["train_bytes"] > 0
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_demo_prints_table_and_summary(demo_run):
    rc, text, out, err = demo_run
    doc = json.loads((out / "results.json").read_text())
    assert "corpus: python" in text and "sha256" in text
    header = next(line for line in text.splitlines() if line.split()[:1] == ["compute"])
    assert header.split() == ["compute", *report.RUNS]
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 4]
    assert [int(r[0]) for r in rows] == [s for s, _ in doc["random"]]
    assert float(rows[-1][2]) == pytest.approx(doc["random"][-1][1], abs=1e-4)
    for needle in ("clone vs random twin", "small-continue vs random", "forgetting dip", "symmetry monitor (last)",
                   "margin over the small model", "everything counted", "counted from the last growth"):
        assert needle in text
    # the headline is the charged speed-up with its definition, and the bar covered the whole race
    head = next(line for line in text.splitlines() if line.startswith("speed-up: "))
    h = doc["summary"]["headline"]
    assert isinstance(h["value"], float) and h["definition"] and f"{h['value']:.2f}x" in head
    assert "seed stages included" in h["definition"]
    assert "demo: grow stage 0" in err and "demo: train small_continue" in err
    total = sum(s["steps"] for s in doc["stages"]) + doc["summary"]["compute"]["small_steps"] + doc["settings"]["steps"]
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
    sooner = report.headline({"random": twin, "clone": [[0, 5.5], [5, 2.5], [10, 1.9], [20, 1.8]]})
    assert sooner["kind"] == "speedup" and sooner["value"] == pytest.approx(20 / (5 + 5 * 0.5 / 0.6))
    slower = report.headline({"random": twin, "clone": [[0, 5.0], [20, 2.5]]})
    assert slower["kind"] == "speedup" and slower["value"] == pytest.approx(15.0 / 20.0)
    never = report.headline({"random": twin, "clone": [[0, 5.5], [20, 5.2]]})
    assert never["value"] == 0.0


def test_race_summary_on_the_compute_axis():
    twin = [[0, 5.0], [10, 3.0], [20, 2.0]]
    grow = [[0, 5.5], [4, 3.0], [8, 2.4], [12, 2.0], [20, 1.7]]
    small = [[0, 5.5], [4, 3.0], [8, 2.4], [14, 2.1], [20, 1.9]]
    s = report.summarize_race({"clone": grow, "random": twin, "small_continue": small}, growth_at=8)
    assert s["charged_speedup"] == pytest.approx(20 / 12)       # seed stages counted
    assert s["speedup"] == pytest.approx(20 / (12 - 8))          # counted from the last growth
    assert s["margin_equal_compute"] == pytest.approx(0.2)
    assert s["clone_beats_small"] and "reason" not in s
    early = report.summarize_race({"clone": grow, "random": [[0, 5.0], [20, 2.5]], "small_continue": small}, 8)
    assert early["speedup"] is None and "before the last growth" in early["reason"]
    assert early["charged_speedup"] == pytest.approx(20 / (4 + 4 * 0.5 / 0.6))


def test_demo_refuses_a_foreign_out_folder(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    rc = demo.main(["--preset", "tiny", "--out", str(tmp_path)])
    assert rc == 4  # the output class
    assert "a folder it does not own" in capsys.readouterr().err
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
    assert [s for s, _ in doc["random"]] == list(range(0, 19, 6))
    assert doc["clone"][-1][0] == pytest.approx(18, abs=1) and doc["small_continue"][-1][0] == pytest.approx(18, abs=1)
    assert doc["clone"][0] == doc["small_continue"][0]
    summary = json.loads(printed.strip().splitlines()[-1])  # the last line is valid JSON
    assert summary["clone_beats_small"] == (summary["margin_equal_compute"] > 0)
    assert set(summary) >= {"charged_speedup", "speedup", "margin_equal_compute"}


def test_compute_axis_prices_the_multiplied_parameters():
    from hyperclone_core.demo import compute

    cfg = demo.llama_config(64, 2, 4, 172)
    # per layer q, k, v, o (64 x 64) and gate, up, down (64 x 172); the LM head (256 x 64); not the embedding
    assert compute.matmul_params(cfg) == 2 * (4 * 64 * 64 + 3 * 64 * 172) + 256 * 64
    tied = dict(cfg, tie_word_embeddings=True)
    assert compute.matmul_params(tied) == compute.matmul_params(cfg)  # a tied head is still multiplied
    assert compute.step_flops(cfg, 1024) == 6 * compute.matmul_params(cfg) * 1024
    curve = compute.on_axis([[0, 3.0], [10, 2.0]], start=5.0, cost=0.25)
    assert curve == [[5.0, 3.0], [7.5, 2.0]]
    assert compute.loss_at(curve, 6.25) == pytest.approx(2.5)
    assert compute.loss_at(curve, 8.0) == 2.0 and compute.loss_at(curve, 9.0) is None
