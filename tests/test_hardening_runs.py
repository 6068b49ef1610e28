"""Issue 25: train and demo get expand's guarantees.  One output mechanism (a run owns
its OUT by a mark, one run at a time by a flock, files replaced never written through,
no output aliasing an input by file identity), one input reader (regular files only,
bounded, schema-checked; a resumed state checked against the model before any engine
sees it; memory-mapped data guarded against a file that shrinks), one source of truth
per checkpoint folder, termination signals cleaned up like Ctrl-C, and every failure in
its exit class."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from hyperclone_core.console import recipe
from hyperclone_core.console.boundary import guarded
from hyperclone_core.errors import CheckpointError, OutputError, UsageError
from hyperclone_core.io import AtomicDir, Checkpoint, save_checkpoint, write_safetensors
from hyperclone_core.io import runout
from hyperclone_core.model.testing import CASES, random_weights
from hyperclone_core.train import checkpoint as ckpt
from hyperclone_core.train import data as hdata

CFG = CASES["llama"]


def _sha(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- RunDir


def test_run_dir_refuses_what_it_does_not_own(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "metrics.jsonl").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "foreign")
    for name, match in (("f", "not a folder"), ("foreign", "does not own"), ("link", "symbolic link")):
        with pytest.raises(OutputError, match=match):
            runout.RunDir(tmp_path / name, "train").claim()
    assert (tmp_path / "foreign" / "metrics.jsonl").read_text() == "mine"
    assert sorted(os.listdir(tmp_path / "foreign")) == ["metrics.jsonl"]
    with runout.RunDir(tmp_path / "demo-out", "demo"):
        pass
    with pytest.raises(OutputError, match="holds a hyperclone demo run"):
        runout.RunDir(tmp_path / "demo-out", "train").claim()
    (tmp_path / "empty").mkdir()
    with runout.RunDir(tmp_path / "empty", "train") as run:
        assert run.owner() == "train"
    assert not (tmp_path / "empty" / runout.LOCK).exists()  # released: the lock file goes with the lock


def test_one_run_at_a_time_and_a_killed_run_leaves_no_lock(tmp_path):
    out = tmp_path / "o"
    with runout.RunDir(out, "train"):
        pass
    fd = os.open(out / runout.LOCK, os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a rival process would hold it
    try:
        with pytest.raises(OutputError, match="another hyperclone run is writing"):
            runout.RunDir(out, "train").claim()
    finally:
        os.close(fd)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from hyperclone_core.io import runout
        runout.RunDir({str(out)!r}, "train").claim()
        print("held", flush=True)
        time.sleep(60)""")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="another hyperclone run"):
            runout.RunDir(out, "train").claim()
    finally:
        child.kill()
        child.wait()
    with runout.RunDir(out, "train"):  # the kernel dropped the killed run's lock
        pass


def test_files_are_replaced_never_written_through_and_temps_of_dead_runs_go(tmp_path):
    out = tmp_path / "o"
    (tmp_path / "outside.txt").write_text("precious")
    with runout.RunDir(out, "train"):  # a previous run's OUT, where someone planted a link
        pass
    (out / "metrics.jsonl").symlink_to(tmp_path / "outside.txt")
    (out / ".recipe.toml.hyperclone-tmp-999999-abcdef.toml").write_text("left by a killed run")
    with runout.RunDir(out, "train") as run:
        run.replace("metrics.jsonl", lambda tmp: tmp.write_text("ours\n"))
        with runout.open_log(out / "metrics.jsonl", "a\n") as f:
            f.write("b\n")
    assert (tmp_path / "outside.txt").read_text() == "precious"
    assert not (out / "metrics.jsonl").is_symlink() and (out / "metrics.jsonl").read_text() == "a\nb\n"
    assert not [p for p in os.listdir(out) if "hyperclone-tmp" in p]


