"""Intra-op threads for CPU training: the automatic policy (``--threads 0``,
``hyperclone_core.train.threads``: the run's first steps timed at each count, the
fastest kept) against every fixed count, on a quiet machine and next to one busy
process, at three model sizes::

    python benchmarks/threads.py                      # all sizes, quiet and busy
    python benchmarks/threads.py --sizes demo --rounds 2 --no-busy

Each run is ``hyperclone_core.train.train`` on the torch engine (CPU, float32), timed
whole -- the automatic policy's measuring steps included -- as tokens per second.
In each round the automatic policy runs all its steps first, then each fixed count
runs for as long (its rate is its rate: a count 10x too slow need not run the whole
length, and every variant of a round sees the machine over as long a window).  All
runs of a row happen in this one process; a variant's figure is its best round.
``re`` counts the automatic policy's re-measures (drift or periodic) over the rounds.  ``auto/best`` divides the automatic
policy's tokens/s by the best fixed count's (>= 0.90 is the target).  The busy
process is a pure-Python loop: exactly one core kept busy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

SIZES = {  # name: (hidden, layers, heads, ffn, seq_len, batch, steps)
    "demo": (128, 2, 4, 344, 64, 16, 200),    # the demo's clone, batch and run (--quick: 200 steps; 0.46M)
    "10M": (384, 6, 6, 1024, 128, 8, 80),     # the ~10M Llama at 8 x 128 of the issue
    "30M": (576, 8, 9, 1536, 128, 8, 40),
}
BUSY = "while True:\n    pass\n"


def run(size: str, threads: int, steps: int, max_seconds: float = 0.0) -> tuple:
    """(tokens/s, the policy's messages) of one training run (stopped after
    ``max_seconds`` if > 0)."""
    from hyperclone_core.demo.race import llama_config, random_weights
    from hyperclone_core.train import TrainConfig, optimizer_for, train
    from hyperclone_torch import backend

    hidden, layers, heads, ffn, seq, batch, _ = SIZES[size]
    cfg = llama_config(hidden, layers, heads, ffn, 256, seq)
    w = random_weights(cfg, seed=0)
    tc = TrainConfig(steps=steps, batch_size=batch, seq_len=seq, lr=1e-4, warmup_steps=0, eval_every=0,
                     device="cpu", threads=threads)
    eng = backend.engine(cfg, w, tc, optimizer_for(tc, {n: a.shape for n, a in w.items()}))
    tokens = np.random.default_rng(0).integers(0, 256, 200_000)
    said: list = []
    t0 = time.perf_counter()
    res = train(eng, tc, tokens, log=said.append,
                callback=lambda rec: not (max_seconds and time.perf_counter() - t0 > max_seconds))
    seconds = time.perf_counter() - t0
    eng.close()
    return res.steps_done * batch * seq / seconds, [s for s in said if s.startswith("threads:")]


def chosen(messages: list) -> str:
    """The count the policy last settled on, from its messages."""
    for m in reversed(messages):
        for verb in ("uses ", "keeps "):
            if verb in m:
                return m.split(verb, 1)[1].split(",", 1)[0]
    return "?"


def row(size: str, counts: list, rounds: int, steps: int) -> dict:
    run(size, counts[-1], 3)  # the process's one-time costs (kernels, allocator) before any timed run
    best = {v: 0.0 for v in [0] + counts}
    picks, remeasures = [], 0
    for r in range(rounds):
        t0 = time.perf_counter()
        tps, said = run(size, 0, steps)
        window = time.perf_counter() - t0
        best[0] = max(best[0], tps)
        picks.append(chosen(said))
        remeasures += sum("measuring" in m for m in said)
        for v in (counts if r % 2 == 0 else counts[::-1]):
            best[v] = max(best[v], run(size, v, steps, window)[0])
    return {"best": best, "picks": picks, "re": remeasures}


def main(argv=None) -> int:
    from hyperclone_core.demo.race import llama_config, random_weights
    from hyperclone_core.train.threads import available_cores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated of {', '.join(SIZES)}")
    ap.add_argument("--rounds", type=int, default=1, help="turns of every variant per row (best one kept)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply each size's steps per run")
    ap.add_argument("--no-busy", action="store_true", help="skip the rows next to a busy process")
    args = ap.parse_args(argv)
    counts = list(range(1, available_cores() + 1))
    fixed = "".join(f"{f'{c} thr tok/s':>13}" for c in counts)
    print(f"{'size':<5} {'params':>11} {'load':<6} {'steps':>5} {'auto tok/s':>11} {'chose':>6} {'re':>3}{fixed} "
          f"{'best fixed':>10} {'auto/best':>9}", flush=True)
    for size in args.sizes.split(","):
        hidden, layers, heads, ffn, seq, _, steps = SIZES[size]
        params = sum(a.size for a in random_weights(llama_config(hidden, layers, heads, ffn, 256, seq), 0).values())
        steps = max(int(steps * args.steps_scale), 10)
        for load in ("quiet",) + (() if args.no_busy else ("busy",)):
            hog = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "busy" else None
            try:
                time.sleep(0.5 if hog else 0)
                res = row(size, counts, args.rounds, steps)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            b = res["best"]
            top = max(counts, key=lambda c: b[c])
            cells = "".join(f"{b[c]:>13,.0f}" for c in counts)
            print(f"{size:<5} {params:>11,} {load:<6} {steps:>5} {b[0]:>11,.0f} {'/'.join(res['picks']):>6} "
                  f"{res['re']:>3}{cells} "
                  f"{f'{top} thr':>10} {b[0] / b[top]:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
