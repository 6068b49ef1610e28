"""The safetensors format with numpy alone: a header validated byte for byte, tensors
read one at a time, shards streamed with their header written first.

A header is accepted only if it is what the format promises: UTF-8 JSON, no key
twice, every entry a known dtype with a non-negative integer shape and offsets
whose span is exactly the tensor's size, and the spans, sorted, tile the data
region from its first byte to its last (no overlap, no gap, no tail).  bfloat16
is stored as its bits; ``to_storage`` / ``from_storage`` are the one place it is
converted.  Never unpickles.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import threading
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from .dtypes import CODES, NAMES, SAFETENSORS_DTYPES, bf16_to_f32, f32_to_bf16
from ..errors import CheckpointError
from .paths import _show, open_regular

MAX_HEADER_BYTES = 100_000_000
MAX_RANK = 16
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


# ---------------------------------------------------------------- dtype conversion


def to_storage(arr: np.ndarray, code: str) -> np.ndarray:
    """``arr`` as the bytes a safetensors ``code`` stores (bfloat16: rounded to its bits)."""
    if code == "BF16":
        return f32_to_bf16(np.asarray(arr, dtype=np.float32))
    return np.ascontiguousarray(arr, dtype=SAFETENSORS_DTYPES[code])


def from_storage(raw: np.ndarray, code: str, dtype=np.float32) -> np.ndarray:
    """A stored array as ``dtype`` (bfloat16 bits widened exactly; ``dtype=None``: as stored)."""
    if code == "BF16":
        raw = bf16_to_f32(raw)
    return raw.astype(dtype, copy=False) if dtype is not None else raw


def code_of(dtype) -> str:
    """The safetensors code of a dtype name or numpy dtype ("bfloat16" -> "BF16")."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    return CODES.get(name, name.upper())


def nbytes(shape, code: str) -> int:
    return math.prod(int(s) for s in shape) * np.dtype(SAFETENSORS_DTYPES[code]).itemsize


# ---------------------------------------------------------------- header


def _no_duplicates(pairs):
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            raise _Duplicate(k)
        seen[k] = v
    return seen


