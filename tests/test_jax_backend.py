"""The jax backend's expansion and forward: programs against the numpy oracle,
one executable per program structure, noise from every bit of the seed,
checkpoint-to-checkpoint bytes equal to numpy's, the forward in bfloat16."""

from __future__ import annotations

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax")

from hyperclone_core import Growth, family_for_config, plan  # noqa: E402
from hyperclone_core.run import reference  # noqa: E402
from hyperclone_core.model import testing  # noqa: E402
from hyperclone_core.run.protocol import load_backend  # noqa: E402
from hyperclone_core.run.interpreter import execute, run_program  # noqa: E402
from hyperclone_core.errors import ConfigError, HypercloneError  # noqa: E402
from hyperclone_core.io import Checkpoint  # noqa: E402
from hyperclone_core.algebra.planner import AddNoise  # noqa: E402
from hyperclone_jax import ops, programs  # noqa: E402
from hyperclone_jax.backend import backend  # noqa: E402

from hyperclone_conformance._suite import noise_invariants, split_at_noise  # noqa: E402


def _plan(case, strategy, seed=3, **growth):
    cfg = testing.CASES[case]
    fam = family_for_config(cfg)
    return plan(fam, cfg, Growth.of(fam.read(cfg), **growth), strategy, seed=seed), testing.random_weights(cfg, seed=2)


def test_registered_and_declares_every_capability():
    assert load_backend("jax") is backend
    assert backend.capabilities == {"expand", "forward", "train", "distributed"}


@pytest.mark.parametrize("case,strategy,growth", [
    ("llama", "symmetric", dict(width=2)),
    ("mixtral", "first_copy", dict(width=2, ffn=1.5)),
    ("gpt_neox", "random_split:1", dict(width=3)),
    ("olmo2", "symmetric", dict(width=2, layers=4)),
])
def test_deterministic_programs_equal_the_oracle_bit_for_bit(case, strategy, growth):
    p, w = _plan(case, strategy, **growth)
    got = execute(backend, p, w)
    for tp in p.tensors:
        want = reference.expand_tensor(tp, p.arrays, w[tp.source])
        assert got[tp.name].dtype == np.float32
        np.testing.assert_array_equal(got[tp.name], want, err_msg=tp.name)


def test_every_layer_runs_one_executable_per_program_structure():
    """Maps, coefficients and seeds are traced arguments: a 6-layer model's noisy plan
    needs no more executables than a 2-layer one's, each compiled for one shape only
    (the tensors of a kind differ only in their noise seed)."""
    programs.compiled.cache_clear()
    p2, w2 = _plan("llama", "noisy:10", width=2)
    execute(backend, p2, w2)
    two = programs.compiled.cache_info().currsize
    deep = dict(testing.CASES["llama"], num_hidden_layers=6)
    fam = family_for_config(deep)
    p6 = plan(fam, deep, Growth.of(fam.read(deep), width=2), "noisy:10", seed=3)
    execute(backend, p6, testing.random_weights(deep, seed=2))
    assert programs.compiled.cache_info().currsize == two, "deeper layers compiled new programs"
    assert two <= len({tp.kind for tp in p6.tensors})
    for tp in p6.tensors:
        assert programs.compiled(programs.structure(tp, p6.arrays)[0])._cache_size() == 1, f"{tp.name}: compiled twice"


def test_noise_keeps_every_bit_of_the_seed_and_its_invariants():
    p, w = _plan("llama", "noisy:10", width=2)
    tp = next(t for t in p.tensors if any(isinstance(o, AddNoise) for o in t.ops) and not split_at_noise(t)[2])
    before, op, _ = split_at_noise(tp)
    x = jax.numpy.asarray(w[tp.source])

    def noisy(seed):
        ops_ = tuple(o if not isinstance(o, AddNoise) else AddNoise(o.axis, o.groups, o.snr_db, seed) for o in tp.ops)
        t = type(tp)(tp.name, tp.source, tp.kind, tp.source_shape, tp.shape, ops_)
        return np.asarray(run_program(backend, t, p.arrays, x, None, {}))

    base = 0x2A5F3C7B00000000  # above 2**32: jax.random.PRNGKey would drop these bits
    a, again, high = noisy(base), noisy(base), noisy(base | (1 << 62))
    assert np.array_equal(a, again), "the same seed must give the same noise"
    assert not np.array_equal(a, high), "a seed differing only in bit 62 gave the same noise"
    noiseless = reference.expand_tensor(type(tp)(tp.name, tp.source, tp.kind, tp.source_shape, tp.shape, before),
                                        p.arrays, w[tp.source])
    for got in (a, high):
        assert not noise_invariants(tp.name, noiseless, got, op, p.arrays[op.groups])


