"""Dynamics preservation: a symmetric clone grown inside a run, with the training state
carried (``hyperclone_core.train.grow``: moments scaled as the clone's gradients, the
AdamW step kept, per-tensor LR / eps / decay multipliers and the source-equivalent
clip norm), is the source's training continued.  A tiny source trains ``AT`` steps on
the backend's engine; its exported state is grown and imported into a fresh engine of
the grown model; both then take ``STEPS`` steps on the same batches and every loss
must agree (``LOSS_RTOL``).  With noise the function at the growth point is kept and
the copies part.

The run is chosen so that each part of the carried state shows: AdamW ``EPS`` of
1e-3 is of the size of sqrt(v) for these gradients, so an engine that drops the eps
multiplier moves the loss by ~1e-2 (with the default 1e-8 eps is invisible and such
an engine would pass); the clip (``CLIP``) is active, so clipping on the clone's raw
norm (about twice the source's) changes the steps; weight decay is on."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_conformance import _suite as S
from hyperclone_conformance import _training as T
from hyperclone_core import Growth, plan
from hyperclone_core.train import AdamW, decay_mask, symmetry, symmetry_pairs
from hyperclone_core.train.data import BatchSampler
from hyperclone_core.train.grow import grow_state

pytestmark = pytest.mark.capability("expand", "train")

AT, STEPS, LR = 3, 20, 3e-3
EPS, CLIP, WD = 1e-3, 0.5, 0.1
LOSS_RTOL = 1e-4
"""float32: the grown run's loss vs the source's continued run's, every step (measured on
torch / mlx: <= 2.3e-7; the same check in float64 gives 1e-8, the fp32 rounding of
the grown parameters; an engine that drops the moments, resets the step, ignores the
eps / decay multipliers or clips on the clone's raw norm is off by 3e-4 to 2e-1)."""

FAMILIES = ("llama", "gemma", "opt", "gpt_neox")


def _growths(cfg, gqa: bool) -> dict:
    """Each kind alone, and all at once (width 2 with its ffn and heads, kv heads, more
    queries per kv head where the family has GQA, one more layer)."""
    g = {"width": Growth.of(cfg, width=2), "ffn": Growth({"ffn": 2 * cfg.ffn}), "depth": Growth({"layers": cfg.layers + 1})}
    if gqa:  # heads alone (more queries per kv head) and kv heads alone
        g["heads"] = Growth({"q_per_kv": 2 * cfg.q_per_kv})
        g["kv_heads"] = Growth({"kv_heads": 2 * cfg.kv_heads})
    else:  # head_dim is hidden / heads: the heads grow with the hidden size (kv heads are the heads)
        g["heads"] = Growth.of(cfg, width=2, ffn=1)
    every = dict(Growth.of(cfg, width=2).sizes, layers=cfg.layers + 1)
    if gqa:
        every["q_per_kv"] = 2 * cfg.q_per_kv
    g["all"] = Growth(every)
    return g


MATRIX = [("llama", g) for g in ("width", "ffn", "heads", "kv_heads", "depth")] + \
    [(c, "all") for c in FAMILIES if c != "llama"]
"""Every kind alone on Llama, every kind at once on the other families: each grown shape
is a compile on jit backends (~3 s each on jax), so the matrix is what shows a kind's
factors, not every product of family and kind."""


def _optimizer(shapes) -> AdamW:
    return AdamW(eps=EPS, weight_decay=WD, grad_clip=CLIP, decay=decay_mask(shapes))


def _batches(case: str):
    return BatchSampler(T.tokens(S.source(case).cfg.vocab), 4, 8, 11)


_SOURCE_RUNS: dict = {}


def _source_run(backend, device, case: str):
    """(state after ``AT`` steps, losses and grad norms of the ``STEPS`` after), once per case."""
    key = (backend.name, device, case)
    if key not in _SOURCE_RUNS:
        src = S.source(case)
        data = _batches(case)
        cfg = T.config(device)
        eng = backend.engine(dict(src.hf_config), {n: np.array(w) for n, w in src.weights.items()}, cfg,
                             _optimizer({n: w.shape for n, w in src.weights.items()}))
        try:
            for k in range(AT):
                eng.step([data.batch(k)], LR)
            state = eng.export_state()
            runs = [eng.step([data.batch(k)], LR) for k in range(AT, AT + STEPS)]
        finally:
            eng.close()
        _SOURCE_RUNS[key] = (state, [r.loss for r in runs], [r.grad_norm for r in runs])
    return _SOURCE_RUNS[key]


