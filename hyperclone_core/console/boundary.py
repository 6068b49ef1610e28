"""The one error boundary every ``hyperclone`` command runs inside: each expected
failure becomes one line on stderr and the exit code of its class (``errors.py``);
anything else is an internal error (exit 70) whose traceback ``--debug`` or
``HYPERCLONE_DEBUG=1`` shows.  Ctrl-C is exit 130 with one line, and so are the
termination signals (SIGTERM, SIGHUP, SIGUSR1, SIGUSR2): each becomes a
``KeyboardInterrupt`` in the main thread, so every cleanup that runs for Ctrl-C (temp
folders, temp files, locks) runs for them too."""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Callable

from ..errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OUTPUT, HypercloneError


def _one_line(text: str) -> str:
    """One line, printable whatever bytes a path held (undecodable ones shown escaped)."""
    return " ".join(str(text).encode("utf-8", "backslashreplace").decode("utf-8").split())


def _classify(exc: BaseException) -> tuple:
    """(exit code, message) of a failure that escaped a command."""
    if isinstance(exc, HypercloneError):
        return exc.exit_code, _one_line(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return EXIT_OUTPUT, f"no space left on the device{where}; free some space or write elsewhere"
        if exc.errno in (errno.EROFS, errno.EFBIG, errno.EPIPE):
            return EXIT_OUTPUT, f"cannot write{where}: {exc.strerror}"
        return EXIT_INPUT, f"cannot access{where}: {exc.strerror or exc}; check the path and its permissions"
    if isinstance(exc, MemoryError):
        return EXIT_INPUT, ("out of memory: the model (or the growth asked for) does not fit this machine; "
                            "use smaller ratios or a machine with more memory")
    if isinstance(exc, RecursionError):
        return EXIT_INPUT, "an input is nested too deeply to be read"
    return EXIT_INTERNAL, (f"internal error ({type(exc).__name__}: {_one_line(exc)[:300]}); this is a bug in "
                           "hyperclone: rerun with --debug and report the traceback")


class Terminated(KeyboardInterrupt):
    """A termination signal, raised where the main thread is, like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


TERMINATING = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2") if hasattr(signal, n))


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _catch_signals() -> dict:
    """Turn the termination signals into ``Terminated`` while a command runs (main thread
    only; a signal someone else handles or ignores is left alone); returns what to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    saved = {}
    for sig in TERMINATING:
        try:
            if signal.getsignal(sig) is signal.SIG_DFL:
                saved[sig] = signal.signal(sig, _raise_terminated)
        except (OSError, ValueError):
            pass
    return saved


def _restore(saved: dict) -> None:
    for sig, handler in saved.items():
        try:
            signal.signal(sig, handler)
        except (OSError, ValueError):
            pass


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"hyperclone: warning: {_one_line(message)}", file=sys.stderr if file is None else file)


def debug_requested(argv: list) -> bool:
    return "--debug" in argv or os.environ.get("HYPERCLONE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def guarded(run: Callable[[], int], debug: bool = False, prog: str = "hyperclone") -> int:
    """``run()``'s exit code; every failure becomes one line and its class's code."""
    show = warnings.showwarning
    warnings.showwarning = _warning_line
    saved = _catch_signals()
    for stream in (sys.stdout, sys.stderr):  # a path with bytes that are not UTF-8 prints escaped, never fails
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    try:
        return int(run() or 0)
    except KeyboardInterrupt as exc:
        if debug:
            traceback.print_exc()
        how = (signal.Signals(exc.signum).name if isinstance(exc, Terminated) else "Ctrl-C")
        print(f"{prog}: interrupted ({how}); nothing partial was left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # --help, or a delegated command's own exit
        if exc.code is None or isinstance(exc.code, int):
            return int(exc.code or 0)
        print(f"{prog}: error: {_one_line(exc.code)}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the one boundary: classify, one line, exit code
        if debug:
            traceback.print_exc()
        code, message = _classify(exc)
        try:
            print(f"{prog}: error: {message}", file=sys.stderr)
        except OSError:
            pass
        return code
    finally:
        _restore(saved)
        warnings.showwarning = show


__all__ = ["TERMINATING", "Terminated", "debug_requested", "guarded"]
