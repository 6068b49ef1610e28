"""Row-block execution (hyperclone_core.run.rowblocks) and the streaming checkpoint path:
noiseless programs equal the whole-tensor interpreter bit for bit on every installed
backend, noisy ones keep the plan's invariants (zero sum over the copies, the SNR);
rows are read and written in pieces exactly as whole tensors are."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest

from hyperclone_core import Growth, family_for_config, plan
from hyperclone_core.run import rowblocks
from hyperclone_core.model import testing
from hyperclone_core.run.protocol import load_backend, loadable_backends
from hyperclone_core.run.interpreter import run_program
from hyperclone_core.io.dtypes import bf16_to_f32, f32_to_bf16
from hyperclone_core.errors import CheckpointError
from hyperclone_core.expand.checkpoint import expand_checkpoint
from hyperclone_core.io import Checkpoint, SafetensorsFile, ShardedWriter, save_checkpoint
from hyperclone_core.algebra.noise import gaussian, helmert, mean_square
from hyperclone_core.algebra.program import AddNoise

NUMPY = load_backend("numpy")
EXPANDERS = sorted(n for n, b in loadable_backends().items() if "expand" in b.capabilities)


def _plan(case: str, strategy: str, **growth):
    cfg = testing.CASES[case]
    fam = family_for_config(cfg)
    return plan(fam, cfg, Growth.of(fam.read(cfg), **(growth or {"width": 2})), strategy, 3), \
        testing.random_weights(cfg)


def _streamed(bk, tp, arrays, src, block_elems):
    rp = rowblocks.row_program(tp, arrays, block_elems)
    if rp is None:
        return None, None
    rows = [np.asarray(bk.to_numpy(y)) for _, y in rowblocks.run_rows(bk, rp, arrays, lambda lo, hi: src[lo:hi].copy())]
    return rp, np.concatenate(rows)


def _noise_op(tp):
    return next((op for op in tp.ops if isinstance(op, AddNoise)), None)


CASES = ["llama", "llama_tied", "gemma", "gpt_neox", "opt", "phi3", "mixtral"]


@pytest.mark.parametrize("name,case", [(n, c) for n in EXPANDERS for c in (CASES if n == "numpy" else CASES[::3])])
@pytest.mark.parametrize("strategy", ["symmetric", "random_split:0.3", "noisy:10"])
def test_row_blocks_equal_the_whole_program(name, case, strategy):
    """Blocks of ~200 elements (many per tensor, breaks of the tile maps included):
    deterministic programs give the whole program's bits; noisy ones the same
    noiseless part plus noise that sums to 0 over the copies at the plan's SNR."""
    bk = load_backend(name)
    p, w = _plan(case, strategy)
    streamed = 0
    for tp in p.tensors:
        src = np.asarray(w[tp.source], np.float32)
        rp, got = _streamed(bk, tp, p.arrays, src, 200)
        if rp is None:
            continue
        streamed += 1
        assert len(rp.blocks) > 1
        op = _noise_op(tp)
        if op is None:
            want = run_program(NUMPY, tp, p.arrays, src.copy())
            assert got.shape == want.shape and np.array_equal(got, want), f"{name} {case} {strategy} {tp.name}"
            continue
        k = tp.ops.index(op)
        clean = run_program(NUMPY, tp.__class__(**{**tp.__dict__, "ops": tp.ops[:k]}), p.arrays, src.copy())
        noise = got.astype(np.float64) - clean.astype(np.float64)
        snr = 10 * math.log10(mean_square(clean.astype(np.float64)) / mean_square(noise))
        assert abs(snr - op.snr_db) < 0.05, f"{name} {case} {tp.name}: SNR {snr:.3f} dB, plan {op.snr_db}"
        groups = np.asarray(p.arrays[op.groups])
        moved = np.moveaxis(noise, op.axis, -1)
        sums = np.zeros(moved.shape[:-1] + (groups.max() + 1,))
        np.add.at(sums, (..., groups), moved)
        assert np.abs(sums).max() <= 1e-5 * np.abs(clean).max(), f"{name} {case} {tp.name}: noise not zero-sum"
    assert streamed, f"{case}: no tensor ran in row blocks"


