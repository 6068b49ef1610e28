"""Destination safety, as one mechanism: ``with AtomicDir(dst) as tmp:``.

Everything is written into ``.<dst>.hyperclone-tmp-<pid>-<hex>`` beside the
destination, fsynced, and renamed into place in one atomic step that succeeds
only if DST is still what was checked at the start:

- absent at the start: ``renameat2(RENAME_NOREPLACE)``, so a DST someone else
  created meanwhile (a rival run included) is never replaced; this run fails;
- present (``force``): only a folder hyperclone wrote (it holds ``hyperclone.json``
  or the ``.hyperclone-output`` mark every AtomicDir leaves) or an empty folder may
  be replaced, never a file, device or foreign folder, nor a folder that is, holds
  or lies inside a protected path (the source).  ``renameat2(RENAME_EXCHANGE)``
  swaps the two, then the swapped-out folder must be the very one checked (same
  inode), else the swap is undone.

Where renameat2 is missing (not Linux, or a file system without it) a lock file
beside DST serialises hyperclone runs and the old folder is parked as
``.<dst>.hyperclone-tmp-<pid>-old`` for the instant between two renames.  A run
that finds a parked folder of a dead process puts it back if DST is missing
(the replacement never happened) and deletes it otherwise (it did).  A temp
folder of a dead process is deleted only if it is hyperclone's own.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import stat
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Optional

from ..errors import OutputError

TMP_MARK = ".hyperclone-tmp-"
OUTPUT_MARK = ".hyperclone-output"
REPORT = "hyperclone.json"
PARKED = "-old"

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


# ---------------------------------------------------------------- renameat2


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


class _Unsupported(Exception):
    """renameat2 or the flag is not available on this file system."""


def _rename2(src: Path, dst: Path, flags: int) -> None:
    if _renameat2 is None:
        raise _Unsupported
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        raise _Unsupported
    raise OSError(err, os.strerror(err), str(dst))


# ---------------------------------------------------------------- what may be replaced


def is_hyperclone_output(folder) -> bool:
    """A folder hyperclone wrote (its report or its mark is there) or an empty one."""
    folder = Path(folder)
    try:
        if folder.is_symlink() or not folder.is_dir():
            return False
        return (folder / REPORT).is_file() or (folder / OUTPUT_MARK).is_file() or not any(folder.iterdir())
    except OSError:
        return False


def _identity(path: Path) -> Optional[tuple]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a folder"


def _real(path) -> str:
    return os.path.realpath(os.path.abspath(path))


def check_destination(dst, force: bool = False, protect: Iterable = ()) -> Optional[tuple]:
    """Refuse a destination this run may not write, naming the reason; returns the
    identity of the folder ``force`` will replace (None when DST is absent)."""
    dst = Path(dst)
    rd = _real(dst)
    for p in protect:
        rp = _real(p)
        if rd == rp:
            raise OutputError(f"{dst}: the destination is the source; choose another folder")
        if rp.startswith(rd.rstrip(os.sep) + os.sep):
            raise OutputError(f"{dst}: the destination contains the source ({p}); replacing it would delete "
                              "the source. Choose a folder outside it")
        if rd.startswith(rp.rstrip(os.sep) + os.sep):
            raise OutputError(f"{dst}: the destination lies inside the source ({p}); choose a folder outside it")
    try:
        st = os.lstat(dst)
    except (FileNotFoundError, NotADirectoryError):  # absent (a parent that is a file is named later)
        return None
    except OSError as exc:
        raise OutputError(f"{dst}: cannot be examined ({exc.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{dst} is a symbolic link; hyperclone writes only to a real path (give the link's "
                          "target, or another folder)")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{dst} exists and is not a folder ({_kind(st.st_mode)}); hyperclone never replaces it, "
                          "choose another destination")
    if not force:
        raise OutputError(f"{dst} already exists; pass --force to replace it (only a previous hyperclone output "
                          "or an empty folder is ever replaced)")
    if not is_hyperclone_output(dst):
        raise OutputError(f"{dst} is not a previous hyperclone output (no {REPORT}) and not empty; --force "
                          "replaces only folders hyperclone wrote. Choose another destination")
    return (st.st_dev, st.st_ino)


# ---------------------------------------------------------------- durability


def fsync_file(path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path) -> None:
    """Make a folder's entries durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_tree(folder) -> None:
    """fsync every file and folder under ``folder`` (deepest first)."""
    for dirpath, _, files in os.walk(folder, topdown=False):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                fsync_file(p)
        fsync_dir(dirpath)


