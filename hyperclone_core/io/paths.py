"""Source safety: a checkpoint can only make hyperclone open regular files inside it.

Every path a checkpoint names (index entries, shards, tokenizer files) goes
through ``inside`` (no absolute paths, no ``..``, no symlink leading out) and is
opened with ``open_regular`` (non-blocking open, then fstat: a FIFO or a device
is refused before a single byte is read, so nothing can hang or read a device).
Errors name the file, never its content.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from ..errors import CheckpointError


def roots(folder) -> tuple:
    """The folders a checkpoint's files may resolve into: the folder itself, and for a
    Hugging Face cache snapshot (``models--org--name/snapshots/REV``) the repository's
    ``blobs`` folder, which the snapshot's files are symlinks into."""
    real = Path(os.path.realpath(folder))
    out = [real]
    if real.parent.name == "snapshots":
        blobs = real.parent.parent / "blobs"
        if blobs.is_dir():
            out.append(Path(os.path.realpath(blobs)))
    return tuple(out)


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def inside(folder, name: str, what: str) -> Path:
    """``folder / name``, refused unless it is a plain relative path that resolves
    (symlinks followed) inside the checkpoint folder."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise CheckpointError(f"{folder}: {what} names an invalid path {_show(name)}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or PureWindowsPath(name).is_absolute() or ".." in pure.parts:
        raise CheckpointError(
            f"{folder}: {what} names {_show(name)}, which lies outside the checkpoint folder; "
            "a checkpoint may only refer to files inside it"
        )
    path = Path(folder) / name
    real = Path(os.path.realpath(path))
    if not any(_within(real, r) for r in roots(folder)):
        raise CheckpointError(
            f"{path}: a symlink leading outside the checkpoint folder ({what}); copy the file "
            "into the folder instead of linking it"
        )
    return path


def open_regular(path, what: str = "file") -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (never blocks on a FIFO)."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing ({what})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be opened ({exc.strerror}); check its permissions") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{path}: not a regular file ({_kind(mode)}); the {what} must be a plain file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        # a signal landing inside fdopen may leave the fd owned (and closed) by a dropped file
        # object: closing it again must not replace the interrupt with EBADF
        with contextlib.suppress(OSError):
            os.close(fd)
        raise


def read_small(path, what: str, limit: int) -> bytes:
    """The whole of a small regular file (a config or an index), refused past ``limit`` bytes."""
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise CheckpointError(f"{path}: {size} bytes is too large for a {what} (limit {limit})")
        try:
            return f.read(limit + 1)
        except OSError as exc:
            raise CheckpointError(f"{path}: unreadable ({exc.strerror})") from None


def is_regular(path) -> bool:
    """Whether ``path`` exists as a regular file (after symlinks), without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def _show(value, limit: int = 80) -> str:
    """A value from a file, quoted and cut short: names are shown, contents never."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["inside", "is_regular", "open_regular", "read_small", "roots"]
