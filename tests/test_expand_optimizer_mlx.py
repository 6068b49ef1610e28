"""``hyperclone_mlx.expand_model(model, optimizer=...)``: a user's own MLX loop on an
mlx-lm model, continued after growth, follows the source's own loop for 20 steps."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402

from hyperclone_core.errors import HypercloneError  # noqa: E402
from hyperclone_core.model import testing  # noqa: E402
from hyperclone_mlx import clip_grad_norm, expand_model  # noqa: E402

EPS = 1e-12
"""Far below sqrt(v): Adam's update is about lr per entry whatever the gradient's scale,
so a wrong LR multiplier or badly scaled moments move the loss at full size."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    hf = dict(testing.CASES["llama"])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf)).float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("mlx_opt") / "llama"
    model.save_pretrained(path)
    return path


def _batches(n, seed):
    rng = np.random.default_rng(seed)
    return [mx.array(rng.integers(0, 96, (4, 13))) for _ in range(n)]


def _loss(model, batch):
    logits = model(batch[:, :-1]).astype(mx.float32)
    return nn.losses.cross_entropy(logits, batch[:, 1:]).mean()


def _loop(model, opt, batches, clip):
    step = nn.value_and_grad(model, _loss)
    losses = []
    for b in batches:
        loss, grads = step(model, b)
        if clip:
            grads, _ = clip_grad_norm(grads, clip, opt)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        losses.append(float(loss.item()))
    return losses


def _source(folder, clip, groups):
    from mlx_lm.utils import load_model

    model, config = load_model(folder)
    if groups:  # the usual recipe: no decay on norms and biases, a lower LR on the embedding
        opt = optim.MultiOptimizer(
            [optim.AdamW(1e-3, betas=[0.9, 0.95], eps=EPS, weight_decay=0.1, bias_correction=True),
             optim.AdamW(3e-3, betas=[0.9, 0.95], eps=EPS, weight_decay=0.0, bias_correction=True),
             optim.AdamW(3e-3, betas=[0.9, 0.95], eps=EPS, weight_decay=0.1, bias_correction=True)],
            [lambda path, w: "embed" in path, lambda path, w: w.ndim < 2])
    else:
        opt = optim.AdamW(3e-3, betas=[0.9, 0.95], eps=EPS, weight_decay=0.1, bias_correction=True)
    _loop(model, opt, _batches(5, seed=1), clip)
    return model, config, opt


@pytest.mark.parametrize("clip, groups", [(0.0, False), (0.5, True)])
def test_users_mlx_loop_continues_after_growth(folder, clip, groups):
    model, config, opt = _source(folder, clip, groups)
    grown, gopt = expand_model(model, width=2, strategy="symmetric", config=config, optimizer=opt)
    assert not gopt.hyperclone_inexact
    after = _batches(20, seed=2)
    a = _loop(grown, gopt, after, clip)
    b = _loop(model, opt, after, clip)
    rel = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    assert rel <= 1e-4, rel


def test_a_fresh_optimizer_on_the_clone_leaves_the_source_run(folder):
    model, config, opt = _source(folder, 0.0, False)
    grown = expand_model(model, width=2, strategy="symmetric", config=config)
    fresh = optim.AdamW(3e-3, betas=[0.9, 0.95], eps=EPS, weight_decay=0.1, bias_correction=True)
    after = _batches(20, seed=2)
    a, b = _loop(grown, fresh, after, 0.0), _loop(model, opt, after, 0.0)
    assert max(abs(x - y) / abs(y) for x, y in zip(a, b)) > 1e-3


def test_only_adamw_is_grown(folder):
    model, config, _ = _source(folder, 0.0, False)
    with pytest.raises(HypercloneError, match="AdamW"):
        expand_model(model, width=2, config=config, optimizer=optim.SGD(0.1))