# ---------------------------------------------------------------- lock (no renameat2)


@contextmanager
def _dir_lock(parent: Path, name: str):
    """An exclusive lock on ``.<name>.hyperclone-lock`` in ``parent``, removed on release
    (re-taken if another run removed the file between our open and our lock)."""
    path = parent / f".{name}.hyperclone-lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: an exclusive create, waited for
        fcntl = None
    if fcntl is None:  # pragma: no cover
        import time
        for _ in range(6000):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR)
                break
            except FileExistsError:
                time.sleep(0.01)
        else:
            raise OutputError(f"{path}: another hyperclone run holds this lock; remove the file if none runs")
    else:
        while True:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)


# ---------------------------------------------------------------- recovery


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_tmp(dst) -> list:
    """Settle what dead runs left beside ``dst``: a parked old DST goes back if DST is
    missing and is dropped if DST is there; a temp folder is removed if it is
    hyperclone's own.  Anything else is left in place, with a warning naming it."""
    dst = Path(dst)
    settled = []
    prefix = f".{dst.name}{TMP_MARK}"
    if not dst.parent.is_dir():
        return settled
    for p in sorted(dst.parent.iterdir()):
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split("-")[0]
        if not pid.isdigit() or _pid_alive(int(pid)) or p.is_symlink() or not p.is_dir():
            continue
        if p.name.endswith(PARKED) and _identity(dst) is None:  # killed before the new DST went in
            try:
                _rename_noreplace(p, dst)
            except FileExistsError:
                continue
            warnings.warn(f"{dst}: restored the folder a killed hyperclone run had parked at {p.name}",
                          stacklevel=2)
        elif p.name.endswith(PARKED) or is_hyperclone_output(p):  # a replaced DST, or our own temp
            shutil.rmtree(p, ignore_errors=True)
        else:
            warnings.warn(f"{p}: left by a killed hyperclone run but not hyperclone's own; left in place",
                          stacklevel=2)
            continue
        settled.append(p)
    return settled


