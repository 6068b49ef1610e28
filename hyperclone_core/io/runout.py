"""Run outputs, as one mechanism for ``train`` and ``demo``: ``RunDir(out, kind)``.

``AtomicDir`` replaces a whole destination folder in one step (``expand``); a run
instead *owns* a folder it keeps writing into (checkpoints, metrics, plots, its
recipe), so the rules are:

- a run owns OUT through a mark (``.hyperclone-run``: ``{"kind": "train"}``); OUT may
  be absent, empty, a previous run of the same kind, or (older runs, written before
  the mark) a folder holding only what such a run writes.  Anything else -- a
  symlink, a file, a foreign folder, another kind's output -- is refused;
- one run at a time per OUT: an exclusive ``flock`` on ``OUT/.hyperclone-lock``,
  which the kernel releases when the process dies (a killed run leaves no lock);
- every file a run writes in OUT is written beside its name and renamed over it
  (``replace``), so a symlink planted in OUT is replaced, never written through, and
  a reader never sees half a file; temp files of dead runs are removed at the claim;
- no output may alias an input: compared by file identity (``st_dev``, ``st_ino``),
  not by name, so a hard link, a symlink or ``..`` in a path cannot hide it; OUT may
  not be, contain or lie inside an input folder (the model);
- a run deletes nothing it did not write (the demo's three files are replaced one by
  one; what else a user keeps in OUT stays).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

from ..errors import OutputError
from .atomic import TMP_MARK, _pid_alive, clean_stale_tmp, fsync_dir, fsync_file

RUN_MARK = ".hyperclone-run"
LOCK = ".hyperclone-lock"

_HELD: dict = {}  # identity of OUT -> [RunDir, claims]: a process re-claiming its own OUT (the CLI, then the loop)


def identity(path) -> Optional[tuple]:
    """(st_dev, st_ino) of ``path`` (symlinks followed); None when it does not exist."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def _ancestors(path) -> set:
    """The identities of ``path`` and of every folder above it."""
    out, p = set(), Path(os.path.abspath(path))
    while True:
        i = identity(p)
        if i is not None:
            out.add(i)
        if p.parent == p:
            return out
        p = p.parent


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a plain file"


def input_identities(inputs: Mapping[str, object]) -> dict:
    """identity -> what, for every input file, and for an input folder each file directly in it."""
    ids: dict = {}
    for what, path in inputs.items():
        if path is None:
            continue
        i = identity(path)
        if i is None:
            continue
        ids.setdefault(i, f"{what} {path}")
        if os.path.isdir(path):
            try:
                for entry in os.scandir(path):
                    j = identity(entry.path)
                    if j is not None:
                        ids.setdefault(j, f"{what} file {entry.path}")
            except OSError:
                pass
    return ids


