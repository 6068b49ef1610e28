"""The demo's text: English every Python install carries, or any UTF-8 file.

``hyperclone demo`` must run with no download, so the default corpus is built from
the interpreter's own documentation: the language reference topics in
``pydoc_data.topics`` and the docstrings of the standard library's source files
(read with ``ast``, never imported).  Extraction is deterministic (sorted,
normalized), and the train/val split is by a sha256 of each document's text, so
the same document lands on the same side on every machine and in every run.  The
corpus depends on the Python version; its size and sha256 are printed so a run
can say exactly what it trained on.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import sys
import sysconfig
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..errors import ConfigError, HypercloneError

VAL_FRACTION = 0.1
MIN_DOCSTRING = 80      # shorter docstrings are mostly "Return x." noise
BLOCK_BYTES = 1024      # a text file is split into blocks of at least this size
_SKIP_DIRS = frozenset({"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3",
                        "turtledemo", "ensurepip", "__pycache__"})


MAX_TEXT_BYTES = 1 << 30


class CorpusError(ConfigError):
    """The text for training cannot be read (missing, not UTF-8, too small)."""


@dataclass(frozen=True)
class Corpus:
    """A train/val split of UTF-8 text; ``sha256`` identifies the whole corpus."""

    name: str
    train: bytes
    val: bytes
    documents: int
    sha256: str

    def describe(self) -> str:
        total = len(self.train) + len(self.val)
        return (f"corpus: {self.name}: {self.documents} documents, {total:,} bytes "
                f"(train {len(self.train):,}, val {len(self.val):,}); sha256 {self.sha256[:16]}")

    def to_dict(self) -> dict:
        return dict(name=self.name, documents=self.documents, train_bytes=len(self.train),
                    val_bytes=len(self.val), sha256=self.sha256)


def normalize(text: str) -> str:
    """NFC, Unix newlines, no trailing spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def in_val(doc: str, val_fraction: float = VAL_FRACTION) -> bool:
    """The stable split: the first 8 bytes of sha256(doc) as a fraction of 2**64."""
    h = int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big")
    return h < val_fraction * 2**64


def split(name: str, docs: Iterable[str], val_fraction: float = VAL_FRACTION) -> Corpus:
    """Documents -> Corpus; duplicates are dropped (they would leak across the split)."""
    seen, train, val = set(), [], []
    digest = hashlib.sha256()
    for doc in docs:
        if not doc.strip() or doc in seen:
            continue
        seen.add(doc)
        data = doc.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
        (val if in_val(doc, val_fraction) else train).append(data)
    if not train or not val:
        raise CorpusError(
            f"{name}: {len(seen)} documents give an empty {'train' if not train else 'validation'} split; "
            "use a longer text (at least a few tens of KB)"
        )
    return Corpus(name, b"\n".join(train) + b"\n", b"\n".join(val) + b"\n", len(seen), digest.hexdigest())


def stdlib_documents() -> list:
    """pydoc topics (sorted by key) then docstrings of stdlib files (sorted by path)."""
    docs = []
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; docstrings remain
        topics = {}
    docs += [normalize(topics[k]) for k in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not _SKIP_DIRS.intersection(p.relative_to(root).parts))
    for path in files:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc and len(doc) >= MIN_DOCSTRING:
                    docs.append(normalize(doc))
    return docs


@functools.lru_cache(maxsize=2)
def default_corpus(val_fraction: float = VAL_FRACTION) -> Corpus:
    """The embedded corpus (about 1.9 MB on Python 3.11; extracted once per process,
    a few seconds)."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor} stdlib docs"
    docs = stdlib_documents()
    if not docs:
        raise CorpusError("this Python has no pydoc_data and no stdlib sources; pass --text FILE")
    return split(name, docs, val_fraction)


def text_blocks(text: str, block_bytes: int = BLOCK_BYTES) -> list:
    """Paragraphs packed into blocks of at least ``block_bytes``: the units of the split."""
    blocks, cur, size = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        if not para.strip():
            continue
        cur.append(para)
        size += len(para.encode("utf-8")) + 2
        if size >= block_bytes:
            blocks.append("\n\n".join(cur) + "\n")
            cur, size = [], 0
    if cur:
        blocks.append("\n\n".join(cur) + "\n")
    return blocks


def from_file(path, val_fraction: float = VAL_FRACTION) -> Corpus:
    """Any UTF-8 text file, split by block (see ``text_blocks``)."""
    from ..io.paths import read_small

    p = Path(path)
    if not os.path.lexists(p):
        raise CorpusError(f"--text {path}: no such file; give a UTF-8 text file (or omit --text for the default)")
    try:  # a regular file of bounded size (a FIFO or a device is refused, never waited on)
        raw = read_small(p, "text file (--text)", MAX_TEXT_BYTES)
    except HypercloneError as exc:
        raise CorpusError(f"--text: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"--text {path}: not UTF-8 (byte {e.start}: {e.reason}); convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {p.name} > {p.stem}.utf8.txt`"
        ) from None
    return split(p.name, text_blocks(normalize(text)), val_fraction)


def load(text: Optional[str] = None, val_fraction: float = VAL_FRACTION) -> Corpus:
    """``--text FILE`` if given, else the embedded default."""
    return from_file(text, val_fraction) if text else default_corpus(val_fraction)


def main(argv=None) -> int:
    """``python -m hyperclone_core.demo.corpus [FILE]``: print the corpus's size and hash."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        print(load(args[0] if args else None).describe())
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Corpus", "CorpusError", "default_corpus", "from_file", "load", "split", "normalize",
           "in_val", "text_blocks", "stdlib_documents"]
