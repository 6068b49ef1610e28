"""The engine protocol's rules one by one (``hyperclone_core.train.engine``), each in
the regime where a wrong engine shows: its attributes; the state of a fresh engine
(0 steps, and exporting it changes nothing that follows); the exported state's
names, shapes and dtypes; the non-finite guard; and evaluate's mean over batches."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_conformance import _suite as S
from hyperclone_conformance import _training as T
from hyperclone_core.train import EngineState
from hyperclone_core.train.data import BatchSampler

pytestmark = pytest.mark.capability("expand", "train")


@pytest.fixture(scope="module")
def grown(backend, device):
    p = S.plan_or_skip("llama", "noisy10", "width2")
    return p, S.expanded(backend, device, "llama", "noisy10", "width2")


def _batches(seed=9, n=3, size=4):
    data = BatchSampler(T.tokens(S.source("llama").cfg.vocab), size, 8, seed)
    return [data.batch(k) for k in range(n)]


def _same_state(a: EngineState, b: EngineState, what: str) -> None:
    assert a.adam_step == b.adam_step, f"{what}: AdamW step {a.adam_step} vs {b.adam_step}"
    for part in ("params", "exp_avg", "exp_avg_sq"):
        da, db = getattr(a, part), getattr(b, part)
        assert sorted(da) == sorted(db), f"{what}: {part} names differ: {sorted(set(da) ^ set(db))[:4]}"
        bad = [n for n in da if not np.array_equal(da[n], db[n], equal_nan=True)]
        assert not bad, f"{what}: {part} of {bad[:4]} not bit for bit"


def test_engine_surface(backend, device, grown):
    """The attributes the loop and the checkpoint read: the backend's name (a subclass
    registered under another name may keep its parent's engine), the HF config, every
    tensor by checkpoint name with its full shape, rank 0 of 1, and ``params`` (all or
    some) bit for bit the weights it was given."""
    p, weights = grown
    eng = T.engine(backend, p.config, weights, T.config(device), p)
    try:
        assert isinstance(eng.backend, str) and eng.backend, f"engine.backend {eng.backend!r}: the backend's name"
        for key in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"):
            assert dict(eng.config).get(key) == p.config[key], f"engine.config[{key!r}] is not the model's"
        assert sorted(eng.names) == sorted(weights) and len(set(eng.names)) == len(eng.names), \
            f"engine.names {sorted(set(eng.names) ^ set(weights))[:4]} missing or extra"
        wrong = [n for n in weights if tuple(eng.shapes[n]) != weights[n].shape]
        assert not wrong, f"engine.shapes of {wrong[0]}: {eng.shapes[wrong[0]]}, the tensor is {weights[wrong[0]].shape}"
        assert (eng.rank, eng.world) == (0, 1), f"one process is rank 0 of 1, not {eng.rank} of {eng.world}"
        some = list(eng.names)[1:3]
        assert sorted(eng.params(some)) == sorted(some), "params(names) must return exactly those tensors"
        got = eng.params()
        bad = [n for n in weights if not np.array_equal(got[n], weights[n])]
        assert not bad, f"params() of {bad[:3]} differ from the weights the engine was given"
        eng.barrier()
    finally:
        eng.close()


def test_export_before_the_first_step_changes_nothing(backend, device, grown):
    """A fresh engine has taken 0 steps (moments zero, parameters as given); exporting
    and importing that state before the first step leaves the run bit for bit what it
    would have been (growth inside a run and hand-over between engines do exactly
    this): a phantom step would shift AdamW's bias correction by one."""
    p, weights = grown
    cfg = T.config(device)
    a, b = T.engine(backend, p.config, weights, cfg, p), T.engine(backend, p.config, weights, cfg, p)
    try:
        fresh = a.export_state()
        assert fresh.adam_step == 0, f"a fresh engine's state says {fresh.adam_step} AdamW steps, not 0"
        nonzero = [n for n in a.names if np.any(fresh.exp_avg[n]) or np.any(fresh.exp_avg_sq[n])]
        assert not nonzero, f"a fresh engine's moments of {nonzero[:3]} are not zero"
        moved = [n for n in a.names if not np.array_equal(fresh.params[n], weights[n])]
        assert not moved, f"a fresh engine's exported parameters {moved[:3]} are not the weights it was given"
        a.import_state(fresh)
        for k, batch in enumerate(_batches()[:2]):
            ra, rb = a.step([batch], 3e-3), b.step([batch], 3e-3)
            assert (ra.loss, ra.grad_norm, ra.updated) == (rb.loss, rb.grad_norm, rb.updated), (
                f"step {k} after exporting and importing the fresh state: {ra} vs {rb} without")
        _same_state(a.export_state(), b.export_state(), "2 steps after an export before the first step")
    finally:
        a.close()
        b.close()


