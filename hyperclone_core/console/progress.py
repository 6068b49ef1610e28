"""One progress bar for every long job (expand, train, the demo's phases): a line on
stderr that redraws in place on a terminal (bar, count, rate, ETA, a few values)
and prints a plain line every ``every`` seconds otherwise.  Status lines go through
``say`` (or ``Progress.note``), which clears the bar's line first and redraws it
after, so a message is never glued onto the bar.  The rate and the ETA are measured
from the first update on (the first step of a run carries start-up and compilation),
and the ETA shows ``--:--`` until there is a rate to go by.  No dependencies."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """``bar = Progress(total, "train", unit="step")``; ``bar.update(1, loss=2.1)``; ``bar.close()``.

    ``initial`` counts work done before this process (a resumed run): the rate and
    ETA use only what this process did."""

    def __init__(self, total: int, label: str, unit: str = "it", enabled: bool = True, initial: int = 0,
                 stream: Optional[TextIO] = None, every: float = 10.0):
        self.total, self.label, self.unit = max(int(total), 0), label, unit
        self.n = self.start_n = int(initial)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.t0 = self.last = time.perf_counter()
        self.mark: Optional[tuple] = None  # (time, n) of the first update: the rate's origin
        self.values: dict = {}
        self.closed = False
        self.drawn_n = self.n
        self.on_screen = False  # a terminal line of this bar is drawn and not ended
        if enabled:
            _ACTIVE.append(self)

    def set_label(self, label: str) -> None:
        """Start a new phase. In a log (not a terminal) the phase that ends gets its closing line
        first, so every phase is named in the log however quickly it ran."""
        if label != self.label and self.enabled and not self.tty and self.n != self.drawn_n:
            self._draw("", time.perf_counter(), end="\n")
        self.label = label

    def note(self, message: str, stream: Optional[TextIO] = None) -> None:
        """Print ``message`` on a line of its own (to ``stream``, default stdout): the bar's
        line is cleared first and redrawn after, so neither is glued onto the other."""
        out = stream or sys.stdout
        if self.enabled and self.tty and self.on_screen:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        out.write(message + "\n")
        out.flush()
        if self.enabled and self.tty and self.on_screen:
            self._draw("\r", time.perf_counter())

    def update(self, n: int = 1, **values) -> None:
        now = time.perf_counter()
        self.n += n
        first = self.mark is None
        if first:
            self.mark = (now, self.n)  # the rate counts from here: the first update carried start-up
        self.values.update({k: v for k, v in values.items() if v is not None})
        if not self.enabled:
            return
        if self.tty:
            if first or now - self.last >= 0.1 or self.n >= self.total:
                self._draw("\r", now)
        elif now - self.last >= self.every or self.n >= self.total:
            self._draw("", now, end="\n")

    def _draw(self, prefix: str, now: float, end: str = "") -> None:
        self.last, self.drawn_n = now, self.n
        elapsed = now - self.t0
        rate = self.rate(now)
        eta = _clock((self.total - self.n) / rate) if rate > 0 else "--:--"
        frac = self.n / self.total if self.total else 1.0
        bar = "#" * int(20 * frac)
        vals = "  ".join(f"{k} {_fmt(v)}" for k, v in self.values.items())
        line = (f"{self.label} [{bar:<20}] {self.n}/{self.total} {self.unit}s  {rate:.3g} {self.unit}/s  "
                f"elapsed {_clock(elapsed)}  eta {eta}" + (f"  {vals}" if vals else ""))
        self.stream.write(prefix + line + ("\x1b[K" if self.tty else "") + end)
        self.stream.flush()
        self.on_screen = self.tty and not end

    def rate(self, now: Optional[float] = None) -> float:
        """Units per second since the first update (0 until one has followed it)."""
        now = time.perf_counter() if now is None else now
        if self.mark is None:
            return 0.0
        t, n = self.mark
        return (self.n - n) / (now - t) if now > t and self.n > n else 0.0

    def close(self) -> None:
        if self.enabled and not self.closed:
            if self.tty:
                self._draw("\r", time.perf_counter(), end="\n")  # the last values (a final evaluation) shown
            elif self.n != self.drawn_n:
                self._draw("", time.perf_counter(), end="\n")
        self.closed = True
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_ACTIVE: list = []
"""Bars open in this process, newest last: ``say`` clears the newest one's line."""


def say(message: str, stream: Optional[TextIO] = None) -> None:
    """A status line that never lands on a progress bar's line (``Progress.note`` of the
    open bar, a plain print when none is open)."""
    if _ACTIVE:
        _ACTIVE[-1].note(message, stream)
    else:
        out = stream or sys.stdout
        out.write(message + "\n")
        out.flush()


__all__ = ["Progress", "say"]