# ---------------------------------------------------------------- commit


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` only if ``dst`` does not exist (FileExistsError otherwise)."""
    try:
        return _rename2(src, dst, _RENAME_NOREPLACE)
    except _Unsupported:
        pass
    with _dir_lock(dst.parent, dst.name):
        if _identity(dst) is not None:
            raise FileExistsError(errno.EEXIST, "exists", str(dst))
        os.rename(src, dst)


_DEFERRED = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
                  if hasattr(signal, n))


def signals_deferred(fn):
    """``fn()`` with the termination signals (Ctrl-C included) held until it returns; they
    are delivered right after, so the run still stops, with ``fn``'s work whole.  Only the
    main thread takes signals in Python; elsewhere (and where the OS has no signal mask)
    ``fn`` simply runs."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return fn()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        return fn()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class AtomicDir:
    """``with AtomicDir(dst) as tmp:`` write into ``tmp``; on success it is fsynced and
    renamed to ``dst``; on failure removed.  ``force`` replaces an existing ``dst``
    only if hyperclone wrote it (or it is empty); ``protect`` names folders (the
    source) that DST may not be, hold or lie inside."""

    def __init__(self, dst, force: bool = False, protect: Iterable = ()):
        self.dst = Path(os.path.abspath(dst))
        self.force = force
        self.protect = tuple(protect)

    def __enter__(self) -> Path:
        check_destination(self.dst, self.force, self.protect)
        try:  # like mkdir -p: the temp dir lives beside dst, so its parent must exist
            self.dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.dst.parent}: cannot create the destination's parent folder ({exc})") from None
        clean_stale_tmp(self.dst)
        self.expected = check_destination(self.dst, self.force, self.protect)  # after any restore
        self.tmp = self.dst.parent / f".{self.dst.name}{TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}"

        def create() -> None:
            try:
                self.tmp.mkdir()
                (self.tmp / OUTPUT_MARK).write_text(json.dumps({"written_by": "hyperclone"}) + "\n")
            except OSError as exc:
                shutil.rmtree(self.tmp, ignore_errors=True)  # ours: created just now
                raise OutputError(f"{self.dst.parent}: cannot write here ({exc.strerror})") from None

        try:  # a signal here (held while the folder is made, delivered right after) has no __exit__ to clean up
            signals_deferred(create)
        except BaseException:
            self._discard()
            raise
        return self.tmp

    def _discard(self) -> None:
        """Remove the temp folder, if what is there is still ours (an interrupted swap
        may have left someone else's folder under its name: that one stays).  Termination
        signals wait until it is gone: a second Ctrl-C must not stop the removal halfway."""
        def remove() -> None:
            if is_hyperclone_output(self.tmp):
                shutil.rmtree(self.tmp, ignore_errors=True)

        signals_deferred(remove)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._discard()
            if isinstance(exc, OSError) and _is_output_failure(exc, self.tmp):
                raise OutputError(f"{self.dst}: {_describe(exc)}; nothing was written") from exc
            return False
        try:
            sync_tree(self.tmp)
            self._commit()
        except BaseException as e:
            self._discard()
            if isinstance(e, OSError):
                raise OutputError(f"{self.dst}: {_describe(e)}; nothing was written") from e
            raise
        fsync_dir(self.dst.parent)
        return False

    def _commit(self) -> None:
        raced = (f"{self.dst} appeared while this run was writing (another process created it); it was left "
                 "as it is and this run's output discarded. Choose another destination")
        if self.expected is None:
            try:
                _rename_noreplace(self.tmp, self.dst)
            except FileExistsError:
                raise OutputError(raced) from None
            return
        changed = (f"{self.dst} was replaced by another folder while this run was writing; it was left as it "
                   "is and this run's output discarded. Rerun if you still want to replace it")
        try:
            _rename2(self.tmp, self.dst, _RENAME_EXCHANGE)
        except FileNotFoundError:  # the folder to replace is gone: nothing of anyone's is in the way
            try:
                _rename_noreplace(self.tmp, self.dst)
            except FileExistsError:
                raise OutputError(changed) from None
            return
        except _Unsupported:
            return self._commit_locked(changed)
        # self.tmp now holds what was at dst: it must be the folder we checked
        if _identity(self.tmp) != self.expected:
            _rename2(self.tmp, self.dst, _RENAME_EXCHANGE)
            raise OutputError(changed)
        parked = self._parked()
        os.rename(self.tmp, parked)
        shutil.rmtree(parked, ignore_errors=True)

    def _commit_locked(self, changed: str) -> None:
        parked = self._parked()
        with _dir_lock(self.dst.parent, self.dst.name):
            now = _identity(self.dst)
            if now is not None and now != self.expected:
                raise OutputError(changed)
            if now is not None:
                os.rename(self.dst, parked)
            os.rename(self.tmp, self.dst)
        if now is not None:
            shutil.rmtree(parked, ignore_errors=True)

    def _parked(self) -> Path:
        return self.dst.parent / f".{self.dst.name}{TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}{PARKED}"


_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _is_output_failure(exc: OSError, tmp: Path) -> bool:
    name = str(exc.filename or "")
    return exc.errno in _OUTPUT_ERRNOS or (bool(name) and name.startswith(str(tmp)))


def _describe(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "no space left on the device; free some space or choose a destination on another disk"
    if exc.errno == errno.EROFS:
        return "the file system is read-only; choose a writable destination"
    if exc.errno == errno.EFBIG:
        return "a file grew past the file system's size limit; choose a destination on another file system"
    return f"cannot be written ({exc.strerror}); check its permissions"


__all__ = ["AtomicDir", "OUTPUT_MARK", "TMP_MARK", "check_destination", "clean_stale_tmp", "fsync_dir",
           "fsync_file", "is_hyperclone_output", "sync_tree"]
