"""The one source of the project's timing claims: runs each timed command as a user
would (a fresh process), prints a table, and with ``--write`` puts it into
docs/timings.md, which the README and ``--help`` texts point at instead of carrying
numbers of their own.

    python benchmarks/timings.py                  # the quick demo, 1 run, print only
    python benchmarks/timings.py --runs 3 --write # median of 3, written to docs/timings.md
    python benchmarks/timings.py --what quick default --write

Each row states the load average around it: on a shared machine the same command
takes several times longer next to a busy process, and the table says which it was.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "timings.md"
COMMANDS = {
    "quick": ("hyperclone demo --quick", ["demo", "--quick", "--no-progress"]),
    "quick-1thread": ("hyperclone demo --quick --threads 1", ["demo", "--quick", "--no-progress", "--threads", "1"]),
    "default": ("hyperclone demo", ["demo", "--no-progress"]),
}


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average here
        return float("nan")


def time_once(argv: list) -> tuple:
    """(wall seconds, load before, load after) of one fresh ``hyperclone`` process."""
    with tempfile.TemporaryDirectory() as tmp:
        before = load()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "hyperclone_core.cli", *argv, "--out", str(Path(tmp) / "o")],
                              capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return wall, before, load()


def _clock(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m else f"{sec} s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", nargs="+", default=["quick"], choices=sorted(COMMANDS))
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--write", action="store_true", help=f"write the table to {DOC.relative_to(ROOT)}")
    a = ap.parse_args(argv)
    rows = []
    for key in a.what:
        shown, args = COMMANDS[key]
        runs = [time_once(args) for _ in range(a.runs)]
        walls = [r[0] for r in runs]
        loads = [x for r in runs for x in r[1:]]
        rows.append((shown, statistics.median(walls), min(walls), max(walls), min(loads), max(loads)))
    head = ["| command | median wall | min | max | load average around it |", "|---|---|---|---|---|"]
    table = head + [f"| `{c}` | {_clock(m)} | {_clock(lo)} | {_clock(hi)} | {la:.1f}-{lb:.1f} |"
                    for c, m, lo, hi, la, lb in rows]
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
               f"{a.runs} run(s) each, {time.strftime('%Y-%m-%d')}")
    print("\n".join(table))
    print(machine)
    if a.write:
        DOC.write_text("# Timings\n\nWritten by `python benchmarks/timings.py --write` (the command each row names, "
                       "in a fresh process, on the CPU; no GPU). Every duration the README or a `--help` text "
                       "mentions is this table's. On a shared machine a run next to a busy process takes several "
                       "times longer: the last column says how loaded the machine was.\n\n"
                       + "\n".join(table) + f"\n\n{machine}.\n")
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
