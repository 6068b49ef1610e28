"""``expand_model(model, optimizer=...)``: a user's own training loop continued after
growth.  A plain torch loop (torch.optim.AdamW, optionally clipped) on the grown
model and the grown optimizer follows the source's own loop for 20 steps."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hyperclone_core.model.testing import CASES, random_weights  # noqa: E402
from hyperclone_torch import Decoder, clip_grad_norm_, expand_model  # noqa: E402
from hyperclone_torch.engine import lm_loss  # noqa: E402

EPS = 1e-12
"""AdamW's eps far below sqrt(v): the update is m / sqrt(v), about lr per entry whatever
the gradient's scale, so a wrong LR multiplier (the r-fold too-fast clone) or badly
scaled moments move the loss at full size.  A large eps would turn Adam into small
SGD steps whose errors the loss barely shows."""


def _batches(vocab, n, seed=0):
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, vocab, (4, 13))) for _ in range(n)]


def _loop(model, opt, batches, clip):
    losses = []
    for b in batches:
        opt.zero_grad()
        loss = lm_loss(model, b)
        loss.backward()
        if clip:
            clip_grad_norm_(opt, clip)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _source(clip, groups=False):
    torch.manual_seed(0)
    hf = dict(CASES["llama"])
    model = Decoder.from_weights(hf, random_weights(hf, seed=4), dtype=torch.float32)
    if groups:  # the usual recipe: no decay on norms, a lower LR on the embedding
        named = dict(model.named_parameters())
        emb = [p for n, p in named.items() if "embed" in n]
        mats = [p for n, p in named.items() if p.ndim >= 2 and "embed" not in n]
        vecs = [p for n, p in named.items() if p.ndim < 2]
        params = [{"params": mats}, {"params": emb, "lr": 1e-3}, {"params": vecs, "weight_decay": 0.0}]
    else:
        params = model.parameters()
    opt = torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.95), eps=EPS, weight_decay=0.1)
    warm = _batches(hf["vocab_size"], 5, seed=1)
    _loop(model, opt, warm, clip)
    return hf, model, opt


@pytest.mark.parametrize("clip, groups", [(0.0, False), (0.5, False), (0.5, True)])
def test_users_loop_continues_after_growth(clip, groups):
    hf, model, opt = _source(clip, groups)
    grown, gopt = expand_model(model, width=2, strategy="symmetric", optimizer=opt)
    assert isinstance(gopt, torch.optim.AdamW) and not gopt.hyperclone_inexact
    assert next(iter(gopt.state.values()))["step"] == 5
    after = _batches(hf["vocab_size"], 20, seed=2)
    a = _loop(grown, gopt, after, clip)  # first: the source must not have moved
    b = _loop(model, opt, after, clip)
    rel = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    assert rel <= 1e-4, rel
    if clip:  # the clipping actually engaged
        assert float(clip_grad_norm_(opt, 1e9)) > 0


def test_a_fresh_optimizer_on_the_clone_leaves_the_source_run():
    """What the check catches: the clone with a fresh AdamW at the source's LR."""
    hf, model, opt = _source(0.0)
    grown = expand_model(model, width=2, strategy="symmetric")
    fresh = torch.optim.AdamW(grown.parameters(), lr=3e-3, betas=(0.9, 0.95), eps=EPS, weight_decay=0.1)
    after = _batches(hf["vocab_size"], 20, seed=2)
    a, b = _loop(grown, fresh, after, 0.0), _loop(model, opt, after, 0.0)
    assert max(abs(x - y) / abs(y) for x, y in zip(a, b)) > 1e-3
