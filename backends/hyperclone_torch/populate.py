"""Destination pages faulted in ahead of an in-memory CPU expansion.

A fresh tensor's pages are faulted in one 4 KiB page fault at a time on first
write; ``expand_model`` instead maps each destination tensor on its own
(``mapped_empty``) and faults it in with ``madvise(MADV_POPULATE_WRITE)`` in
chunks (``populate``), on a helper thread ahead of the copies (``_Populator``),
optionally on transparent huge pages (``huge_pages_pay``).  The copies themselves
are ``ops``' (``provide_output`` hands this storage to the next gather).
"""

from __future__ import annotations

import ctypes
import math
import mmap
import sys
import threading
from pathlib import Path
from typing import Optional

import torch

POPULATE_MIN_BYTES = 1 << 20
"""Smaller CPU tensors come from torch's allocator (their faults cost nothing)."""

MADV_POPULATE_WRITE = 23
"""Linux >= 5.14: fault a range in for writing, under the mm's read lock."""
MADV_HUGEPAGE = 14

_POPULATE = {"madvise": sys.platform.startswith("linux")}


def nbytes(shape, dtype: torch.dtype) -> int:
    """Bytes of a tensor of ``shape`` and ``dtype``."""
    return math.prod(int(s) for s in shape) * dtype.itemsize


_THP = Path("/sys/kernel/mm/transparent_hugepage")


def huge_page_bytes() -> int:
    """The size of a transparent huge page here (2 MiB on x86-64), 0 where there are none."""
    try:
        return int((_THP / "hpage_pmd_size").read_text())
    except (OSError, ValueError):
        return 0


def thp_mode() -> str:
    """The kernel's transparent-huge-page policy: 'always', 'madvise', 'never' ('' off Linux)."""
    try:
        text = (_THP / "enabled").read_text()
    except OSError:
        return ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def free_huge_bytes(buddyinfo: Optional[str] = None, huge: Optional[int] = None) -> int:
    """Free memory held in blocks of at least one huge page (``/proc/buddyinfo``): what
    huge-page faults can take without the kernel first compacting or reclaiming."""
    huge = huge_page_bytes() if huge is None else huge
    if buddyinfo is None:
        try:
            buddyinfo = Path("/proc/buddyinfo").read_text()
        except OSError:
            return 0
    total = 0
    for line in buddyinfo.splitlines():
        counts = line.split("zone", 1)[-1].split()[1:]  # "Node 0, zone Normal c0 c1 ...": counts by order
        for order, count in enumerate(counts):
            block = mmap.PAGESIZE << order
            if huge and block >= huge and count.isdigit():
                total += int(count) * block
    return total


HUGE_PAGE_MARGIN = 1.5
"""Huge pages only when free huge blocks cover this many times what will be mapped."""


def huge_pages_pay(nbytes: int) -> bool:
    """Whether ``nbytes`` of fresh memory can be backed by transparent huge pages
    without the kernel first compacting or reclaiming for each: the kernel allows
    them and ``/proc/buddyinfo`` shows free huge blocks covering ``HUGE_PAGE_MARGIN``
    times ``nbytes``.  Measured on the 2-core VM: with the page cache holding all
    but 3 GiB, 3.2 GiB took 2.5 s with huge pages against 0.6 s without."""
    return thp_mode() in ("always", "madvise") and free_huge_bytes() >= HUGE_PAGE_MARGIN * nbytes


def mapped_empty(shape, dtype, huge: bool = False) -> Optional[torch.Tensor]:
    """An uninitialised CPU tensor on an anonymous mapping of its own, pages not
    yet faulted in (``populate`` faults them, in as many pieces and threads as the
    caller likes); None off Linux or below ``POPULATE_MIN_BYTES``.  ``huge``: align
    the tensor to a huge page and ask for transparent huge pages
    (``MADV_HUGEPAGE``; see ``huge_pages_pay``).  The tensor keeps the mapping
    alive (``torch.frombuffer``); it is unmapped when freed."""
    shape = tuple(int(s) for s in shape)
    size = nbytes(shape, dtype)
    if size < POPULATE_MIN_BYTES or not sys.platform.startswith("linux"):
        return None
    pmd = huge_page_bytes() if huge else 0
    try:
        buf = mmap.mmap(-1, size + pmd, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return None
    offset = 0
    if pmd:
        base = torch.frombuffer(buf, dtype=torch.uint8, count=1).data_ptr()
        offset = (-base) % pmd  # the slack is never touched, so it costs address space only
        _madvise(base, size + pmd, MADV_HUGEPAGE)  # advice: refused (EINVAL) where THP is compiled out
    return torch.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=offset).view(shape)


