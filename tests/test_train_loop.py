"""The core training loop with numpy alone (tests/numpy_engine.py): the schedule it
hands over, accumulation, the non-finite guard, the evaluation cadence, metrics,
checkpoints in the neutral layout, resume bit for bit and its refusals, pruning.
Runs in ``nox -s core`` (no framework installed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from numpy_engine import NumpyEngine, toy_config, toy_weights  # noqa: E402

from hyperclone_core.train import NonFiniteLoss, TrainConfig, TrainError, lr_at, optimizer_for, train
from hyperclone_core.train import checkpoint as ckpt

CFG = toy_config()
TOKENS = np.resize(np.random.default_rng(0).integers(0, 32, 41), 5000).astype(np.int64)
TRAIN, VAL = TOKENS[:4500], TOKENS[4500:]


def config(**kw) -> TrainConfig:
    base = dict(steps=8, batch_size=4, seq_len=8, lr=1e-2, warmup_steps=2, eval_every=3, eval_batches=2, seed=2,
                device="cpu", weight_decay=0.1, grad_clip=0.5)
    base.update(kw)
    return TrainConfig(**base)


def engine(tc: TrainConfig, seed: int = 0, **kw) -> NumpyEngine:
    w = toy_weights(CFG, seed)
    return NumpyEngine(CFG, w, optimizer_for(tc, {n: a.shape for n, a in w.items()}), **kw)


def test_loop_hands_the_schedule_and_learns():
    tc = config(steps=30, eval_every=10)
    eng = engine(tc)
    res = train(eng, tc, TRAIN, VAL)
    assert eng.lrs == [lr_at(s, tc) for s in range(30)]
    assert [h["step"] for h in res.evals] == [0, 10, 20, 30]  # the cadence, and a closing evaluation
    assert res.evals[-1]["val_loss"] < res.evals[0]["val_loss"] - 0.3
    assert all(h["grad_norm"] > 0 for h in res.history if "train_loss" in h)


def test_accumulation_is_the_same_step():
    a, b = engine(config()), engine(config(grad_accum=2))
    ra, rb = train(a, config(), TRAIN), train(b, config(grad_accum=2), TRAIN)
    assert np.allclose(ra.train_losses, rb.train_losses, rtol=1e-12, atol=0)
    for n in a.names:
        assert np.allclose(a.p[n], b.p[n], rtol=0, atol=1e-6 * np.abs(a.p[n]).max()), n


def test_non_finite_loss_stops_without_applying_and_names_the_newest_valid_checkpoint(tmp_path):
    tc = config(steps=10, save_every=2, out_dir=str(tmp_path / "o"))
    eng = engine(tc, poison_at=5)
    with pytest.raises(NonFiniteLoss, match="at step 5.*not applied.*checkpoint-0000004") as err:
        train(eng, tc, TRAIN, VAL)
    assert err.value.step == 5 and eng.t == 5  # the poisoned step was not taken
    assert err.value.exit_code == 6


def test_checkpoints_are_neutral_and_resume_is_bit_for_bit(tmp_path):
    full_engine = engine(config())
    full = train(full_engine, config(), TRAIN, VAL)
    out = tmp_path / "run"
    e1 = engine(config(out_dir=str(out)))
    part = train(e1, config(out_dir=str(out)), TRAIN, VAL, callback=lambda r: r["step"] < 3)
    folder = ckpt.folder_for(out, 4)
    assert part.checkpoint == str(folder) and ckpt.problem(folder) is None
    state, trainer = ckpt.load(folder, e1.names)
    mine = e1.export_state()
    assert state.adam_step == mine.adam_step == 4 and trainer["step"] == 4
    for n in e1.names:
        assert np.array_equal(state.params[n], mine.params[n]) and np.array_equal(state.exp_avg_sq[n], mine.exp_avg_sq[n])
    assert json.loads((folder / "config.json").read_text()) == CFG
    assert trainer["data"]["position"] == 4 and trainer["data"]["train"]["tokens"] == len(TRAIN)
    e2 = engine(config(out_dir=str(out), resume=True), seed=7)  # other weights: all must come from the checkpoint
    rest = train(e2, config(out_dir=str(out), resume=True), TRAIN, VAL)
    assert rest.resumed_from == str(folder)
    assert rest.train_losses == full.train_losses
    assert [h.get("val_loss") for h in rest.history] == [h.get("val_loss") for h in full.history]
    for n in e2.names:
        assert np.array_equal(e2.p[n], full_engine.p[n]), n
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [h["step"] for h in rest.history]


def test_resume_refuses_what_would_change_the_run(tmp_path):
    out = str(tmp_path / "o")
    train(engine(config(out_dir=out, steps=4)), config(out_dir=out, steps=4), TRAIN, VAL)
    with pytest.raises(TrainError, match=r"lr \(0.01 then, 0.02 now\)"):
        train(engine(config()), config(out_dir=out, steps=8, resume=True, lr=2e-2), TRAIN, VAL)
    with pytest.raises(TrainError, match="data"):
        train(engine(config()), config(out_dir=out, steps=8, resume=True), TRAIN[::-1].copy(), VAL)
    with pytest.raises(TrainError, match="already at step 4"):
        train(engine(config()), config(out_dir=out, steps=4, resume=True), TRAIN, VAL)
    with pytest.raises(TrainError, match="pass --resume"):
        train(engine(config()), config(out_dir=out, steps=8), TRAIN, VAL)
    res = train(engine(config()), config(out_dir=out, steps=8, resume=True, eval_every=2, save_every=3), TRAIN, VAL)
    assert res.steps_done == 8  # more steps and another cadence may change


def test_prune_keeps_the_newest_and_the_best(tmp_path):
    out = tmp_path / "o"
    tc = config(steps=12, save_every=3, eval_every=3, out_dir=str(out), save_total_limit=2, keep_best=True)
    train(engine(tc), tc, TRAIN, VAL)
    kept = [p.name for _, p in ckpt.listed(out)]
    assert kept[-2:] == ["checkpoint-0000009", "checkpoint-0000012"]
    vals = {p.name: ckpt.val_loss_at(p) for _, p in ckpt.listed(out)}
    assert all(v is not None for v in vals.values())
    assert len(kept) <= 3 and min(vals, key=vals.get) in kept


def test_resume_sets_a_broken_newer_checkpoint_aside(tmp_path):
    out = tmp_path / "o"
    train(engine(config()), config(out_dir=str(out), steps=6), TRAIN, VAL)
    (out / "checkpoint-0000009").mkdir()  # newer, but not a checkpoint one can resume from
    said = []
    res = train(engine(config()), config(out_dir=str(out), steps=12, resume=True), TRAIN, VAL, log=said.append)
    assert res.resumed_from.endswith("checkpoint-0000006") and res.checkpoint.endswith("checkpoint-0000012")
    assert any("skipping checkpoint-0000009" in m for m in said) and any("set aside" in m for m in said)
    assert [p.name for p in out.glob("checkpoint-0000009.invalid-*")]  # renamed, never deleted


def test_a_checkpoint_is_never_written_over_or_before_a_newer_one(tmp_path):
    import shutil

    out = tmp_path / "o"
    tc = config(steps=12, save_every=3, out_dir=str(out))

    def race(rec):  # another run writes a newer checkpoint into the same folder
        if rec["step"] == 4:
            shutil.copytree(out / "checkpoint-0000003", out / "checkpoint-0000020")

    with pytest.raises(TrainError, match="already holds checkpoint-0000020; refusing to write checkpoint-0000006"):
        train(engine(tc), tc, TRAIN, VAL, callback=race)
    assert not (out / "checkpoint-0000006").exists()
