"""``hyperclone train``: continue training a checkpoint folder on any backend that
trains (the engine is found through the ``hyperclone.backends`` entry points)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .. import __version__
from . import checkpoint as ckpt
from . import data as hdata
from ..console import recipe
from ..console.argparsing import HelpFormatter, Parser, examples, fill
from ..console.boundary import debug_requested, guarded
from ..errors import CheckpointError, ConfigError, HypercloneError, OptionError
from ..io import runout
from .clone import clone_lr_choices
from .config import TrainConfig
from .loop import optimizer_for, train
from .plot import plot_history

HIDDEN = ("out_dir", "betas", "clone_lr", "resume", "compile", "progress", "log_jsonl", "allow_change", "keep_best",
          "grow")
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
    "threads": "intra-op CPU threads (0: automatic: the fastest count, timed on the run's first steps)",
    "schedule": "LR schedule: cosine, or wsd (warmup, stable at the peak, decay at the end: suits growth)",
    "decay_steps": "wsd: decay over the last N steps (0: --decay-fraction of the run)",
    "decay_fraction": "wsd: the share of the run the decay takes when --decay-steps is 0",
    "decay_shape": "wsd: linear or cosine decay to lr x --min-lr-ratio",
    "rewarm_steps": "after each --grow, ramp the LR up again over N steps (0: no re-warm)",
}
RECIPE_EXCLUDE = ("resume", "allow_change", "no_progress", "json")
"""Options OUT/recipe.toml leaves out: how this invocation continued or displayed a run,
not what the run is (a replay starts fresh)."""
PATHS = ("model_dir", "data", "val_data", "out", "plan", "log_jsonl")
MAX_PLAN_BYTES = 256 << 20
MAX_METRICS_BYTES = 1 << 30
EXAMPLES = examples(
    "hyperclone train wide --data corpus.txt --out runs/wide --steps 2000 --lr 3e-4",
    "hyperclone train wide --data corpus.txt --out runs/wide --steps 4000 --resume",
    "hyperclone train --config run.toml --lr 1e-4       # a recipe file; flags override it",
    "hyperclone train --config runs/wide/recipe.toml --out runs/replay   # replay a run",
    "hyperclone train small --data corpus.txt --out runs/grow --steps 800 --schedule wsd --grow 200:width=2 "
    "--grow 500:width=2,layers=+2")


def plan_of(folder):
    """The plan a folder was expanded with: its ``plan.json`` (``hyperclone expand``
    writes it), else rebuilt from its ``hyperclone.json`` and the source's config
    (older folders; needs the source folder still in place).  None when the folder
    is not a clone, or the plan cannot be recovered (said as a warning: the symmetry
    monitor and clone-aware LRs then have nothing to work with)."""
    from .. import Growth, family_for_config, plan
    from ..io import read_config

    from ..io.paths import read_small

    folder = Path(folder)
    if os.path.lexists(folder / "plan.json"):
        return read_plan(folder / "plan.json", "plan")
    report = folder / "hyperclone.json"
    if not os.path.lexists(report):
        return None
    try:
        rep = json.loads(read_small(report, "report", MAX_PLAN_BYTES))
        src_cfg = read_config(Path(folder) / rep["source"])  # relative to the folder (absolute before 0.2)
        growth = dict(rep["growth"])
    except (HypercloneError, OSError, KeyError, TypeError, ValueError) as exc:
        warnings.warn(f"{folder}: no plan.json, and the plan cannot be rebuilt from hyperclone.json ({exc}); "
                      "training without the symmetry monitor (pass --plan to give one)", stacklevel=2)
        return None
    layout = growth.pop("layout", "tile")
    return plan(family_for_config(src_cfg), src_cfg, Growth(growth, layout), rep["strategy"], rep["seed"],
                allow_inexact=not rep.get("exact", True))


def lineage(model_dir, backend: str, out=None, typed=None) -> dict:
    """What each checkpoint's hyperclone.json records about where the model came from.
    No path of this machine: the folder trained from is relative to a checkpoint folder
    of OUT (``out``), or the hub id as typed (``typed``)."""
    here = Path(out) / "checkpoint" if out is not None else None  # every checkpoint sits one level below OUT

    def rel(path) -> str:
        return recipe.portable(path, here) if here is not None else str(Path(path).resolve())

    hub_id = typed is not None and str(typed) != str(model_dir) and not os.path.lexists(str(typed))
    out: dict = {"hyperclone_version": __version__, "trained_from": str(typed) if hub_id else rel(model_dir),
                 "backend": backend}
    rep = Path(model_dir) / "hyperclone.json"
    if os.path.lexists(rep):
        from ..io.paths import read_small

        try:
            base = json.loads(read_small(rep, "report", MAX_PLAN_BYTES))
            out["clone"] = {k: base[k] for k in ("source", "source_hub", "family", "growth", "strategy", "seed")
                            if k in base}
            src = out["clone"].get("source")
            if isinstance(src, str) and not os.path.isabs(src) and os.path.lexists(Path(model_dir) / src):
                out["clone"]["source"] = rel(Path(model_dir) / src)  # relative to the clone there; here, to OUT's
            if "clone" in base:
                out["clone"] = base["clone"]
        except (HypercloneError, OSError, ValueError, TypeError, KeyError, RecursionError):
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
    p.add_argument("--grow", action="append", metavar="STEP:OPTIONS",
                   help="grow the model at the start of step STEP, carrying the training state (repeatable; OPTIONS "
                        "in expand's words: width, ffn, ffn_size, heads, kv_heads, layers (N or +K), strategy, layout, "
                        "seed, and moments=carry|asymmetric|reset, inserted_lr; e.g. 200:width=2,layers=+2)")
    p.add_argument("--log-jsonl", help="metrics file (default: OUT/metrics.jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint in --out (starts fresh when there is none)")
    p.add_argument("--allow-change", default="",
                   help="on --resume, fields that may differ from the run's, comma-separated, e.g. lr,data "
                        "(default: none)")
    p.add_argument("--keep-best", action="store_true", help="with --save-total-limit, also keep the best by val loss")
    p.add_argument("--compile", action="store_true", help="compile the model (torch.compile; jax and mlx always compile)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true",
                   help="end with one JSON line (steps, checkpoint, val_loss, symmetry) instead of the summary")
    return p


def config_from(args) -> TrainConfig:
    kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
          if f.name not in ("out_dir", "progress", "allow_change", "grow") and hasattr(args, f.name)}
    allow = tuple(x.strip() for x in (args.allow_change or "").split(",") if x.strip())
    try:
        return TrainConfig(**kw, out_dir=args.out, progress=not args.no_progress, allow_change=allow,
                           grow=tuple(getattr(args, "grow", None) or ()))
    except OptionError as exc:  # name the flags, not the fields
        text = str(exc).replace("TrainConfig: ", "")
        for f in sorted(fields(TrainConfig), key=lambda f: -len(f.name)):
            text = re.sub(rf"(?<![-\w]){f.name}(?![\w])", "--" + f.name.replace("_", "-"), text)
        raise OptionError(text) from None


def check_options(args) -> None:
    """What the config's own checks do not see, refused before any file is read (usage
    errors, exit 2, naming the option)."""
    v = args.val_fraction
    if not (isinstance(v, float) and math.isfinite(v) and 0.0 <= v < 1.0):
        raise OptionError(f"--val-fraction {v}: must be a number in [0, 1) (the share of --data held out)")
    if args.data_dtype is not None and args.data_dtype not in hdata.TOKEN_DTYPES:
        raise OptionError(f"--data-dtype {args.data_dtype!r}: use one of {', '.join(hdata.TOKEN_DTYPES)}")
    for flag in ("model_dir", "data", "out", "val_data", "plan", "log_jsonl", "tokenizer"):
        value = getattr(args, flag, None)
        if value is not None and (value == "" or "\0" in value):
            raise OptionError(f"--{flag.replace('_', '-')}: an empty path or one holding a NUL byte")


def check_backend(bk, name: str, tc: TrainConfig) -> None:
    """Refuse, by name, what this backend cannot do (capabilities per backend): training
    at all, a --parallel mode, a --mesh, a --device.  A backend states its modes with
    ``parallel_modes`` and may check a device with ``check_device(text)``."""
    caps = getattr(bk, "capabilities", ())
    if "train" not in caps:
        raise OptionError(f"--backend {name}: this backend does not train (capabilities: {', '.join(sorted(caps))})")
    modes = tuple(getattr(bk, "parallel_modes", ("none",)))
    if (tc.parallel or "none") not in modes:
        raise OptionError(f"--parallel {tc.parallel}: the {name} backend has no such mode (it has: "
                          f"{', '.join(modes)})")
    if tc.mesh and "mesh" not in modes:
        raise OptionError(f"--mesh {tc.mesh}: the {name} backend does not shard over a device mesh")
    check = getattr(bk, "check_device", None)
    if check is not None and tc.device not in ("", "auto"):
        try:
            check(tc.device)
        except HypercloneError as exc:
            raise OptionError(f"--device {tc.device}: {exc}") from None


def check_resources(tc: TrainConfig, hf: dict, shapes: dict) -> None:
    """Refuse, before anything is allocated, a micro-batch whose activations cannot fit
    this machine's memory (a lower bound: logits and their gradient, and the residual
    stream kept per layer for the backward pass)."""
    total = _physical_memory()
    if not total:
        return
    world = max(int(os.environ.get("WORLD_SIZE", "1") or 1), 1)
    rows = -(-tc.batch_size // (tc.grad_accum * world)) * tc.seq_len
    vocab = int(hf.get("vocab_size") or 0)
    hidden = int(hf.get("hidden_size") or 0)
    layers = int(hf.get("num_hidden_layers") or 0)
    params = sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values())
    need = 4 * (rows * (3 * vocab + 8 * hidden * max(layers, 1)) + 4 * params)
    if need > total:
        raise OptionError(
            f"--batch-size {tc.batch_size} x --seq-len {tc.seq_len} (with --grad-accum {tc.grad_accum}) needs at "
            f"least {need / 2**30:.1f} GiB for one micro-step, and this machine has {total / 2**30:.1f} GiB; lower "
            "--batch-size or --seq-len, or raise --grad-accum")


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def read_plan(path, what: str):
    """A plan file read as a bounded regular file and parsed; a file that is not a plan
    is an input error naming it."""
    from .. import Plan
    from ..io.paths import read_small

    raw = read_small(path, what, MAX_PLAN_BYTES)
    try:
        return Plan.from_json(raw.decode("utf-8"))
    except (HypercloneError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise ConfigError(f"{path}: not a plan hyperclone wrote ({' '.join(str(exc).split())[:160]}); pass the "
                          "clone's plan.json, or leave --plan out") from None


def inputs_of(args) -> dict:
    """Every file and folder the run reads, by what it is (for the output checks)."""
    found = {"model folder": args.model_dir, "training data": args.data, "validation data": args.val_data,
             "plan": args.plan, "recipe": getattr(args, "config", None)}
    if args.tokenizer not in (None, "auto", "bytes"):
        found["tokenizer"] = args.tokenizer
    return found


def out_dir(args, inputs: dict) -> runout.RunDir:
    """OUT as ``runout.RunDir`` for a train run, checked (nothing written yet).  The one
    input OUT may hold is the run's own recipe.toml given back as --config to resume it:
    the run rewrites it as its record, which is what that file is for."""
    inputs = dict(inputs)
    own = Path(args.out) / "recipe.toml"
    if inputs.get("recipe") and runout.identity(inputs["recipe"]) == runout.identity(own) and \
            (runout.RunDir(args.out, "train").owner() == "train" or ckpt.previous_run(args.out)):
        inputs.pop("recipe")
    return runout.RunDir(args.out, "train", inputs, files=ckpt.RUN_FILES, legacy=ckpt.previous_run).check()


def run(args) -> Any:
    from ..run.protocol import load_backend
    from ..io import Checkpoint, hub, load_weights
    from ..io.paths import read_small
    from ..model.validate import read_model

    check_options(args)
    args.typed_model = args.model_dir
    args.model_dir = str(hub.resolve(args.model_dir)[0])  # a hub id: its snapshot, for every reader below
    tc = config_from(args)
    inputs = inputs_of(args)
    rd = out_dir(args, inputs)
    if tc.log_jsonl:
        runout.check_file_output(tc.log_jsonl, "--log-jsonl", dict(inputs, **{"run's recipe": rd.out / "recipe.toml"}))
    bk = load_backend(args.backend)
    check_backend(bk, args.backend, tc)
    ck = Checkpoint(args.model_dir)
    family, cfg = read_model(ck.config, str(Path(args.model_dir) / "config.json"))  # values checked first
    ck.validate(family, cfg)
    check_resources(tc, dict(ck.config), {n: ck.shape(n) for n in ck.names()})
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
    plan = read_plan(args.plan, "plan (--plan)") if args.plan else plan_of(args.model_dir)
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    optimizer = optimizer_for(tc, shapes, plan)
    try:
        engine = bk.engine(hf, weights, tc, optimizer)
    except (OptionError, CheckpointError):
        raise
    except ConfigError as exc:  # the model and data are checked by now: what is left is how it was asked to run
        raise OptionError(str(exc)) from None
    if engine.rank == 0 and not getattr(args, "json", False):
        print(header(args, hf, weights, tokens, val, tc, bk), flush=True)
    del weights
    metrics = Path(tc.log_jsonl) if tc.log_jsonl else Path(args.out) / "metrics.jsonl"
    claimed = None
    try:
        if engine.rank == 0:
            claimed = rd.claim()  # OUT is this run's from here on (the mark, the lock)

        def redraw(rec):  # OUT/loss.png, refreshed at each evaluation from the whole run's metrics
            if rec.get("val_loss") is not None and engine.rank == 0 and metrics.is_file():
                try:  # the run's own file, still read as a bounded regular file
                    text = read_small(metrics, "metrics file", MAX_METRICS_BYTES).decode("utf-8")
                    history = [json.loads(x) for x in text.splitlines() if x.strip()]
                except (HypercloneError, ValueError):
                    return  # the plot waits for the end of the run, drawn from the run's own history
                claimed.replace("loss.png", lambda tmp: plot_history(history, tmp))

        resolved = getattr(args, "recipe", None)
        fresh = not ckpt.listed(args.out)
        if resolved is not None and claimed is not None and fresh:
            write_recipe(claimed, resolved)  # before a step: an interrupted run can be replayed too
        result = train(engine, tc, tokens, val, plan=plan, source_dir=args.model_dir, callback=redraw,
                       lineage=lineage(args.model_dir, args.backend, args.out, args.typed_model),
                       optimizer=optimizer, backend=bk)
        engine = result.engine  # a growth (or a resume into a grown checkpoint) replaced it
        if claimed is not None:
            claimed.replace("loss.png", lambda tmp: plot_history(result.history, tmp))
            if resolved is not None and not fresh:
                write_recipe(claimed, resolved)  # a resumed run: what it was resumed with, once accepted
        return result, engine.rank
    finally:
        try:
            engine.close()
        finally:
            if claimed is not None:
                claimed.release()


def header(args, hf, weights, tokens, val, tc, bk) -> str:
    """What a run is about to do, before its first step: the model and its size, the
    data in tokens, the budget, the backend, and where the outputs go."""
    params = sum(int(np.prod(np.shape(w))) for w in weights.values())
    per_step = tc.batch_size * tc.seq_len
    lines = [f"train: {args.typed_model} ({hf.get('model_type', '?')}, {params:,} parameters) on {args.data}: "
             f"{len(tokens):,} training tokens" + (f", {len(val):,} validation" if val is not None else ""),
             f"  {tc.steps:,} steps x {tc.batch_size} x {tc.seq_len} tokens = {tc.steps * per_step:,} tokens "
             f"({tc.steps * per_step / max(len(tokens), 1):.2f} epochs); lr {tc.lr:g}, {tc.schedule} schedule"
             + (f"; growths {', '.join(tc.grow)}" if getattr(tc, "grow", ()) else "")
             + f"; backend {args.backend}",
             f"  writes {args.out}/: checkpoint-N/ (each a model folder with its card), metrics.jsonl, loss.png, "
             "recipe.toml"]
    return "\n".join(lines)


def summary(result) -> str:
    """The run's end, for a person: steps, loss first and last, the last checkpoint."""
    evals = [h for h in result.history if h.get("val_loss") is not None]
    losses = [h["train_loss"] for h in result.history if h.get("train_loss") is not None]
    out = [f"trained {result.steps_done:,} steps"
           + (f"; val loss {evals[0]['val_loss']:.4f} (step {evals[0]['step']}) -> {evals[-1]['val_loss']:.4f} "
              f"(step {evals[-1]['step']})" if evals else "")
           + (f"; train loss {losses[-1]:.4f} at the end" if losses else "")]
    sym = next((h["symmetry"] for h in reversed(result.history) if h.get("symmetry") is not None), None)
    if sym is not None:
        out.append(f"  symmetry monitor {sym:.4f} (1.0: the copies cloning made are still identical)")
    if getattr(result, "growths", None):
        out.append(f"  grew {len(result.growths)} time(s): "
                   + "; ".join(f"step {g['step']}: {g['options']}" for g in result.growths))
    out.append(f"  last checkpoint: {result.checkpoint}" if result.checkpoint else "  no checkpoint written")
    return "\n".join(out)


