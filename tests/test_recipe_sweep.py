"""benchmarks/recipe_sweep.py: growth grids run the demo's own race and share its cache;
restart grids' cache reruns only what a lever changes (tiny scale, a few seconds each)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from hyperclone_core import demo  # noqa: E402
from hyperclone_core.demo.report import RUNS  # noqa: E402


@pytest.fixture(scope="module")
def rs():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "recipe_sweep.py"
    spec = importlib.util.spec_from_file_location("hyperclone_bench_recipe_sweep", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(rs, point, cache):
    said = []
    doc = rs.run_point(point, "embedded", cache, log=said.append)
    return doc, [m.split("(")[0].strip() for m in said]


def test_restart_point_caches_what_a_lever_does_not_change(rs, tmp_path):
    point = rs.SCALES["tiny"]
    cache = rs.Cache(tmp_path)
    first, said = _run(rs, point, cache)
    assert said == ["pretraining the source", "training random", "training small_continue", "training clone"]
    assert set(first["curves"]) == set(RUNS)
    assert first["curves"]["clone"][0][1] == pytest.approx(first["curves"]["small_continue"][0][1], abs=1e-4)

    again, said = _run(rs, point, cache)  # the source comes back from safetensors
    assert said == ["training clone"]
    assert again["curves"] == first["curves"]

    lever, said = _run(rs, point.with_(clone_lr_scale=1.0, clone_warmup_steps=0, small_matched=True), cache)
    assert said == ["training small_matched", "training clone"]
    assert lever["curves"]["random"] == first["curves"]["random"]
    assert lever["curves"]["clone"] != first["curves"]["clone"]
    s = lever["summary"]
    assert s["margin"] == pytest.approx(lever["curves"]["small_continue"][-1][1] - lever["curves"]["clone"][-1][1])
    assert s["margin_matched"] == pytest.approx(
        lever["curves"]["small_matched"][-1][1] - lever["curves"]["clone"][-1][1])

    source, said = _run(rs, point.with_(pretrain_steps=point.pretrain_steps + 6), cache)
    assert said == ["pretraining the source", "training small_continue", "training clone"]  # the twin is kept
    assert source["curves"]["random"] == first["curves"]["random"]


def test_depth_and_width_growth_races_the_same_twin(rs, tmp_path):
    base = rs.SCALES["tiny"]
    cache = rs.Cache(tmp_path)
    wide, _ = _run(rs, base, cache)
    deep, said = _run(rs, base.with_(**rs.LEVERS["depth"](base)), cache)
    assert "training random" not in said
    assert deep["params"]["clone"] == wide["params"]["clone"]
    assert deep["params"]["small"] < wide["params"]["small"]
    # the cheaper source is charged less
    ratio = deep["summary"]["with_pretraining"]["cost_ratio"]
    assert ratio == pytest.approx(deep["params"]["small"] / deep["params"]["clone"])


def test_clone_lr_rules(rs):
    from hyperclone_core import Growth, family_for_config, plan

    cfg = demo.llama_config(32, 2, 2, 64)
    fam = family_for_config(cfg)
    pl = plan(fam, cfg, Growth.of(fam.read(cfg), width=2), "noisy:10", 0)
    full = rs.clone_lr_map(pl, "inverse_width")
    kinds = {t.name: t.kind for t in pl.tensors}
    assert full and set(full.values()) == {0.5}
    assert "lm_head" in {kinds[n] for n in full} and all(kinds[n] != "embed" for n in full)
    assert rs.clone_lr_map(pl, "sqrt_inverse_width") == {n: math.sqrt(0.5) for n in full}
    no_head = rs.clone_lr_map(pl, "inverse_width_no_head")
    head = rs.clone_lr_map(pl, "head_only_inverse")
    assert set(no_head) | set(head) == set(full) and not set(no_head) & set(head)
    assert rs.clone_lr_map(pl, "") == {}
    with pytest.raises(rs.HypercloneError, match="inverse_width"):
        rs.clone_lr_map(pl, "mup")


def test_cli_runs_a_grid_and_writes_the_table(rs, tmp_path, capsys):
    out = tmp_path / "out"
    assert rs.main(["--grid", "tiny", "--only", "base,lr_x1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "tiny" / "table.md").read_text()
    assert table.strip() in printed
    assert table.count("\n| base |") == 1 and table.count("\n| lr_x1 |") == 1
    doc = json.loads((out / "tiny" / "results.json").read_text())
    assert [p["lever"] for p in doc["points"]] == ["base", "lr_x1"]
    assert "--only base" in doc["points"][0]["command"]
    assert (out / "cache" / "source").is_dir() and (out / "sweep.log").read_text().count("done in") == 2
    # a second run trains nothing
    assert rs.main(["--grid", "tiny", "--only", "base,lr_x1", "--out", str(out)]) == 0
    assert "  training " not in capsys.readouterr().out
    assert rs.main(["--grid", "nope", "--out", str(out)]) == 2
    assert rs.main(["--grid", "tiny", "--set", "clone_lr_scale", "--out", str(out)]) == 2


def test_growth_grid_runs_the_demo_race_and_shares_its_runs(rs, tmp_path, capsys):
    from hyperclone_core.demo.corpus import load

    out = tmp_path / "out"
    assert rs.main(["--grid", "growth_tiny", "--only", "base,reset", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = (out / "growth_tiny" / "table.md").read_text()
    assert table.strip() in printed and table.count("\n| base |") == 1 and table.count("\n| reset |") == 1
    doc = json.loads((out / "growth_tiny" / "results.json").read_text())
    default, reset = doc["points"]
    # a point is the demo's race at those settings, bit for bit
    st = rs.growth_settings("growth_tiny")[0][2]
    ref = demo.compare(st, load(None), log=lambda m: None)
    for run in RUNS:
        assert default[run] == ref[run], run
    assert default["summary"]["charged_speedup"] == ref["summary"]["charged_speedup"]
    # the reset lever restarts AdamW at every growth: the same twin, another growing run
    assert reset["random"] == default["random"] and reset["clone"] != default["clone"]
    assert reset["settings"]["moments"] == "reset" and "--only reset" in reset["command"]
    log = (out / "sweep.log").read_text()
    assert log.count("training random") == 1  # the twin was trained once, then reused
    assert rs.main(["--grid", "growth_tiny", "--only", "base,reset", "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert "stage 0" not in again and "training random" not in again  # a second run trains nothing
    assert rs.main(["--grid", "growth_tiny", "--set", "moments=keep", "--out", str(out)]) == 2