class _Duplicate(ValueError):
    pass


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(raw: bytes, data_len: int, path) -> tuple:
    """(tensors, metadata) of a header, or a CheckpointError naming the first problem."""
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _Duplicate as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header: {_show(exc.args[0])} appears twice") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not UTF-8 JSON)") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: corrupt safetensors header (__metadata__ must map names to strings)")
    spans = []
    for name, info in doc.items():
        where = f"{path}: tensor {_show(name)}"
        if not name or not isinstance(info, dict):
            raise CheckpointError(f"{where}: invalid header entry")
        code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if code not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{where}: dtype {_show(code)} is not one hyperclone reads "
                                  f"({', '.join(sorted(SAFETENSORS_DTYPES))})")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(s) and s >= 0 for s in shape):
            raise CheckpointError(f"{where}: shape must be a list of at most {MAX_RANK} non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise CheckpointError(f"{where}: data_offsets must be two integers")
        a, b = offsets
        if a < 0 or b < a:
            raise CheckpointError(f"{where}: data_offsets [{a}, {b}] are negative or reversed; the file is corrupt")
        if b - a != nbytes(shape, code):
            raise CheckpointError(f"{where}: data_offsets span {b - a} bytes but shape {shape} of {code} needs "
                                  f"{nbytes(shape, code)}; the file is corrupt")
        if b > data_len:
            raise CheckpointError(f"{where} needs bytes {a}..{b} but the data holds {data_len}: "
                                  "the file is truncated or corrupt; re-download or re-save it")
        spans.append((a, b, name))
    end, prev = 0, None
    for a, b, name in sorted(spans):
        if a < end:
            raise CheckpointError(f"{path}: tensors {_show(prev)} and {_show(name)} overlap (bytes {a}..{end}); "
                                  "the file is corrupt")
        if a > end:
            raise CheckpointError(f"{path}: data bytes {end}..{a} are not covered by any tensor; the file is corrupt")
        end, prev = b, name
    if end != data_len:
        raise CheckpointError(f"{path}: data bytes {end}..{data_len} are not covered by any tensor "
                              "(trailing bytes); the file is corrupt")
    return doc, metadata


class SafetensorsFile:
    """One safetensors file: its header validated completely, tensors read on demand."""

    def __init__(self, path):
        self.path = Path(path)
        with open_regular(self.path, "safetensors file") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: truncated (no safetensors header)")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8 or n > MAX_HEADER_BYTES:
                    raise CheckpointError(f"{self.path}: corrupt or truncated (the header length does not fit "
                                          f"the {size}-byte file); re-download or re-save it")
                raw = f.read(n)
            except OSError as exc:
                raise CheckpointError(f"{self.path}: unreadable ({exc.strerror})") from None
        self.start = 8 + n
        self.size = size
        self.header, self.metadata = parse_header(raw, size - self.start, self.path)
        self._mmap = None
        self._fd = None
        self._fd_lock = threading.Lock()  # raw_rows may run on several threads (rowblocks' workers)

    def keys(self):
        return list(self.header)

    def shape(self, name) -> tuple:
        return tuple(self.header[name]["shape"])

    def code(self, name) -> str:
        return self.header[name]["dtype"]

    def dtype(self, name) -> str:
        code = self.header[name]["dtype"]
        return NAMES.get(code, code.lower())

    def raw(self, name, mmap: bool = False) -> np.ndarray:
        """The stored array (BF16 as uint16 bits).  By default read into fresh memory,
        so streaming a checkpoint keeps only the tensor at hand resident; ``mmap=True``
        returns a read-only memory-mapped view instead."""
        info = self.header[name]
        a, b = info["data_offsets"]
        dt = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        with open_regular(self.path, "safetensors file") as f:
            if os.fstat(f.fileno()).st_size != self.size:
                raise CheckpointError(f"{self.path}: changed size while being read; rerun when nothing writes it")
            if mmap:
                if self._mmap is None:
                    self._mmap = np.memmap(f, dtype=np.uint8, mode="r") if self.size else np.zeros(0, np.uint8)
                return self._mmap[self.start + a: self.start + b].view(dt).reshape(info["shape"])
            try:
                f.seek(self.start + a)
                out = np.fromfile(f, dtype=dt, count=(b - a) // dt.itemsize)
            except OSError as exc:
                raise CheckpointError(f"{self.path}: tensor {_show(name)} unreadable ({exc.strerror})") from None
        if out.nbytes != b - a:
            raise CheckpointError(f"{self.path}: tensor {_show(name)} is truncated")
        return out.reshape(info["shape"])

    def raw_rows(self, name, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of a stored tensor (dim 0; BF16 as uint16 bits), into fresh
        memory: a tensor's rows are contiguous, so streaming reads only what a row
        block needs."""
        info = self.header[name]
        shape = info["shape"]
        if not shape or not 0 <= lo <= hi <= shape[0]:
            raise CheckpointError(f"{self.path}: tensor {_show(name)} has no rows {lo}..{hi} (shape {shape})")
        dt = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        row = math.prod(shape[1:]) * dt.itemsize
        a = info["data_offsets"][0] + lo * row
        out = np.empty((hi - lo, *shape[1:]), dtype=dt)
        with self._fd_lock:
            if self._fd is None:
                with open_regular(self.path, "safetensors file") as f:
                    fd = os.dup(f.fileno())
                if os.fstat(fd).st_size != self.size:
                    os.close(fd)
                    raise CheckpointError(f"{self.path}: changed size while being read; rerun when nothing writes it")
                self._fd = fd
        view = memoryview(out.reshape(-1).view(np.uint8)) if out.size else memoryview(b"")
        done = 0
        try:
            while done < len(view):
                n = os.preadv(self._fd, [view[done:]], self.start + a + done)
                if n <= 0:
                    raise CheckpointError(f"{self.path}: tensor {_show(name)} is truncated")
                done += n
        except OSError as exc:
            raise CheckpointError(f"{self.path}: tensor {_show(name)} unreadable ({exc.strerror})") from None
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


# ---------------------------------------------------------------- writing


def header_bytes(entries: list, metadata: Optional[dict]) -> tuple:
    """(the 8-byte length + padded JSON header, data size) for (name, shape, code) entries."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    offset = 0
    for name, shape, code in entries:
        n = nbytes(shape, code)
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def _to_storage_chunked(arr: np.ndarray, code: str, chunk: int = 1 << 16) -> np.ndarray:
    """``to_storage`` a cache-sized chunk at a time: bfloat16 rounding chains six
    array ops, ~2 ns per element on chunks of 2^16 and ~10 on 2^24 (2-core VM)."""
    if code != "BF16" or arr.size <= chunk:
        return to_storage(arr, code)
    flat = np.ascontiguousarray(arr).reshape(-1)
    out = np.empty(flat.size, np.uint16)
    for a in range(0, flat.size, chunk):
        out[a:a + chunk] = to_storage(flat[a:a + chunk], code)
    return out.reshape(arr.shape)


def _write_array(fh, data: np.ndarray) -> None:
    fh.write(memoryview(data).cast("B") if data.size else b"")


class ShardedWriter:
    """Streams tensors into shards whose layout is fixed up front.

    ``layout`` is a list of (name, shape, dtype-name) in writing order; tensors
    must then be ``write``-n in that order.  Shards split at ``max_shard_bytes``.
    """

    def __init__(self, folder, layout: Iterable, max_shard_bytes: int = 5 * 2**30,
                 metadata: Optional[dict] = None):
        self.folder = Path(folder)
        entries = [(n, tuple(s), code_of(d)) for n, s, d in layout]
        shards: list = [[]]
        size = 0
        for e in entries:
            n = nbytes(e[1], e[2])
            if shards[-1] and size + n > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(e)
            size += n
        total = len(shards)
        self.names = [SINGLE] if total == 1 else [
            f"model-{k + 1:05d}-of-{total:05d}.safetensors" for k in range(total)
        ]
        self.plan = [(fname, s) for fname, s in zip(self.names, shards)]
        self.metadata = dict(metadata or {}, format="pt")
        self.order = [e for _, s in self.plan for e in s]
        self._codes = {n: c for n, _, c in self.order}
        self.bytes_planned = sum(nbytes(s, c) for _, s, c in self.order)
        self._pos = 0
        self._rows = 0  # rows of the current tensor written so far
        self._shard = -1
        self._fh = None
        self.total_bytes = 0

    def _open_next(self):
        if self._fh:
            self._fh.close()
        self._shard += 1
        fname, entries = self.plan[self._shard]
        head, _ = header_bytes(entries, self.metadata)
        self._fh = open(self.folder / fname, "wb")
        self._fh.write(head)
        self._left = len(entries)

    def stored(self, name: str, rows: np.ndarray) -> np.ndarray:
        """``rows`` of tensor ``name`` as the bits ``write_rows(..., raw=True)`` takes
        (bfloat16 rounded): the conversion on any thread, apart from the writing."""
        if name not in self._codes:
            raise CheckpointError(f"writer has no tensor {name}")
        return _to_storage_chunked(rows, self._codes[name])

    def write(self, name: str, arr: np.ndarray) -> None:
        exp_name, shape, code = self.order[self._pos]
        if name != exp_name or tuple(arr.shape) != shape or self._rows:
            raise CheckpointError(f"writer expected {exp_name} {list(shape)}, got {name} {list(arr.shape)}")
        self.write_rows(name, arr)

    def write_rows(self, name: str, rows: np.ndarray, raw: bool = False) -> None:
        """The next rows of tensor ``name`` (dim 0), in order; the tensor is complete
        when all its rows are written.  ``raw``: ``rows`` already holds the stored
        bits (bfloat16 as uint16), written as they are."""
        exp_name, shape, code = self.order[self._pos]
        lead = tuple(rows.shape[1:]) if shape else tuple(rows.shape)
        fits = (lead == tuple(shape[1:]) and self._rows + rows.shape[0] <= shape[0]) if shape else lead == ()
        if name != exp_name or not fits:
            raise CheckpointError(f"writer expected {exp_name} {list(shape)} (rows from {self._rows}), got {name} "
                                  f"{list(rows.shape)}")
        if raw and rows.dtype != np.dtype(SAFETENSORS_DTYPES[code]):
            raise CheckpointError(f"writer: raw rows of {name} must be {np.dtype(SAFETENSORS_DTYPES[code]).name} "
                                  f"(the {code} storage), got {rows.dtype}")
        if self._fh is None or (self._left == 0 and self._rows == 0):
            self._open_next()
        data = np.ascontiguousarray(rows) if raw else _to_storage_chunked(rows, code)
        _write_array(self._fh, data)
        self.total_bytes += data.nbytes
        self._rows += rows.shape[0] if shape else 1
        if not shape or self._rows == shape[0]:
            self._rows = 0
            self._left -= 1
            self._pos += 1

    def close(self) -> None:
        if self._pos != len(self.order):
            missing = [n for n, _, _ in self.order[self._pos:]][:5]
            raise CheckpointError(f"writer closed before tensors {missing} were written")
        if self._fh:
            self._fh.close()
            self._fh = None
        if len(self.names) > 1:
            weight_map = {n: fname for fname, s in self.plan for n, _, _ in s}
            (self.folder / INDEX).write_text(json.dumps(
                {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, indent=2))


def write_safetensors(path, tensors: Mapping[str, np.ndarray], dtype: Optional[str] = None,
                      metadata: Optional[dict] = None) -> Path:
    """One safetensors file (e.g. optimizer state), written to a temp name then renamed."""
    from .atomic import TMP_MARK, fsync_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    codes = [(n, a.shape, code_of(dtype or np.asarray(a).dtype)) for n, a in tensors.items()]
    head, _ = header_bytes(codes, dict(metadata or {}, format="pt"))
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            for (n, _, code) in codes:
                _write_array(f, to_storage(tensors[n], code))
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


__all__ = [
    "INDEX", "MAX_HEADER_BYTES", "SINGLE", "SafetensorsFile", "ShardedWriter", "code_of", "from_storage",
    "header_bytes", "nbytes", "parse_header", "to_storage", "write_safetensors",
]
