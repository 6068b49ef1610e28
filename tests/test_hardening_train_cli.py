"""Issue 25 through the command line: `hyperclone train` and `hyperclone demo` refuse
what they may not write (exit 4, nothing touched), what they cannot read (exit 3),
and bad option values (exit 2, naming the option), before any work; `train --resume`
from a state that does not fit the model is exit 3 naming the tensor, nothing written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from hyperclone_core.cli import main  # noqa: E402
from hyperclone_core.io import SafetensorsFile, save_checkpoint, write_safetensors  # noqa: E402
from hyperclone_core.model.testing import CASES, random_weights  # noqa: E402

CFG = CASES["llama"]
MOMENT = "exp_avg/model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    save_checkpoint(root / "m", CFG, random_weights(CFG, seed=2))
    np.save(root / "d.npy", (np.arange(4000) % 90).astype(np.uint16))
    assert main(train(root, "run")) == 0
    return root


def train(root: Path, out, *extra) -> list:
    return ["train", str(root / "m"), "--data", str(root / "d.npy"), "--out", str(root / out), "--steps", "2",
            "--batch-size", "2", "--seq-len", "8", "--no-progress", "--threads", "1", *extra]


def files(folder: Path) -> dict:
    return {str(p): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("extra,code,match", [
    (["--val-fraction", "nan"], 2, "--val-fraction nan"), (["--val-fraction", "-0.1"], 2, "--val-fraction"),
    (["--lr", "-1"], 2, "--lr must be > 0"), (["--batch-size", "0"], 2, "--batch-size must be"),
    (["--data-dtype", "float32"], 2, "--data-dtype"), (["--mesh", "data=2"], 2, "--mesh data=2: the torch"),
    (["--parallel", "mesh"], 2, "--parallel mesh: the torch backend has no such mode"),
    (["--device", "cuda:7"], 2, "--device cuda:7"), (["--batch-size", "9000000"], 2, "--batch-size 9000000 x"),
    (["--config", "a.toml", "--config", "b.toml"], 2, "--config is given 2 times"),
    (["--clone-lr", "inverse_width"], 2, "--clone-lr inverse_width: needs the plan"),
])
def test_bad_option_values_are_usage_errors_naming_the_option(scene, capsys, extra, code, match):
    assert main(train(scene, "bad", *extra)) == code
    assert match in capsys.readouterr().err
    assert not (scene / "bad").exists()


def test_log_jsonl_aliasing_an_input_is_refused_and_nothing_changes(scene, capsys):
    before = files(scene / "m") | {"d": (scene / "d.npy").read_bytes()}
    os.link(scene / "d.npy", scene / "hard-link.jsonl")
    for target in (scene / "d.npy", scene / "m" / "config.json", scene / "hard-link.jsonl"):
        assert main(train(scene, "alias", "--log-jsonl", str(target))) == 4
        assert "would destroy an input" in capsys.readouterr().err
    assert files(scene / "m") | {"d": (scene / "d.npy").read_bytes()} == before
    assert not (scene / "alias").exists()


def test_out_may_not_be_the_model_or_a_foreign_folder(scene, capsys):
    before = files(scene / "m")
    assert main(train(scene, "m")) == 4
    assert "is the model folder" in capsys.readouterr().err
    (scene / "foreign").mkdir()
    (scene / "foreign" / "metrics.jsonl").write_text("the user's")
    assert main(train(scene, "foreign")) == 4
    assert (scene / "foreign" / "metrics.jsonl").read_text() == "the user's"
    assert files(scene / "m") == before


def test_metrics_symlink_in_out_is_replaced_not_written_through(scene, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(scene / "run", out)
    (tmp_path / "outside.txt").write_text("secret")
    (out / "metrics.jsonl").unlink()
    (out / "metrics.jsonl").symlink_to(tmp_path / "outside.txt")
    argv = train(scene, "x", "--resume")
    argv[argv.index("--out") + 1], argv[argv.index("--steps") + 1] = str(out), "4"
    assert main(argv) == 0
    assert (tmp_path / "outside.txt").read_text() == "secret"
    assert not (out / "metrics.jsonl").is_symlink()


@pytest.mark.parametrize("how", ["transposed", "float16", "larger"])
def test_resume_from_moments_that_do_not_fit_is_exit_3_naming_the_tensor(scene, tmp_path, capsys, how):
    out = tmp_path / "o"
    shutil.copytree(scene / "run", out)
    path = out / "checkpoint-0000002" / "trainer" / "optimizer.safetensors"
    f = SafetensorsFile(path)
    t = {k: np.asarray(f.raw(k)) for k in f.keys()}
    t[MOMENT] = {"transposed": t[MOMENT].T.copy(), "float16": t[MOMENT].astype(np.float16),
                 "larger": np.zeros((t[MOMENT].shape[0] + 1, t[MOMENT].shape[1]), np.float32)}[how]
    write_safetensors(path, t)
    before = files(out)
    argv = train(scene, "x", "--resume")
    argv[argv.index("--out") + 1], argv[argv.index("--steps") + 1] = str(out), "4"
    assert main(argv) == 3
    assert MOMENT in capsys.readouterr().err
    assert files(out) == before  # nothing written, nothing set aside


def test_debug_prints_the_traceback_on_train(scene, capsys):
    assert main(["--debug", *train(scene, "dbg", "--lr", "-1")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_demo_keeps_what_it_did_not_write_and_checks_settings_first(tmp_path, capsys):
    words = "the cat sat on a mat and the dog ran far away from home".split()
    rng = np.random.default_rng(0)
    (tmp_path / "t.txt").write_text("\n\n".join(" ".join(rng.choice(words, 60)) for _ in range(80)))
    demo = ["demo", "--text", str(tmp_path / "t.txt"), "--hidden", "8", "--layers", "1", "--heads", "2", "--ffn",
            "16", "--steps", "4", "--eval-every", "1", "--eval-batches", "1",
            "--batch-size", "2", "--seq-len", "8", "--warmup-steps", "1", "--no-progress", "--threads", "1",
            "--backend", "torch", "--out", str(tmp_path / "d")]
    assert main(demo) == 0
    (tmp_path / "d" / "notes.txt").write_text("mine")
    assert main(demo) == 0
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"
    capsys.readouterr()
    assert main([*demo, "--hidden", "-8"]) == 2
    assert main([*demo, "--layers", "0"]) == 2
    os.mkfifo(tmp_path / "fifo")
    assert main([*demo, "--text", str(tmp_path / "fifo")]) == 3
    assert main([*demo[:-1], str(tmp_path / "t.txt")]) == 4  # --out a file
    assert "FIFO" in capsys.readouterr().err


def test_paths_with_bytes_that_are_not_utf8_work(scene, tmp_path, capsys):
    odd = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/s\xfe"))
    shutil.copytree(scene / "m", odd / "m")
    assert main(["expand", str(odd / "m"), str(odd / "wide"), "--quiet"]) == 0
    assert main(["plan", str(odd / "m"), "--width", "2"]) == 0
    argv = train(scene, "x")
    argv[1], argv[argv.index("--out") + 1] = str(odd / "m"), str(odd / "run")
    assert main(argv) == 0
    assert (odd / "run" / "checkpoint-0000002").is_dir() and "internal error" not in capsys.readouterr().err
