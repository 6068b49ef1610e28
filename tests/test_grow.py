"""Growth of the training state (hyperclone_core.train.grow): the derivation checked in
float64 (torch float64 gradients, the core's AdamW closed form), the factors it reads
off plans, and the neutral checkpoint keeping a grown run's AdamW maps so a resumed
run continues bit for bit (the numpy engine)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from numpy_engine import NumpyEngine, toy_config, toy_weights  # noqa: E402

from hyperclone_core import Growth, family_for_config, plan  # noqa: E402
from hyperclone_core.model.testing import CASES, random_weights  # noqa: E402
from hyperclone_core.train import AdamW, EngineState, TrainConfig, adamw_step, decay_mask, train  # noqa: E402
from hyperclone_core.train import checkpoint as ckpt  # noqa: E402
from hyperclone_core.train.data import BatchSampler  # noqa: E402
from hyperclone_core.train.grow import grow_state, tensor_factors  # noqa: E402


def _plan(case="llama", strategy="symmetric", **sizes):
    hf = CASES[case]
    fam = family_for_config(hf)
    g = Growth(sizes) if sizes else Growth.of(fam.read(hf), width=2)
    return plan(fam, hf, g, strategy, seed=7)


def test_factors_of_a_width_growth():
    """q_proj [heads*hd, hidden] grown 2x on both axes: entries hold 1/2, 4 copies, gradient x 1/2."""
    f = tensor_factors(_plan())
    q = f["model.layers.0.self_attn.q_proj.weight"]
    assert (q.a, q.b, q.c) == (0.5, 0.5, 4.0)
    e = f["model.embed_tokens.weight"]
    assert (e.a, e.b, e.c) == (1.0, 0.5, 2.0)
    assert not any(x.inexact for x in f.values())


def test_uneven_growth_and_noise_are_named_inexact():
    state = _state(random_weights(CASES["llama"], seed=1))
    g = grow_state(_plan(ffn=72), state, AdamW())  # 48 -> 72: half the units get two copies
    assert any("uneven growth" in w for w in g.inexact)
    g = grow_state(_plan(strategy="noisy:10"), state, AdamW())
    assert any("noise" in w for w in g.inexact)


def _state(w, step=3):
    rng = np.random.default_rng(0)
    return EngineState({n: a.astype(np.float32) for n, a in w.items()},
                       {n: rng.standard_normal(a.shape).astype(np.float32) * 1e-3 for n, a in w.items()},
                       {n: rng.random(a.shape).astype(np.float32) * 1e-6 for n, a in w.items()}, step)


def test_moments_scale_as_the_gradients_and_the_step_is_kept():
    p = _plan()
    st = _state(random_weights(CASES["llama"], seed=1))
    g = grow_state(p, st, AdamW())
    n = "model.layers.0.self_attn.q_proj.weight"
    assert g.state.adam_step == st.adam_step
    np.testing.assert_allclose(g.state.exp_avg[n][:32, :32], 0.5 * st.exp_avg[n], rtol=1e-6)
    np.testing.assert_allclose(g.state.exp_avg_sq[n][32:, 32:], 0.25 * st.exp_avg_sq[n], rtol=1e-6)
    assert g.optimizer.mult(n) == 0.5 and g.optimizer.eps_of(n) == 0.5 * g.optimizer.eps
    asym = grow_state(p, st, AdamW(), moments="asymmetric").state.exp_avg[n]
    assert np.array_equal(asym[:32, :32], g.state.exp_avg[n][:32, :32]) and not asym[32:, :].any()


torch = pytest.importorskip("torch")


def _loss_grads(hf, w, batch):
    import torch.nn.functional as F

    from hyperclone_torch.engine import logits_of
    from hyperclone_torch.model import Decoder

    m = Decoder.from_weights(hf, w, dtype=torch.float64)
    named = dict(m.named_parameters())
    logits = logits_of(m(torch.from_numpy(batch[:, :-1])))
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(batch[:, 1:]).reshape(-1))
    loss.backward()
    return float(loss.detach()), {n: named[n].grad.numpy().copy() for n in w}


def _run(hf, st, opt, sampler, start, steps):
    p, m, v, t = dict(st.params), dict(st.exp_avg), dict(st.exp_avg_sq), st.adam_step
    losses = []
    for k in range(start, start + steps):
        loss, g = _loss_grads(hf, p, sampler.batch(k))
        losses.append(loss)
        t += 1
        p, m, v = adamw_step(opt, p, g, m, v, t, 3e-3)
    return losses, EngineState(p, m, v, t)


@pytest.mark.parametrize("case", ["llama", "gemma"])
def test_float64_grown_run_is_the_source_run(case):
    """In float64 the only difference left is the float32 rounding of the grown
    parameters (EngineState holds float32): 20 steps agree to 1e-7; with the eps multiplier
    dropped they do not (eps 1e-3 makes it visible)."""
    hf = CASES[case]
    p = plan(family_for_config(hf), hf, Growth({**Growth.of(family_for_config(hf).read(hf), width=2).sizes,
                                                "layers": 3}), "symmetric", seed=7)
    w = {n: a.astype(np.float64) for n, a in random_weights(hf, seed=1).items()}
    opt = AdamW(eps=1e-3, weight_decay=0.1, grad_clip=0.5, decay=decay_mask({n: a.shape for n, a in w.items()}))
    data = BatchSampler(np.resize(np.random.default_rng(0).integers(0, hf["vocab_size"], 23), 3000), 4, 8, 3)
    zeros = {n: np.zeros_like(a) for n, a in w.items()}
    _, st = _run(hf, EngineState(w, zeros, dict(zeros), 0), opt, data, 0, 3)
    want, _ = _run(hf, st, opt, data, 3, 20)
    g = grow_state(p, st, opt, inserted_lr=0.0)
    got, _ = _run(p.config, g.state, g.optimizer, data, 3, 20)
    assert max(abs(a - b) / b for a, b in zip(got, want)) < 1e-7
    off, _ = _run(p.config, g.state, dataclasses.replace(g.optimizer, eps_mult={}), data, 3, 5)
    assert max(abs(a - b) / b for a, b in zip(off, want)) > 1e-4


def test_checkpoint_keeps_a_grown_runs_maps_and_resume_is_bit_for_bit(tmp_path):
    """The AdamW maps a growth sets go into state.json; an engine built with ``adamw_of``
    resumes the run exactly (numpy engine)."""
    cfg, w = toy_config(), toy_weights(toy_config())
    shapes = {n: a.shape for n, a in w.items()}
    opt = AdamW(eps=1e-3, grad_clip=0.3, decay=decay_mask(shapes), lr_mult={"head.weight": 0.5},
                eps_mult={"head.weight": 0.5, "embed.weight": 0.25}, wd_mult={"head.weight": 2.0},
                clip_weight={"embed.weight": 4.0})
    data = np.resize(np.random.default_rng(1).integers(0, 32, 29), 4000)
    tc = dict(steps=8, batch_size=4, seq_len=8, eval_every=0, lr=1e-2)
    whole = train(NumpyEngine(cfg, w, opt), TrainConfig(**tc), data, optimizer=opt)
    first = TrainConfig(**dict(tc, out_dir=str(tmp_path / "run"), save_every=4, steps=4))
    train(NumpyEngine(cfg, w, opt), first, data, optimizer=opt)
    folder = ckpt.listed(tmp_path / "run")[-1][1]
    _, trainer = ckpt.load(folder, list(w))
    restored = ckpt.adamw_of(trainer, AdamW(eps=1e-3, grad_clip=0.3, decay=decay_mask(shapes)))
    assert restored == opt
    rest = train(NumpyEngine(cfg, w, restored), TrainConfig(**dict(tc, out_dir=str(tmp_path / "run"), resume=True)),
                 data, optimizer=restored)
    assert rest.train_losses[-4:] == whole.train_losses[-4:]
