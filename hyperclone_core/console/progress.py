"""One progress bar for every long job (expand, train, the demo's phases): a line on
stderr that redraws in place on a terminal (bar, count, rate, ETA, a few values)
and prints a plain line every ``every`` seconds otherwise.  No dependencies."""

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
        self.values: dict = {}
        self.closed = False
        self.drawn_n = self.n

    def set_label(self, label: str) -> None:
        """Start a new phase. In a log (not a terminal) the phase that ends gets its closing line
        first, so every phase is named in the log however quickly it ran."""
        if label != self.label and self.enabled and not self.tty and self.n != self.drawn_n:
            self._draw("", time.perf_counter(), end="\n")
        self.label = label

    def update(self, n: int = 1, **values) -> None:
        self.n += n
        self.values.update({k: v for k, v in values.items() if v is not None})
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self.last >= 0.1 or self.n >= self.total:
                self._draw("\r", now)
        elif now - self.last >= self.every or self.n >= self.total:
            self._draw("", now, end="\n")

    def _draw(self, prefix: str, now: float, end: str = "") -> None:
        self.last, self.drawn_n = now, self.n
        done = self.n - self.start_n
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        frac = self.n / self.total if self.total else 1.0
        bar = "#" * int(20 * frac)
        vals = "  ".join(f"{k} {_fmt(v)}" for k, v in self.values.items())
        line = (f"{self.label} [{bar:<20}] {self.n}/{self.total} {self.unit}s  {rate:.3g} {self.unit}/s  "
                f"elapsed {_clock(elapsed)}  eta {_clock(eta)}" + (f"  {vals}" if vals else ""))
        self.stream.write(prefix + line + ("\x1b[K" if self.tty else "") + end)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and not self.closed:
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
            elif self.n != self.drawn_n:
                self._draw("", time.perf_counter(), end="\n")
        self.closed = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Progress"]