@pytest.mark.parametrize("case,growth", [("llama", dict(width=2)), ("gpt_neox", dict(width=2, ffn=1.5))])
def test_noisy_programs_do_not_depend_on_the_block_size(monkeypatch, case, growth):
    """A noisy program runs block by block (``blocks``): the draws are made at global
    coordinates and the SNR from the whole tensor's powers, so many small blocks give
    the values one block gives, and the invariants hold."""
    from hyperclone_jax import blocks

    p, w = _plan(case, "noisy:10", **growth)
    noisy = [tp for tp in p.tensors if any(isinstance(o, AddNoise) for o in tp.ops) and blocks.blockable(tp.ops)]
    assert noisy, "no blockable noisy program in the plan"
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 1 << 30)
    whole = execute(backend, p, w)
    monkeypatch.setattr(blocks, "BLOCK_ELEMENTS", 96)  # many blocks, not dividing the rows evenly
    small = execute(backend, p, w)
    for tp in noisy:
        a, b = whole[tp.name], small[tp.name]
        assert math.prod(tp.shape) > 3 * 96, f"{tp.name} fits one block: the test would not split it"
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * float(np.abs(a).max()), err_msg=tp.name)
        before, op, _ = split_at_noise(tp)
        noiseless = reference.expand_tensor(type(tp)(tp.name, tp.source, tp.kind, tp.source_shape, tp.shape, before),
                                            p.arrays, w[tp.source])
        assert not noise_invariants(tp.name, noiseless, b, op, p.arrays[op.groups])


def test_generic_path_noise_matches_the_fused_law():
    """The eager primitives (used when a program starts with noise) keep the invariants too."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8)).astype(np.float32)
    groups = np.array([0, 1, 2, 0, 1, 2, 3, 3])
    noise = np.asarray(backend.zero_sum_noise((6, 8), 1, backend.asarray(groups), 12345, None, 4))
    sums = np.zeros((6, 4))
    np.add.at(sums.T, groups, noise.T)
    assert np.abs(sums).max() < 1e-5 and noise.std() > 0.3
    y = np.asarray(backend.add_scaled(backend.asarray(x), noise, 0.5))
    np.testing.assert_allclose(y, x + 0.5 * noise, rtol=1e-6)


@pytest.mark.parametrize("strategy,growth", [
    ("symmetric", "--width 2 --ffn 1.5"), ("first_copy", "--width 2 --ffn 1.5"), ("random_split:1", "--width 2 --ffn 1.5"),
    ("symmetric", "--width 3 --dtype bfloat16"),
])
def test_expand_cli_on_jax_writes_the_numpy_bytes(case_dir, tmp_path, strategy, growth):
    from hyperclone_core.cli import main

    src = case_dir("mixtral")
    for b in ("numpy", "jax"):
        assert main(["expand", str(src), str(tmp_path / b), *growth.split(), "--strategy", strategy,
                     "--backend", b, "--quiet"]) == 0
    a, b = Checkpoint(tmp_path / "numpy"), Checkpoint(tmp_path / "jax")
    assert a.names() == b.names()
    for n in a.names():
        assert a.dtype(n) == b.dtype(n) and np.array_equal(np.asarray(a.raw(n)), np.asarray(b.raw(n))), n
    files = sorted(p.name for p in (tmp_path / "jax").glob("*.safetensors"))
    assert all((tmp_path / "numpy" / f).read_bytes() == (tmp_path / "jax" / f).read_bytes() for f in files)


@pytest.mark.parametrize("case", ["gemma2", "mixtral", "gpt_neox"])
def test_bfloat16_forward_is_close_to_the_oracle(case):
    hf = testing.CASES[case]
    fam = family_for_config(hf)
    cfg = fam.read(hf)
    w = testing.random_weights(hf, seed=4)
    tokens = testing.random_tokens(cfg.vocab, 2, 8, seed=1)
    want = reference.forward(fam, cfg, w, tokens, dtype=np.float64)
    got = backend.forward(fam, cfg, w, tokens, dtype="bfloat16")
    assert got.dtype == np.float32 and got.shape == want.shape
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert 1e-6 < rel < 5e-2, f"bfloat16 logits off by {rel:.2e} of max|logit| (0 would mean float32 compute)"


def test_forward_refuses_float64_with_the_reason():
    hf = testing.CASES["llama"]
    fam = family_for_config(hf)
    with pytest.raises(ConfigError, match="x64"):
        backend.forward(fam, fam.read(hf), testing.random_weights(hf), np.zeros((1, 4), np.int64), dtype="float64")


def test_unknown_device_is_named():
    with pytest.raises(HypercloneError, match="tpu"):
        ops.device_of("tpu:0")