def test_exported_state_is_full_float32_by_name(backend, device, grown):
    """After a step: parameters and both moments by checkpoint name, full shape, float32,
    finite, and one AdamW step counted."""
    p, weights = grown
    eng = T.engine(backend, p.config, weights, T.config(device), p)
    try:
        assert eng.step(_batches()[:1], 3e-3).updated
        state = eng.export_state()
    finally:
        eng.close()
    problems = T.state_problems(state, {n: w.shape for n, w in weights.items()})
    assert not problems, "the exported state: " + "; ".join(problems[:4])
    assert state.adam_step == 1 and isinstance(state.adam_step, (int, np.integer)), \
        f"after one step the state says {state.adam_step!r} AdamW steps"


def test_non_finite_step_changes_nothing(backend, device, grown):
    """A step whose loss is not finite reports ``updated=False`` and leaves parameters,
    moments and the step count untouched (mid-run: moments and step are not zero);
    nothing of it leaks into the next step (a clean state imported afterwards steps
    exactly as a fresh engine does)."""
    p, weights = grown
    cfg = T.config(device)
    eng, clean = T.engine(backend, p.config, weights, cfg, p), T.engine(backend, p.config, weights, cfg, p)
    batches = _batches()
    try:
        assert eng.step(batches[:1], 3e-3).updated, "a finite step reported updated=False"
        state = eng.export_state()
        name = next(n for n in sorted(state.params) if n.endswith("mlp.down_proj.weight"))
        state.params[name][0, 0] = np.nan
        eng.import_state(state)
        before = eng.export_state()
        res = eng.step(batches[1:2], 3e-3)
        assert res.updated is False, f"a step with a NaN in {name} reported updated={res.updated} (loss {res.loss})"
        _same_state(eng.export_state(), before, "after a non-finite step")
        eng.import_state(EngineState({n: w.copy() for n, w in weights.items()},
                                     {n: np.zeros_like(w) for n, w in weights.items()},
                                     {n: np.zeros_like(w) for n, w in weights.items()}, 0))
        ra, rb = eng.step(batches[2:3], 3e-3), clean.step(batches[2:3], 3e-3)
        assert ra.updated and (ra.loss, ra.grad_norm) == (rb.loss, rb.grad_norm), (
            f"the step after a skipped one differs from a fresh engine's: {ra} vs {rb} (stale gradients?)")
        _same_state(eng.export_state(), clean.export_state(), "a clean state stepped after a skipped step")
    finally:
        eng.close()
        clean.close()


def test_evaluate_is_the_mean_over_batches(backend, device, grown):
    """``evaluate`` over several batches is the mean of their losses, each the oracle's,
    and it changes no parameter."""
    p, weights = grown
    batches = _batches(seed=4)
    eng = T.engine(backend, p.config, weights, T.config(device), p)
    try:
        each = [eng.evaluate([b]) for b in batches]
        together = eng.evaluate(batches)
        after = eng.params()
    finally:
        eng.close()
    for k, (got, b) in enumerate(zip(each, batches)):
        want = T.oracle_loss("llama", p.decoder, weights, b)
        assert T.relative(got, want) <= T.LOSS_RTOL, f"batch {k}: evaluate gives {got:.7f}, the oracle {want:.7f}"
    assert len({round(x, 5) for x in each}) == len(each), f"the batches should give distinct losses: {each}"
    mean = float(np.mean(each))
    assert T.relative(together, mean) <= 1e-6, (
        f"evaluate over {len(batches)} batches gives {together:.7f}, the mean of their losses is {mean:.7f} "
        f"(each: {[round(x, 6) for x in each]})")
    moved = [n for n in weights if not np.array_equal(after[n], weights[n])]
    assert not moved, f"evaluate changed {moved[:3]}"


def test_parallel_modes_and_devices(backend, device):
    """What ``hyperclone train`` checks before any work: ``parallel_modes`` holds "none"
    and the mode the launcher sets; ``check_device`` accepts the device the suite runs
    on and refuses, with a HypercloneError, one that does not exist."""
    from hyperclone_core import HypercloneError

    modes = tuple(getattr(backend, "parallel_modes", ("none",)))
    assert "none" in modes, f"parallel_modes {modes} lacks 'none' (one process)"
    if "distributed" in backend.capabilities:
        _, _, overrides = backend.launch_command(2, ["-m", "hyperclone_core.train.worker"])
        assert overrides.get("parallel", "none") in modes, (
            f"the launcher sets parallel={overrides.get('parallel')!r}, not one of parallel_modes {modes}: "
            "hyperclone train would refuse the backend's own distributed mode")
    check = getattr(backend, "check_device", None)
    if check is None:
        return
    check(device or "cpu")
    with pytest.raises(HypercloneError):
        check("warp9:3")
