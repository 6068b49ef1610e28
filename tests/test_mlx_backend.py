"""The MLX backend beyond the conformance suite: checkpoint-to-checkpoint expansion
writes numpy's bytes, 63-bit noise seeds keep every bit, fresh weights follow the
init rule, a torch-started run resumes on mlx, and the ring launcher reports a
failed process (mlx.launch itself exits 0)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from hyperclone_core import io  # noqa: E402
from hyperclone_core.model import testing  # noqa: E402
from hyperclone_core.expand.checkpoint import expand_checkpoint  # noqa: E402
from hyperclone_core.train import TrainConfig, optimizer_for, train  # noqa: E402
from hyperclone_core.train import checkpoint as ckpt  # noqa: E402
from hyperclone_mlx import backend  # noqa: E402


def _files(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".json")
            and p.name != "hyperclone.json"}


@pytest.mark.parametrize("case,strategy,extra", [
    ("llama", "symmetric", {}), ("mixtral", "first_copy", {"ffn": 1.5}), ("gpt_neox", "random_split:1", {}),
    ("gemma2", "symmetric", {"dtype": "bfloat16", "layers": "+1"}),
])
def test_expand_writes_the_same_bytes_as_numpy(case, strategy, extra, case_dir, tmp_path):
    src = case_dir(case)
    out = {}
    for name in ("numpy", "mlx"):
        dst = tmp_path / name
        expand_checkpoint(src, dst, width=2, strategy=strategy, backend=name, progress=False, **extra)
        out[name] = _files(dst)
    assert sorted(out["mlx"]) == sorted(out["numpy"])
    differ = [f for f in out["numpy"] if out["numpy"][f] != out["mlx"][f]]
    assert not differ, f"{case} {strategy}: the mlx backend wrote {differ} differently from numpy"


def test_cli_expands_with_noise_and_verifies(case_dir, tmp_path):
    """``hyperclone expand --backend mlx`` with the default noisy strategy: the CLI's own
    verification (the mlx forward) passes and the noise is there."""
    src, dst = case_dir("qwen3"), tmp_path / "wide"
    proc = subprocess.run([sys.executable, "-m", "hyperclone_core.cli", "expand", str(src), str(dst), "--width", "2",
                           "--backend", "mlx"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, grown = io.load_weights(dst)
    q = grown["model.layers.0.mlp.down_proj.weight"]
    half = q.shape[1] // 2
    assert not np.array_equal(q[:, :half], q[:, half:]), "noisy:10 left the ffn copies identical"


def test_noise_keys_keep_all_63_bits():
    """Seeds that differ only above bit 32 draw different noise (a 32-bit key would not)."""
    groups = mx.array(np.arange(8) % 4)
    x = mx.zeros((6, 8))
    a, b = (np.array(backend.zero_sum_noise((6, 8), 1, groups, s, x)) for s in (5, 5 + (7 << 40)))
    assert not np.allclose(a, b)
    c = np.array(backend.zero_sum_noise((6, 8), 1, groups, 5, x))
    assert np.array_equal(a, c), "the same seed must draw the same noise"
    assert np.abs(a.reshape(6, 2, 4).sum(1)).max() < 1e-5, "the noise must sum to 0 over the copies"


def test_torch_checkpoint_resumes_on_mlx(tmp_path):
    """A run checkpointed by the torch engine at step 3 continues on mlx: the mlx loss
    at step 4 is torch's own (uninterrupted) step-4 loss within 1e-4, same batches."""
    pytest.importorskip("torch")
    from hyperclone_core.run.protocol import load_backend

    hf = testing.CASES["llama"]
    weights = testing.random_weights(hf, seed=2)
    data = np.resize(np.random.default_rng(0).integers(0, 96, 29), 3000)
    shapes = {n: w.shape for n, w in weights.items()}

    def run(name, callback=None, **kw):
        cfg = TrainConfig(steps=6, batch_size=4, seq_len=8, lr=3e-3, warmup_steps=2, eval_every=0, seed=1, threads=1,
                          **kw)
        eng = load_backend(name).engine(hf, weights, cfg, optimizer_for(cfg, shapes))
        try:
            return train(eng, cfg, data, callback=callback)
        finally:
            eng.close()

    full = run("torch")
    out = tmp_path / "run"
    part = run("torch", callback=lambda r: r["step"] < 2, out_dir=str(out))
    assert part.checkpoint == str(ckpt.folder_for(out, 3))
    rest = run("mlx", out_dir=str(out), resume=True)
    assert rest.resumed_from == part.checkpoint
    torch_next, mlx_next = full.train_losses[3], rest.train_losses[3]
    assert abs(mlx_next - torch_next) <= 1e-4 * abs(torch_next), (mlx_next, torch_next)
    later = np.array(rest.train_losses[3:]) - np.array(full.train_losses[3:])
    assert np.abs(later).max() < 1e-3, f"the mlx continuation drifts from torch's: {later}"


def test_launcher_reports_a_failed_process(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import os, sys\nsys.exit(3 if os.environ.get('MLX_RANK') == '1' else 0)\n")
    argv, env, overrides = backend.launch_command(2, [str(script)])
    assert overrides == {"parallel": "ddp"}
    proc = subprocess.run(argv, env=dict(os.environ, **env), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, "a process exited 3; the launcher must not report success"
    assert "rank-1 (exit 3)" in proc.stderr


def test_demo_runs_on_mlx(tmp_path, capsys):
    """The demo's every code path on the mlx engine (the tiny preset: seconds; ``--quick``
    is minutes on MLX's Linux CPU build, see the README)."""
    import json

    from hyperclone_core import demo

    out = tmp_path / "demo"
    assert demo.main(["--preset", "tiny", "--backend", "mlx", "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["backend"] == "mlx"
    assert doc["summary"]["preservation_error"] <= 1e-4
    stages = doc["stages"]  # the growing run: each growth keeps the function (and its loss) where it was
    assert len(stages) >= 2
    for before, after in zip(stages, stages[1:]):
        assert after["curve"][0][1] == pytest.approx(before["curve"][-1][1], abs=1e-4)


def test_the_slow_blas_path_is_said_once(capsys, monkeypatch):
    """MLX's Linux wheel trains on a bundled BLAS about 15x slower than OpenBLAS: a run
    there says so once, with the fix; with OpenBLAS mapped, or off Linux, it says nothing."""
    import importlib
    import io as _io

    B = importlib.import_module("hyperclone_mlx.backend")  # the module (the package exports the object)

    assert B.slow_path("7f00-7f01 r-xp 0 00:00 0 /usr/lib/libmlx.so\n", "linux")
    assert not B.slow_path(f"7f00-7f01 r-xp 0 00:00 0 {B.OPENBLAS}\n", "linux")
    assert not B.slow_path("anything", "darwin")
    monkeypatch.setattr(B, "_NOTED", [])
    monkeypatch.setattr(B, "slow_path", lambda *a, **k: True)
    out = _io.StringIO()
    assert B.slow_path_note(out) and not B.slow_path_note(out)
    text = out.getvalue()
    assert text.count("\n") == 1 and "LD_PRELOAD=" in text and "libopenblas0-pthread" in text
