"""The neutral init stream: every backend starts from the core's weights, and those
weights are the ones torch's CPU generator draws for the same seed."""

import numpy as np
import pytest

from hyperclone_core import family_for_config
from hyperclone_core.model import testing
from hyperclone_core.model import initstream
from hyperclone_core.errors import ConfigError
from hyperclone_core.model.initstream import InitStream
from hyperclone_core.model.structure import init_rule, init_weights, slots

# torch's SLEEF log/sin/cos and numpy's round differently in the last bit: values agree
# to a few float32 ulps of the largest draw, never by a different random number.
ULPS = 8 * np.finfo(np.float32).eps


def torch_draws(seed, sizes, std):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(seed)
    return [torch.empty(n).normal_(0.0, std, generator=g).numpy() for n in sizes]


@pytest.mark.parametrize("sizes", [
    [16], [32, 48], [17], [1000, 37, 4099],   # full blocks, and sizes that redraw their last 16
    [3], [1, 2, 5, 7],                         # below 16: double Box-Muller with a cached sine branch
    [5, 64, 3, 20, 1],                         # the cache carried across a large tensor
])
@pytest.mark.parametrize("seed", [0, 7, (1 << 32) - 1])
def test_stream_equals_torch_normal(sizes, seed):
    stream = InitStream(seed)
    ours = [stream.normal((n,), 0.05) for n in sizes]
    for n, a, b in zip(sizes, ours, torch_draws(seed, sizes, 0.05)):
        assert a.dtype == np.float32 and a.shape == (n,)
        scale = max(float(np.abs(b).max()), 1e-30)
        assert np.abs(a - b).max() <= ULPS * scale * 4, (n, np.abs(a - b).max())
        if n >= 16:
            assert np.mean(a == b) > 0.5, "most values must be bit-equal: the same random numbers"


def test_chunked_draws_equal_one_pass(monkeypatch):
    (ref,) = torch_draws(11, [50 * 77], 0.02)
    whole = InitStream(11).normal((50, 77), 0.02)
    monkeypatch.setattr(initstream, "_CHUNK", 64)
    chunked = InitStream(11).normal((50, 77), 0.02)
    assert np.array_equal(whole, chunked)
    assert np.abs(chunked.reshape(-1) - ref).max() <= ULPS * 0.02 * 8


@pytest.mark.parametrize("case", sorted(testing.CASES))
def test_init_weights_equal_torch_decoder_random(case):
    """The core's init reproduces the torch decoder's own init (same tensors, order, rule)."""
    pytest.importorskip("torch")
    from hyperclone_torch.model import Decoder

    hf = testing.CASES[case]
    family = family_for_config(hf)
    cfg = family.read(hf)
    ours = init_weights(family, cfg, seed=3, std=0.05)
    theirs = {n: t.numpy() for n, t in Decoder.random(hf, seed=3, std=0.05).state_dict().items()}
    assert set(ours) == set(theirs)
    for name, s in slots(family, cfg).items():
        a, b = ours[name], theirs[name]
        assert a.shape == s.shape and a.dtype == np.float32, name
        rule, value = init_rule(s.kind, cfg, 0.05)
        if rule == "const":
            assert np.all(a == value), name
        assert np.abs(a - b).max() <= ULPS * max(float(np.abs(b).max()), 1e-30) * 4, name


def test_seeds_use_every_bit_and_repeat():
    hf = testing.CASES["gemma"]
    family = family_for_config(hf)
    cfg = family.read(hf)
    emb = "model.embed_tokens.weight"
    a = init_weights(family, cfg, seed=7)[emb]
    assert np.array_equal(a, init_weights(family, cfg, seed=7)[emb])
    assert not np.array_equal(a, init_weights(family, cfg, seed=8)[emb])
    assert not np.array_equal(a, init_weights(family, cfg, seed=7 + (1 << 40))[emb])
    assert abs(float(a.std()) - 0.02) < 0.002
    assert np.all(init_weights(family, cfg, seed=7)["model.norm.weight"] == 0.0)  # Gemma's (1 + w)


def test_init_weights_casts_to_the_asked_dtype():
    hf = testing.CASES["llama"]
    family = family_for_config(hf)
    w = init_weights(family, family.read(hf), seed=1, dtype=np.float16)
    assert all(a.dtype == np.float16 for a in w.values())


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_bad_seed_is_refused(seed):
    with pytest.raises(ConfigError, match="seed"):
        InitStream(seed)
