"""``hyperclone demo``: a run that starts small and grows 2x, raced against a random
twin and the small model kept training on one compute budget, on any backend that trains.  No download:
the text is the embedded corpus (``hyperclone_core.demo.corpus``) or ``--text FILE``.
The defaults come from the sweep in ``docs/recipe.md``; ``benchmarks/speedup.py``
runs the same race at any scale."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

from .corpus import load as load_corpus
from .. import __version__
from ..console import recipe
from ..console.argparsing import HelpFormatter, Parser, examples, fill
from ..console.boundary import debug_requested, guarded
from ..errors import HypercloneError, OptionError
from ..io import OUTPUT_MARK, runout, write_json
from .plot import plot
from .race import PRESETS, Settings, compare
from .report import finite, summarize


DEMO_FILES = ("results.json", "loss.png", "recipe.toml")


def previous_output(out) -> bool:
    """An unmarked folder (written before runs marked theirs) holding a previous demo's
    results.json and nothing but what the demo writes."""
    out = Path(out)
    try:
        names = {p.name for p in out.iterdir()}
    except OSError:
        return False
    return "results.json" in names and names <= set(DEMO_FILES) | {OUTPUT_MARK, runout.RUN_MARK, runout.LOCK}


def out_dir(out, inputs: Optional[dict] = None) -> runout.RunDir:
    """OUT as the demo's ``runout.RunDir``, checked before any training (nothing written)."""
    return runout.RunDir(out, "demo", inputs, files=DEMO_FILES, legacy=previous_output).check()


def write_outputs(results: dict, out, resolved: Optional[dict] = None) -> Path:
    """results.json, loss.png and (given the resolved options) recipe.toml, each written
    beside its name and renamed over it, in the demo's OUT (``out``: a claimed RunDir,
    or a folder, then claimed here).  Only these files are ever replaced: anything else
    in OUT stays, and nothing is written through a symlink."""
    run = out if isinstance(out, runout.RunDir) else out_dir(out).claim()
    doc = {k: v for k, v in results.items() if k != "curves"}
    try:
        run.replace("results.json", lambda tmp: write_json(tmp, finite(doc)))
        run.replace("loss.png", lambda tmp: plot(results, tmp))
        if resolved is not None:
            header = recipe.header("demo", __version__, replay_into=resolved.get("out"))
            run.replace("recipe.toml", lambda tmp: recipe.write(tmp, resolved, header))
    finally:
        if run is not out:
            run.release()
    return run.out


def check_out(out) -> Path:
    """Refuse, before any training, an OUT the demo may not write (``runout.RunDir``)."""
    return out_dir(out).out


SETTING_LIMITS = {
    "hidden": (1, 8192), "layers": (1, 64), "heads": (1, 256), "ffn": (1, 65536), "width": (1, 16),
    "seq_len": (1, 8192), "batch_size": (1, 4096), "seed_width": (1, 64), "seed_layers": (0, 64),
    "rewarm_steps": (0, 10**7), "steps": (1, 10**7),
    "warmup_steps": (0, 10**7), "eval_every": (1, 10**7), "eval_batches": (1, 10**4), "seed": (0, 2**63 - 1),
    "threads": (0, 4096),
}
"""The demo's settings, bounded where a value past them is a typo rather than a wish
(a demo of a model this size needs no more)."""


def check_backend(name: str, device: str) -> None:
    """The backend trains and has ``device``, refused by name before any work."""
    from ..run.protocol import load_backend

    bk = load_backend(name)
    caps = getattr(bk, "capabilities", ())
    if "train" not in caps:
        raise OptionError(f"--backend {name}: this backend does not train (capabilities: {', '.join(sorted(caps))})")
    check = getattr(bk, "check_device", None)
    if check is not None and device not in ("", "auto"):
        try:
            check(device)
        except HypercloneError as exc:
            raise OptionError(f"--device {device}: {exc}") from None