def test_outputs_may_not_alias_inputs_by_identity(tmp_path):
    model = save_checkpoint(tmp_path / "m", CFG, random_weights(CFG))
    (tmp_path / "d.txt").write_text("hello")
    os.link(tmp_path / "d.txt", tmp_path / "hard.jsonl")
    inputs = {"training data": tmp_path / "d.txt", "model folder": model}
    with pytest.raises(OutputError, match="same file as the training data"):
        runout.check_file_output(tmp_path / "hard.jsonl", "--log-jsonl", inputs)
    with pytest.raises(OutputError, match="same file as the model folder file"):
        runout.check_file_output(tmp_path / "m" / ".." / "m" / "config.json", "--log-jsonl", inputs)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OutputError, match="FIFO"):
        runout.check_file_output(tmp_path / "fifo", "--log-jsonl", inputs)
    with pytest.raises(OutputError, match="is the model folder"):
        runout.RunDir(model, "train", inputs).check()
    with pytest.raises(OutputError, match="lies inside the model folder"):
        runout.RunDir(model / "run", "train", inputs).check()
    runout.check_file_output(tmp_path / "new.jsonl", "--log-jsonl", inputs)  # a new file is fine


# ---------------------------------------------------------------- the input reader


def test_token_file_that_shrinks_is_an_input_error_not_sigbus(tmp_path):
    path = tmp_path / "t.bin"
    (np.arange(20000) % 90).astype(np.uint16).tofile(path)
    tokens = hdata.load_tokens(path, dtype="uint16")
    train, _ = hdata.hold_out(tokens, 0.1)
    sampler = hdata.BatchSampler(train, 4, 8)
    assert sampler.batch(0).shape == (4, 9)
    plain = hdata.BatchSampler(hdata.hold_out(np.fromfile(path, np.uint16), 0.1)[0], 4, 8)
    assert all((sampler.batch(k) == plain.batch(k)).all() for k in range(5))  # read, not mapped: the same tokens
    _, val = hdata.hold_out(tokens, 0.1)
    assert (hdata.read_span(val, 3, 7) == np.fromfile(path, np.uint16)[len(train) + 3:len(train) + 10]).all()
    os.truncate(path, 100)
    with pytest.raises(hdata.DataError, match="shrank from 40000 to 100 bytes"):
        sampler.batch(1)


@pytest.mark.parametrize("content,match", [(b"\x93NUMPY\x01\x00" + b"{'descr': '<u2'", "not a plain .npy"),
                                           (None, "truncated"), (b"plain bytes", "not a plain .npy")])
def test_bad_npy_is_an_input_error(tmp_path, content, match):
    path = tmp_path / "t.npy"
    np.save(path, np.arange(1000, dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:500] if content is None else content)
    with pytest.raises(hdata.DataError, match=match):
        hdata.load_tokens(path)


def test_fifo_inputs_are_refused_never_waited_on(tmp_path):
    for name in ("d.npy", "d.bin", "d.txt"):
        os.mkfifo(tmp_path / name)
        with pytest.raises(hdata.DataError, match="FIFO"):
            hdata.load_tokens(tmp_path / name, dtype="uint16")
    os.mkfifo(tmp_path / "tokenizer.json")
    with pytest.raises(CheckpointError, match="FIFO"):
        hdata.get_tokenizer(str(tmp_path / "tokenizer.json"))


def test_tokenizer_is_never_replaced_by_bytes_silently(tmp_path, monkeypatch):
    (tmp_path / "tokenizer.json").write_text("{ not a tokenizer")
    with pytest.raises(hdata.DataError, match="not a tokenizer"):
        hdata.get_tokenizer("auto", tmp_path)
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(hdata.DataError, match=r"needs the `tokenizers` package \(pip install"):
        hdata.get_tokenizer("auto", tmp_path)


def test_jsonl_text_is_trained_on_with_a_word(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "hello"}\n' * 50)
    with pytest.warns(UserWarning, match="JSON Lines"):
        hdata.load_tokens(tmp_path / "d.jsonl")


def _state_folder(tmp_path, **changes) -> Path:
    folder = tmp_path / "checkpoint-0000002"
    (folder / "trainer").mkdir(parents=True)
    state = {"format": ckpt.FORMAT, "step": 2, "adam_step": 2, "history": [{"step": 0, "train_loss": 5.0}],
             "config": {}, "model": {"model_type": "llama", "shapes": {"a": [2, 3]}}, "val_loss": None}
    state.update(changes)
    (folder / "trainer" / "state.json").write_text(json.dumps(state))
    return folder