def write_recipe(out, resolved: dict, replay: bool = True) -> Path:
    """OUT/recipe.toml: every option of the run, for ``--config``: paths relative to OUT
    (no path of this machine); ``out`` is the replay's fresh folder beside OUT, or with
    ``replay`` False OUT itself (a run meant to be continued with ``--resume``, such as
    one ``hyperclone grow`` wrote).  ``out``: the run's claimed ``RunDir`` (or a folder,
    for callers outside a run); ``resolved`` paths are as the command line gave them."""
    folder = out.out if isinstance(out, runout.RunDir) else Path(out)
    doc = dict(resolved)
    for k in PATHS:
        if doc.get(k) is not None:
            doc[k] = (recipe.replay_folder(folder) if replay else ".") if k == "out" else \
                recipe.portable(doc[k], folder)
    if doc.get("tokenizer") not in (None, "auto", "bytes") and Path(doc["tokenizer"]).exists():
        doc["tokenizer"] = recipe.portable(doc["tokenizer"], folder)
    header = recipe.header("train", __version__, replay_into=recipe.replay_folder(folder)) if replay else \
        recipe.header("train", __version__)[:2] + ["  hyperclone train --config recipe.toml --resume      (continues "
                                                   "this run; from this folder, or give the recipe's path)"]
    if isinstance(out, runout.RunDir):
        return out.replace("recipe.toml", lambda tmp: recipe.write(tmp, doc, header))
    Path(out).mkdir(parents=True, exist_ok=True)
    return recipe.write(Path(out) / "recipe.toml", doc, header)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``hyperclone train``: one line and the failure class's exit code on any error
    (2 usage, 3 input, 4 output, 6 diverged; see ``hyperclone --help``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: _main(argv), debug_requested(argv), prog="hyperclone train")


def _main(argv: list) -> int:
    parser = build_parser()
    args = recipe.parse(parser, [a for a in argv if a != "--debug"], required=("model_dir", "data", "out"),
                        paths=PATHS + ("tokenizer",))
    args.recipe = recipe.resolved(parser, args, exclude=RECIPE_EXCLUDE)
    result, rank = run(args)
    last = result.history[-1] if result.history else {}
    if rank == 0 and int(os.environ.get("RANK", "0")) == 0:
        if args.json:
            print(json.dumps({"steps": result.steps_done, "checkpoint": result.checkpoint,
                              "val_loss": last.get("val_loss"), "symmetry": last.get("symmetry")}))
        else:
            print(summary(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_parser", "lineage", "main", "plan_of", "write_recipe"]
