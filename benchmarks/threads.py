"""Intra-op threads for CPU training: 1 vs all cores, on a quiet machine and next to
one busy process, at several model sizes.  What the torch engine's automatic policy
(``hyperclone_torch.engine.auto_threads``: 1 thread below a parameter count) is chosen
from::

    python benchmarks/threads.py                  # all sizes, quiet and busy
    python benchmarks/threads.py --sizes demo,4x --steps 20

Each cell is the median of ``--repeats`` timings of ``--steps`` optimizer steps (after
warmup) in milliseconds per step; ``tN/t1`` is the N-thread time over the 1-thread
time (> 1: one thread is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

SIZES = {  # name: (hidden, layers, heads, ffn, seq_len, batch)
    "demo-small": (64, 2, 4, 172, 64, 16),
    "demo": (128, 2, 4, 344, 64, 16),
    "4x": (256, 4, 4, 688, 128, 16),
    "30M": (512, 8, 8, 1376, 128, 8),
}
BUSY = "import numpy as np\na = np.random.rand(300, 300)\nwhile True:\n    a = a @ a / 300.0\n"


def measure(size: str, threads: int, steps: int, repeats: int) -> tuple:
    import torch

    from hyperclone_core.demo.race import llama_config, random_weights
    from hyperclone_core.train import TrainConfig, optimizer_for
    from hyperclone_torch import backend

    hidden, layers, heads, ffn, seq, batch = SIZES[size]
    cfg = llama_config(hidden, layers, heads, ffn, 256, seq)
    w = random_weights(cfg, seed=0)
    tc = TrainConfig(steps=steps, batch_size=batch, seq_len=seq, device="cpu", threads=threads, eval_every=0)
    eng = backend.engine(cfg, w, tc, optimizer_for(tc, {n: a.shape for n, a in w.items()}))
    assert torch.get_num_threads() == threads
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (batch, seq + 1)) for _ in range(4)]
    for b in batches[:2]:
        eng.step([b], 1e-4)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for k in range(steps):
            eng.step([batches[k % 4]], 1e-4)
        times.append((time.perf_counter() - t0) / steps * 1e3)
    eng.close()
    return statistics.median(times), sum(a.size for a in w.values())


def run_cell(size: str, threads: int, steps: int, repeats: int) -> tuple:
    """In a fresh process: torch's thread pool is sized once per process."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import threads as t; "
            f"ms, n = t.measure({size!r}, {threads}, {steps}, {repeats}); print(ms, n)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    ms, n = out.stdout.split()
    return float(ms), int(n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated of {', '.join(SIZES)}")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--no-busy", action="store_true", help="skip the rows next to a busy process")
    args = ap.parse_args(argv)
    n = args.max_threads
    print(f"{'size':<11} {'params':>11} {'load':<6} {'1 thread ms/step':>17} {f'{n} threads ms/step':>18} "
          f"{'tN/t1':>7}")
    for size in args.sizes.split(","):
        for load in ("quiet",) + (() if args.no_busy else ("busy",)):
            hog = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "busy" else None
            try:
                time.sleep(0.5 if hog else 0)
                one, params = run_cell(size, 1, args.steps, args.repeats)
                many, _ = run_cell(size, n, args.steps, args.repeats)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            print(f"{size:<11} {params:>11,} {load:<6} {one:>17.1f} {many:>18.1f} {many / one:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