def test_noisy_blocks_are_seeded_per_block_and_reproducible():
    p, w = _plan("llama", "noisy:10")
    tp = next(t for t in p.tensors if _noise_op(t) is not None and t.name.endswith("q_proj.weight"))
    src = w[tp.source]
    _, a = _streamed(NUMPY, tp, p.arrays, src, 200)
    _, b = _streamed(NUMPY, tp, p.arrays, src, 200)
    assert np.array_equal(a, b), "the same plan must give the same noise"
    _, c = _streamed(NUMPY, tp, p.arrays, src, 400)
    assert not np.array_equal(a, c), "blocks draw their own noise (so the block size is part of the result)"


def _rows_of(src, lo, hi):
    return src[lo:hi].copy()


@pytest.mark.parametrize("workers", [2, 5])
@pytest.mark.parametrize("strategy", ["symmetric", "noisy:10"])
def test_worker_threads_change_no_bit(workers, strategy, monkeypatch):
    """Blocks computed on a thread pool are yielded in row order with the bits one
    thread gives (noise included: it is seeded per block, the power summed in order),
    with kept first-pass blocks and without."""
    p, w = _plan("llama", strategy)
    for keep in (0, 1 << 30):
        monkeypatch.setattr(rowblocks, "KEEP_BYTES", keep)
        for tp in p.tensors:
            rp = rowblocks.row_program(tp, p.arrays, 200)
            if rp is None:
                continue
            src = np.asarray(w[tp.source], np.float32)
            read = partial(_rows_of, src)
            one = [(b.index, NUMPY.to_numpy(y)) for b, y in rowblocks.run_rows(NUMPY, rp, p.arrays, read)]
            many = [(b.index, NUMPY.to_numpy(y))
                    for b, y in rowblocks.run_rows(NUMPY, rp, p.arrays, read, workers=workers)]
            assert [i for i, _ in many] == list(range(len(rp.blocks))), "blocks must come in row order"
            assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(one, many)), tp.name


def test_a_failing_block_on_a_worker_is_raised_in_the_caller():
    p, w = _plan("llama", "noisy:10")
    tp = next(t for t in p.tensors if _noise_op(t) is not None and t.name.endswith("q_proj.weight"))
    rp = rowblocks.row_program(tp, p.arrays, 200)
    src = w[tp.source]

    def read(lo, hi):
        if lo >= rp.blocks[2].source[0]:
            raise OSError("disk gone")
        return src[lo:hi].copy()

    with pytest.raises(OSError, match="disk gone"):
        list(rowblocks.run_rows(NUMPY, rp, p.arrays, read, workers=3))


@pytest.mark.parametrize("keep", [0, 700, 1 << 30])
def test_kept_first_pass_blocks_change_nothing_and_spare_the_second_read(keep, monkeypatch):
    """Noisy programs reuse the first pass's blocks up to KEEP_BYTES: the result is the
    one recomputing gives, and only the blocks past the budget are read twice."""
    p, w = _plan("llama", "noisy:10")
    tp = next(t for t in p.tensors if _noise_op(t) is not None and t.name.endswith("q_proj.weight"))
    src = w[tp.source]
    monkeypatch.setattr(rowblocks, "KEEP_BYTES", 0)
    rp, want = _streamed(NUMPY, tp, p.arrays, src, 200)
    monkeypatch.setattr(rowblocks, "KEEP_BYTES", keep)
    reads = []

    def read(lo, hi):
        reads.append((lo, hi))
        return src[lo:hi].copy()

    got = np.concatenate([NUMPY.to_numpy(y) for _, y in rowblocks.run_rows(NUMPY, rp, p.arrays, read)])
    assert np.array_equal(got, want)
    held, kept = 0, 0
    for b in rp.blocks:  # the budget is filled in block order, float32 blocks of the destination's width
        size = (b.rows[1] - b.rows[0]) * math.prod(tp.shape[1:]) * 4
        if held + size <= keep:
            held, kept = held + size, kept + 1
    assert len(rp.blocks) > 1 and len(reads) == 2 * len(rp.blocks) - kept
    assert (0 < kept < len(rp.blocks)) == (keep == 700)


