"""Consecutive Takes as block copies (growth.slice_copies / split_takes /
block_copies, the backends' optional ``take_axes``): equal to the plain gathers
for every kind of index map, and the fast path is really taken for growth maps."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperclone_core.algebra.growth import ReplicationMap, block_copies, slice_copies, split_takes
from hyperclone_core.run.numpy_backend import backend as numpy_backend


def _maps(draw, n):
    kind = draw(st.sampled_from(["tile", "interleave", "uneven", "random", "identity", "fused"]))
    if kind == "tile":
        return np.tile(np.arange(n), draw(st.integers(1, 4)))
    if kind == "interleave":
        return np.repeat(np.arange(n), draw(st.integers(2, 4)))
    if kind == "uneven":
        return np.concatenate([np.arange(n), np.arange(draw(st.integers(1, n)))])
    if kind == "identity":
        return np.arange(n)
    if kind == "fused":  # two segments, each tiled: what q|k|v axes give
        a = draw(st.integers(1, n - 1)) if n > 1 else 1
        return np.concatenate([np.tile(np.arange(a), 2), np.tile(np.arange(a, n), 2)])
    return np.asarray(draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3 * n)))


@st.composite
def take_cases(draw):
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=1, max_size=3)))
    axes = draw(st.permutations(range(len(shape))))[: draw(st.integers(1, len(shape)))]
    return shape, [(ax, _maps(draw, shape[ax])) for ax in axes]


def _sequential(x, takes):
    for axis, index in takes:
        x = np.take(x, index, axis=axis)
    return x


@settings(max_examples=300, deadline=None)
@given(take_cases())
def test_numpy_take_axes_equals_sequential_takes(case):
    shape, takes = case
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = numpy_backend.take_axes(x, takes)
    assert np.array_equal(got, _sequential(x, takes))
    assert not np.shares_memory(got, x)


@settings(max_examples=300, deadline=None)
@given(take_cases())
def test_torch_take_axes_equals_sequential_takes(case):
    torch = pytest.importorskip("torch")
    from hyperclone_torch import backend

    shape, takes = case
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = backend.take_axes(torch.from_numpy(x), [(a, torch.from_numpy(i)) for a, i in takes])
    assert np.array_equal(got.numpy(), _sequential(x, takes))
    assert got.data_ptr() != torch.from_numpy(x).data_ptr()


@pytest.mark.parametrize("layout", ["tile", "interleave"])
@pytest.mark.parametrize("old,new", [(1024, 2048), (1024, 3072), (2816, 4224), (7, 7)])
def test_growth_maps_become_a_few_block_copies(layout, old, new):
    if layout == "interleave" and new % old:
        pytest.skip("interleave of an uneven growth")
    src = ReplicationMap(old, new, layout).src()
    pattern = slice_copies(src)
    assert pattern is not None and len(pattern) <= -(-new // old)
    out = np.empty(new, dtype=np.int64)
    for d, s in pattern:
        out[d] = np.arange(old)[s]
    assert np.array_equal(out, src)


def test_scattered_maps_fall_back_to_gathers():
    rng = np.random.default_rng(1)
    scattered = rng.permutation(4096)
    assert slice_copies(scattered) is None
    tiled = np.tile(np.arange(64), 2)
    gathers, blocks = split_takes([(0, scattered), (1, tiled)])
    assert [a for a, _ in gathers] == [0] and [a for a, _ in blocks] == [1]


def test_block_count_is_capped():
    many = np.concatenate([np.arange(0, 200, 2), np.arange(1, 200, 2)])  # 200 runs of one
    gathers, blocks = split_takes([(0, many), (1, many)], max_blocks=1000)
    assert len(gathers) == 1 and len(blocks) == 1
    shape, copies = block_copies((200, 200), blocks)
    assert shape == (200, 200) and len(copies) == 200
