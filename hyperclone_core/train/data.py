"""Training data for every backend: token files, text, and a deterministic batch sampler.

Numpy only.  Batches are a pure function of (seed, step), so a run resumes at any
step with no sampler state to save, and every backend (torch, JAX, MLX) given the
same seed trains on exactly the same batches.  A global batch is drawn once and
then split by rank and micro-step, so data-parallel and accumulated runs see the
same sequences as a single-process run.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import ConfigError, HypercloneError
from ..io.paths import open_regular, read_small

TOKEN_DTYPES = ("uint8", "uint16", "uint32", "int32", "int64")
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py", ".json", ".csv", ".html", ".xml")
MAX_TEXT_BYTES = 1 << 31
"""A text file is read whole and tokenized in memory; past 2 GiB, tokenize it once into
a ``.bin``/``.npy`` token file (memory-mapped, any size)."""
MAX_TOKENIZER_BYTES = 256 << 20


class DataError(ConfigError):
    """A data file that cannot be used for training as given."""


class TokenMap(np.memmap):
    """A memory-mapped token file that knows its file and the size it was mapped at, so
    ``check_mapped`` can refuse to read it once another process has truncated it (a
    read past the end of a mapping is SIGBUS, which no Python code can catch).  Views
    and slices carry the guard along."""

    def __array_finalize__(self, obj):
        super().__array_finalize__(obj)
        self._guard = getattr(obj, "_guard", None)


def read_span(tokens, start: int, count: int) -> np.ndarray:
    """``tokens[start:start + count]`` as a fresh array.  From a mapped token file it is
    read with ``pread`` from the open file, never through the mapping, so a file that
    shrinks underneath is a short read (an input error), never SIGBUS."""
    guard = getattr(tokens, "_guard", None)
    if guard is None:
        return np.array(tokens[start:start + count])
    f, need, shown, base, offset = guard
    item = tokens.dtype.itemsize
    pos = offset + (tokens.__array_interface__["data"][0] - base) + start * item
    want = count * item
    raw = os.pread(f.fileno(), want, pos)
    if len(raw) < want:
        check_mapped(tokens)
        raise DataError(f"{shown}: the data file ends early (another process truncated it?); give the run a file "
                        "nobody changes")
    return np.frombuffer(raw, dtype=tokens.dtype).copy()


def check_mapped(tokens) -> None:
    """Refuse to read a memory-mapped token file that shrank since it was mapped."""
    guard = getattr(tokens, "_guard", None)
    if guard is None:
        return
    f, need, shown = guard[:3]
    try:
        now = os.fstat(f.fileno()).st_size
    except (OSError, ValueError):
        raise DataError(f"{shown}: the data file can no longer be read") from None
    if now < need:
        raise DataError(f"{shown}: the data file shrank from {need} to {now} bytes while this run read it "
                        "(another process truncated or rewrote it in place); nothing more was read from it. "
                        "Give the run a file nobody changes")


def _mapped(f, path: Path, dtype, offset: int, count: int) -> np.ndarray:
    need = offset + count * np.dtype(dtype).itemsize
    arr = TokenMap(f, dtype=dtype, mode="r", offset=offset, shape=(count,))
    arr._guard = (f, need, str(path), arr.__array_interface__["data"][0], offset)
    return arr


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocab 256, no training, no files; round-trips any text."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids) -> str:
        ids = np.asarray(ids).ravel()
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise DataError(f"ByteTokenizer.decode: ids must be 0-255, got {int(ids.min())}..{int(ids.max())}")
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class HFTokenizer:
    """A checkpoint's own ``tokenizer.json`` through the ``tokenizers`` package."""

    def __init__(self, path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DataError(
                f"{path}: reading tokenizer.json needs the `tokenizers` package "
                "(pip install 'hyperclone[hf]'), or pass --tokenizer bytes"
            ) from None
        self.path = Path(path)
        raw = read_small(self.path, "tokenizer", MAX_TOKENIZER_BYTES)
        try:
            self._tok = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as exc:  # noqa: BLE001 - the tokenizers package raises its own types
            raise DataError(f"{self.path}: not a tokenizer the `tokenizers` package can read "
                            f"({' '.join(str(exc).split())[:160]}); pass --tokenizer bytes or another "
                            "tokenizer.json") from None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.uint32 if self.vocab_size > 65535 else np.uint16)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).ravel()])