def test_row_program_declines_what_it_cannot_split():
    p, _ = _plan("llama", "noisy:10")
    one_block = next(t for t in p.tensors if math.prod(t.shape) > 8)
    assert rowblocks.row_program(one_block, p.arrays, math.prod(one_block.shape)) is None  # fits one block
    norm = next(t for t in p.tensors if len(t.shape) == 1)
    assert rowblocks.row_program(norm, p.arrays, 1) is None  # rank 1: nothing to split
    tp = next(t for t in p.tensors if _noise_op(t) is not None)
    noisy0 = tp.__class__(**{**tp.__dict__, "ops": tuple(AddNoise(0, o.groups, o.snr_db, o.seed) if isinstance(o, AddNoise)
                                                        else o for o in tp.ops)})
    assert rowblocks.row_program(noisy0, p.arrays, 16) is None  # noise along the rows needs whole columns


def test_blocks_read_contiguous_source_runs_no_longer_than_themselves():
    p, _ = _plan("llama", "symmetric", width=3)
    for tp in p.tensors:
        rp = rowblocks.row_program(tp, p.arrays, 100)
        if rp is None:
            continue
        covered = [r for b in rp.blocks for r in range(*b.rows)]
        assert covered == list(range(tp.shape[0]))
        for b in rp.blocks:
            assert 0 <= b.source[0] < b.source[1] <= tp.source_shape[0]
            assert b.source[1] - b.source[0] <= b.rows[1] - b.rows[0]


def test_numpy_block_noise_has_the_asked_power_and_sums_to_zero():
    x = np.random.default_rng(0).standard_normal((40, 96)).astype(np.float32)
    for groups in (np.tile(np.arange(32), 3), np.repeat(np.arange(48), 2)):
        y = x.copy()
        out = NUMPY.add_zero_sum_noise_power(y, 1, groups, 0.25, 11, int(groups.max()) + 1, chunk=100)
        assert out is y
        noise = (y - x).astype(np.float64)
        assert abs(mean_square(noise) / 0.25 - 1) < 1e-5
        sums = np.zeros((40, groups.max() + 1))
        np.add.at(sums, (slice(None), groups), noise)
        assert np.abs(sums).max() < 1e-5
    uneven = np.array([0, 1, 2, 0, 1])
    assert NUMPY.add_zero_sum_noise_power(np.zeros((3, 5), np.float32), 1, uneven, 1.0, 0, 3) is None


def test_gaussian_and_helmert():
    g = gaussian((1 << 20,), 5).astype(np.float64)
    assert g.dtype == np.float64 and abs(g.mean()) < 5e-3 and abs(g.var() - 1) < 5e-3
    assert abs(((g - g.mean()) ** 4).mean() / g.var() ** 2 - 3) < 0.05  # normal kurtosis
    assert np.array_equal(gaussian((7, 3), 5), gaussian((7, 3), 5)) and not np.array_equal(gaussian((8,), 5),
                                                                                          gaussian((8,), 6))
    for k in (2, 3, 5):
        h = helmert(k)
        assert np.allclose(h @ h.T, np.eye(k - 1)) and np.allclose(h.sum(1), 0)