@pytest.mark.parametrize("changes,match", [({"step": "2"}, "step is '2'"), ({"adam_step": 1.5}, "adam_step"),
                                           ({"history": {}}, "history is not a list"),
                                           ({"history": [{"step": "x"}]}, r"history\[0\]"),
                                           ({"history": [{"step": 1, "val_loss": "low"}]}, "val_loss"),
                                           ({"model": {"shapes": {"a": ["2"]}}}, "model.shapes"),
                                           ({"config": [1]}, "config is not an object")])
def test_state_json_is_parsed_against_its_schema(tmp_path, changes, match):
    with pytest.raises(CheckpointError, match=match):
        ckpt.read_state(_state_folder(tmp_path, **changes))


def test_state_json_fifo_is_refused(tmp_path):
    folder = _state_folder(tmp_path)
    (folder / "trainer" / "state.json").unlink()
    os.mkfifo(folder / "trainer" / "state.json")
    with pytest.raises(CheckpointError, match="FIFO"):
        ckpt.read_state(folder)


# ---------------------------------------------------------------- checkpoints, recipes, signals


def test_single_file_beside_an_index_naming_other_shards_is_refused(tmp_path):
    src = save_checkpoint(tmp_path / "m", CFG, random_weights(CFG), max_shard_bytes=20_000)
    Checkpoint(src)  # sharded with its index: fine
    write_safetensors(src / "model.safetensors", {k: np.asarray(v) for k, v in random_weights(CFG, seed=9).items()})
    with pytest.raises(CheckpointError, match="both model.safetensors and another set of weights"):
        Checkpoint(src)
    from hyperclone_core.cli import main

    assert main(["verify", str(src), str(src)]) == 3


def test_recipe_refuses_two_configs_and_two_spellings(tmp_path):
    with pytest.raises(UsageError, match="--config is given 2 times"):
        recipe.config_path(["--config", "a.toml", "--config=b.toml"])
    (tmp_path / "r.toml").write_text("batch_size = 2\n\"batch-size\" = 4\n")
    from hyperclone_core.train.cli import build_parser

    with pytest.raises(UsageError, match="set twice"):
        recipe.apply(build_parser(), [], tmp_path / "r.toml")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_termination_signals_clean_up_like_ctrl_c(tmp_path, sig, capsys):
    def run():
        with AtomicDir(tmp_path / "dst") as tmp:
            (tmp / "big").write_bytes(b"x" * 1000)
            os.kill(os.getpid(), sig)
            signal.pause()  # pragma: no cover - the signal arrives first
        return 0

    # guarded() turns only a signal at its default into an interrupt (one the caller ignores or
    # handles is left alone); under nohup SIGHUP starts ignored, so set the default the test needs
    before = signal.signal(sig, signal.SIG_DFL)
    try:
        assert guarded(run) == 130
        assert os.listdir(tmp_path) == []
        assert signal.Signals(sig).name in capsys.readouterr().err
        assert signal.getsignal(sig) is signal.SIG_DFL  # restored
    finally:
        signal.signal(sig, before)


def test_an_ignored_termination_signal_is_left_alone():
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        def run():
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: the command runs on
            return 0

        assert guarded(run) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_overflowing_noise_is_blamed_on_the_strategy(tmp_path, capsys):
    from hyperclone_core.cli import main

    w = random_weights(CFG)
    k = "model.layers.0.mlp.down_proj.weight"
    w[k] = w[k] * np.float32(3e37)
    src = save_checkpoint(tmp_path / "m", CFG, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["expand", str(src), str(tmp_path / "wide"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--strategy symmetric" in err and k in err and "hyperclone-tmp" not in err
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_output_side_failures_are_output_errors(tmp_path):
    import errno

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(OutputError, match="No space left"):
        runout.replace_file(tmp_path / "keep.txt", full)
    assert (tmp_path / "keep.txt").read_text() == "old" and os.listdir(tmp_path) == ["keep.txt"]
    log = runout.open_log(tmp_path / "m.jsonl")

    class Broken:
        def write(self, text):
            raise OSError(errno.EIO, "Input/output error")

    log._f.close()
    log._f = Broken()
    with pytest.raises(OutputError, match="m.jsonl: cannot be written"):
        log.write("x")
