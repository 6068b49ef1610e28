"""``hyperclone train``: continue training a checkpoint folder on any backend that
trains (the engine is found through the ``hyperclone.backends`` entry points)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import __version__
from . import data as hdata
from ..console import recipe
from ..console.argparsing import HelpFormatter, Parser, examples, fill
from ..console.boundary import debug_requested, guarded
from ..errors import ConfigError, HypercloneError
from .checkpoint import listed
from .clone import clone_lr_choices
from .config import TrainConfig
from .loop import optimizer_for, train
from .plot import plot_history

HIDDEN = ("out_dir", "betas", "clone_lr", "resume", "compile", "progress", "log_jsonl", "allow_change", "keep_best")
HELP = {
    "steps": "optimizer steps in all (a resumed run counts from its checkpoint)",
    "batch_size": "global batch in sequences per optimizer step (split over ranks and --grad-accum)",
    "seq_len": "tokens per sequence",
    "grad_accum": "micro-steps per optimizer step (same global batch, less memory)",
    "lr": "peak learning rate",
    "clone_lr_scale": "the peak LR is lr x this (a clone continuing its source's training often wants < 1)",
    "min_lr_ratio": "the cosine schedule ends at lr x this",
    "warmup_steps": "linear warmup steps",
    "weight_decay": "AdamW weight decay (matrices only)",
    "eps": "AdamW epsilon",
    "grad_clip": "clip the global gradient norm to this (0: off)",
    "eval_every": "evaluate (val loss, symmetry monitor) every N steps (0: only at the end)",
    "eval_batches": "validation batches per evaluation",
    "save_every": "write a checkpoint every N steps (0: only at the end)",
    "save_total_limit": "keep only the newest N checkpoints (0: keep all)",
    "seed": "seed of the batch sampler",
    "device": "device for the backend: auto (a GPU when there is one), cpu, cuda, cuda:1, mps, gpu",
    "dtype": "compute dtype: float32, or bfloat16 (parameters stay float32)",
    "parallel": "distributed mode of the backend (torch: none, ddp, fsdp under torchrun)",
    "mesh": "device mesh for backends that shard over one (e.g. data=2,fsdp=2,tensor=2)",
    "threads": "intra-op CPU threads (0: automatic, 1 for small models)",
}
RECIPE_EXCLUDE = ("resume", "allow_change", "no_progress")
"""Options OUT/recipe.toml leaves out: how this invocation continued or displayed a run,
not what the run is (a replay starts fresh)."""
PATHS = ("model_dir", "data", "val_data", "out", "plan", "log_jsonl")
EXAMPLES = examples(
    "hyperclone train wide --data corpus.txt --out runs/wide --steps 2000 --lr 3e-4",
    "hyperclone train wide --data corpus.txt --out runs/wide --steps 4000 --resume",
    "hyperclone train --config run.toml --lr 1e-4       # a recipe file; flags override it",
    "hyperclone train --config runs/wide/recipe.toml --out runs/replay   # replay a run")


def plan_of(folder):
    """The plan a folder was expanded with: its ``plan.json`` (``hyperclone expand``
    writes it), else rebuilt from its ``hyperclone.json`` and the source's config
    (older folders; needs the source folder still in place).  None when the folder
    is not a clone, or the plan cannot be recovered (said as a warning: the symmetry
    monitor and clone-aware LRs then have nothing to work with)."""
    from .. import Growth, Plan, family_for_config, plan
    from ..io import read_config

    folder = Path(folder)
    if (folder / "plan.json").is_file():
        return Plan.from_json((folder / "plan.json").read_text())
    report = folder / "hyperclone.json"
    if not report.is_file():
        return None
    try:
        rep = json.loads(report.read_text())
        src_cfg = read_config(rep["source"])
        growth = dict(rep["growth"])
    except (HypercloneError, OSError, KeyError, TypeError, ValueError) as exc:
        warnings.warn(f"{folder}: no plan.json, and the plan cannot be rebuilt from hyperclone.json ({exc}); "
                      "training without the symmetry monitor (pass --plan to give one)", stacklevel=2)
        return None
    layout = growth.pop("layout", "tile")
    return plan(family_for_config(src_cfg), src_cfg, Growth(growth, layout), rep["strategy"], rep["seed"],
                allow_inexact=not rep.get("exact", True))


def lineage(model_dir, backend: str) -> dict:
    """What each checkpoint's hyperclone.json records about where the model came from."""
    out: dict = {"hyperclone_version": __version__, "trained_from": str(Path(model_dir).resolve()), "backend": backend}
    rep = Path(model_dir) / "hyperclone.json"
    if rep.is_file():
        try:
            base = json.loads(rep.read_text())
            out["clone"] = {k: base[k] for k in ("source", "family", "growth", "strategy", "seed") if k in base}
            if "clone" in base:
                out["clone"] = base["clone"]
        except (OSError, ValueError, TypeError):
            pass
    return out


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = Parser(
        prog="hyperclone train",
        description=fill(
            "Continue training a checkpoint folder (a clone from hyperclone expand, or any supported model) with "
            "the core trainer on a backend's engine. OUT holds metrics.jsonl, loss.png (redrawn at each "
            "evaluation), recipe.toml (every option, to replay the run) and checkpoint-N folders: each a "
            "complete Hugging Face folder (weights, config, tokenizer and generation files, hyperclone.json "
            "lineage) plus the trainer state that --resume continues from."),
        formatter_class=lambda prog: HelpFormatter(prog, max_help_position=32),
        epilog=EXAMPLES)
    p.add_argument("model_dir", nargs="?",
                   help="checkpoint folder: config.json and *.safetensors (required, on the command line or in "
                        "--config)")
    p.add_argument("--config", metavar="FILE", help=recipe.CONFIG_HELP)
    p.add_argument("--data", help="training data: .bin (raw tokens), .npy, or a text file (required)")
    p.add_argument("--out", help="folder for checkpoints, metrics.jsonl, loss.png and recipe.toml (required)")
    p.add_argument("--backend", default="torch", help="backend whose engine trains (see hyperclone backends)")
    p.add_argument("--val-data", help="validation data (default: the last --val-fraction of --data)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of --data held out when no --val-data")
    p.add_argument("--data-dtype", help="dtype of a .bin token file, uint16 or uint32 (required for .bin: it has no header)")
    p.add_argument("--tokenizer", default="auto",
                   help="for text: auto (the model's tokenizer.json if present, else bytes), bytes, or a path")
    p.add_argument("--plan", help="plan JSON (default: MODEL_DIR/plan.json, which hyperclone expand writes)")
    for f in fields(TrainConfig):
        if f.name in HIDDEN:
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)), default=getattr(d, f.name),
                       help=HELP.get(f.name, f.name.replace("_", " ")))
    p.add_argument("--betas", type=float, nargs=2, default=list(d.betas), help="AdamW betas")
    p.add_argument("--clone-lr", default="", choices=clone_lr_choices(),
                   help="per-tensor LR multipliers from the plan: none, or a rule such as inverse_width (1/r for "
                        "inputs grown r-fold) (default: none)")
    p.add_argument("--log-jsonl", help="metrics file (default: OUT/metrics.jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint in --out (starts fresh when there is none)")
    p.add_argument("--allow-change", default="",
                   help="on --resume, fields that may differ from the run's, comma-separated, e.g. lr,data "
                        "(default: none)")
    p.add_argument("--keep-best", action="store_true", help="with --save-total-limit, also keep the best by val loss")
    p.add_argument("--compile", action="store_true", help="compile the model (torch.compile; jax and mlx always compile)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from(args) -> TrainConfig:
    kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
          if f.name not in ("out_dir", "progress", "allow_change") and hasattr(args, f.name)}
    allow = tuple(x.strip() for x in (args.allow_change or "").split(",") if x.strip())
    return TrainConfig(**kw, out_dir=args.out, progress=not args.no_progress, allow_change=allow)


