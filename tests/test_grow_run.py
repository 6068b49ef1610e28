"""Growth as an event of a live run (``train.grow.grow_engine``) and the growth-option
text (``parse_growth``), on the torch engine with the tiny llama of ``model.testing``."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_core.errors import UsageError
from hyperclone_core.model.testing import CASES, random_weights
from hyperclone_core.train import TrainConfig, optimizer_for
from hyperclone_core.train.data import BatchSampler
from hyperclone_core.train.grow import format_growth_options, grow_engine, parse_growth


def test_parse_growth_reads_expand_vocabulary():
    got = parse_growth("width=2,ffn=2,layers=+2,strategy=noisy:10,moments=asymmetric")
    assert got == {"width": 2.0, "ffn": 2.0, "layers": "+2", "strategy": "noisy:10", "moments": "asymmetric"}
    assert parse_growth("kv-heads=1,ffn_size=96,seed=3,inserted_lr=0") == {
        "kv_heads": 1.0, "ffn_size": 96, "seed": 3, "inserted_lr": 0.0}
    rules = parse_growth("width=2,strategy=mlp=noisy:10,attn=symmetric,layers=4")
    assert rules == {"width": 2.0, "strategy": "mlp=noisy:10,attn=symmetric", "layers": "4"}
    assert parse_growth(format_growth_options(got)) == got


@pytest.mark.parametrize("text, named", [
    ("widht=2", "'widht'"), ("width=two", "--grow width"), ("width=0", "--grow width"),
    ("layers=+x", "--grow layers"), ("moments=keep", "--grow moments"), ("width=2,width=3", "width given twice"),
    ("ffn=2,ffn_size=9", "ffn or ffn_size"), ("width", "KEY=VALUE"), ("", "empty"),
    ("strategy=bogus", "--grow strategy"), ("layout=side", "--grow layout"),
])
def test_parse_growth_names_the_bad_key(text, named):
    with pytest.raises(UsageError, match=named.replace("+", r"\+")):
        parse_growth(text)


torch = pytest.importorskip("torch")


def _engine(hf, weights, tc):
    from hyperclone_torch.backend import backend

    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    return backend, backend.engine(hf, weights, tc, optimizer_for(tc, shapes))


def test_grow_engine_continues_the_source_run_on_torch():
    """A live torch run grown width=2 (symmetric, moments carried): the grown engine
    computes the source's function and its next steps are the source's steps."""
    torch.manual_seed(0)
    hf = dict(CASES["llama"])
    w = random_weights(hf, seed=1)
    tc = TrainConfig(steps=12, batch_size=4, seq_len=8, lr=3e-3, warmup_steps=0, eps=1e-12, device="cpu")
    sampler = BatchSampler(np.random.default_rng(0).integers(0, hf["vocab_size"], 4000), 4, 8, 0)
    batch = lambda s: [sampler.batch(s, 0, 1, 0, 1)]  # noqa: E731
    backend, src = _engine(hf, w, tc)
    _, twin = _engine(hf, w, tc)
    opt = optimizer_for(tc, {n: tuple(a.shape) for n, a in w.items()})
    for s in range(3):
        src.step(batch(s), 1e-3)
        twin.step(batch(s), 1e-3)
    before = src.evaluate(batch(99))
    run = grow_engine(src, backend, parse_growth("width=2,strategy=symmetric"), tc, opt)
    assert run.hf_config["hidden_size"] == 2 * hf["hidden_size"]
    assert run.plan.config["hidden_size"] == run.hf_config["hidden_size"]
    assert run.engine.shapes["model.embed_tokens.weight"][1] == 2 * hf["hidden_size"]
    assert run.engine.export_state().adam_step == 3
    assert abs(run.engine.evaluate(batch(99)) - before) < 1e-5
    assert not run.grown.inexact
    for s in range(3, 8):
        a, b = run.engine.step(batch(s), 1e-3).loss, twin.step(batch(s), 1e-3).loss
        assert abs(a - b) <= 1e-4 * abs(b), (s, a, b)
    run.engine.close()
    twin.close()


def test_grow_engine_with_a_factory_and_depth():
    hf = dict(CASES["llama"])
    w = random_weights(hf, seed=2)
    tc = TrainConfig(steps=4, batch_size=2, seq_len=8, device="cpu")
    backend, src = _engine(hf, w, tc)
    src.step([np.random.default_rng(0).integers(0, hf["vocab_size"], (2, 9))], 1e-3)
    opt = optimizer_for(tc, {n: tuple(a.shape) for n, a in w.items()})
    run = grow_engine(src, backend.engine, {"layers": "+1", "width": 1, "moments": "reset"}, tc, opt)
    assert run.hf_config["num_hidden_layers"] == hf["num_hidden_layers"] + 1
    assert run.engine.export_state().adam_step == 0
    assert any("moments 'reset'" in why for why in run.grown.inexact)
    run.engine.close()