def check_settings(st: Settings) -> None:
    """Refuse, before any work, settings the race cannot run (usage errors naming the option)."""
    for name, (lo, hi) in SETTING_LIMITS.items():
        v = getattr(st, name)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise OptionError(f"--{name.replace('_', '-')} {v!r}: must be an integer in [{lo}, {hi}]")
    for name in ("seed_lr", "lr", "clone_lr_scale", "min_lr_ratio", "weight_decay", "grad_clip"):
        v = getattr(st, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (name.endswith("lr") and v == 0):
            raise OptionError(f"--{name.replace('_', '-')} {v!r}: must be a finite number"
                              + (" > 0" if name.endswith("lr") else " >= 0"))
    if st.hidden % st.heads:
        raise OptionError(f"--hidden {st.hidden} must be a multiple of --heads {st.heads}")
    from ..train.grow import MOMENTS
    from .race import growths

    if st.moments not in MOMENTS:
        raise OptionError(f"--moments {st.moments!r}: use one of {', '.join(MOMENTS)}")
    try:
        growths(st, 256)
    except HypercloneError as exc:
        raise OptionError(str(exc)) from None
    wide = {"hidden": st.hidden * st.width, "ffn": st.ffn * st.width}
    params = st.layers * (4 * wide["hidden"] ** 2 + 3 * wide["hidden"] * wide["ffn"]) + 2 * 256 * wide["hidden"]
    acts = st.batch_size * st.seq_len * (3 * 256 + 8 * wide["hidden"] * st.layers)
    need = 4 * (4 * params + acts)
    try:
        total = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        total = 0
    if total and need > total:
        raise OptionError(f"--hidden {st.hidden} x --width {st.width}, --layers {st.layers}, --batch-size "
                          f"{st.batch_size} x --seq-len {st.seq_len} need at least {need / 2**30:.1f} GiB, and this "
                          f"machine has {total / 2**30:.1f} GiB; choose smaller settings")


# ---------------------------------------------------------------- CLI


SETTINGS_HELP = {
    "hidden": "hidden size of the small model",
    "layers": "layers of the small model (the clone keeps them)",
    "heads": "attention heads of the small model",
    "ffn": "ffn size of the small model",
    "width": "the last growth makes the model this many times wider (hidden, ffn, heads)",
    "strategy": "cloning strategy (see hyperclone expand --help)",
    "seq_len": "bytes per training sequence",
    "batch_size": "sequences per optimizer step",
    "grow_at": "compute fractions of the budget at which the growing run grows, one per growth (the last: to the "
               "final size)",
    "seed_width": "the seed is this many times narrower than the model before the last growth (the growths before "
                  "the last split it evenly)",
    "seed_layers": "layers of the seed (0: --layers); its first growth adds the rest",
    "moments": "AdamW's state across a growth: carry (the run continues), asymmetric (one copy keeps it), reset "
               "(a fresh AdamW: how a finished checkpoint used to be grown)",
    "rewarm_steps": "after a growth the learning rate ramps up again over this many steps",
    "seed_lr": "peak learning rate of the growing run (its seed's; growths carry it per tensor) and of the small "
               "model kept training",
    "steps": "the budget: steps of the final-size model (the random twin's); every run spends this much compute",
    "lr": "peak learning rate of the random twin",
    "clone_lr_scale": "after the last growth the growing run's learning rate is --seed-lr times this",
    "clone_lr": "per-tensor LR multipliers for the clone: none or a rule of hyperclone train --clone-lr",
    "warmup_steps": "linear warmup steps of every run",
    "min_lr_ratio": "the cosine schedule ends at the peak learning rate times this",
    "weight_decay": "AdamW weight decay (matrices only)",
    "grad_clip": "clip the global gradient norm to this",
    "eval_every": "evaluate the validation loss every N final-model steps of compute",
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
            "Train a byte-level Llama that starts small and grows (HyperCloning its whole training state) and race "
            "it against a random-init twin of the final size and the model before the last growth kept training, "
            "on one compute budget, every stage counted. Prints the loss table at equal compute and the charged "
            "speed-up (with its definition); writes results.json, loss.png and recipe.toml to --out. No "
            "download needed: the text is embedded."),
        formatter_class=HelpFormatter,
        epilog=examples(
            "hyperclone demo --quick                  # the quick preset (timed in docs/timings.md)",
            "hyperclone demo --backend jax --out demo-jax",
            "hyperclone demo --config demo.toml       # options from a TOML recipe; flags override it"))
    p.add_argument("--config", metavar="FILE", help=recipe.CONFIG_HELP)
    p.add_argument("--backend", default="torch", help="a backend that trains (see hyperclone backends)")
    p.add_argument("--text", help="a UTF-8 text file instead of the embedded corpus (default: the embedded corpus)")
    p.add_argument("--out", default="hyperclone-demo", help="folder for results.json, loss.png and recipe.toml")
    p.add_argument("--quick", action="store_true",
                   help="the quick preset: fewer steps (docs/timings.md has how long it takes)")
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
    args = recipe.parse(parser, [a for a in argv if a != "--debug"], paths=("text", "out"))
    base = PRESETS[args.preset or ("quick" if args.quick else "default")]
    st = settings_from(args, base)
    check_settings(st)
    check_backend(args.backend, st.device)
    run = out_dir(args.out, {"text": args.text, "recipe": getattr(args, "config", None)})
    corpus = load_corpus(args.text)
    print(corpus.describe())
    with run:  # OUT is this demo's while it races (the mark, the lock): a rival demo is refused
        results = compare(st, corpus, backend=args.backend, progress=not args.no_progress)
        print()
        print(summarize(results))
        resolved = dict(recipe.resolved(parser, args, exclude=("json", "no_progress", "quick", "out")),
                        **asdict(st))  # every setting as run, whichever preset or file it came from
        # paths relative to OUT (no path of this machine); the replay writes a fresh folder beside OUT
        resolved["text"] = recipe.portable(args.text, run.out)
        resolved["out"] = recipe.replay_folder(run.out)
        out = write_outputs(results, run, resolved)
    print(f"\nwrote {out / 'results.json'}, {out / 'loss.png'} and {out / 'recipe.toml'} "
          f"({results['summary']['seconds']:.0f} s)")
    if args.json:
        print(json.dumps(finite({k: v for k, v in results.items() if k != "curves"})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
