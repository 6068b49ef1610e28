"""The thread policy (hyperclone_core.train.threads): the automatic policy's decisions
on made-up step times, the loop driving an engine's ``set_threads`` hook on a fake
clock, and each backend honouring ``--threads`` or refusing it with the usage error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from numpy_engine import NumpyEngine, toy_config, toy_weights  # noqa: E402

from hyperclone_core.train import TrainConfig, TrainError, optimizer_for, train
from hyperclone_core.train import loop as loop_module
from hyperclone_core.train import threads as T


def drive(tuner: T.ThreadTuner, seconds_at, steps: int) -> list:
    """Run ``steps`` steps whose time is ``seconds_at(threads, k)``; returns the messages."""
    said = []
    for k in range(steps):
        msg = tuner.record(seconds_at(tuner.threads(), k))
        if msg:
            said.append(msg)
    return said


# ---------------------------------------------------------------- the decision logic


@pytest.mark.parametrize("cores,expected", [(1, (1,)), (2, (1, 2)), (3, (1, 2, 3)), (6, (1, 2, 4, 6)),
                                            (8, (1, 2, 4, 8))])
def test_candidates_are_powers_of_two_and_every_core(cores, expected):
    assert T.candidates(cores) == expected


def test_tuner_keeps_the_fastest_count_and_ignores_the_warmup_step():
    times = {1: 0.30, 2: 0.18, 4: 0.21}
    tuner = T.ThreadTuner((1, 2, 4))
    # the run's first step is slow (a compile, an allocation): untimed
    said = drive(tuner, lambda n, k: 50.0 if k == 0 else times[n], 8)
    assert not tuner.measuring and tuner.chosen == 2
    assert tuner.measured == times
    assert len(said) == 1 and "uses 2" in said[0] and "1: 300.0, 2: 180.0, 4: 210.0" in said[0]
    # steady at the choice, noisy by +-10%: no re-measuring
    assert drive(tuner, lambda n, k: times[n] * (1.1 if k % 2 else 0.95), 50) == []
    assert tuner.threads() == 2


def test_tuner_takes_turns_and_drops_a_clearly_slower_count_after_one_step():
    order = []

    def at(n, k):
        order.append(n)
        return {1: 0.1, 2: 1.0}[n]  # 2 threads next to a busy process: 10x slower

    said = drive(T.ThreadTuner((1, 2)), at, 3)
    assert order == [1, 1, 2]  # the warmup, then one turn each
    assert said == ["threads: uses 1, the fastest measured (median ms/step by thread count: 1: 100.0, 2: 1000.0; "
                    "--threads N fixes a count)"]
    # close counts take all their turns
    order.clear()
    tuner = T.ThreadTuner((1, 2))
    drive(tuner, lambda n, k: order.append(n) or {1: 0.10, 2: 0.12}[n], 7)
    assert order == [1, 1, 2, 1, 2, 1, 2] and tuner.chosen == 1 and tuner.measured == {1: 0.10, 2: 0.12}


def test_tuner_measures_again_when_the_step_time_drifts_and_moves_to_the_new_fastest():
    quiet, busy = {1: 0.30, 2: 0.18}, {1: 0.33, 2: 0.60}  # another process takes a core
    tuner = T.ThreadTuner((1, 2), window=4)
    drive(tuner, lambda n, k: quiet[n], 3 + 4)  # choose, then the reference window
    assert tuner.chosen == 2 and tuner.reference == pytest.approx(0.18)
    said = drive(tuner, lambda n, k: busy[n], 4)
    assert said == ["threads: the step time moved from 180.0 to 600.0 ms at 2 thread(s); measuring 2, 1 again"]
    said = drive(tuner, lambda n, k: busy[n], 2 + 4)
    assert tuner.chosen == 1 and "uses 1" in said[0]
    # the machine quietens: 1 thread gets faster than its reference, which is a drift too
    said = drive(tuner, lambda n, k: quiet[n] / 1.5, 4)
    assert "moved from 330.0 to 200.0 ms at 1" in said[0] and tuner.measuring
    drive(tuner, lambda n, k: quiet[n], 2)
    assert tuner.chosen == 2


def test_a_burst_of_slow_steps_is_not_a_drift():
    tuner = T.ThreadTuner((1, 2), window=4)
    drive(tuner, lambda n, k: 0.1 * n, 3 + 4)
    assert drive(tuner, lambda n, k: 0.1 * n * (3.0 if k % 4 else 1.0), 40) == []  # 3 slow steps in 4, for ever


def test_tuner_measures_again_every_recheck_steps():
    tuner = T.ThreadTuner((1, 2), recheck_every=20)
    drive(tuner, lambda n, k: 0.1 * n, 3)
    assert tuner.chosen == 1
    said = drive(tuner, lambda n, k: 0.1 * n, 20)
    assert said == ["threads: 20 steps at 1 thread(s); measuring again"] and tuner.measuring
    assert tuner.threads() == 1  # the count in use first
    said = drive(tuner, lambda n, k: 0.1 * n, 2)
    assert "keeps 1" in said[0]


def test_one_core_needs_no_measuring():
    tuner = T.ThreadTuner((1,))
    assert tuner.chosen == 1 and not tuner.measuring
    assert drive(tuner, lambda n, k: 10.0 * k, 30) == []


# ---------------------------------------------------------------- the loop


class HookedEngine(NumpyEngine):
    """The toy engine with the thread hook; each step advances a fake clock by a time
    that depends on the count set (``speeds``: threads -> seconds)."""

    def __init__(self, *a, speeds=None, on_cpu=True, clock=None, **kw):
        super().__init__(*a, **kw)
        self.speeds, self.on_cpu, self.clock = speeds or {}, on_cpu, clock
        self.set_calls, self.threads_per_step, self.threads = [], [], None

    def set_threads(self, n: int) -> bool:
        self.set_calls.append(n)
        if self.on_cpu:
            self.threads = n
        return self.on_cpu

    def step(self, micro_batches, lr):
        self.threads_per_step.append(self.threads)
        if self.clock is not None:
            self.clock.now += self.speeds.get(self.threads, 1.0)
        return super().step(micro_batches, lr)


class Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _run(monkeypatch, cores: int, threads: int = 0, **engine_kw):
    clock = Clock()
    monkeypatch.setattr(loop_module, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(T, "available_cores", lambda: cores)
    cfg = toy_config()
    w = toy_weights(cfg)
    tc = TrainConfig(steps=20, batch_size=4, seq_len=8, eval_every=0, threads=threads, device="cpu")
    eng = HookedEngine(cfg, w, optimizer_for(tc, {n: a.shape for n, a in w.items()}), clock=clock, **engine_kw)
    said = []
    tokens = np.resize(np.arange(32), 3000).astype(np.int64)
    train(eng, tc, tokens, log=said.append)
    return eng, said


def test_loop_measures_each_count_and_trains_at_the_fastest(monkeypatch):
    eng, said = _run(monkeypatch, cores=4, speeds={1: 0.4, 2: 0.25, 4: 0.3})
    # the warmup step, turns (1 is dropped after its first: over 1.5x the leader), then the choice
    assert eng.threads_per_step == [1, 1, 2, 4, 2, 4, 2, 4] + [2] * 12
    assert [s for s in said if s.startswith("threads:")] == [
        "threads: uses 2, the fastest measured (median ms/step by thread count: 1: 400.0, 2: 250.0, 4: 300.0; "
        "--threads N fixes a count)"]


def test_loop_honours_explicit_threads_and_never_tunes(monkeypatch):
    eng, said = _run(monkeypatch, cores=4, threads=3, speeds={3: 0.5})
    assert eng.set_calls == [3] and set(eng.threads_per_step) == {3}
    assert not [s for s in said if s.startswith("threads:")]


def test_loop_leaves_threads_alone_off_the_cpu(monkeypatch):
    eng, said = _run(monkeypatch, cores=4, on_cpu=False)
    assert eng.set_calls == [1]  # asked once; the engine said its steps do not wait on CPU threads
    assert set(eng.threads_per_step) == {None} and not [s for s in said if s.startswith("threads:")]


def test_loop_without_the_hook_leaves_threads_to_the_engine(monkeypatch):
    monkeypatch.setattr(T, "available_cores", lambda: 4)
    lt = T.LoopThreads(object(), 0)
    lt.before()
    lt.after(1.0)
    assert lt.tuner is None and lt.set is None


def test_loop_does_not_tune_several_ranks(monkeypatch):
    monkeypatch.setattr(T, "available_cores", lambda: 4)
    calls = []
    eng = types.SimpleNamespace(set_threads=lambda n: calls.append(n) or True)
    assert T.LoopThreads(eng, 0, world=2).tuner is None and calls == []
    T.LoopThreads(eng, 2, world=2)
    assert calls == [2]


# ---------------------------------------------------------------- the backends


def _tiny(threads: int):
    from hyperclone_core.demo.race import llama_config, random_weights

    cfg = llama_config(32, 1, 2, 64, 64, 16)
    w = random_weights(cfg, 0)
    tc = TrainConfig(steps=2, batch_size=2, seq_len=8, threads=threads, device="cpu")
    return cfg, w, tc, optimizer_for(tc, {n: a.shape for n, a in w.items()})


def test_torch_honours_threads_and_offers_the_hook():
    torch = pytest.importorskip("torch")
    from hyperclone_core.run.protocol import load_backend

    before = torch.get_num_threads()
    try:
        eng = load_backend("torch").engine(*_tiny(3))
        assert torch.get_num_threads() == 3
        assert eng.set_threads(1) is True and torch.get_num_threads() == 1
        eng.close()
    finally:
        torch.set_num_threads(before)


def test_mlx_honours_one_thread_and_refuses_more():
    pytest.importorskip("mlx.core")
    from hyperclone_core.run.protocol import load_backend

    bk = load_backend("mlx")
    eng = bk.engine(*_tiny(1))
    assert not hasattr(eng, "set_threads")
    with pytest.raises(TrainError, match=r"--threads 2: mlx has no setting for its CPU threads.* pass --threads 1 or "
                                         r"leave --threads out"):
        bk.engine(*_tiny(2))


def test_jax_refuses_a_count_other_than_the_one_it_started_with():
    jax = pytest.importorskip("jax")
    from hyperclone_core.run.protocol import load_backend
    from hyperclone_jax import engine as je

    jax.devices()  # started here, if no test did before
    running = je._STARTED_THREADS or T.available_cores()
    eng = load_backend("jax").engine(*_tiny(running))  # its own count: accepted
    assert not hasattr(eng, "set_threads")
    with pytest.raises(TrainError) as exc:
        load_backend("jax").engine(*_tiny(running + 1))
    msg = str(exc.value)
    assert msg.startswith(f"--threads {running + 1}: jax sizes its CPU thread pool once, when it starts")
    assert f"pass --threads {running}" in msg and exc.value.exit_code == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the pool's threads in /proc")
def test_jax_started_by_the_engine_gets_the_count_asked():
    pytest.importorskip("jax")
    code = textwrap.dedent("""
        import collections, json, os, sys
        sys.path.insert(0, %r)
        import test_threads as t
        from hyperclone_core.run.protocol import load_backend
        import numpy as np
        eng = load_backend("jax").engine(*t._tiny(1))
        eng.step([np.zeros((2, 9), np.int64)], 1e-3)
        tasks = os.listdir("/proc/self/task")
        names = collections.Counter(open(f"/proc/self/task/{x}/comm").read().strip() for x in tasks)
        masks = {len(os.sched_getaffinity(int(x))) for x in tasks}
        print(json.dumps({"pool": names.get("tf_XLAEigen", 0), "masks": sorted(masks),
                          "cores": len(os.sched_getaffinity(0))}))
    """) % str(Path(__file__).resolve().parent)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["pool"] == 1, got  # XLA's CPU pool: one thread
    assert got["masks"] == [got["cores"]], got  # and every thread may run on every CPU again
