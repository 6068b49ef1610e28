"""``hyperclone demo``: pretrain a small model, clone it 2x, race it against a random
twin and the small model kept training, on any backend that trains.  No download:
the text is the embedded corpus (``hyperclone_core.corpus``) or ``--text FILE``.
The defaults come from the sweep in ``docs/recipe.md``; ``benchmarks/speedup.py``
runs the same race at any scale."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from ..corpus import load as load_corpus
from ..argparsing import Parser
from ..boundary import debug_requested, guarded
from ..errors import OutputError
from ..io import AtomicDir, write_json
from .plot import plot
from .race import PRESETS, Settings, compare
from .report import finite, summarize


def write_outputs(results: dict, out) -> Path:
    """results.json and loss.png, written atomically into ``out``.  An existing folder
    is replaced only if it holds a previous results.json (never a user's folder)."""
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {k: v for k, v in results.items() if k != "curves"}
    with AtomicDir(out, force=True) as tmp:
        write_json(tmp / "results.json", finite(doc))
        plot(results, tmp / "loss.png")
    return out


def check_out(out) -> Path:
    """Refuse, before any training, to replace a folder that is not a previous output."""
    out = Path(out)
    if out.exists() and not (out / "results.json").is_file():
        raise OutputError(f"--out {out} exists and is not a previous demo output (no results.json); "
                              "choose another folder")
    return out


# ---------------------------------------------------------------- CLI


def add_settings_args(p: argparse.ArgumentParser, base: Settings) -> None:
    """One flag per Settings field (used by the demo's hidden overrides and the benchmark)."""
    for name, value in asdict(base).items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=type(value), default=None, help=f"default {value!r}")


def settings_from(args, base: Settings) -> Settings:
    return replace(base, **{k: getattr(args, k) for k in asdict(base) if getattr(args, k, None) is not None})


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="hyperclone demo",
        description="Pretrain a small byte-level Llama, clone it 2x and race the clone against a random-init "
                    "twin and the small model kept training. No download needed.")
    p.add_argument("--backend", default="torch", help="a backend that trains (see `hyperclone backends`); default torch")
    p.add_argument("--text", help="a UTF-8 text file instead of the embedded corpus")
    p.add_argument("--out", default="hyperclone-demo", help="folder for results.json and loss.png")
    p.add_argument("--quick", action="store_true", help="a <= 2 minute run (CPU)")
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
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    base = PRESETS[args.preset or ("quick" if args.quick else "default")]
    st = settings_from(args, base)
    check_out(args.out)
    corpus = load_corpus(args.text)
    print(corpus.describe())
    results = compare(st, corpus, backend=args.backend, progress=not args.no_progress)
    print()
    print(summarize(results))
    out = write_outputs(results, args.out)
    print(f"\nwrote {out / 'results.json'} and {out / 'loss.png'} ({results['summary']['seconds']:.0f} s)")
    if args.json:
        print(json.dumps(finite({k: v for k, v in results.items() if k != "curves"})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
