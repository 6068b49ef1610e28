"""``hyperclone demo``: pretrain a small model, clone it 2x, race it against a random
twin and the small model kept training, on any backend that trains.  No download:
the text is the embedded corpus (``hyperclone_core.demo.corpus``) or ``--text FILE``.
The defaults come from the sweep in ``docs/recipe.md``; ``benchmarks/speedup.py``
runs the same race at any scale."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

from .corpus import load as load_corpus
from .. import __version__
from ..console import recipe
from ..console.argparsing import HelpFormatter, Parser, examples, fill
from ..console.boundary import debug_requested, guarded
from ..errors import OutputError
from ..io import AtomicDir, write_json
from .plot import plot
from .race import PRESETS, Settings, compare
from .report import finite, summarize


def write_outputs(results: dict, out, resolved: Optional[dict] = None) -> Path:
    """results.json, loss.png and (given the resolved options) recipe.toml, written
    atomically into ``out``.  An existing folder is replaced only if it holds a
    previous results.json (never a user's folder)."""
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {k: v for k, v in results.items() if k != "curves"}
    with AtomicDir(out, force=True) as tmp:
        write_json(tmp / "results.json", finite(doc))
        plot(results, tmp / "loss.png")
        if resolved is not None:
            recipe.write(tmp / "recipe.toml", resolved, recipe.header("demo", __version__))
    return out


def check_out(out) -> Path:
    """Refuse, before any training, to replace a folder that is not a previous output."""
    out = Path(out)
    if out.exists() and not (out / "results.json").is_file():
        raise OutputError(f"--out {out} exists and is not a previous demo output (no results.json); "
                              "choose another folder")
    return out


# ---------------------------------------------------------------- CLI


SETTINGS_HELP = {
    "hidden": "hidden size of the small model",
    "layers": "layers of the small model (the clone keeps them)",
    "heads": "attention heads of the small model",
    "ffn": "ffn size of the small model",
    "width": "the clone is this many times wider (hidden, ffn, heads)",
    "strategy": "cloning strategy (see hyperclone expand --help)",
    "seq_len": "bytes per training sequence",
    "batch_size": "sequences per optimizer step",
    "pretrain_steps": "steps that pretrain the small model",
    "pretrain_lr": "peak learning rate of the pretraining",
    "steps": "steps each of the three models trains in the race",
    "lr": "peak learning rate in the race (random twin, small model)",
    "clone_lr_scale": "the clone's peak learning rate is --lr times this",
    "clone_lr": "per-tensor LR multipliers for the clone: none or a rule of hyperclone train --clone-lr",
    "warmup_steps": "linear warmup steps of every run",
    "min_lr_ratio": "the cosine schedule ends at the peak learning rate times this",
    "weight_decay": "AdamW weight decay (matrices only)",
    "grad_clip": "clip the global gradient norm to this",
    "eval_every": "evaluate the validation loss every N steps",
    "eval_batches": "validation batches per evaluation",
    "seed": "seed of the initializations and the batch order",
    "device": "auto (a GPU when there is one), cpu, cuda, mps, gpu",
    "dtype": "compute dtype: float32, or bfloat16 on GPUs",
    "threads": "intra-op CPU threads (0: automatic: the fastest count, timed on each run's first steps)",
}


def add_settings_args(p: argparse.ArgumentParser, base: Settings) -> None:
    """One flag per Settings field (the demo's and benchmarks/speedup.py's), its help
    stating the default preset's value and --quick's where that differs."""
    quick = asdict(PRESETS["quick"])
    for name, value in asdict(base).items():
        flag = "--" + name.replace("_", "-")
        shown = "none" if value == "" else value
        differs = f"; --quick: {quick[name]}" if quick.get(name) != value and base == PRESETS["default"] else ""
        p.add_argument(flag, type=type(value), default=None,
                       help=f"{SETTINGS_HELP.get(name, name.replace('_', ' '))} (default: {shown}{differs})")


def settings_from(args, base: Settings) -> Settings:
    return replace(base, **{k: getattr(args, k) for k in asdict(base) if getattr(args, k, None) is not None})


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="hyperclone demo",
        description=fill(
            "Pretrain a small byte-level Llama, clone it 2x and race the clone against a random-init twin and "
            "the small model kept training, with the same batches and budget. Prints the loss table and the "
            "speed-up (with its definition); writes results.json, loss.png and recipe.toml to --out. No "
            "download needed: the text is embedded."),
        formatter_class=HelpFormatter,
        epilog=examples(
            "hyperclone demo --quick                  # about 2 minutes on a CPU core",
            "hyperclone demo --backend jax --out demo-jax",
            "hyperclone demo --config demo.toml       # options from a TOML recipe; flags override it"))
    p.add_argument("--config", metavar="FILE", help=recipe.CONFIG_HELP)
    p.add_argument("--backend", default="torch", help="a backend that trains (see hyperclone backends)")
    p.add_argument("--text", help="a UTF-8 text file instead of the embedded corpus (default: the embedded corpus)")
    p.add_argument("--out", default="hyperclone-demo", help="folder for results.json, loss.png and recipe.toml")
    p.add_argument("--quick", action="store_true",
                   help="the quick preset: fewer steps (about 2 minutes on one CPU core, 6 on a busy machine)")
    p.add_argument("--preset", choices=sorted(PRESETS), help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="also print results.json to stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_settings_args(p.add_argument_group("settings (the recipe; see docs/recipe.md)"), PRESETS["default"])
    return p


def main(argv=None) -> int:
    """``hyperclone demo``: one line and the failure class's exit code on any error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: _main(argv), debug_requested(argv), prog="hyperclone demo")


def _main(argv: list) -> int:
    parser = build_parser()
    args = recipe.parse(parser, [a for a in argv if a != "--debug"])
    base = PRESETS[args.preset or ("quick" if args.quick else "default")]
    st = settings_from(args, base)
    check_out(args.out)
    corpus = load_corpus(args.text)
    print(corpus.describe())
    results = compare(st, corpus, backend=args.backend, progress=not args.no_progress)
    print()
    print(summarize(results))
    resolved = dict(recipe.resolved(parser, args, exclude=("json", "no_progress", "quick", "out")),
                    **asdict(st))  # every setting as run, whichever preset or file it came from
    resolved["text"] = None if args.text is None else str(Path(args.text).resolve())
    out = write_outputs(results, args.out, resolved)
    print(f"\nwrote {out / 'results.json'}, {out / 'loss.png'} and {out / 'recipe.toml'} "
          f"({results['summary']['seconds']:.0f} s)")
    if args.json:
        print(json.dumps(finite({k: v for k, v in results.items() if k != "curves"})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
