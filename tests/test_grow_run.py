"""Growth as an event of a live run (``train.grow.grow_engine``) and the growth-option
text (``parse_growth``), on the torch engine with the tiny llama of ``model.testing``."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_core.errors import UsageError
from hyperclone_core.model.testing import CASES, random_weights
from hyperclone_core.train import TrainConfig, optimizer_for
from hyperclone_core.train.data import BatchSampler
from hyperclone_core.train.grow import format_growth_options, grow_engine, parse_growth


def test_parse_growth_reads_expand_vocabulary():
    got = parse_growth("width=2,ffn=2,layers=+2,strategy=noisy:10,moments=asymmetric")
    assert got == {"width": 2.0, "ffn": 2.0, "layers": "+2", "strategy": "noisy:10", "moments": "asymmetric"}
    assert parse_growth("kv-heads=1,ffn_size=96,seed=3,inserted_lr=0") == {
        "kv_heads": 1.0, "ffn_size": 96, "seed": 3, "inserted_lr": 0.0}
    rules = parse_growth("width=2,strategy=mlp=noisy:10,attn=symmetric,layers=4")
    assert rules == {"width": 2.0, "strategy": "mlp=noisy:10,attn=symmetric", "layers": "4"}
    assert parse_growth(format_growth_options(got)) == got


@pytest.mark.parametrize("text, named", [
    ("widht=2", "'widht'"), ("width=two", "--grow width"), ("width=0", "--grow width"),
    ("layers=+x", "--grow layers"), ("moments=keep", "--grow moments"), ("width=2,width=3", "width given twice"),
    ("ffn=2,ffn_size=9", "ffn or ffn_size"), ("width", "KEY=VALUE"), ("", "empty"),
    ("strategy=bogus", "--grow strategy"), ("layout=side", "--grow layout"),
])
def test_parse_growth_names_the_bad_key(text, named):
    with pytest.raises(UsageError, match=named.replace("+", r"\+")):
        parse_growth(text)


torch = pytest.importorskip("torch")


def _engine(hf, weights, tc):
    from hyperclone_torch.backend import backend

    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    return backend, backend.engine(hf, weights, tc, optimizer_for(tc, shapes))


def test_grow_engine_continues_the_source_run_on_torch():
    """A live torch run grown width=2 (symmetric, moments carried): the grown engine
    computes the source's function and its next steps are the source's steps."""
    torch.manual_seed(0)
    hf = dict(CASES["llama"])
    w = random_weights(hf, seed=1)
    tc = TrainConfig(steps=12, batch_size=4, seq_len=8, lr=3e-3, warmup_steps=0, eps=1e-12, device="cpu")
    sampler = BatchSampler(np.random.default_rng(0).integers(0, hf["vocab_size"], 4000), 4, 8, 0)
    batch = lambda s: [sampler.batch(s, 0, 1, 0, 1)]  # noqa: E731
    backend, src = _engine(hf, w, tc)
    _, twin = _engine(hf, w, tc)
    opt = optimizer_for(tc, {n: tuple(a.shape) for n, a in w.items()})
    for s in range(3):
        src.step(batch(s), 1e-3)
        twin.step(batch(s), 1e-3)
    before = src.evaluate(batch(99))
    run = grow_engine(src, backend, parse_growth("width=2,strategy=symmetric"), tc, opt)
    assert run.hf_config["hidden_size"] == 2 * hf["hidden_size"]
    assert run.plan.config["hidden_size"] == run.hf_config["hidden_size"]
    assert run.engine.shapes["model.embed_tokens.weight"][1] == 2 * hf["hidden_size"]
    assert run.engine.export_state().adam_step == 3
    assert abs(run.engine.evaluate(batch(99)) - before) < 1e-5
    assert not run.grown.inexact
    for s in range(3, 8):
        a, b = run.engine.step(batch(s), 1e-3).loss, twin.step(batch(s), 1e-3).loss
        assert abs(a - b) <= 1e-4 * abs(b), (s, a, b)
    run.engine.close()
    twin.close()


def test_grow_engine_with_a_factory_and_depth():
    hf = dict(CASES["llama"])
    w = random_weights(hf, seed=2)
    tc = TrainConfig(steps=4, batch_size=2, seq_len=8, device="cpu")
    backend, src = _engine(hf, w, tc)
    src.step([np.random.default_rng(0).integers(0, hf["vocab_size"], (2, 9))], 1e-3)
    opt = optimizer_for(tc, {n: tuple(a.shape) for n, a in w.items()})
    run = grow_engine(src, backend.engine, {"layers": "+1", "width": 1, "moments": "reset"}, tc, opt)
    assert run.hf_config["num_hidden_layers"] == hf["num_hidden_layers"] + 1
    assert run.engine.export_state().adam_step == 0
    assert any("moments 'reset'" in why for why in run.grown.inexact)
    run.engine.close()


def _run(tmp, *, grow=("4:width=2",), stop_after=None, resume=False, schedule="cosine", steps=10, backend=None,
         model=None, out="out"):
    from hyperclone_core.train import train

    hf = dict(CASES["llama"])
    w = model or random_weights(hf, seed=3)
    tc = TrainConfig(steps=steps, batch_size=2, seq_len=8, lr=3e-3, warmup_steps=2, save_every=2, eval_every=2,
                     eval_batches=1, out_dir=str(tmp / out), device="cpu", threads=1, grow=grow, resume=resume,
                     schedule=schedule, rewarm_steps=2)
    bk, eng = _engine(hf, w, tc)
    tokens = np.random.default_rng(5).integers(0, hf["vocab_size"], 3000)
    stop = (lambda rec: rec["step"] != stop_after) if stop_after is not None else None
    res = train(eng, tc, tokens, tokens[:500], callback=stop, log=lambda m: None,
                optimizer=optimizer_for(tc, {n: tuple(a.shape) for n, a in w.items()}),
                backend=backend)
    return res


def test_a_run_grows_at_its_step_and_checkpoints_the_grown_model(tmp_path):
    import json

    res = _run(tmp_path, grow=("4:width=2,strategy=symmetric",))
    g = res.growths
    assert [e["step"] for e in g] == [4] and g[0]["after"]["sizes"]["hidden"] == 2 * g[0]["before"]["sizes"]["hidden"]
    assert g[0]["after"]["params"] > g[0]["before"]["params"] and not g[0]["inexact"]
    assert res.engine.config["hidden_size"] == 2 * CASES["llama"]["hidden_size"]
    assert [h["step"] for h in res.history if "train_loss" in h] == list(range(10))
    out = tmp_path / "out"
    cfg = lambda k: json.loads((out / f"checkpoint-{k:07d}" / "config.json").read_text())  # noqa: E731
    assert cfg(4)["hidden_size"] == CASES["llama"]["hidden_size"]  # written before the growth at step 4
    assert cfg(6)["hidden_size"] == 2 * CASES["llama"]["hidden_size"]
    state = json.loads((out / "checkpoint-0000006" / "trainer" / "state.json").read_text())
    assert state["growths_done"] == 1 and state["adamw"]["lr_mult"]
    assert state["config"]["grow"] == ["4:width=2,strategy=symmetric"]
    sym = [h["symmetry"] for h in res.history if h.get("symmetry") is not None]
    assert sym and sym[0] == pytest.approx(1.0)  # the monitor watches the growth's copies
    res.engine.close()


@pytest.mark.parametrize("stop_after", [3, 5])
def test_a_grown_run_interrupted_and_resumed_is_the_uninterrupted_run(tmp_path, stop_after):
    """Stopped before the growth (checkpoint-4 is of the small model) or after it
    (checkpoint-6 of the grown one), then resumed from the small model as given: bit
    for bit the run that was never interrupted."""
    full = _run(tmp_path, out="full", schedule="wsd")
    part = _run(tmp_path, out="part", stop_after=stop_after, schedule="wsd")
    part.engine.close()
    resumed = _run(tmp_path, out="part", resume=True, schedule="wsd")
    assert resumed.resumed_from.endswith(f"checkpoint-{stop_after + 1:07d}")
    a = [h["train_loss"] for h in full.history if "train_loss" in h]
    b = [h["train_loss"] for h in resumed.history if "train_loss" in h]
    assert a == b
    assert [e["step"] for e in resumed.growths] == [4]
    pa, pb = full.engine.params(), resumed.engine.params()
    assert all(np.array_equal(pa[n], pb[n]) for n in pa)
    full.engine.close()
    resumed.engine.close()


def test_resume_refuses_another_growth_schedule(tmp_path):
    from hyperclone_core.errors import HypercloneError

    _run(tmp_path, stop_after=5).engine.close()
    with pytest.raises(HypercloneError, match="grow"):
        _run(tmp_path, resume=True, grow=("4:width=2,ffn=3",))


def _cli_run(tmp, *extra):
    from hyperclone_core.train.cli import main

    args = [str(tmp / "m"), "--data", str(tmp / "corpus.txt"), "--batch-size", "2", "--seq-len", "16",
            "--eval-every", "0", "--eval-batches", "1", "--no-progress", "--save-every", "2", "--warmup-steps", "0",
            "--min-lr-ratio", "1", "--lr", "3e-3", "--threads", "1", *extra]
    assert main(args) == 0


def _losses(out):
    import json

    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in recs if "train_loss" in r}


@pytest.fixture
def grown_saved_run(tmp_path):
    """A small run to step 2, grown by ``hyperclone grow``; and the run that grew at step 2 itself."""
    from hyperclone_core.cli import main
    from hyperclone_core.io import save_checkpoint

    (tmp_path / "corpus.txt").write_text("HyperCloning grows small models into wide ones. " * 60)
    cfg = dict(CASES["llama"], vocab_size=256)
    save_checkpoint(tmp_path / "m", cfg, random_weights(cfg, seed=2))
    _cli_run(tmp_path, "--out", str(tmp_path / "small"), "--steps", "2")
    assert main(["grow", str(tmp_path / "small" / "checkpoint-0000002"), str(tmp_path / "grown"), "--width", "2",
                 "--strategy", "symmetric"]) == 0
    _cli_run(tmp_path, "--out", str(tmp_path / "straight"), "--steps", "6", "--grow", "2:width=2,strategy=symmetric")
    return tmp_path


def test_hyperclone_grow_output_resumes_bit_for_bit(grown_saved_run):
    import json
    import shutil

    from hyperclone_core.train.cli import main

    tmp = grown_saved_run
    g = tmp / "grown"
    ck = g / "checkpoint-0000002"
    assert json.loads((ck / "config.json").read_text())["hidden_size"] == 2 * CASES["llama"]["hidden_size"]
    state = json.loads((ck / "trainer" / "state.json").read_text())
    assert state["config"]["grow"] == ["2:width=2,strategy=symmetric"] and state["growths_done"] == 1
    assert state["adamw"]["eps_mult"] and state["adam_step"] == 2
    shutil.copytree(g, tmp / "grown2")
    shutil.copytree(ck, tmp / "gm")
    assert main(["--config", str(g / "recipe.toml"), "--resume", "--steps", "6"]) == 0
    a, b = _losses(tmp / "straight"), _losses(g)
    assert [a[s] for s in range(6)] == [b[s] for s in range(6)]
    # a copy of the grown checkpoint as the model works too (its config is the grown one)
    assert main([str(tmp / "gm"), "--data", str(tmp / "corpus.txt"), "--out", str(tmp / "grown2"), "--resume",
                 "--steps", "6",
                 "--batch-size", "2", "--seq-len", "16", "--eval-every", "0", "--eval-batches", "1",
                 "--no-progress", "--save-every", "2", "--warmup-steps", "0", "--min-lr-ratio", "1", "--lr", "3e-3",
                 "--threads", "1", "--grow", "2:width=2,strategy=symmetric"]) == 0
    assert [_losses(tmp / "grown2")[s] for s in range(6)] == [a[s] for s in range(6)]


@pytest.mark.parametrize("other", ["jax", "mlx"])
def test_hyperclone_grow_output_resumes_on_another_backend(grown_saved_run, other):
    import shutil

    from hyperclone_core.train.cli import main

    pytest.importorskip({"jax": "hyperclone_jax", "mlx": "hyperclone_mlx"}[other])
    tmp = grown_saved_run
    shutil.copytree(tmp / "grown", tmp / other)
    assert main(["--config", str(tmp / "grown" / "recipe.toml"), "--out", str(tmp / other), "--resume",
                 "--steps", "4", "--backend", other, "--threads", "0"]) == 0
    a, b = _losses(tmp / "straight"), _losses(tmp / other)
    assert abs(b[2] - a[2]) <= 1e-4 * abs(a[2]), (a[2], b[2])
    assert abs(b[3] - a[3]) <= 1e-4 * abs(a[3]), (a[3], b[3])


def test_recipe_files_take_a_grow_list_and_flags_add_to_it(tmp_path):
    from hyperclone_core.console import recipe
    from hyperclone_core.train.cli import build_parser, config_from

    (tmp_path / "r.toml").write_text('model_dir = "m"\ndata = "d.txt"\nout = "o"\nsteps = 50\n'
                                     'schedule = "wsd"\ngrow = ["10:width=2", "20:layers=+1"]\n')
    args = recipe.parse(build_parser(), ["--config", str(tmp_path / "r.toml"), "--grow", "30:width=2.0,ffn=3"])
    tc = config_from(args)
    assert tc.grow == ("10:width=2", "20:layers=+1", "30:width=2,ffn=3") and tc.schedule == "wsd"
    (tmp_path / "bad.toml").write_text('grow = ["10:widht=2"]\n')
    with pytest.raises(UsageError, match="widht"):
        config_from(recipe.parse(build_parser(), ["m", "--data", "d", "--out", "o", "--config",
                                                  str(tmp_path / "bad.toml")]))
