"""Training never loses or corrupts a run (issue 9's training cases): resume refuses a
run that would silently differ, never writes a checkpoint over or before a newer one,
and falls back past a broken checkpoint to the newest valid one, saying so."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hyperclone_core.errors import HypercloneError  # noqa: E402
from hyperclone_core.io import save_checkpoint  # noqa: E402
from hyperclone_core.model.testing import CASES, random_weights  # noqa: E402
from hyperclone_core.train import TrainConfig, TrainError  # noqa: E402
from hyperclone_core.train import checkpoint as ckpt  # noqa: E402
from hyperclone_core.train.cli import main  # noqa: E402
from hyperclone_torch import Decoder, train  # noqa: E402

torch.set_num_threads(1)
CFG = CASES["llama"]
TOKENS = np.resize(np.random.default_rng(0).integers(0, 96, 29), 4000).astype(np.int64)


def config(out, **kw) -> TrainConfig:
    base = dict(steps=6, batch_size=4, seq_len=8, lr=3e-3, warmup_steps=1, eval_every=2, eval_batches=1, seed=1,
                device="cpu", out_dir=str(out), save_every=2)
    base.update(kw)
    return TrainConfig(**base)


def model() -> Decoder:
    return Decoder.from_weights(CFG, random_weights(CFG, seed=3))


def test_resume_with_fewer_steps_never_overwrites_a_newer_checkpoint(tmp_path):
    train(model(), config(tmp_path / "o", steps=12), TOKENS)
    before = {p.name: (p / "model.safetensors").read_bytes() for p in (tmp_path / "o").glob("checkpoint-*")}
    with pytest.raises(TrainError, match="already at step 12, not before --steps 8"):
        train(model(), config(tmp_path / "o", steps=8, resume=True), TOKENS)
    after = {p.name: (p / "model.safetensors").read_bytes() for p in (tmp_path / "o").glob("checkpoint-*")}
    assert after == before  # checkpoint-8 still holds step-8 weights


@pytest.mark.parametrize("change,field", [({"batch_size": 8}, "batch_size"), ({"seed": 2}, "seed"),
                                          ({"lr": 1e-3}, "lr"), ({"warmup_steps": 3}, "warmup_steps")])
def test_resume_refuses_a_changed_run_naming_the_field(tmp_path, change, field):
    train(model(), config(tmp_path / "o", steps=4), TOKENS)
    with pytest.raises(TrainError, match=f"would silently change the run: {field} "):
        train(model(), config(tmp_path / "o", steps=8, resume=True, **change), TOKENS)
    # allowed explicitly, it goes on
    res = train(model(), config(tmp_path / "o", steps=8, resume=True, allow_change=(field,), **change), TOKENS)
    assert res.steps_done == 8


def test_resume_refuses_other_data_and_allows_more_steps(tmp_path):
    train(model(), config(tmp_path / "o", steps=4), TOKENS)
    other = TOKENS.copy()
    other[:100] = 0
    with pytest.raises(TrainError, match="data .the training or validation tokens differ"):
        train(model(), config(tmp_path / "o", steps=8, resume=True), other)
    res = train(model(), config(tmp_path / "o", steps=8, resume=True, eval_every=4, save_every=3), TOKENS)
    assert res.resumed_from.endswith("checkpoint-0000004") and res.steps_done == 8


def _poison(folder):
    """Write NaN into one weight of a checkpoint, keeping the file valid safetensors."""
    path = folder / "model.safetensors"
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    start = 8 + n + header[name]["data_offsets"][0]
    raw[start:start + 4] = np.array([np.nan], np.float32).tobytes()
    path.write_bytes(bytes(raw))


def test_resume_skips_a_checkpoint_holding_nan_and_says_so(tmp_path):
    train(model(), config(tmp_path / "o", steps=6), TOKENS)
    _poison(tmp_path / "o" / "checkpoint-0000006")
    assert "NaN" in ckpt.problem(tmp_path / "o" / "checkpoint-0000006")
    said = []
    from hyperclone_core.train import loop

    res = loop.train(_engine(tmp_path), config(tmp_path / "o", steps=8, resume=True), TOKENS, log=said.append)
    assert res.resumed_from.endswith("checkpoint-0000004")
    assert any("skipping checkpoint-0000006" in m and "NaN" in m for m in said), said
    assert any("set aside checkpoint-0000006" in m for m in said), said
    names = sorted(p.name for p in (tmp_path / "o").iterdir() if p.name.startswith("checkpoint-"))
    assert "checkpoint-0000008" in names and any(n.startswith("checkpoint-0000006.invalid") for n in names)


def _engine(tmp_path):
    from hyperclone_core.train import optimizer_for
    from hyperclone_torch import TorchEngine

    m = model()
    tc = config(tmp_path / "o", steps=8, resume=True)
    return TorchEngine(m, tc, optimizer_for(tc, {n: tuple(p.shape) for n, p in m.named_parameters()}))


def test_non_finite_loss_names_the_newest_valid_checkpoint_not_a_broken_one(tmp_path):
    m = model()
    poison = {"on": False}
    m.register_forward_hook(lambda mod, i, out: out * float("nan") if poison["on"] else out)

    def cb(rec):
        if rec["step"] == 4:
            _poison(tmp_path / "o" / "checkpoint-0000004")  # the newest checkpoint goes bad
        poison["on"] = rec["step"] >= 4

    from hyperclone_core.train import NonFiniteLoss

    with pytest.raises(NonFiniteLoss, match="at step 5.*newest valid checkpoint is .*checkpoint-0000002"):
        train(m, config(tmp_path / "o", steps=10), TOKENS, callback=cb)


def test_cli_resume_refusal_is_one_line_naming_the_fields(tmp_path, capsys):
    save_checkpoint(tmp_path / "m", CFG, random_weights(CFG, seed=2))
    np.save(tmp_path / "t.npy", TOKENS)
    args = [str(tmp_path / "m"), "--data", str(tmp_path / "t.npy"), "--out", str(tmp_path / "o"), "--steps", "2",
            "--batch-size", "2", "--seq-len", "8", "--no-progress"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--resume", "--lr", "1e-2", "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "lr (0.0003 then, 0.01 now)" in err and "--allow-change lr" in err and "Traceback" not in err
    assert isinstance(TrainError("x"), HypercloneError)
