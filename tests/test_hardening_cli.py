"""No tracebacks: every expected failure is one line on stderr with its class's exit code
(usage 2, input 3, output 4, verification 5, interrupted 130); --debug shows the traceback."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from hyperclone_core import io
from hyperclone_core.model import testing
from hyperclone_core.cli import main
from hyperclone_core.errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OUTPUT, EXIT_USAGE


@pytest.fixture()
def src(tmp_path):
    cfg = testing.CASES["llama"]
    return io.save_checkpoint(tmp_path / "src", cfg, testing.random_weights(cfg))


def run(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.err


def one_line(err):
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("hyperclone: "), err
    assert "Traceback" not in err
    return lines[0]


def clean(tmp_path):
    assert not (tmp_path / "dst").exists()
    assert not [p for p in tmp_path.iterdir() if io.TMP_MARK in p.name]


def test_help_documents_the_exit_codes(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for needle in ("2    usage", "3    input", "4    output", "5    verification", "130  interrupted", "--debug"):
        assert needle in text


# ---------------------------------------------------------------- options


@pytest.mark.parametrize("opts,needle", [
    (["--width", "nan"], "--width"), (["--width", "inf"], "--width"), (["--width", "-2"], "--width"),
    (["--width", "1e9"], "--width"), (["--width", "two"], "--width"), (["--ffn", "0"], "--ffn"),
    (["--heads", "-1"], "--heads"), (["--kv-heads", "nan"], "--kv-heads"),
    (["--ffn-size", "64.5"], "--ffn-size"), (["--ffn-size", "0"], "--ffn-size"),
    (["--ffn-size", "99999999999"], "--ffn-size"),
    (["--layers", "100000000"], "--layers"), (["--layers", "0"], "--layers"), (["--layers", "+-3"], "--layers"),
    (["--layers", "2.5"], "--layers"), (["--layers", "+"], "--layers"),
    (["--seed", "-1"], "--seed"), (["--seed", "1.5"], "--seed"), (["--seed", str(2**64)], "--seed"),
    (["--tolerance", "nan"], "--tolerance"), (["--tolerance", "-1"], "--tolerance"),
    (["--dtype", "int8"], "--dtype"), (["--layout", "spiral"], "--layout"),
    (["--backend", "nope"], "nope"), (["--strategy", "mlp="], "strategy"), (["--strategy", ",,"], "strategy"),
    (["--bogus"], "unrecognized"),
])
def test_bad_options_are_usage_errors(src, tmp_path, capsys, opts, needle):
    rc, err = run(capsys, "expand", src, tmp_path / "dst", "--quiet", *opts)
    assert rc == EXIT_USAGE and needle in one_line(err)
    clean(tmp_path)


def test_a_huge_depth_is_refused_at_once(src, tmp_path):
    """The attack's --layers 100000000 ran 148 s into a MemoryError; now it is refused
    before a model is read (a child process with a timeout proves it cannot run away)."""
    proc = subprocess.run([sys.executable, "-m", "hyperclone_core.cli", "expand", str(src), str(tmp_path / "dst"),
                           "--layers", "100000000"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_USAGE and "--layers" in one_line(proc.stderr)


def test_a_growth_past_the_size_bound_is_refused_before_planning(src, tmp_path, capsys):
    _with_config(src, hidden_size=65536, intermediate_size=65536, num_attention_heads=512, num_key_value_heads=256)
    rc, err = run(capsys, "plan", src, "--no-weights-check", "--width", "128")
    assert rc == EXIT_USAGE and "past the largest supported size" in one_line(err)


def test_verify_and_plan_options(src, tmp_path, capsys):
    rc, err = run(capsys, "verify", src, src, "--seq", "0")
    assert rc == EXIT_USAGE and "--seq" in one_line(err)
    rc, err = run(capsys, "plan", src, "--strategy", "noisy:-5")
    assert rc == EXIT_USAGE and "signal-to-noise" in one_line(err)


def test_no_cuda_is_a_usage_error_before_any_work(src, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, err = run(capsys, "expand", src, tmp_path / "dst", "--backend", "torch", "--device", "cuda", "--quiet")
    assert rc == EXIT_USAGE and "--device cuda is not available" in one_line(err)
    clean(tmp_path)


# ---------------------------------------------------------------- config values


def _with_config(src, **changes):
    cfg = json.loads((src / "config.json").read_text())
    for k, v in changes.items():
        if v is _DROP:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (src / "config.json").write_text(json.dumps(cfg))
    return src


_DROP = object()


@pytest.mark.parametrize("key,value", [
    ("hidden_size", 64.7), ("hidden_size", "32"), ("hidden_size", True), ("hidden_size", -32), ("hidden_size", 0),
    ("intermediate_size", 1e12), ("num_hidden_layers", 100000000), ("num_attention_heads", [4]),
    ("num_key_value_heads", 3), ("vocab_size", None), ("rms_norm_eps", -1e-5), ("rms_norm_eps", "tiny"),
    ("rms_norm_eps", float("nan")), ("rope_theta", float("inf")), ("rope_theta", 0),
    ("tie_word_embeddings", "yes"), ("hidden_act", "swiglu9"), ("hidden_act", 7), ("model_type", 5),
    ("model_type", _DROP), ("rope_parameters", "default"), ("layer_types", ["full_attention"]),
    ("max_position_embeddings", -1), ("sliding_window", 2.5),
])
def test_bad_config_values_are_input_errors_naming_the_key(src, tmp_path, capsys, key, value):
    _with_config(src, **{key: value})
    for args in (["expand", src, tmp_path / "dst", "--quiet"], ["plan", src], ["verify", src, src]):
        rc, err = run(capsys, *args)
        line = one_line(err)
        assert rc == EXIT_INPUT and ("config.json" in line or "model_type" in line), line
    clean(tmp_path)


def test_config_that_is_a_folder_or_binary(src, tmp_path, capsys):
    (src / "config.json").unlink()
    (src / "config.json").mkdir()
    rc, err = run(capsys, "expand", src, tmp_path / "dst", "--quiet")
    assert rc == EXIT_INPUT and "not a regular file" in one_line(err)
    (src / "config.json").rmdir()
    (src / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    rc, err = run(capsys, "expand", src, tmp_path / "dst", "--quiet")
    assert rc == EXIT_INPUT and "UTF-8" in one_line(err)
    clean(tmp_path)


# ---------------------------------------------------------------- faults while writing


def _fail_write(monkeypatch, exc, after=3):
    original = io.ShardedWriter.write_rows
    count = [0]

    def write(self, name, arr, raw=False):
        count[0] += 1
        if count[0] == after:
            raise exc
        original(self, name, arr, raw)

    monkeypatch.setattr(io.ShardedWriter, "write_rows", write)


def test_disk_full_is_an_output_error(src, tmp_path, capsys, monkeypatch):
    _fail_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    rc, err = run(capsys, "expand", src, tmp_path / "dst", "--quiet")
    assert rc == EXIT_OUTPUT and "no space left" in one_line(err)
    clean(tmp_path)


def test_an_unwritable_destination_is_an_output_error(src, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(io.ShardedWriter, "_open_next", lambda self: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied", str(self.folder / "model.safetensors"))))
    rc, err = run(capsys, "expand", src, tmp_path / "dst", "--quiet")
    assert rc == EXIT_OUTPUT and "Permission denied" in one_line(err)
    clean(tmp_path)


def test_ctrl_c_mid_write_exits_130_with_one_line(src, tmp_path, capsys, monkeypatch):
    _fail_write(monkeypatch, KeyboardInterrupt())
    rc, err = run(capsys, "expand", src, tmp_path / "dst", "--quiet")
    assert rc == EXIT_INTERRUPTED and "interrupted" in one_line(err)
    clean(tmp_path)


def test_a_real_sigint_exits_130(src, tmp_path):
    code = (
        "import os, signal\n"
        "from hyperclone_core import io\n"
        "from hyperclone_core.cli import main\n"
        "orig = io.ShardedWriter.write_rows\n"
        "def write(self, name, arr, raw=False):\n"
        "    orig(self, name, arr, raw)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "io.ShardedWriter.write_rows = write\n"
        f"raise SystemExit(main(['expand', {str(src)!r}, {str(tmp_path / 'dst')!r}, '--quiet']))\n"
    )
    # the child starts with SIGINT at its default, as a command typed at a terminal does: a test
    # run launched in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler (the CLI leaves an ignored signal alone)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == EXIT_INTERRUPTED and "interrupted" in one_line(proc.stderr)
    clean(tmp_path)


# ---------------------------------------------------------------- internal errors and --debug


def _bug(monkeypatch):
    import hyperclone_core.expand.checkpoint as ex

    def broken(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(ex, "copy_aux_files", broken)


def test_an_unexpected_exception_is_one_line_and_code_70(src, tmp_path, capsys, monkeypatch):
    _bug(monkeypatch)
    rc, err = run(capsys, "expand", src, tmp_path / "dst", "--quiet")
    line = one_line(err)
    assert rc == EXIT_INTERNAL and "internal error" in line and "--debug" in line
    clean(tmp_path)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(src, tmp_path, capsys, monkeypatch, how):
    _bug(monkeypatch)
    if how == "env":
        monkeypatch.setenv("HYPERCLONE_DEBUG", "1")
        args = ["expand", src, tmp_path / "dst", "--quiet"]
    else:
        args = ["expand", src, tmp_path / "dst", "--quiet", "--debug"]
    rc, err = run(capsys, *args)
    assert rc == EXIT_INTERNAL and "Traceback" in err and "simulated bug" in err
    assert err.strip().splitlines()[-1].startswith("hyperclone: error: internal error")
    clean(tmp_path)


# ---------------------------------------------------------------- train / demo go through the boundary


def test_delegated_commands_never_raise(tmp_path, capsys):
    pytest.importorskip("torch")
    for args in (["train"], ["train", "--bogus"], ["train", tmp_path / "nope", "--data", tmp_path / "x",
                                                     "--out", tmp_path / "o"],
                 ["demo", "--preset", "nope"], ["train", "--backend", "nope", "x", "--data", "y", "--out", "z"]):
        rc = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert isinstance(rc, int) and rc != 0 and "Traceback" not in err, (args, err)


def test_resume_from_a_corrupt_state_file_is_one_line(tmp_path, capsys):
    pytest.importorskip("torch")
    cfg = testing.CASES["llama"]
    model = io.save_checkpoint(tmp_path / "m", cfg, testing.random_weights(cfg))
    import numpy as np
    np.save(tmp_path / "tokens.npy", (np.arange(4000) * 7 % 96).astype(np.uint16))
    out = tmp_path / "run"
    base = ["train", str(model), "--data", str(tmp_path / "tokens.npy"), "--out", str(out), "--steps", "2",
            "--batch-size", "2", "--seq-len", "8", "--no-progress"]
    if main(base) != 0:
        pytest.skip("the trainer's options changed: " + capsys.readouterr().err[-300:])
    capsys.readouterr()
    states = sorted(out.rglob("state.json"))
    assert states, "the trainer wrote no state.json"
    states[-1].write_text("{ not json")
    rc = main(base[:-1] + ["--resume", "--steps", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err and "state.json" in err


def test_signals_are_restored_after_main(src, tmp_path):
    before = signal.getsignal(signal.SIGINT)
    assert main(["expand", str(src), str(tmp_path / "dst"), "--quiet"]) == 0
    assert signal.getsignal(signal.SIGINT) is before and os.path.isdir(tmp_path / "dst")
