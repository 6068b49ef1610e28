"""Destination pages faulted in ahead of an in-memory expansion: ``populate.mapped_empty``
/ ``populate.populate`` fault in what they say (both the madvise path and the page-touch
fallback), and ``populate._Populator`` hands every tensor over whole, in order, within
its budget, with any helper-thread count and chunk size, passing errors on; none of it
changes a bit of ``expand_model``'s result."""

from __future__ import annotations

import sys
import threading

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hyperclone_torch import expand_model  # noqa: E402
from hyperclone_torch import populate as pages  # noqa: E402

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="anonymous mappings + madvise: Linux only")
transformers.logging.set_verbosity_error()
MiB = 1 << 20


def _rss() -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))


def test_small_tensors_are_not_mapped():
    assert pages.mapped_empty((16, 16), torch.float32) is None
    t = pages.populated_empty((16, 16), torch.float32)
    assert t.shape == (16, 16) and t.dtype == torch.float32


@linux
@pytest.mark.parametrize("madvise", [True, False], ids=["madvise", "touch-fallback"])
def test_populate_faults_the_pages_in(madvise, monkeypatch):
    monkeypatch.setitem(pages._POPULATE, "madvise", madvise)
    before = _rss()
    t = pages.mapped_empty((64 * MiB // 2,), torch.bfloat16)
    assert t is not None and t.shape == (32 * MiB,) and t.dtype == torch.bfloat16 and t.is_contiguous()
    assert _rss() - before < 4 * MiB  # the mapping alone holds no pages
    pages.populate(t, 0, 24 * MiB + 123)  # an unaligned stop: its page is faulted too
    mid = _rss()
    assert 23 * MiB <= mid - before <= 30 * MiB
    pages.populate(t, 24 * MiB + 123)  # the rest, from an unaligned start
    assert 62 * MiB <= _rss() - before <= 72 * MiB
    t.fill_(1.5)  # writable, and the whole range is ours
    assert float(t.float().sum()) == 1.5 * t.numel()


@linux
def test_populate_refuses_strided_tensors():
    t = pages.mapped_empty((1024, 1024), torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        pages.populate(t.t())


BUDDYINFO = """Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3
Node 0, zone    DMA32     14     51     33     36     34     32     55     46     32     17    437
Node 0, zone   Normal   5908   5334   3573   2709   1871   1550   1116    653    302     61      0
"""


def test_free_huge_bytes_counts_blocks_of_a_huge_page_and_more():
    import mmap
    page = mmap.PAGESIZE
    huge = page << 9
    # orders 9 and 10 of every zone: DMA 1 + 3 * 2, DMA32 17 + 437 * 2, Normal 61 + 0 * 2 huge pages
    expected = (1 + 6 + 17 + 874 + 61) * huge
    assert pages.free_huge_bytes(BUDDYINFO, huge=huge) == expected
    assert pages.free_huge_bytes(BUDDYINFO, huge=page << 10) == (3 + 437) * (page << 10)
    assert pages.free_huge_bytes(BUDDYINFO, huge=0) == 0


def test_huge_pages_pay_only_where_allowed_and_free(monkeypatch):
    monkeypatch.setattr(pages, "free_huge_bytes", lambda *a, **k: 3 << 30)
    monkeypatch.setattr(pages, "thp_mode", lambda: "madvise")
    assert pages.huge_pages_pay(1 << 30) and not pages.huge_pages_pay(3 << 30)
    monkeypatch.setattr(pages, "thp_mode", lambda: "never")
    assert not pages.huge_pages_pay(1 << 20)


@linux
def test_huge_mappings_are_aligned_and_get_huge_pages():
    huge = pages.huge_page_bytes()
    if not huge:
        pytest.skip("no transparent huge pages in this kernel")
    t = pages.mapped_empty((5 * huge // 4 + 3,), torch.float32, huge=True)
    assert t.data_ptr() % huge == 0 and t.shape == (5 * huge // 4 + 3,)
    if pages.thp_mode() not in ("always", "madvise") or pages.free_huge_bytes() < 16 * 5 * huge:
        pytest.skip("huge pages disabled or scarce right now")

    def anon_huge():
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/smaps_rollup")
                    if line.startswith("AnonHugePages"))

    before = anon_huge()
    pages.populate(t)
    assert anon_huge() - before >= 4 * huge  # 5 huge pages' worth, at least 4 of them whole
    t.fill_(2.0)
    assert float(t.sum()) == 2.0 * t.numel()


def _specs():
    # a mix: mapped tensors of several sizes and dtypes, small ones (torch.empty), skipped slots
    return [((512, 1024), torch.float32), None, ((3, 5), torch.float32), ((1536, 700), torch.bfloat16), None,
            ((4 * MiB // 4 + 7,), torch.float32), ((600, 600), torch.float64)]


@linux
@pytest.mark.parametrize("threads", [0, 1, 3])
@pytest.mark.parametrize("chunk", [4096, 300_000, 64 * MiB])
def test_populator_hands_over_each_tensor_whole_and_in_order(threads, chunk):
    specs = _specs()
    got = []
    with pages._Populator(specs, threads=threads, chunk=chunk) as ahead:
        for k, spec in enumerate(specs):
            t = ahead.get(k)
            if spec is None or spec[0] == (3, 5):
                assert t is None  # skipped, or too small to map: the caller allocates as usual
                continue
            assert tuple(t.shape) == spec[0] and t.dtype == spec[1]
            assert k not in ahead.mapped and ahead.pending.get(k) is None
            t.fill_(k)
            got.append(t)
    assert [float(t.flatten()[-1]) for t in got] == [0.0, 3.0, 5.0, 6.0]
    assert len({t.data_ptr() for t in got}) == len(got)


@linux
def test_populator_keeps_within_its_ahead_budget(monkeypatch):
    specs = [((MiB // 4,), torch.float32)] * 12  # 12 tensors of 1 MiB
    seen = []
    real = pages.populate
    pop = pages._Populator(specs, ahead_bytes=3 * MiB, threads=2, chunk=256 * 1024)

    def watch(t, start=0, stop=None):
        with pop.cv:
            seen.append(sum(x.numel() * x.element_size() for x in pop.mapped.values()))
        real(t, start, stop)

    monkeypatch.setattr(pages, "populate", watch)
    with pop as ahead:
        for k in range(len(specs)):
            threading.Event().wait(0.002)  # let the helpers run ahead as far as they may
            assert ahead.get(k) is not None
    assert seen and max(seen) <= 3 * MiB + MiB  # the budget, plus the tensor the copies are waiting for


@linux
@pytest.mark.parametrize("threads", [0, 2])
@pytest.mark.parametrize("where", ["populate", "mapped_empty"])
def test_populator_passes_a_helper_error_on(threads, where, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("populate failed")

    monkeypatch.setattr(pages, where, broken)
    with pages._Populator(_specs(), threads=threads) as ahead:
        with pytest.raises(OSError, match="populate failed"):
            ahead.get(0)


@pytest.fixture(scope="module")
def llama(case_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(case_dir("llama")).eval()


@pytest.mark.parametrize("strategy", ["symmetric", "noisy:10"])
def test_populating_ahead_changes_no_bit_of_the_clone(llama, strategy, monkeypatch):
    torch.set_num_threads(1)

    made = []
    real = pages.mapped_empty

    def recorded(shape, dtype, huge=False):
        t = real(shape, dtype, huge=huge)
        if t is not None:
            made.append(t.data_ptr())
        return t

    def grown(**settings):
        made.clear()
        with monkeypatch.context() as m:
            m.setattr(pages, "mapped_empty", recorded)
            for name, value in settings.items():
                m.setattr(pages, name, value)
            return expand_model(llama, width=2, strategy=strategy, seed=3).state_dict()

    plain = grown(POPULATE_MIN_BYTES=1 << 62)  # nothing mapped: torch's allocator throughout
    assert not made
    for threads, huge in ((0, False), (1, False), (3, False), (1, True)):
        mapped = grown(POPULATE_MIN_BYTES=1024, POPULATE_THREADS=threads, POPULATE_CHUNK=8192,
                       POPULATE_AHEAD_BYTES=64 * 1024, HUGE_PAGES=huge)
        assert mapped.keys() == plain.keys()
        # the clone's tensors live in the populated mappings (else this test would compare nothing new)
        big = [n for n, t in mapped.items() if t.numel() * t.element_size() >= 1024]
        outside = [n for n in big if mapped[n].untyped_storage().data_ptr() not in made]
        assert len(big) >= len(mapped) // 2 and not outside, outside
        for name in plain:
            assert torch.equal(mapped[name], plain[name]), (threads, name)