def run(args) -> Any:
    from ..run.protocol import load_backend
    from ..io import Checkpoint, load_weights
    from ..model.validate import read_model

    tc = config_from(args)
    bk = load_backend(args.backend)
    if "train" not in getattr(bk, "capabilities", ()):
        raise ConfigError(f"--backend {args.backend}: this backend does not train "
                          f"(capabilities: {', '.join(sorted(bk.capabilities))})")
    ck = Checkpoint(args.model_dir)
    family, cfg = read_model(ck.config, str(Path(args.model_dir) / "config.json"))  # values checked first
    ck.validate(family, cfg)
    hf, weights = load_weights(args.model_dir)
    vocab = int(hf.get("vocab_size") or 0) or None
    tok = hdata.get_tokenizer(args.tokenizer, args.model_dir)
    tokens = hdata.load_tokens(args.data, dtype=args.data_dtype, vocab=vocab, tokenizer=tok)
    if args.val_data:
        val = hdata.load_tokens(args.val_data, dtype=args.data_dtype, vocab=vocab, tokenizer=tok)
    elif args.val_fraction > 0:
        tokens, val = hdata.hold_out(tokens, args.val_fraction, min_val=args.seq_len + 1)
    else:
        val = None
    if args.plan:
        from .. import Plan

        try:
            plan = Plan.from_json(Path(args.plan).read_text())
        except OSError as exc:
            raise ConfigError(f"--plan {args.plan}: unreadable ({exc.strerror})") from None
    else:
        plan = plan_of(args.model_dir)
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    engine = bk.engine(hf, weights, tc, optimizer_for(tc, shapes, plan))
    del weights
    metrics = Path(tc.log_jsonl) if tc.log_jsonl else Path(args.out) / "metrics.jsonl"

    def redraw(rec):  # OUT/loss.png, refreshed at each evaluation from the whole run's metrics
        if rec.get("val_loss") is not None and engine.rank == 0 and metrics.is_file():
            plot_history([json.loads(x) for x in metrics.read_text().splitlines() if x.strip()],
                         Path(args.out) / "loss.png")

    resolved = getattr(args, "recipe", None)
    fresh = not listed(args.out)
    try:
        if resolved is not None and engine.rank == 0 and fresh:
            write_recipe(args.out, resolved)  # before a step: an interrupted run can be replayed too
        result = train(engine, tc, tokens, val, plan=plan, source_dir=args.model_dir, callback=redraw,
                       lineage=lineage(args.model_dir, args.backend))
        if engine.rank == 0:
            plot_history(result.history, Path(args.out) / "loss.png")
            if resolved is not None and not fresh:
                write_recipe(args.out, resolved)  # a resumed run: what it was resumed with, once accepted
        return result, engine.rank
    finally:
        engine.close()


