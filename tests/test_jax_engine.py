"""The jax engine: accumulation over micro-batches, the non-finite guard,
state moved through numpy, refusals that name the option, and a torch-started run
resumed on jax (and back) through the neutral checkpoint."""

from __future__ import annotations

import os

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from hyperclone_core import Growth, family_for_config, plan  # noqa: E402
from hyperclone_core.model import testing  # noqa: E402
from hyperclone_core.train.data import BatchSampler  # noqa: E402
from hyperclone_core.errors import ConfigError  # noqa: E402
from hyperclone_core.run.reference import execute  # noqa: E402
from hyperclone_core.train import TrainConfig, optimizer_for, train  # noqa: E402
from hyperclone_jax.backend import backend  # noqa: E402
from hyperclone_jax.distributed import launch_command  # noqa: E402

BASE = dict(steps=6, batch_size=4, seq_len=8, lr=3e-3, warmup_steps=2, eval_every=0, seed=5, threads=1)


@pytest.fixture(scope="module")
def clone():
    cfg = testing.CASES["llama"]
    fam = family_for_config(cfg)
    p = plan(fam, cfg, Growth.of(fam.read(cfg), width=2), "noisy:10", seed=1)
    data = np.resize(np.random.default_rng(0).integers(0, 96, 23), 3000).astype(np.int64)
    data[::5] = np.random.default_rng(1).integers(0, 96, len(data[::5]))
    return p, execute(p, testing.random_weights(cfg, seed=1)), data


def _engine(bk, p, weights, **kw):
    cfg = TrainConfig(**dict(BASE, **kw))
    return bk.engine(dict(p.config), {n: np.array(w) for n, w in weights.items()}, cfg,
                     optimizer_for(cfg, {n: w.shape for n, w in weights.items()}, p)), cfg


def test_accumulated_micro_batches_equal_one_batch(clone):
    """Two micro-batches of 2 go through the scan, one of 4 does not: the same loss and
    gradient up to float32 reassociation."""
    p, w, data = clone
    batch = BatchSampler(data, 4, 8, 2).batch(0)
    one, _ = _engine(backend, p, w)
    acc, _ = _engine(backend, p, w, grad_accum=2)
    g1, g2 = one.gradients([batch]), acc.gradients([batch[:2], batch[2:]])
    for n in g1:
        scale = float(np.abs(g1[n]).max())
        assert np.abs(g1[n] - g2[n]).max() <= 1e-5 * scale, n
    r1, r2 = one.step([batch], 1e-3), acc.step([batch[:2], batch[2:]], 1e-3)
    assert abs(r1.loss - r2.loss) <= 1e-6 * abs(r1.loss) and abs(r1.grad_norm - r2.grad_norm) <= 1e-5 * r1.grad_norm


def test_non_finite_step_changes_nothing(clone):
    p, w, data = clone
    bad = dict(w)
    name = "model.layers.0.mlp.up_proj.weight"
    bad[name] = w[name].copy()
    bad[name][0, 0] = np.inf
    eng, _ = _engine(backend, p, bad)
    before = eng.export_state()
    res = eng.step([BatchSampler(data, 4, 8, 2).batch(0)], 1e-3)
    after = eng.export_state()
    assert not res.updated
    assert after.adam_step == before.adam_step == 0
    assert all(np.array_equal(before.params[n], after.params[n]) for n in before.params)


def test_export_import_moves_the_whole_state(clone):
    p, w, data = clone
    sampler = BatchSampler(data, 4, 8, 2)
    a, _ = _engine(backend, p, w)
    for k in range(2):
        a.step([sampler.batch(k)], 1e-3)
    state = a.export_state()
    assert state.adam_step == 2 and all(v.dtype == np.float32 for v in state.exp_avg.values())
    b, _ = _engine(backend, p, {n: np.zeros_like(v) for n, v in w.items()})
    b.import_state(state)
    ra, rb = a.step([sampler.batch(2)], 1e-3), b.step([sampler.batch(2)], 1e-3)
    assert (ra.loss, ra.grad_norm) == (rb.loss, rb.grad_norm)
    assert all(np.array_equal(x, y) for x, y in zip(a.params().values(), b.params().values()))


@pytest.mark.parametrize("first,second", [("torch", "jax"), ("jax", "torch")])
def test_a_run_checkpointed_by_one_engine_resumes_on_the_other(clone, tmp_path, first, second):
    """Steps 0-2 on ``first`` (checkpoint at 3), the rest on ``second``: the losses after
    the switch are within 1e-4 (relative) of ``first``'s uninterrupted run on the same batches."""
    pytest.importorskip("torch")
    from hyperclone_core.run.protocol import load_backend

    p, w, data = clone
    a, b = load_backend(first), load_backend(second)
    eng, cfg = _engine(a, p, w)
    full = train(eng, cfg, data, plan=p).train_losses
    out = str(tmp_path / "run")
    eng, cfg = _engine(a, p, w, out_dir=out)
    train(eng, cfg, data, plan=p, callback=lambda r: r["step"] < 2)
    eng, cfg = _engine(b, p, {n: np.zeros_like(v) for n, v in w.items()}, out_dir=out, resume=True)
    rest = train(eng, cfg, data, plan=p)
    assert rest.resumed_from and rest.resumed_from.endswith("checkpoint-0000003")
    worst = max(abs(x - y) / abs(y) for x, y in zip(rest.train_losses[3:], full[3:]))
    assert len(rest.train_losses) == len(full) == 6 and worst <= 1e-4, (rest.train_losses, full)


def test_parallel_modes_and_meshes_are_refused_with_what_to_do(clone):
    p, w, _ = clone
    with pytest.raises(ConfigError, match="--parallel mesh"):
        _engine(backend, p, w, parallel="ddp")
    with pytest.raises(ConfigError, match="xla_force_host_platform_device_count=16"):
        _engine(backend, p, w, parallel="mesh", mesh="data=2,fsdp=4,tensor=2")
    with pytest.raises(ConfigError, match="AXIS=SIZE"):
        _engine(backend, p, w, parallel="mesh", mesh="pipeline=2")


def test_launch_command_puts_world_host_devices_on_the_data_axis(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_thunk_runtime=true --xla_force_host_platform_device_count=3")
    argv, env, over = launch_command(4, ["-m", "hyperclone_core.train.worker"])
    assert argv[1:] == ["-m", "hyperclone_core.train.worker"] and os.path.basename(argv[0]).startswith("python")
    assert env["XLA_FLAGS"].split() == ["--xla_cpu_use_thunk_runtime=true", "--xla_force_host_platform_device_count=4"]
    assert over == {"parallel": "mesh", "mesh": "data=4"}
