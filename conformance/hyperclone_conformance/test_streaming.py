"""The streaming half of the interpreter (``run.rowblocks``: what ``hyperclone expand``
runs every tensor over ``BLOCK_ELEMS`` through) on the backend, with tiny blocks so
every tensor of a small model streams: row blocks equal the oracle bit for bit where
the program is deterministic; noisy programs keep the noise invariants, every block's
noise has exactly the power the plan's SNR asks of the whole tensor, blocks draw
independent noise, and the result is reproducible.  The ``add_zero_sum_noise_power``
hook, when a backend has one, is checked on its own too."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from hyperclone_conformance import _suite as S
from hyperclone_core import Growth, plan
from hyperclone_core.run.rowblocks import row_program, run_rows

pytestmark = pytest.mark.capability("expand")

BLOCK_ELEMS = 256
"""Destination elements per block: a few rows of the small cases' matrices, so every
matrix streams in several blocks."""

POWER_RTOL = 1e-3
"""Each block's noise power vs the power the plan's SNR asks (float32 sums)."""

STREAMED = {
    "llama-noisy10-width2": ("llama", "noisy:10", dict(width=2)),
    "llama-noisy10-interleave": ("llama", "noisy:10", dict(width=2, layout="interleave")),
    "phi3-random_split1-ffn1.5": ("phi3", "random_split:1", dict(width=2, ffn=1.5)),
    "gpt_neox-first_copy-width3": ("gpt_neox", "first_copy", dict(width=3)),
}
"""Id -> (case, strategy, growth): tiled and interleaved copies, uneven ffn copies,
fused layouts, noise and splits."""


@functools.lru_cache(maxsize=None)
def _plan(key):
    case, strategy, growth = STREAMED[key]
    src = S.source(case)
    return plan(src.family, src.hf_config, Growth.of(src.cfg, **growth), strategy, seed=11)


def _stream(backend, device, p, tp, weights):
    """(whole result as numpy, [(block, rows)]) of ``tp`` streamed in row blocks."""
    rp = row_program(tp, p.arrays, BLOCK_ELEMS)
    if rp is None:
        return None, []
    w = weights[tp.source]
    blocks = list(run_rows(backend, rp, p.arrays, lambda lo, hi: np.array(w[lo:hi], copy=True), device, {},
                           workers=getattr(backend, "row_workers", 1)))
    assert [b.rows for b, _ in blocks] == [b.rows for b in rp.blocks], f"{tp.name}: blocks out of order"
    rows = [np.asarray(backend.to_numpy(y)) for _, y in blocks]
    return np.concatenate(rows, axis=0), list(zip(rp.blocks, rows))


@pytest.mark.parametrize("key", list(STREAMED))
def test_row_blocks_match_the_oracle(backend, device, key):
    p = _plan(key)
    weights = S.source(STREAMED[key][0]).weights
    streamed, problems, replayed = 0, [], False
    for tp in p.tensors:
        got, blocks = _stream(backend, device, p, tp, weights)
        if got is None:
            continue
        streamed += 1
        if got.shape != tuple(tp.shape):
            problems.append(f"{tp.name}: streamed shape {list(got.shape)}, the plan says {list(tp.shape)}")
            continue
        if not S.has_noise(tp):
            want = S.oracle_tensor(p, tp, weights)
            if not np.array_equal(got.astype(np.float32), want.astype(np.float32)):
                problems.append(f"{tp.name}: row blocks differ from the oracle at {int((got != want).sum())} "
                                f"of {got.size} elements")
            continue
        before, op, after = S.split_at_noise(tp)
        if after:
            continue
        clean = S.oracle_tensor(p, tp, weights, before).astype(np.float64)
        problems += S.noise_invariants(tp.name, clean, got, op, p.arrays[op.groups])
        power = float(np.mean(clean ** 2)) / 10.0 ** (op.snr_db / 10.0)
        noise = [(b, rows.astype(np.float64) - clean[b.rows[0]:b.rows[1]]) for b, rows in blocks]
        for b, n in noise:
            got_power = float(np.mean(n ** 2))
            if abs(got_power - power) > POWER_RTOL * power:
                problems.append(f"{tp.name}: block {b.index} (rows {b.rows[0]}..{b.rows[1]}) has noise power "
                                f"{got_power:.4g}, the plan's SNR asks {power:.4g} of every block")
                break
        same = [n for b, n in noise if n.shape == noise[0][1].shape][:2]
        if len(same) == 2 and abs(float(np.corrcoef(same[0].ravel(), same[1].ravel())[0, 1])) > 0.5:
            problems.append(f"{tp.name}: blocks 0 and 1 drew correlated noise (each block has its own seed)")
        if not replayed:  # once per plan: streaming is costly in tiny blocks
            replayed = True
            again, _ = _stream(backend, device, p, tp, weights)
            if not np.array_equal(again, got):
                problems.append(f"{tp.name}: streaming twice gave different noise (it must depend on the plan only)")
    assert streamed, f"{key}: no tensor streams in blocks of {BLOCK_ELEMS} elements"
    assert not problems, f"{key}, row blocks of {BLOCK_ELEMS} elements: " + "; ".join(problems[:3])


def test_noise_power_hook(backend, device):
    """``add_zero_sum_noise_power(x, axis, groups, power, seed, n_groups)``: noise of mean
    power exactly ``power`` summing to 0 over the copies of each old index along
    ``axis`` (uneven, interleaved copies here), the same for the same seed, another
    for another seed."""
    hook = getattr(backend, "add_zero_sum_noise_power", None)
    if hook is None:
        pytest.skip(f"backend {backend.name!r} has no add_zero_sum_noise_power (the generic path is streamed above)")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 10)).astype(np.float32)
    groups = np.array([0, 1, 0, 2, 1, 3, 0, 2, 3, 1])
    dev_groups = backend.asarray(groups, device)

    def run(seed):
        y = hook(backend.asarray(x.copy(), device), 1, dev_groups, 0.04, seed, 4)
        return None if y is None else np.asarray(backend.to_numpy(y), np.float64)

    a = run(3)
    if a is None:
        pytest.skip("the hook declines (returns None) here")
    noise = a - x
    assert a.shape == x.shape, f"the hook returned shape {a.shape} for {x.shape}"
    assert abs(float(np.mean(noise ** 2)) - 0.04) <= POWER_RTOL * 0.04, \
        f"noise power {float(np.mean(noise ** 2)):.5g}, asked 0.04"
    sums = np.stack([noise[:, groups == g].sum(axis=1) for g in range(4)])
    assert np.abs(sums).max() <= 1e-5, (f"the noise does not sum to 0 over the copies of each old index "
                                       f"(max |sum| {np.abs(sums).max():.2e}): the copy layout is not groups'")
    assert np.array_equal(run(3), a), "the same seed gave different noise"
    assert not np.array_equal(run(4), a), "another seed gave the same noise"