def _grown_run(backend, device, case: str, p, steps: int = STEPS, **grow):
    """Grow the source's state at step ``AT`` with ``p``; (losses, engine params before and after, grown)."""
    src = S.source(case)
    state, _, _ = _source_run(backend, device, case)
    grown = grow_state(p, state, _optimizer({n: w.shape for n, w in src.weights.items()}), **grow)
    data = _batches(case)
    eng = backend.engine(dict(p.config), grown.state.params, T.config(device), grown.optimizer)
    try:
        eng.import_state(grown.state)
        before = eng.params()
        losses = [eng.step([data.batch(k)], LR).loss for k in range(AT, AT + steps)]
        after = eng.params()
    finally:
        eng.close()
    return losses, before, after, grown


def _deviation(got, want) -> float:
    return max(T.relative(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("case,growth", MATRIX, ids=[f"{c}-{g}" for c, g in MATRIX])
def test_grown_run_follows_the_source_run(backend, device, case, growth):
    """Symmetric, float32, grown at step ``AT``: ``STEPS`` losses equal the source's own
    continued run's.  Depth growth freezes the inserted layers (``inserted_lr=0``): a
    trained inserted layer is new capacity the source has not (the next test)."""
    src = S.source(case)
    p = plan(src.family, src.hf_config, _growths(src.cfg, case not in S.MHA_ONLY)[growth], "symmetric", seed=7)
    _, want, norms = _source_run(backend, device, case)
    assert max(norms) > CLIP, f"the clip is never active in the source's run (norms up to {max(norms):.3g}); lower CLIP"
    got, _, _, grown = _grown_run(backend, device, case, p, inserted_lr=0.0)
    assert not grown.inexact, f"the growth itself is not exact: {grown.inexact}"
    dev = _deviation(got, want)
    worst = int(np.argmax([T.relative(a, b) for a, b in zip(got, want)]))
    assert dev <= LOSS_RTOL, (
        f"family {p.family} (case {case}), {growth} growth at step {AT}: the grown run's loss leaves the source's "
        f"run (worst at step {AT + worst}: {got[worst]:.7f} vs {want[worst]:.7f}, relative {dev:.2e}, bound "
        f"{LOSS_RTOL:g}).  Check that import_state keeps the moments and the AdamW step, and that the engine "
        "honours AdamW's lr_mult, eps_mult, wd_mult and clip_weight (optim.AdamW)")


def test_trained_inserted_layers_leave_the_source_run(backend, device):
    """Depth growth with the inserted layers training: the first loss is the source's (the
    inserted layers are the identity), later ones are not (they learn)."""
    src = S.source("llama")
    p = plan(src.family, src.hf_config, Growth({"layers": src.cfg.layers + 1}), "symmetric", seed=7)
    _, want, _ = _source_run(backend, device, "llama")
    got, _, _, grown = _grown_run(backend, device, "llama", p, steps=5, inserted_lr=1.0)
    assert any("inserted layers" in w for w in grown.inexact), grown.inexact
    assert T.relative(got[0], want[0]) <= LOSS_RTOL, f"first loss {got[0]:.7f}, the source's {want[0]:.7f}"
    assert _deviation(got, want[:5]) > 10 * LOSS_RTOL, "the inserted layers did not train (inserted_lr 1)"


@pytest.mark.parametrize("breaker", ["noise", "asymmetric_moments"])
def test_symmetry_breakers_keep_the_function_and_part_the_copies(backend, device, breaker):
    """Zero-sum noise (parameters noisy, moments through the noiseless program) or the
    asymmetric moment reset: the first loss after growth is the source's, and the copies'
    symmetry (``train.clone.symmetry``) is below 1: the noise parts the copies at growth
    and they stay apart (the carried moments are the same for every copy, so early steps
    move the copies alike: measured 0.8854 at growth, 0.8855 eight steps on); the
    asymmetric reset starts them at exactly 1 and the run parts them."""
    src = S.source("llama")
    strategy, grow = ("noisy:10", {}) if breaker == "noise" else ("symmetric", {"moments": "asymmetric"})
    p = plan(src.family, src.hf_config, Growth.of(src.cfg, width=2), strategy, seed=7)
    _, want, _ = _source_run(backend, device, "llama")
    got, before, after, _ = _grown_run(backend, device, "llama", p, steps=8, **grow)
    assert T.relative(got[0], want[0]) <= LOSS_RTOL, (
        f"{breaker}: the first loss after growth {got[0]:.7f} is not the source's {want[0]:.7f}")
    pairs = symmetry_pairs(p)
    s0 = symmetry(lambda n: before.get(n), pairs)["overall"]
    s1 = symmetry(lambda n: after.get(n), pairs)["overall"]
    if breaker == "noise":
        assert s0 < 0.99 and s1 < 0.99, f"noise: the copies are not apart ({s0:.6f} at growth, {s1:.6f} after)"
    else:
        assert s0 == 1.0 and s1 < 1.0, f"asymmetric moments: the copies did not part ({s0:.6f} at growth, {s1:.6f} after)"