def populate(t: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> None:
    """Fault in bytes ``[start, stop)`` of contiguous CPU tensor ``t`` for writing.

    One ``madvise(MADV_POPULATE_WRITE)`` per call: the kernel maps the range
    without a page fault per 4 KiB page, and several threads may populate pieces
    of one mapping at once (``MAP_POPULATE`` at ``mmap`` time cannot: each new
    mapping waits for the mm's write lock while another thread's populate holds
    it for reading, so populating threads ran one at a time on the 2-core VM:
    3.2 GiB in 1.3 s with 2 threads either way, 0.63-0.73 s with 2 threads on
    ``madvise``).  Where the kernel lacks it, one byte per page is written
    instead (a demand fault per page; the contents are uninitialised anyway)."""
    stop = t.nbytes if stop is None else min(int(stop), t.nbytes)
    start = max(0, int(start))
    if stop <= start:
        return
    if not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"populate: needs a contiguous CPU tensor, got {t.device.type} "
                         f"{'contiguous' if t.is_contiguous() else 'strided'} {tuple(t.shape)}")
    page = mmap.PAGESIZE
    if _POPULATE["madvise"]:
        addr = t.data_ptr() + start
        lo = addr - addr % page  # madvise wants a page-aligned start; the range may reach into the page before
        if _madvise(lo, addr + (stop - start) - lo) == 0:
            return
        _POPULATE["madvise"] = False  # EINVAL: kernel < 5.14 (or not Linux); touch pages from now on
    flat = t.view(-1).view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)
    first = start + (-(t.data_ptr() + start)) % page
    flat[start:start + 1].zero_()
    flat[first:stop:page].zero_()


def _madvise(addr: int, length: int, advice: int = MADV_POPULATE_WRITE) -> int:
    lib = _POPULATE.get("libc")
    if lib is None:
        try:
            lib = ctypes.CDLL(None, use_errno=True)
            lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            lib.madvise.restype = ctypes.c_int
        except (OSError, AttributeError):
            return -1
        _POPULATE["libc"] = lib
    return lib.madvise(addr, length, advice)


def populated_empty(shape, dtype, huge: Optional[bool] = False) -> torch.Tensor:
    """An uninitialised CPU tensor whose pages are already faulted in
    (``populate``) rather than by one page fault per 4 KiB page on first write
    (measured on the 2-core VM, 3.4 GB: 2.2-3.3 s of demand faults, 1.4-2.1 s
    populated).  ``huge``: back it with transparent huge pages (default off; see
    ``HUGE_PAGES`` for what they measured here); None asks
    ``huge_pages_pay``.  Falls back to ``torch.empty`` off Linux or for small
    tensors."""
    if huge is None:
        size = nbytes(shape, dtype)
        huge = size >= POPULATE_MIN_BYTES and huge_pages_pay(size)
    t = mapped_empty(shape, dtype, huge=huge)
    if t is None:
        return torch.empty(tuple(int(s) for s in shape), dtype=dtype)
    populate(t)
    return t


POPULATE_THREADS = 1
"""Helper threads that fault the destination's pages in ahead of the copies of an
in-memory CPU expansion; the copying thread joins them while it waits."""

POPULATE_CHUNK = 16 << 20
"""Bytes per ``populate`` call: small enough that a waiting thread finds work and
that the mm's read lock is held briefly, large enough to amortise the call."""

POPULATE_AHEAD_BYTES = 1 << 30
"""Most destination bytes mapped and not yet handed to the copies."""

HUGE_PAGES: Optional[bool] = False
"""Back the destination with transparent huge pages: True / False, or None to
decide per expansion (``huge_pages_pay`` on the bytes to be mapped).  Off by
default: on the 2-core VM, 3.2 GiB populated by 2 threads took 0.21-2.8 s with
huge pages against 0.53-2.05 s without, run after run (fast only when just-freed
huge pages were reused; slow when each had to be faulted in from the hypervisor);
not measured on bare metal, where huge pages usually fault faster."""


