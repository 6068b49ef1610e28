"""``hyperclone_jax.expand_params(..., opt_state=...)``: a user's own optax loop
continued after growth follows the source's own loop for 20 steps."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402

from hyperclone_core import family_for_config  # noqa: E402
from hyperclone_core.errors import HypercloneError  # noqa: E402
from hyperclone_core.model.testing import CASES, random_weights  # noqa: E402
from hyperclone_jax import expand_params  # noqa: E402
from hyperclone_jax.model import lm_loss  # noqa: E402

EPS = 1e-12
"""Far below sqrt(v): Adam's update is about lr per entry whatever the gradient's scale,
so a wrong LR multiplier or badly scaled moments move the loss at full size."""
LR, WD = 3e-3, 0.1


def _batches(vocab, n, seed):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.integers(0, vocab, (4, 13))) for _ in range(n)]


def _loop(hf, params, tx, state, batches):
    family = family_for_config(hf)
    cfg = family.read(hf)
    grad = jax.jit(jax.value_and_grad(lambda p, b: lm_loss(family, cfg, p, b)))
    losses = []
    for b in batches:
        loss, g = grad(params, b)
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    return params, state, losses


def _source(clip, injected=False, mask=False):
    hf = dict(CASES["llama"])
    params = {n: jnp.asarray(w) for n, w in random_weights(hf, seed=4).items()}
    decay = {n: w.ndim >= 2 for n, w in params.items()} if mask else None
    adamw = (optax.inject_hyperparams(optax.adamw)(learning_rate=LR, b1=0.9, b2=0.95, eps=EPS, weight_decay=WD)
             if injected else optax.adamw(LR, b1=0.9, b2=0.95, eps=EPS, weight_decay=WD, mask=decay))
    tx = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip else adamw
    params, state, _ = _loop(hf, params, tx, tx.init(params), _batches(hf["vocab_size"], 5, seed=1))
    settings = None if injected else dict(learning_rate=LR, b1=0.9, b2=0.95, eps=EPS, weight_decay=WD,
                                          mask=decay, grad_clip=clip)
    return hf, params, tx, state, settings


@pytest.mark.parametrize("clip, injected, mask", [(0.0, False, False), (0.5, False, True), (0.0, True, False)])
def test_users_optax_loop_continues_after_growth(clip, injected, mask):
    hf, params, tx, state, settings = _source(clip, injected, mask)
    grown, config, gtx, gstate, plan, inexact = expand_params(
        params, hf, width=2, strategy="symmetric", opt_state=state, adamw=settings, return_plan=True)
    assert not inexact and config["hidden_size"] == 2 * hf["hidden_size"]
    after = _batches(hf["vocab_size"], 20, seed=2)
    _, _, a = _loop(config, grown, gtx, gstate, after)
    _, _, b = _loop(hf, params, tx, state, after)
    rel = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    assert rel <= 1e-4, rel


def test_a_fresh_optax_state_on_the_clone_leaves_the_source_run():
    """What the check catches: the clone with a fresh optax.adamw at the source's settings."""
    hf, params, tx, state, _ = _source(0.0)
    grown, config = expand_params(params, hf, width=2, strategy="symmetric")
    fresh = optax.adamw(LR, b1=0.9, b2=0.95, eps=EPS, weight_decay=WD)
    after = _batches(hf["vocab_size"], 20, seed=2)
    _, _, a = _loop(config, grown, fresh, fresh.init(grown), after)
    _, _, b = _loop(hf, params, tx, state, after)
    assert max(abs(x - y) / abs(y) for x, y in zip(a, b)) > 1e-3


def test_settings_are_required_and_checked():
    hf, params, tx, state, settings = _source(0.0)
    with pytest.raises(HypercloneError, match="learning_rate"):
        expand_params(params, hf, width=2, opt_state=state)
    with pytest.raises(HypercloneError, match="no option"):
        expand_params(params, hf, width=2, opt_state=state, adamw=dict(settings, lr=1.0))
    with pytest.raises(TypeError, match="opt_state"):
        expand_params(params, hf, width=2, adamw=settings)
