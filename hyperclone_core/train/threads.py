"""Intra-op CPU threads for training: the user's count, or the fastest count measured.

Why measure rather than guess: the best count depends on the model, the batch and on
what else the machine runs.  The rule this replaces (torch's ``auto_threads``: one
thread below 30M parameters) was tuned on a loaded 2-core VM and halved throughput on
a quiet one (a ~10M Llama, batch 8 x 128: 1,066 tokens/s against 2,160 with
``--threads 2``).  So ``ThreadTuner`` times the run's own first steps at each
candidate count, keeps the fastest, and measures again when the step time drifts
(the machine got busier or quieter) or every ``recheck_every`` steps.

An engine whose framework can resize its thread pool at any time offers
``set_threads`` (see ``engine.Engine``) and the loop drives it (``LoopThreads``).
One that can only size it when the framework starts (jax) or has no setting (mlx on
CPU) honours ``--threads`` where it can when it is built, and refuses the rest with
``fixed_threads``'s message.

Bits: a step's arithmetic may depend on the thread count (a reduction split over
threads sums in another order), so a run under the automatic policy is reproducible
to the last bit only when ``--threads`` names the count.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional

from .engine import TrainError

def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(os.cpu_count() or 1, 1)


def candidates(cores: int) -> tuple:
    """Thread counts worth timing on ``cores`` CPUs: powers of two, and ``cores`` itself
    (1, 2, 4, ..., cores): a handful of trials even on a large host."""
    out, n = [], 1
    while n < cores:
        out.append(n)
        n *= 2
    return tuple(out + [max(cores, 1)])


@dataclass
class ThreadTuner:
    """The automatic policy, as a state machine fed with step times (no clock of its own,
    so a test drives it with made-up times).

    ``threads()`` is the count for the next step; ``record(seconds)`` takes that step's
    time and returns a sentence when it decided something (a choice, or a re-measure).

    Measuring: after ``warmup`` untimed steps (a run's first step compiles or
    allocates), the candidates take turns, one timed step each per round, for up to
    ``trials`` rounds; after each round a candidate whose fastest step is over
    ``abandon`` times the leader's median is dropped, and the measuring ends as soon
    as one is left.  Turns and early drops keep the cost of trying a bad count to about
    one step: next to a busy process torch's 2 threads ran a small model's step 10x
    slower than 1 thread, and a whole trial of such steps cost more than the choice
    gained.  The fastest median wins.

    Running: the first ``window`` steps at the choice set its reference time; when
    all of the last ``window`` steps are over ``drift`` times it (another process took
    cores) or under it by that factor (the machine quietened), or ``recheck_every``
    steps after the choice (0: never), it measures again, the count in use first.
    Requiring every step of the window, not their median, keeps a shared machine's
    noise from re-measuring on every burst."""

    counts: tuple
    trials: int = 3
    warmup: int = 1
    abandon: float = 1.5
    drift: float = 1.3
    window: int = 6
    recheck_every: int = 400
    chosen: Optional[int] = None
    measured: dict = field(default_factory=dict)
    reference: Optional[float] = None
    _active: list = field(default_factory=list)
    _turn: int = 0
    _round: int = 0
    _times: dict = field(default_factory=dict)
    _recent: list = field(default_factory=list)
    _since: int = 0

    def __post_init__(self):
        if not self.counts or any(int(c) < 1 for c in self.counts):
            raise ValueError(f"thread counts must be >= 1, got {self.counts}")
        self.counts = tuple(int(c) for c in self.counts)
        if len(self.counts) == 1:
            self.chosen, self.warmup = self.counts[0], 0
        else:
            self._start()

    def _start(self) -> None:
        first = [self.chosen] if self.chosen in self.counts else []
        self._active = first + [c for c in self.counts if c not in first]
        self._turn = self._round = 0
        self._times = {c: [] for c in self.counts}
        self._recent, self.reference = [], None

    @property
    def measuring(self) -> bool:
        return bool(self._active)

    def threads(self) -> int:
        return self._active[self._turn] if self._active else self.chosen

    def record(self, seconds: float) -> Optional[str]:
        if self.warmup > 0:
            self.warmup -= 1
            return None
        if self._active:
            return self._trial(float(seconds))
        if len(self.counts) == 1:
            return None
        self._since += 1
        self._recent = (self._recent + [float(seconds)])[-self.window:]
        if len(self._recent) < self.window:
            return None
        if self.reference is None:
            self.reference = statistics.median(self._recent)
            return None
        ref = self.reference
        if min(self._recent) > ref * self.drift or max(self._recent) < ref / self.drift:
            now = statistics.median(self._recent)
            self._start()
            return (f"threads: the step time moved from {ref * 1e3:.1f} to {now * 1e3:.1f} ms at {self.chosen} "
                    f"thread(s); measuring {', '.join(map(str, self._active))} again")
        if self.recheck_every and self._since >= self.recheck_every:
            self._start()
            return f"threads: {self._since} steps at {self.chosen} thread(s); measuring again"
        return None

    def _trial(self, seconds: float) -> Optional[str]:
        self._times[self._active[self._turn]].append(seconds)
        self._turn += 1
        if self._turn < len(self._active):
            return None
        self._turn, self._round = 0, self._round + 1
        lead = min(statistics.median(self._times[c]) for c in self._active)
        self._active = [c for c in self._active if min(self._times[c]) <= self.abandon * lead]
        if len(self._active) > 1 and self._round < self.trials:
            return None
        return self._choose()

    def _choose(self) -> str:
        self.measured = {c: statistics.median(t) for c, t in self._times.items() if t}
        best = min(self._active, key=lambda c: (self.measured[c], c))
        verb = "keeps" if best == self.chosen else "uses"
        self.chosen, self._active, self._since, self._recent = best, [], 0, []
        table = ", ".join(f"{c}: {self.measured[c] * 1e3:.1f}" for c in self.counts if c in self.measured)
        return (f"threads: {verb} {best}, the fastest measured (median ms/step by thread count: {table}; "
                "--threads N fixes a count)")


class LoopThreads:
    """What the training loop does about threads, around each ``engine.step``:
    ``before()`` sets the count for the step, ``after(seconds)`` feeds the tuner.

    Explicit ``threads`` (> 0): set once through the engine's ``set_threads``.  0 (the
    automatic policy): tuned while the engine has ``set_threads``, its steps depend
    on CPU threads (``set_threads`` returns True) and the run is one process
    (``world`` 1: ranks sharing a host split its cores by their launcher's rule).  An
    engine without the hook fixed its threads when it was built."""

    def __init__(self, engine, threads: int, world: int = 1, log: Callable[[str], None] = lambda _m: None,
                 tuner: Optional[ThreadTuner] = None):
        self.engine, self.log = engine, log
        self.set = getattr(engine, "set_threads", None)
        self.tuner: Optional[ThreadTuner] = None
        self.current = 0
        if self.set is None:
            return
        if threads:
            self.set(int(threads))
            self.current = int(threads)
            return
        if world != 1:
            return
        tuner = tuner or ThreadTuner(candidates(available_cores()))
        if self.set(tuner.threads()):
            self.tuner, self.current = tuner, tuner.threads()
            if len(tuner.counts) == 1:
                log(f"threads: {tuner.chosen} (one core available)")

    def before(self) -> None:
        if self.tuner is not None and self.tuner.threads() != self.current:
            self.current = self.tuner.threads()
            self.set(self.current)

    def after(self, seconds: float) -> None:
        if self.tuner is not None:
            msg = self.tuner.record(seconds)
            if msg:
                self.log(msg)


def fixed_threads(backend: str, asked: int, running: int, why: str) -> None:
    """Refuse ``--threads asked`` for a backend whose thread count is fixed at
    ``running`` (``why``: the framework's reason, a clause); 0 (automatic) and
    ``running`` itself are accepted."""
    if asked and asked != running:
        raise TrainError(
            f"--threads {asked}: {why}, so this {backend} run has {running} CPU thread(s); pass --threads {running} "
            "or leave --threads out (0), or train with a backend that resizes its threads at any time "
            "(--backend torch)")


__all__ = ["LoopThreads", "ThreadTuner", "available_cores", "candidates", "fixed_threads"]