class _Populator:
    """Destination storage faulted in ahead (``mapped_empty`` + ``populate``):
    while the main thread copies tensor k, ``threads`` helpers fault in the pages of
    k+1, ... chunk by chunk, at most ``ahead_bytes`` of mapped, untaken storage
    ahead.  ``get(k)`` returns tensor k's storage once all its pages are in, the
    calling thread populating k's remaining chunks itself rather than waiting
    (None where ``specs[k]`` is None or no mapping could be made).  Helpers fill
    tensors in order, so the main thread never waits for a later one."""

    def __init__(self, specs: list, ahead_bytes: Optional[int] = None, threads: Optional[int] = None,
                 chunk: Optional[int] = None, huge: Optional[bool] = None):
        self.specs = list(specs)
        if huge is None:
            huge = HUGE_PAGES
        if huge is None:
            mapped = [nbytes(*s) for s in self.specs if s]
            huge = huge_pages_pay(sum(n for n in mapped if n >= POPULATE_MIN_BYTES))
        self.huge = bool(huge)
        self.ahead = POPULATE_AHEAD_BYTES if ahead_bytes is None else int(ahead_bytes)
        self.chunk = max(mmap.PAGESIZE, int(chunk or POPULATE_CHUNK))
        self.mapped: dict = {}      # k -> tensor (mapping made, not yet taken)
        self.pending: dict = {}     # k -> chunks claimed and not yet populated
        self.next_k, self.next_off = 0, 0   # the next unclaimed chunk
        self.taken = -1
        self.cv = threading.Condition()
        self.stop = False
        self.error: Optional[BaseException] = None
        n = POPULATE_THREADS if threads is None else int(threads)
        self.threads = [threading.Thread(target=self._run, daemon=True, name=f"hyperclone-populate-{i}")
                        for i in range(n)] if any(specs) else []

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        with self.cv:
            self.stop = True
            self.cv.notify_all()
        for t in self.threads:
            if t.ident is not None:
                t.join()
        self.mapped.clear()

    def _bytes_ahead(self) -> int:
        return sum(t.nbytes for t in self.mapped.values())

    def _claim(self, only: Optional[int] = None):
        """Under the lock: the next chunk to populate as (k, tensor, start, stop), or
        None (nothing left, ``only`` given and the next chunk is not k's, or the
        ahead budget is spent).  Makes tensor k's mapping on its first chunk."""
        while self.next_k < len(self.specs):
            k = self.next_k
            if self.specs[k] is None or k <= self.taken and k not in self.mapped:
                self.next_k, self.next_off = k + 1, 0
                continue
            if only is not None and k != only:
                return None
            if k not in self.mapped:
                if only is None and self.mapped and self._bytes_ahead() >= self.ahead:
                    return None
                t = mapped_empty(*self.specs[k], huge=self.huge)
                if t is None:
                    self.specs[k] = None
                    continue
                self.mapped[k], self.pending[k] = t, 0
            t = self.mapped[k]
            start = self.next_off
            stop = min(t.nbytes, start + self.chunk)
            self.next_off = stop
            if stop >= t.nbytes:
                self.next_k, self.next_off = k + 1, 0
            self.pending[k] += 1
            return k, t, start, stop
        return None

    def _fill(self, job) -> None:
        k, t, start, stop = job
        try:
            populate(t, start, stop)
        except BaseException as e:  # reported to get(); the copy must not use half-faulted state silently
            with self.cv:
                self.error = self.error or e
        with self.cv:
            self.pending[k] -= 1
            self.cv.notify_all()

    def _run(self) -> None:
        while True:
            with self.cv:
                job = None
                while not self.stop and self.error is None:
                    try:
                        job = self._claim()
                    except BaseException as e:  # a mapping that failed oddly: get() raises it
                        self.error = e
                        self.cv.notify_all()
                        return
                    if job is not None or self.next_k >= len(self.specs):
                        break
                    self.cv.wait()
                if job is None:
                    return
            self._fill(job)

    def _done(self, k: int) -> bool:
        return k in self.mapped and self.pending.get(k) == 0 and self.next_k > k

    def get(self, k: int):
        while True:
            with self.cv:
                if self.error is not None:
                    raise self.error
                if self.specs[k] is None:
                    return None
                if self._done(k):
                    self.taken = k
                    self.pending.pop(k, None)
                    t = self.mapped.pop(k)
                    self.cv.notify_all()
                    return t
                job = self._claim(only=k) if self.next_k <= k else None
                if job is None:
                    if self.next_k > k and k not in self.mapped:  # skipped: no mapping could be made
                        return None
                    self.cv.wait()
                    continue
            self._fill(job)


__all__ = ["HUGE_PAGES", "POPULATE_AHEAD_BYTES", "POPULATE_CHUNK", "POPULATE_MIN_BYTES", "POPULATE_THREADS",
           "free_huge_bytes", "huge_page_bytes", "huge_pages_pay", "mapped_empty", "nbytes", "populate",
           "populated_empty", "thp_mode"]