def _folder(tmp_path, dtype):
    cfg = dict(testing.CASES["llama"], torch_dtype=dtype)
    w = testing.random_weights(cfg)
    save_checkpoint(tmp_path / "src", cfg, w, dtype=dtype if dtype == "bfloat16" else None)
    return tmp_path / "src"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_read_rows_and_write_rows_match_whole_tensors(tmp_path, dtype):
    ck = Checkpoint(_folder(tmp_path, dtype))
    name = next(n for n in ck.names() if len(ck.shape(n)) == 2)
    whole = ck.read(name)
    assert np.array_equal(ck.read_rows(name, 3, 9), whole[3:9])
    assert np.array_equal(ck.read_rows(name, 0, 0), whole[:0])
    raw = ck.read_rows(name, 2, 5, dtype=None)
    assert raw.dtype == (np.uint16 if dtype == "bfloat16" else np.float32)
    with pytest.raises(CheckpointError, match="rows"):
        ck.read_rows(name, 5, ck.shape(name)[0] + 1)
    layout = [(name, whole.shape, dtype), ("v", (4,), "float32")]
    for parts in ([(0, len(whole))], [(0, 1), (1, 7), (7, len(whole))]):
        out = tmp_path / f"w{len(parts)}"
        out.mkdir()
        wr = ShardedWriter(out, layout)
        for a, b in parts:
            if dtype == "bfloat16" and a:
                wr.write_rows(name, f32_to_bf16(whole[a:b]), raw=True)
            else:
                wr.write_rows(name, whole[a:b])
        with pytest.raises(CheckpointError, match="expected v"):
            wr.write_rows(name, whole[:1])
        wr.write("v", np.arange(4, dtype=np.float32))
        wr.close()
        back = SafetensorsFile(out / "model.safetensors").raw(name)
        assert np.array_equal(bf16_to_f32(back) if dtype == "bfloat16" else back, whole), parts


def test_read_rows_refuses_non_finite_rows(tmp_path):
    cfg = dict(testing.CASES["llama"])
    w = testing.random_weights(cfg)
    name = "model.layers.0.mlp.up_proj.weight"
    w[name][5, 2] = np.inf
    save_checkpoint(tmp_path / "bad", cfg, w, dtype="bfloat16")
    ck = Checkpoint(tmp_path / "bad")
    assert ck.read_rows(name, 0, 5, dtype=None).shape[0] == 5
    for dtype in (np.float32, None):
        with pytest.raises(CheckpointError, match="NaN/Inf"):
            ck.read_rows(name, 4, 7, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("strategy", ["symmetric", "noisy:10"])
def test_streaming_expand_writes_the_whole_path_bytes(tmp_path, monkeypatch, dtype, strategy):
    """``hyperclone expand`` with tiny blocks: every deterministic tensor has the bytes
    the whole-tensor path writes (bfloat16 moves pass the stored bits through), noisy
    ones keep the function (the verification passes)."""
    src = _folder(tmp_path, dtype)
    expand_checkpoint(src, tmp_path / "whole", strategy=strategy, progress=False, verify=False)
    monkeypatch.setattr(rowblocks, "BLOCK_ELEMS", 96)
    monkeypatch.setattr("hyperclone_core.expand.checkpoint.row_program",
                        lambda tp, arrays: rowblocks.row_program(tp, arrays, 96))
    rep = expand_checkpoint(src, tmp_path / "rows", strategy=strategy, progress=False)
    assert rep["verification"]["passed"]
    a, b = Checkpoint(tmp_path / "whole"), Checkpoint(tmp_path / "rows")
    plan_doc = json.loads((tmp_path / "rows" / "plan.json").read_text())
    noisy = {t["name"] for t in plan_doc["tensors"] if any(op["op"] == "add_noise" for op in t["ops"])}
    assert set(a.names()) == set(b.names())
    for n in a.names():
        assert a.dtype(n) == b.dtype(n) == dtype
        if n not in noisy:
            assert np.array_equal(a.raw(n), b.raw(n)), n