def get_tokenizer(name: str = "auto", model_dir=None):
    """``bytes``; ``auto``: the model folder's tokenizer.json when it has one and
    ``tokenizers`` is installed, else bytes; or a path to a tokenizer.json."""
    if name == "bytes":
        return ByteTokenizer()
    if name == "auto":
        cand = Path(model_dir) / "tokenizer.json" if model_dir is not None else None
        if cand is not None and os.path.lexists(cand):
            return HFTokenizer(cand)  # never bytes in its place: it says what to install
        return ByteTokenizer()
    p = Path(name)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not os.path.lexists(p):
        raise DataError(f"--tokenizer {name!r}: not 'bytes', 'auto' or a tokenizer.json file")
    return HFTokenizer(p)


def load_tokens(path, dtype: Optional[str] = None, vocab: Optional[int] = None, tokenizer=None) -> np.ndarray:
    """A 1-D token array from ``.npy`` (memory-mapped), raw ``.bin`` (memory-mapped;
    ``dtype`` required: the file has no header) or text (tokenized; bytes by default).

    With ``vocab``, refuses ids the model cannot embed, naming the file and the id.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".bin"):
        f = _open_data(path)
        try:
            arr = _npy(f, path, dtype) if suffix == ".npy" else _bin(f, path, dtype)
        except BaseException:
            f.close()
            raise
    else:
        tok = tokenizer or ByteTokenizer()
        try:
            raw = read_small(path, "data file", MAX_TEXT_BYTES)
        except HypercloneError as exc:
            raise DataError(str(exc) + ("; tokenize a large text once into a .bin or .npy token file"
                                        if "too large" in str(exc) else "")) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; token files must end in .bin (raw) or .npy") from None
        if suffix in (".jsonl", ".ndjson"):
            warnings.warn(f"{path}: a JSON Lines file is trained on as its raw text (braces, keys and quotes "
                          "included); extract the text field into a .txt file if that is not what you want",
                          stacklevel=2)
        arr = tok.encode(text)
        if vocab is not None and getattr(tok, "vocab_size", 0) > vocab:
            raise DataError(f"{path}: the tokenizer has {tok.vocab_size} ids but the model's vocab is {vocab}; "
                            "use the model's own tokenizer (--tokenizer MODEL_DIR/tokenizer.json)")
    if len(arr) == 0:
        raise DataError(f"{path}: holds no tokens")
    if vocab is not None:
        check_vocab(arr, vocab, str(path))
    return arr


def _open_data(path: Path):
    try:
        return open_regular(path, "data file")
    except HypercloneError as exc:
        raise DataError(str(exc).replace("missing (data file)", "no such data file")) from None


def _npy(f, path: Path, dtype) -> np.ndarray:
    """A .npy file's array, memory-mapped from the open file ``f`` (its header parsed
    here: no pickles, and the size it promises checked against the file)."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(f)
        reader = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, npdtype = reader(f)
    except (ValueError, OSError, SyntaxError, TypeError) as exc:
        raise DataError(f"{path}: not a plain .npy array ({' '.join(str(exc).split())[:160]}); save tokens with "
                        "np.save") from None
    if npdtype.hasobject or npdtype.kind not in "ui":
        raise DataError(f"{path}: holds {npdtype} values; token files must hold integers "
                        f"({', '.join(TOKEN_DTYPES)})")
    if dtype is not None and np.dtype(dtype) != npdtype:
        raise DataError(f"{path}: --data-dtype {dtype} given but the .npy holds {npdtype}; drop the flag")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    offset = f.tell()
    size = os.fstat(f.fileno()).st_size
    if offset + count * npdtype.itemsize > size:
        raise DataError(f"{path}: the header promises {count} tokens ({offset + count * npdtype.itemsize} bytes) but "
                        f"the file has {size} bytes: it is truncated")
    if count == 0:
        raise DataError(f"{path}: holds no tokens")
    return _mapped(f, path, npdtype, offset, count)


