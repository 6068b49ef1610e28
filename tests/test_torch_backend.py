"""The torch backend's plan primitives against the numpy oracle, noise invariants,
checkpoints bit for bit, discovery and the conformance training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hyperclone_core import Growth, family_for_config, plan  # noqa: E402
from hyperclone_core.run import reference  # noqa: E402
from hyperclone_core.model import testing  # noqa: E402
from hyperclone_core.run.protocol import load_backend  # noqa: E402
from hyperclone_core.run.interpreter import run_program  # noqa: E402
from hyperclone_core.io.dtypes import cast_numpy  # noqa: E402
from hyperclone_core.algebra.growth import copy_ids  # noqa: E402
from hyperclone_torch import ops  # noqa: E402
from hyperclone_torch.backend import backend  # noqa: E402

torch.set_num_threads(1)

CASES = ["llama", "gpt_neox", "phi3", "mixtral", "opt_postln", "olmo2", "gemma2"]


def _plan(case, strategy, **growth):
    cfg = testing.CASES[case]
    fam = family_for_config(cfg)
    return plan(fam, cfg, Growth.of(fam.read(cfg), **growth), strategy, seed=3), testing.random_weights(cfg, seed=2)


def _torch_run(tp, p, w, dtype=torch.float32):
    x = torch.from_numpy(np.ascontiguousarray(w)).to(dtype)
    return run_program(backend, tp, p.arrays, x, "cpu", {})


DETERMINISTIC = [
    ("symmetric", dict(width=2)),
    ("first_copy", dict(width=2, ffn=1.5)),
    ("random_split:1", dict(width=2, layers=3)),
    ("diagonal", dict(width=3)),
]


@pytest.mark.parametrize("case,strategy,growth", [
    (c, s, g) for c in CASES for s, g in DETERMINISTIC
    if not (c == "opt_postln" and "layers" in g)  # post-LN stacks refuse depth growth
])
def test_deterministic_programs_equal_the_oracle_exactly(case, strategy, growth):
    p, w = _plan(case, strategy, **growth)
    for tp in p.tensors:
        want = reference.expand_tensor(tp, p.arrays, w[tp.source])
        got = _torch_run(tp, p, w[tp.source])
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), want, err_msg=tp.name)


@pytest.mark.parametrize("case", ["llama", "mixtral", "gpt_neox"])
def test_noisy_programs_keep_zero_sum_and_snr(case):
    """noise = noisy - symmetric (same mixing): it sums to 0 over the copies of every
    old index on the in-axis, and its power is 10 dB under the signal's (+-0.5 dB)."""
    p_noisy, w = _plan(case, "noisy:10", width=2)
    p_sym, _ = _plan(case, "symmetric", width=2)
    checked = 0
    for tp, ts in zip(p_noisy.tensors, p_sym.tensors):
        noise_ops = [op for op in tp.ops if type(op).__name__ == "AddNoise"]
        if not noise_ops:
            continue
        op = noise_ops[0]
        base = _torch_run(ts, p_sym, w[tp.source]).double()
        noise = (_torch_run(tp, p_noisy, w[tp.source]).double() - base).numpy()
        groups = p_noisy.arrays[op.groups]
        moved = np.moveaxis(noise, op.axis, -1)
        sums = np.zeros(moved.shape[:-1] + (groups.max() + 1,))
        for c in range(copy_ids(groups).max() + 1):
            sel = copy_ids(groups) == c
            sums[..., groups[sel]] += moved[..., sel]
        assert np.abs(sums).max() <= 1e-5 * np.abs(base.numpy()).max(), tp.name
        snr = 10 * math.log10(float((base ** 2).mean()) / float((noise ** 2).mean()))
        assert abs(snr - op.snr_db) <= 0.5, (tp.name, snr)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("groups", [
    np.arange(12) % 4,                   # tile, 3 copies (fast path)
    np.repeat(np.arange(6), 2),          # interleave, 2 copies (fast path)
    np.array([0, 1, 2, 0, 1, 2, 0, 3]),  # uneven copies (projection path)
])
def test_zero_sum_noise_law(groups):
    """Both paths draw the projection of iid N(0, 1): per-element variance (k-1)/k,
    sum 0 over each old index's copies, reproducible per seed."""
    g = torch.from_numpy(groups)
    shape = (4000, len(groups))
    n = backend.zero_sum_noise(shape, 1, g, 7, torch.zeros(1))
    assert n.shape == shape and n.dtype == torch.float32
    sums = torch.zeros(shape[0], int(groups.max()) + 1).index_add_(1, g, n)
    assert float(sums.abs().max()) < 1e-5
    k = np.bincount(groups)[groups]
    var = n.double().pow(2).mean(0).numpy()
    np.testing.assert_allclose(var, (k - 1) / k, rtol=0.1, atol=0.03)
    assert torch.equal(n, backend.zero_sum_noise(shape, 1, g, 7, torch.zeros(1)))
    assert not torch.equal(n, backend.zero_sum_noise(shape, 1, g, 8, torch.zeros(1)))