def check_file_output(path, option: str, inputs: Mapping[str, object]) -> Path:
    """Refuse an output file (``--log-jsonl``) that is an input, or exists as anything
    but a regular file (a FIFO, a device, a folder): nothing is opened."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot be examined ({exc.strerror})") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{option} {path}: exists and is {_kind(st.st_mode)}, not a file; hyperclone writes "
                          "only regular files. Choose another path")
    if st is not None:
        hit = input_identities(inputs).get((st.st_dev, st.st_ino))
        if hit is not None:
            raise OutputError(f"{option} {path} is the same file as the {hit}; writing it would destroy an input. "
                              "Choose another path")
    return path


def _tmp_name(name: str) -> str:
    """A hidden temp name beside ``name``, keeping its suffix (a plot's format is read from it)."""
    return f".{name}{TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}{Path(name).suffix}"


def replace_file(path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` a temp file beside ``path``, fsync it and rename it over ``path``:
    a symlink at ``path`` is replaced, never written through; a failure leaves ``path``
    as it was and no temp file."""
    path = Path(path)
    tmp = path.with_name(_tmp_name(path.name))
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):  # an output-side failure (disk full, read-only, permissions): exit 4
            raise OutputError(f"{path}: cannot be written ({exc.strerror or exc}); it was left as it was") from None
        raise
    fsync_dir(path.parent)
    return path


class _Log:
    """An append-only metrics file whose write failures are output errors (exit 4)."""

    def __init__(self, f, path: Path):
        self._f, self.path = f, path

    def _do(self, fn, *a):
        try:
            return fn(*a)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot be written ({exc.strerror or exc})") from None

    def write(self, text: str) -> int:
        return self._do(self._f.write, text)

    def flush(self) -> None:
        self._do(self._f.flush)

    def close(self) -> None:
        self._do(self._f.close)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_log(path, initial: str = ""):
    """A metrics file opened for appending: its first ``initial`` text written whole by
    ``replace_file``, then opened without following a symlink and without blocking,
    and refused unless it is still the regular file just written."""
    path = Path(path)
    replace_file(path, lambda tmp: tmp.write_text(initial, encoding="utf-8"))
    flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be opened for writing ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{path}: replaced by something that is not a file while this run opened it")
    return _Log(os.fdopen(fd, "a", encoding="utf-8"), path)


class RunDir:
    """The folder one run owns (module docstring).  ``check()`` refuses, without
    writing anything, an OUT this run may not use; ``claim()`` then creates it, takes
    the lock and marks it.  ``legacy(out)`` says whether an unmarked, non-empty folder
    is an older run of this kind; ``inputs`` names the files and folders OUT and its
    files may not be, hold or lie inside; ``files`` are the names the run writes in OUT,
    checked against the inputs too."""

    def __init__(self, out, kind: str, inputs: Optional[Mapping[str, object]] = None,
                 files: Iterable[str] = (), legacy: Optional[Callable[[Path], bool]] = None, option: str = "--out"):
        self.out = Path(os.path.abspath(out))
        self.shown = str(out)
        self.kind = kind
        self.inputs = dict(inputs or {})
        self.files = tuple(files)
        self.legacy = legacy
        self.option = option
        self._fd: Optional[int] = None

    # -------------------------------------------------------------- checks

    def owner(self) -> Optional[str]:
        """The kind that owns OUT per its mark ("" for an empty or absent OUT, None for
        a folder with no mark)."""
        try:
            entries = [e for e in os.listdir(self.out) if e != LOCK]
        except FileNotFoundError:
            return ""
        if not entries:
            return ""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:  # a mark that is a FIFO, a device or a symlink is no mark (and is never waited on)
            fd = os.open(self.out / RUN_MARK, flags)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            doc = json.loads(os.read(fd, 4096).decode("utf-8"))
            return str(doc["kind"]) if isinstance(doc, dict) else None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        finally:
            os.close(fd)

    def check(self) -> "RunDir":
        out, shown = self.out, f"{self.option} {self.shown}"
        try:
            st = os.lstat(out)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise OutputError(f"{shown}: cannot be examined ({exc.strerror})") from None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise OutputError(f"{shown} is a symbolic link; a run writes only into a real folder (give the link's "
                              "target, or another folder)")
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{shown} exists and is {_kind(st.st_mode)}, not a folder; choose another --out")
        self._check_aliases()
        if st is not None:
            owner = self.owner()
            if owner is None and not (self.legacy is not None and self.legacy(out)):
                raise OutputError(f"{shown} exists, is not empty and is not a previous hyperclone {self.kind} run "
                                  f"(no {RUN_MARK}); a run never writes into a folder it does not own. Choose "
                                  "another --out, or an empty folder")
            if owner not in (None, "", self.kind):
                raise OutputError(f"{shown} holds a hyperclone {owner} run, not a {self.kind} run; choose another "
                                  "--out")
        return self

    def _check_aliases(self) -> None:
        shown = f"{self.option} {self.shown}"
        above = _ancestors(self.out)
        for what, path in self.inputs.items():
            if path is None or identity(path) is None:
                continue
            i = identity(path)
            if i == identity(self.out):
                raise OutputError(f"{shown} is the {what} ({path}); the run would write into its own input. "
                                  "Choose another folder")
            if i in above and os.path.isdir(path):
                raise OutputError(f"{shown} lies inside the {what} ({path}); choose a folder outside it")
            if identity(self.out) is not None and identity(self.out) in _ancestors(path):
                raise OutputError(f"{shown} contains the {what} ({path}); choose a folder that holds no input")
        ids = input_identities(self.inputs)
        for name in self.files:
            hit = ids.get(identity(self.out / name))
            if hit is not None:
                raise OutputError(f"{self.out / name} (written by this run) is the same file as the {hit}; "
                                  "choose another --out")

    # -------------------------------------------------------------- claim

    def claim(self) -> "RunDir":
        """Create OUT, take its lock (refused while another run holds it), re-check it
        under the lock, mark it, and remove temp files dead runs left in it."""
        key = identity(self.out)
        if key is not None and key in _HELD:
            _HELD[key][1] += 1
            return _HELD[key][0]
        self.check()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.option} {self.shown}: cannot be created ({exc.strerror})") from None
        self._lock()
        try:
            self.check()  # under the lock: what a rival did meanwhile counts
            if self.owner() != self.kind:
                replace_file(self.out / RUN_MARK, lambda tmp: tmp.write_text(
                    json.dumps({"kind": self.kind, "written_by": "hyperclone"}) + "\n"))
            self.clean()
        except BaseException:
            self._unlock()
            raise
        _HELD[identity(self.out)] = [self, 1]
        return self

    def _lock(self) -> None:
        """flock OUT/.hyperclone-lock; the holder removes the file when it is done (a
        killed holder leaves the file but not the lock: the kernel drops it), and a
        lock taken on a file removed meanwhile is taken again on the new one."""
        import fcntl

        path = self.out / LOCK
        flags = os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
            getattr(os, "O_CLOEXEC", 0)
        while True:
            try:
                fd = os.open(path, flags, 0o600)
            except OSError as exc:
                raise OutputError(f"{path}: cannot be opened as this run's lock ({exc.strerror}); remove it if it "
                                  "is not a plain file") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OutputError(f"{path}: not a plain file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise OutputError(f"{self.option} {self.shown}: another hyperclone run is writing into it now; "
                                  "wait for it to finish, or choose another --out") from None
            try:
                if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self._fd = fd

    def _unlock(self) -> None:
        if self._fd is not None:
            try:
                os.unlink(self.out / LOCK)  # still ours: removed before the lock goes
            except OSError:
                pass
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def release(self) -> None:
        key = next((k for k, v in _HELD.items() if v[0] is self), None)
        if key is not None:
            _HELD[key][1] -= 1
            if _HELD[key][1] > 0:
                return
            del _HELD[key]
        self._unlock()

    def __enter__(self) -> "RunDir":
        return self.claim()

    def __exit__(self, *exc) -> None:
        self.release()

    # -------------------------------------------------------------- writing

    def clean(self) -> list:
        """Remove what killed runs left in OUT: their temp files, and their temp folders
        (through ``clean_stale_tmp``, which removes only hyperclone's own)."""
        removed = []
        for entry in os.scandir(self.out):
            if TMP_MARK not in entry.name or not entry.name.startswith("."):
                continue
            base, rest = entry.name[1:].split(TMP_MARK, 1)
            pid = rest.split("-")[0]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                removed += [str(p) for p in clean_stale_tmp(self.out / base)]
        return removed

    def replace(self, name: str, write: Callable[[Path], None]) -> Path:
        """Write OUT/``name`` with ``replace_file``."""
        return replace_file(self.out / name, write)


def held(out) -> Optional[RunDir]:
    """The RunDir this process holds on ``out``, if any."""
    key = identity(out)
    return _HELD[key][0] if key in _HELD else None


__all__ = ["LOCK", "RUN_MARK", "RunDir", "check_file_output", "held", "identity", "input_identities", "open_log",
           "replace_file"]
