"""The real trainer (``hyperclone_core.train``) through the backend's engine
(capability ``train``).  The step itself is pinned, not just "the loss went down":
gradients against finite differences of the oracle's loss, the update against
AdamW's closed form, the losses against the batches the loop handed over, the LR
against the schedule; accumulation, clipping, resume bit for bit, the neutral
checkpoint, the symmetry monitor, and (``distributed``) several workers against one."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from hyperclone_conformance import _suite as S
from hyperclone_conformance import _training as T
from hyperclone_core.train.data import BatchSampler
from hyperclone_core.train import adamw_step, global_norm, lr_at, optimizer_for, train
from hyperclone_core.train import checkpoint as ckpt

pytestmark = pytest.mark.capability("expand", "train")


def _grown(backend, device, case="llama", strategy="noisy10"):
    p = S.plan_or_skip(case, strategy, "width2")
    return p, S.expanded(backend, device, case, strategy, "width2")


@pytest.mark.parametrize("case", list(S.CASES))
def test_first_loss_through_the_loop_is_the_source_loss(backend, device, case):
    """The expanded model's first training loss, through the core loop and the engine,
    is the source model's loss (the oracle's, float64) on the same batch."""
    src = S.source(case)
    p, grown = _grown(backend, device, case)
    data = T.tokens(src.cfg.vocab)
    cfg = T.config(device, steps=1, eval_every=0)
    kept = {n: w.copy() for n, w in grown.items()}
    eng = T.engine(backend, p.config, grown, cfg, p)
    try:
        res = train(eng, cfg, data, plan=p)
    finally:
        eng.close()
    batch = BatchSampler(data, cfg.batch_size, cfg.seq_len, cfg.seed).batch(0)
    want = T.oracle_loss(case, src.cfg, src.weights, batch)
    got = res.train_losses[0]
    assert T.relative(got, want) <= T.LOSS_RTOL, (
        f"family {p.family} (case {case}): the first loss through the loop {got:.7f} is not the source model's "
        f"{want:.7f} (relative {T.relative(got, want):.2e}, bound {T.LOSS_RTOL:g})")
    assert all(np.array_equal(kept[n], grown[n]) for n in grown), \
        f"case {case}: the engine wrote into the caller's numpy weights (copy them: torch.from_numpy shares memory)"


@pytest.mark.parametrize("case", ["llama", "gpt_neox", "gemma2", "mixtral"])
def test_gradients_match_finite_differences_of_the_oracle(backend, device, case):
    src = S.source(case)
    p, grown = _grown(backend, device, case)
    batch = BatchSampler(T.tokens(src.cfg.vocab), 2, 8, 3).batch(0)
    eng = T.engine(backend, p.config, grown, T.config(device))
    try:
        grads = eng.gradients([batch])
    finally:
        eng.close()
    assert set(grads) == set(grown), f"gradients for {sorted(set(grown) ^ set(grads))[:4]} missing or extra"
    rng = np.random.default_rng(0)
    w64 = {n: np.asarray(w, np.float64) for n, w in grown.items()}
    names = sorted(grown)
    problems = []
    for n in rng.choice(names, size=min(6, len(names)), replace=False):
        g = np.asarray(grads[n], np.float64)
        flat = np.argsort(-np.abs(g).ravel())[:2].tolist() + rng.integers(0, g.size, 1).tolist()
        for k in flat:
            idx = np.unravel_index(k, g.shape)
            plus, minus = dict(w64), dict(w64)
            plus[n], minus[n] = w64[n].copy(), w64[n].copy()
            plus[n][idx] += T.FD_STEP
            minus[n][idx] -= T.FD_STEP
            fd = (T.oracle_loss(case, p.decoder, plus, batch) - T.oracle_loss(case, p.decoder, minus, batch)) \
                / (2 * T.FD_STEP)
            if abs(g[idx] - fd) > T.FD_RTOL * abs(fd) + T.FD_ATOL:
                problems.append(f"{n}{list(map(int, idx))}: engine {g[idx]:.6g}, finite difference {fd:.6g}")
    assert not problems, f"family {p.family} (case {case}): gradients off the oracle's: " + "; ".join(problems[:4])


@pytest.mark.parametrize("clip", [0.05, 0.0, 100.0], ids=["clipped", "unclipped", "inactive"])
def test_update_is_adamw_in_closed_form(backend, device, clip):
    """Two steps from the expanded model (weight decay on, clone-LR multipliers on,
    the global-norm clip active, off, or set above the norm so it must not act: a
    coefficient that also scales small gradients up shows in the moments): each update
    equals ``optim.adamw_step`` from the engine's own gradients, the reported grad norm
    is their pre-clip norm, and the AdamW step count advances by one."""
    p, grown = _grown(backend, device)
    src = S.source("llama")
    cfg = T.config(device, grad_clip=clip, weight_decay=0.1, clone_lr="inverse_width")
    data = BatchSampler(T.tokens(src.cfg.vocab), 4, 8, 9)
    eng = T.engine(backend, p.config, grown, cfg, p)
    opt = optimizer_for(cfg, {n: w.shape for n, w in grown.items()}, p)
    assert any(m != 1.0 for m in opt.lr_mult.values()), "the plan gives no clone-LR multipliers to check"
    try:
        for k, lr in enumerate((3e-3, 2e-3)):
            micro = [data.batch(k)]
            before = eng.export_state()
            g = eng.gradients(micro)
            res = eng.step(micro, lr)
            after = eng.export_state()
            norm = global_norm(g)
            assert res.updated and T.relative(res.grad_norm, norm) <= 1e-4, (
                f"step {k}: reported grad norm {res.grad_norm:.6g}, the gradients' norm is {norm:.6g}")
            if clip:
                assert (norm > clip) == (clip < 1.0), f"grad norm {norm:.3g}: the clip {clip:g} is not in its regime"
            problems = T.state_problems(after, {n: w.shape for n, w in grown.items()})
            assert not problems, f"step {k}, the exported state: " + "; ".join(problems[:4])
            want_p, want_m, want_v = adamw_step(opt, before.params, g, before.exp_avg, before.exp_avg_sq,
                                                before.adam_step + 1, lr)
            assert after.adam_step == before.adam_step + 1, f"AdamW step {after.adam_step} after {before.adam_step}"
            for n in grown:
                lr_n = lr * opt.mult(n)
                tol = T.UPDATE_TOL * lr_n + 1e-6 * np.abs(want_p[n])
                bad = np.abs(after.params[n] - want_p[n]) > tol
                assert not bad.any(), (
                    f"step {k}, tensor {n}: the update differs from AdamW's closed form at {int(bad.sum())} entries "
                    f"(max |diff| {np.abs(after.params[n] - want_p[n]).max():.3g}, lr {lr_n:g}, weight decay "
                    f"{opt.decay_of(n):g}, clip {clip:g}): check the decay sign, the clip rule, the LR multiplier")
                assert np.allclose(after.exp_avg[n], want_m[n], rtol=1e-4, atol=1e-9), f"step {k}, {n}: exp_avg"
                assert np.allclose(after.exp_avg_sq[n], want_v[n], rtol=1e-4, atol=1e-12), f"step {k}, {n}: exp_avg_sq"
    finally:
        eng.close()


def test_accumulation_equals_one_big_batch(backend, device):
    """2 micro-batches of 2 give one batch of 4's loss, gradients and update.  Adam scales
    each entry by its own gradient, so an entry whose gradient is near 0 can move by up to
    the LR either way on a last-bit difference in it (summing 16 + 16 tokens is not
    summing 32): the run uses ``ACCUM_EPS``, where the update is Lipschitz in the gradient
    (|dp| <= lr |dg| / eps), and the gradients are compared before the step."""
    p, grown = _grown(backend, device)
    src = S.source("llama")
    data = BatchSampler(T.tokens(src.cfg.vocab), 4, 8, 2)
    cfg = T.config(device, eps=T.ACCUM_EPS)
    big, halves = data.batch(0), [data.batch(0)[:2], data.batch(0)[2:]]
    a, b = T.engine(backend, p.config, grown, cfg), T.engine(backend, p.config, grown, cfg)
    try:
        ga, gb = a.gradients([big]), b.gradients(halves)
        ra, rb = a.step([big], 3e-3), b.step(halves, 3e-3)
        pa, pb = a.params(), b.params()
    finally:
        a.close()
        b.close()
    assert T.relative(rb.loss, ra.loss) <= 1e-5, f"loss {rb.loss} over 2 micro-batches, {ra.loss} over one batch"
    for n in ga:
        scale = max(float(np.abs(ga[n]).max()), 1e-12)
        assert np.abs(ga[n] - gb[n]).max() <= T.GRAD_RTOL * scale, (
            f"tensor {n}: the gradient of 2 micro-batches of 2 is not one batch of 4's "
            f"(max |diff| {np.abs(ga[n] - gb[n]).max():.3g}, max |g| {scale:.3g}): average, don't sum")
    for n in pa:
        scale = max(float(np.abs(pa[n]).max()), 1e-12)
        assert np.abs(pa[n] - pb[n]).max() <= T.PARAM_RTOL * scale, (
            f"tensor {n}: 2 micro-batches of 2 and one batch of 4 give different updates "
            f"(max |diff| {np.abs(pa[n] - pb[n]).max():.3g})")


class _Recorder:
    """An engine seen by the loop: records each step's LR and batches, and the oracle's
    loss of the parameters it held before the step on those batches."""

    def __init__(self, eng, case, cfg):
        self.eng, self.case, self.cfg = eng, case, cfg
        self.lrs, self.batches, self.oracle = [], [], []

    def __getattr__(self, name):
        return getattr(self.eng, name)

    def step(self, micro, lr):
        self.lrs.append(lr)
        self.batches.append([np.array(b) for b in micro])
        w = self.eng.params()
        self.oracle.append(float(np.mean([T.oracle_loss(self.case, self.cfg, w, b) for b in micro])))
        return self.eng.step(micro, lr)


def test_loop_hands_the_schedule_and_the_batches_and_losses_follow_them(backend, device):
    """Over several distinct batches: each step used the schedule's LR and the sampler's
    batch, and the loss it reported is the oracle's loss of that batch at the
    parameters before the step (not after it, not of another batch)."""
    p, grown = _grown(backend, device)
    src = S.source("llama")
    data = T.tokens(src.cfg.vocab)
    cfg = T.config(device, steps=5, grad_accum=2, eval_every=0)
    rec = _Recorder(T.engine(backend, p.config, grown, cfg, p), "llama", p.decoder)
    try:
        res = train(rec, cfg, data, plan=p)
    finally:
        rec.eng.close()
    sampler = BatchSampler(data, cfg.batch_size, cfg.seq_len, cfg.seed)
    assert rec.lrs == [lr_at(s, cfg) for s in range(cfg.steps)], f"LRs {rec.lrs}"
    for s, micro in enumerate(rec.batches):
        want = [sampler.batch(s, 0, 1, m, cfg.grad_accum) for m in range(cfg.grad_accum)]
        assert all(np.array_equal(a, b) for a, b in zip(micro, want)), f"step {s}: not the sampler's batches"
    assert len({round(x, 6) for x in rec.oracle}) == len(rec.oracle), "the batches should give distinct losses"
    for s, (got, want) in enumerate(zip(res.train_losses, rec.oracle)):
        assert T.relative(got, want) <= T.LOSS_RTOL, (
            f"step {s}: the engine reported loss {got:.6f}, the oracle's loss of the batch it was handed at the "
            f"parameters before the step is {want:.6f}: the loss is computed late, or on other data")


def _run(backend, device, grown, p, cfg, data, **kw):
    eng = T.engine(backend, p.config, grown, cfg, p)
    try:
        return train(eng, cfg, data[:2500], data[2500:], plan=p, **kw), eng
    finally:
        eng.close()


def test_resume_is_bit_for_bit_and_the_checkpoint_is_neutral(backend, device, tmp_path):
    p, grown = _grown(backend, device)
    src = S.source("llama")
    data = T.tokens(src.cfg.vocab)
    cfg = T.config(device)
    full, _ = _run(backend, device, grown, p, cfg, data)
    out = tmp_path / "run"
    part, eng = _run(backend, device, grown, p, T.config(device, out_dir=str(out)), data,
                     callback=lambda r: r["step"] < 2)
    folder = ckpt.folder_for(out, 3)
    assert part.checkpoint == str(folder) and ckpt.problem(folder) is None, ckpt.problem(folder)
    # neutral: the core reads it with no backend, and the oracle agrees with the engine on it
    state, trainer = ckpt.load(folder, sorted(grown))
    assert trainer["step"] == 3 and state.adam_step == 3
    assert {n: v.shape for n, v in state.params.items()} == {n: v.shape for n, v in grown.items()}
    assert all(np.isfinite(v).all() for d in (state.params, state.exp_avg, state.exp_avg_sq) for v in d.values())
    val = BatchSampler(data[2500:], 4, 8, 1).batch(0)
    eng = T.engine(backend, p.config, state.params, cfg)
    try:
        engine_val = eng.evaluate([val])
    finally:
        eng.close()
    oracle_val = T.oracle_loss("llama", p.decoder, state.params, val)
    assert T.relative(engine_val, oracle_val) <= T.LOSS_RTOL, (
        f"the engine evaluates the saved parameters to {engine_val:.6f}, the oracle to {oracle_val:.6f}")
    # resume from other weights: everything must come from the checkpoint
    other = {n: np.zeros_like(w) if w.ndim == 1 else w[::-1].copy() for n, w in grown.items()}
    rest, _ = _run(backend, device, other, p, T.config(device, out_dir=str(out), resume=True), data)
    assert rest.resumed_from == str(folder)
    assert rest.train_losses == full.train_losses, (
        "losses after resuming differ from the uninterrupted run: "
        f"{rest.train_losses[3:]} vs {full.train_losses[3:]}")
    assert [h.get("val_loss") for h in rest.history] == [h.get("val_loss") for h in full.history]


@pytest.mark.parametrize("strategy,symmetric", [("symmetric", True), ("noisy10", False)])
def test_symmetry_monitor(backend, device, strategy, symmetric):
    p, grown = _grown(backend, device, strategy=strategy)
    data = T.tokens(S.source("llama").cfg.vocab)
    res, _ = _run(backend, device, grown, p, T.config(device, steps=4), data)
    syms = [h["symmetry"] for h in res.evals]
    assert len(syms) >= 2, "the monitor did not run at the evaluations"
    if symmetric:
        assert all(s == 1.0 for s in syms), f"symmetric cloning must keep the copies identical: {syms}"
    else:
        assert all(s < 1.0 for s in syms), f"noisy:10 cloning must break the symmetry: {syms}"


def test_bfloat16_compute_keeps_float32_master_weights(backend, device):
    """``dtype="bfloat16"``: the loss is computed in bfloat16 (near the float32 loss, not
    equal to it), and the parameters stay float32 masters: after a step of LR 1e-5
    (far under bfloat16's resolution at these weights) each moved by at most AdamW's
    first-step bound and none was rounded to bfloat16."""
    p, grown = _grown(backend, device)
    data = T.tokens(S.source("llama").cfg.vocab)
    res, eng = _run(backend, device, grown, p, T.config(device, steps=3, dtype="bfloat16"), data)
    assert all(np.isfinite(res.train_losses)), res.train_losses
    first = T.oracle_loss("llama", p.decoder, grown, BatchSampler(data[:2500], 4, 8, T.CONFIG["seed"]).batch(0))
    assert T.relative(res.train_losses[0], first) <= 0.02, "bfloat16 compute is far from the float32 loss"
    lr, batch = 1e-5, [BatchSampler(data, 4, 8, 3).batch(0)]
    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg = T.config(device, dtype=dtype)
        eng = T.engine(backend, p.config, grown, cfg)
        try:
            losses[dtype] = eng.step(batch, lr).loss
            state = eng.export_state()
        finally:
            eng.close()
    assert losses["bfloat16"] != losses["float32"], "dtype=bfloat16 computed the loss in float32"
    problems = T.state_problems(state, {n: w.shape for n, w in grown.items()})
    assert not problems, "the bfloat16 run's state: " + "; ".join(problems[:4])
    for n, w in grown.items():
        after = state.params[n]
        bound = 1.01 * lr + lr * cfg.weight_decay * np.abs(w) + 1e-7 * np.abs(w)
        jump = np.abs(after.astype(np.float64) - w)
        assert (jump <= bound).all(), (
            f"tensor {n}: a step of LR {lr:g} moved entries by up to {jump.max():.3g} (AdamW's first step moves "
            "each by at most the LR): are the master weights bfloat16?")
        rounded = float(np.mean((after.view(np.uint32) & 0xFFFF) == 0))
        assert rounded < 0.05, f"tensor {n}: {rounded:.0%} of its float32 masters are bfloat16 values"


@pytest.mark.capability("distributed")
def test_distributed_workers_match_one_worker(backend, device, tmp_path):
    from hyperclone_core.io import save_checkpoint

    p, grown = _grown(backend, device)
    save_checkpoint(tmp_path / "model", dict(p.config), grown)
    (tmp_path / "plan.json").write_text(p.to_json(indent=None))
    np.save(tmp_path / "tokens.npy", T.tokens(S.source("llama").cfg.vocab))
    base = dict(T.CONFIG, steps=5, device=device or "auto", threads=1)
    results, states = {}, {}
    for world in (1, 2):
        out = tmp_path / f"w{world}.json"
        module = ["-m", "hyperclone_core.train.worker", "--backend", backend.name, "--model", str(tmp_path / "model"),
                  "--data", str(tmp_path / "tokens.npy"), "--plan", str(tmp_path / "plan.json"), "--out", str(out)]
        argv, env, overrides = backend.launch_command(world, module)
        modes = getattr(backend, "parallel_modes", None)  # what `hyperclone train --parallel` accepts
        assert modes is None or overrides.get("parallel", "none") in tuple(modes), \
            f"the launcher sets parallel={overrides.get('parallel')!r}, not one of the backend's modes {tuple(modes)}"
        run_dir = tmp_path / f"run{world}"
        argv = argv + ["--config", json.dumps(dict(base, out_dir=str(run_dir), **overrides))]
        proc = subprocess.run(argv, env=dict(os.environ, **env), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{world} worker(s) failed: {proc.stderr[-3000:]}"
        results[world] = json.loads(out.read_text())
        states[world], _ = ckpt.load(ckpt.folder_for(run_dir, 5), sorted(grown))
    one = [h["train_loss"] for h in results[1]["history"] if "train_loss" in h]
    two = [h["train_loss"] for h in results[2]["history"] if "train_loss" in h]
    assert len(one) == len(two) == 5
    worst = max(abs(a - b) for a, b in zip(one, two))
    assert worst <= T.DIST_TOL, f"2 workers vs 1: losses differ by up to {worst:.2e} over 5 steps: {one} vs {two}"
    # Adam is blind to the gradient's scale and the clip to its size past the threshold, so
    # ranks that sum instead of average show only in the norms and the moments
    norms = [[h["grad_norm"] for h in results[w]["history"] if "grad_norm" in h] for w in (1, 2)]
    worst = max(T.relative(b, a) for a, b in zip(*norms))
    assert worst <= T.DIST_NORM_RTOL, (f"2 workers vs 1: gradient norms differ by up to {worst:.2e} (relative): "
                                       f"{norms[0]} vs {norms[1]}: average the gradients over ranks, don't sum them")
    for part in ("exp_avg", "exp_avg_sq"):
        for n in sorted(grown):
            a, b = getattr(states[1], part)[n], getattr(states[2], part)[n]
            scale = max(float(np.abs(a).max()), 1e-30)
            assert np.abs(a - b).max() <= T.DIST_MOMENT_RTOL * scale, (
                f"2 workers vs 1 after 5 steps: {part}[{n}] differs by {np.abs(a - b).max() / scale:.2e} of its "
                f"largest entry: the gradients the ranks apply are not the one-worker gradients")