@pytest.mark.parametrize("axis,groups", [
    (1, np.arange(12) % 4),             # tile, 3 copies
    (0, np.repeat(np.arange(30), 2)),   # interleave, 2 copies, rows
])
def test_in_place_noise_matches_the_generic_path(axis, groups):
    """``add_zero_sum_noise`` (no noise buffer) adds the same noise as
    zero_sum_noise + add_scaled, to float32 rounding: zero-sum, the requested SNR."""
    g = torch.from_numpy(groups)
    shape = (60, 12) if axis == 1 else (60, 7)
    clean = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x = clean.clone()
    got = backend.add_zero_sum_noise(x, axis, g, 10.0, seed=5)
    assert got is x
    noise = backend.zero_sum_noise(shape, axis, g, 5, clean)
    factor = math.sqrt(backend.mean_square(clean) / backend.mean_square(noise) / 10.0)
    np.testing.assert_allclose(got.numpy(), (clean + factor * noise).numpy(), rtol=0, atol=1e-6)
    n = (got - clean).double()
    sums = torch.zeros(n.shape, dtype=torch.float64).index_add_(axis, g, n).narrow(axis, 0, int(groups.max()) + 1)
    assert float(sums.abs().max()) < 1e-6
    snr = 10 * math.log10(float(clean.double().pow(2).mean()) / float(n.pow(2).mean()))
    assert abs(snr - 10.0) < 0.01


def test_in_place_noise_declines_what_it_cannot_do():
    tile = torch.arange(8) % 4
    y = torch.randn(6, 8)
    before = y.clone()
    assert backend.add_zero_sum_noise(y, 1, torch.tensor([0, 1, 2, 0, 1, 2, 0, 3]), 10.0, 0) is None  # uneven
    assert backend.add_zero_sum_noise(y.bfloat16(), 1, tile, 10.0, 0) is None
    assert backend.add_zero_sum_noise(y.t(), 0, tile, 10.0, 0) is None  # not contiguous
    assert torch.equal(y, before)


def test_bfloat16_programs_stay_bfloat16_and_match_the_oracle():
    p, w = _plan("llama", "symmetric", width=2)
    for tp in p.tensors:
        src = cast_numpy(w[tp.source], "bfloat16")
        got = _torch_run(tp, p, src, torch.bfloat16)
        assert got.dtype == torch.bfloat16
        want = cast_numpy(reference.expand_tensor(tp, p.arrays, src), "bfloat16")
        np.testing.assert_array_equal(got.float().numpy(), want, err_msg=tp.name)


def test_cast_and_conversions():
    x = torch.tensor([1.0, 1.00390625, -2.5])
    assert backend.cast(x, "bfloat16").dtype == torch.bfloat16
    assert backend.cast(x, "float16").dtype == torch.float16
    np.testing.assert_array_equal(backend.to_numpy(backend.cast(x, "bfloat16")), cast_numpy(x.numpy(), "bfloat16"))
    with pytest.raises(ValueError, match="int8"):
        backend.cast(x, "int8")


def test_inplace_scope_never_writes_the_source():
    """A program without a take (depth-only growth zeroes an inserted writer) must
    not scale the caller's tensor in place, even inside expand_model's scope."""
    p, w = _plan("llama", "symmetric", width=1, layers=3)
    tp = next(t for t in p.tensors if t.name == "model.layers.1.mlp.down_proj.weight")
    assert not any(type(op).__name__ == "Take" for op in tp.ops)
    src = torch.from_numpy(w[tp.source].copy())
    before = src.clone()
    with ops.inplace_scope():
        out = run_program(backend, tp, p.arrays, src, "cpu", {})
    assert torch.equal(src, before) and float(out.abs().max()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_checkpoint_round_trip_is_bit_exact(tmp_path, dtype):
    cfg = testing.CASES["qwen3"]
    g = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(a.shape, generator=g).to(dtype)
               for n, a in testing.random_weights(cfg).items()}
    weights["model.norm.weight"] = weights["model.norm.weight"].float()  # mixed dtypes in one file
    backend.save_checkpoint(tmp_path / "ck", cfg, weights)
    config, loaded = backend.load_checkpoint(tmp_path / "ck")
    assert config == cfg and loaded.keys() == weights.keys()
    for n, t in weights.items():
        assert loaded[n].dtype == t.dtype, n
        assert torch.equal(loaded[n].view(torch.uint8) if t.dtype != torch.float64 else loaded[n],
                           t.view(torch.uint8) if t.dtype != torch.float64 else t), n


def test_checkpoint_is_atomic_and_refuses_overwrite(tmp_path):
    cfg = testing.CASES["llama"]
    w = {n: torch.from_numpy(a) for n, a in testing.random_weights(cfg).items()}
    backend.save_checkpoint(tmp_path / "ck", cfg, w)
    with pytest.raises(Exception, match="already exists"):
        backend.save_checkpoint(tmp_path / "ck", cfg, w)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_backend_is_discovered_by_entry_point():
    b = load_backend("torch")
    assert b is backend
    assert b.name == "torch" and set(b.capabilities) == {"expand", "forward", "train", "distributed"}
    assert b.version() == torch.__version__ and "cpu" in b.device_name()


def test_engine_steps_lower_the_loss_from_the_oracle_loss():
    from hyperclone_core.train import TrainConfig, optimizer_for

    cfg = testing.CASES["llama"]
    fam = family_for_config(cfg)
    w = testing.random_weights(cfg)
    batch = testing.random_tokens(cfg["vocab_size"], batch=2, seq=9, seed=1)
    tc = TrainConfig(steps=6, batch_size=2, seq_len=8, lr=3e-3, device="cpu")
    eng = backend.engine(cfg, w, tc, optimizer_for(tc, {n: a.shape for n, a in w.items()}))
    losses = [eng.step([batch], 3e-3).loss for _ in range(6)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.05
    assert abs(losses[0] - reference.loss(fam, fam.read(cfg), w, batch)) < 1e-5  # the model's own cross-entropy
    assert np.array_equal(w["lm_head.weight"], testing.random_weights(cfg)["lm_head.weight"])  # inputs untouched