def _bin(f, path: Path, dtype) -> np.ndarray:
    if dtype is None:
        raise DataError(f"{path}: a .bin token file has no header; say its dtype "
                        f"(--data-dtype uint16 or uint32)")
    if str(dtype) not in TOKEN_DTYPES:
        raise DataError(f"{path}: dtype {dtype!r} is not a token dtype; use one of {', '.join(TOKEN_DTYPES)}")
    item = np.dtype(dtype).itemsize
    size = os.fstat(f.fileno()).st_size
    if size % item:
        raise DataError(f"{path}: {size} bytes is not a multiple of {item} ({dtype}): the dtype is wrong "
                        "or the file is truncated")
    if size == 0:
        raise DataError(f"{path}: holds no tokens")
    return _mapped(f, path, np.dtype(dtype), 0, size // item)


def check_vocab(tokens: np.ndarray, vocab: int, what: str = "tokens", chunk: int = 1 << 24) -> None:
    """Refuse ids outside [0, vocab), scanning in chunks (token files can be huge)."""
    hi, lo = -1, 0
    for a in range(0, len(tokens), chunk):
        part = read_span(tokens, a, min(chunk, len(tokens) - a))
        hi = max(hi, int(part.max()))
        lo = min(lo, int(part.min()))
    if lo < 0:
        raise DataError(f"{what}: holds negative token id {lo}; token ids must be >= 0")
    if hi >= vocab:
        raise DataError(
            f"{what}: holds token id {hi} but the model's vocab has {vocab} ids (0..{vocab - 1}): the file "
            "was tokenized for another model or read with the wrong dtype; retokenize it with this "
            "model's tokenizer or pass the right --data-dtype"
        )


def hold_out(tokens: np.ndarray, val_fraction: float = 0.05, min_val: int = 0) -> tuple:
    """(train, val) views: the last ``val_fraction`` of the tokens is held out."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = max(int(len(tokens) * val_fraction), min_val) if val_fraction else 0
    if n_val >= len(tokens):
        raise DataError(f"{len(tokens)} tokens cannot hold out {n_val} for validation; give more data")
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:]


TokenSource = Union[np.ndarray, str, Path]


@dataclass(frozen=True)
class BatchSampler:
    """Random windows of ``seq_len + 1`` tokens: ``batch(step)`` is a pure function of
    (seed, step), so the data position of a run is its step.

    ``batch(step, rank, world, micro, n_micro)`` is the slice of the global batch one
    rank uses for one accumulation micro-step; the slices tile the global batch.
    """

    tokens: np.ndarray
    batch_size: int
    seq_len: int
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1 or self.seq_len < 1:
            raise DataError(f"batch_size and seq_len must be >= 1 (got {self.batch_size}, {self.seq_len})")
        if len(self.tokens) < self.seq_len + 1:
            raise DataError(
                f"the data holds {len(self.tokens)} tokens, fewer than seq_len + 1 = {self.seq_len + 1}; "
                "lower --seq-len or give more data"
            )

    def starts(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([int(self.seed), int(step)])
        return rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)

    def batch(self, step: int, rank: int = 0, world: int = 1, micro: int = 0, n_micro: int = 1) -> np.ndarray:
        parts = world * n_micro
        if self.batch_size % parts:
            raise DataError(
                f"batch_size {self.batch_size} must divide evenly into {world} ranks x {n_micro} "
                f"accumulation steps; use a multiple of {parts}"
            )
        per = self.batch_size // parts
        k = rank * n_micro + micro
        starts = self.starts(step)[k * per:(k + 1) * per]
        if getattr(self.tokens, "_guard", None) is not None:  # a token file: read, never touched through the map
            return np.stack([read_span(self.tokens, int(a), self.seq_len + 1) for a in starts]).astype(np.int64)
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        return np.asarray(self.tokens[idx], dtype=np.int64)


def fixed_batches(tokens: np.ndarray, n: int, batch_size: int, seq_len: int, seed: int = 0,
                  rank: int = 0, world: int = 1) -> list:
    """``n`` validation batches fixed for the whole run, so evaluations compare
    (this rank's slice of each; the mean over ranks is the single-process value)."""
    s = BatchSampler(tokens, batch_size, seq_len, seed=seed + 0x5EED)
    return [s.batch(i, rank, world) for i in range(n)]


__all__ = [
    "BatchSampler", "ByteTokenizer", "DataError", "HFTokenizer", "TokenMap", "check_mapped", "check_vocab",
    "read_span", "fixed_batches",
    "get_tokenizer", "hold_out", "load_tokens",
]