def write_recipe(out, resolved: dict) -> Path:
    """OUT/recipe.toml: every option of the run, paths absolute, for ``--config``."""
    Path(out).mkdir(parents=True, exist_ok=True)
    doc = dict(resolved)
    for k in PATHS:
        if doc.get(k) is not None:
            doc[k] = str(Path(doc[k]).resolve())
    if doc.get("tokenizer") not in (None, "auto", "bytes") and Path(doc["tokenizer"]).exists():
        doc["tokenizer"] = str(Path(doc["tokenizer"]).resolve())
    return recipe.write(Path(out) / "recipe.toml", doc, recipe.header("train", __version__))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``hyperclone train``: one line and the failure class's exit code on any error
    (2 usage, 3 input, 4 output, 6 diverged; see ``hyperclone --help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: _main(argv), debug_requested(argv), prog="hyperclone train")


def _main(argv: list) -> int:
    parser = build_parser()
    args = recipe.parse(parser, [a for a in argv if a != "--debug"], required=("model_dir", "data", "out"))
    args.recipe = recipe.resolved(parser, args, exclude=RECIPE_EXCLUDE)
    result, rank = run(args)
    last = result.history[-1] if result.history else {}
    if rank == 0 and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"steps": result.steps_done, "checkpoint": result.checkpoint,
                          "val_loss": last.get("val_loss"), "symmetry": last.get("symmetry")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_parser", "lineage", "main", "plan_of", "write_recipe"]
