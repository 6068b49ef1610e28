"""One training worker: ``python -m hyperclone_core.train.worker --backend NAME --model DIR
--data TOKENS.npy --config '{...TrainConfig...}' --out RESULT.json``.

What a backend's launcher starts ``world`` times (``launch_command``) to prove its
distributed mode gives the one-process result; the main worker writes the history.
The last 10% of the tokens are the validation set."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from ..run.protocol import load_backend
from ..io import load_weights
from .config import TrainConfig
from .loop import optimizer_for, train


def main(argv=None, exit_hard: bool = False) -> int:
    """Run one worker; with ``exit_hard`` (the command line) and a backend that asks for
    it (``worker_exits_hard``), a finished worker leaves with ``os._exit``."""
    ap = argparse.ArgumentParser(prog="python -m hyperclone_core.train.worker", description=__doc__.splitlines()[0])
    ap.add_argument("--backend", required=True)
    ap.add_argument("--model", required=True, help="checkpoint folder")
    ap.add_argument("--data", required=True, help=".npy token array")
    ap.add_argument("--config", required=True, help="TrainConfig fields as JSON")
    ap.add_argument("--plan", help="plan JSON (symmetry monitor)")
    ap.add_argument("--out", required=True, help="where the main worker writes the history (JSON)")
    args = ap.parse_args(argv)
    bk = load_backend(args.backend)
    cfg = TrainConfig.from_dict(json.loads(args.config))
    hf, weights = load_weights(args.model)
    tokens = np.load(args.data)
    cut = len(tokens) - len(tokens) // 10
    plan = None
    if args.plan:
        from ..algebra.planner import Plan

        plan = Plan.from_json(Path(args.plan).read_text())
    engine = bk.engine(hf, weights, cfg, optimizer_for(cfg, {n: w.shape for n, w in weights.items()}, plan))
    try:
        res = train(engine, cfg, tokens[:cut], tokens[cut:], plan=plan)
        if engine.rank == 0:
            Path(args.out).write_text(json.dumps({"history": res.history, "world": engine.world}))
    finally:
        engine.close()
    if exit_hard and getattr(bk, "worker_exits_hard", False):
        _exit_hard(0)  # reached only on success: an exception above exits 1 with its traceback
    return 0


def _exit_hard(code: int) -> None:
    """Leave without the interpreter's teardown: the work is done and written, and the
    backend says its runtime's teardown is unsafe (``worker_exits_hard``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(exit_hard=True))
