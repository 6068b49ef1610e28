"""The demo's race at any scale: a growing run vs random twin vs small model kept training.

Same three runs, same printed table and same results.json as ``hyperclone demo``
(both call ``hyperclone_core.demo.compare`` on a backend that trains), on one compute
axis with every stage counted; here every size and budget is a flag, the data may be
any UTF-8 text or a token file, and the device may be a GPU::

    python benchmarks/speedup.py --hidden 384 --layers 8 --heads 6 --ffn 1024 \\
        --seq-len 256 --batch-size 64 --steps 1200 \\
        --text ../shared/data/tinyshakespeare.txt --device cuda --out bench-out

``--hidden/--layers/--heads/--ffn`` name the model before the last growth; the seed,
the stages and their budgets are the recipe's (``--grow-at``, ``--seed-width``, ...).
``--cache DIR`` reuses what an earlier race with the same inputs trained (the random
twin, the stages before the last growth, the small model's branch).  With no flags
it runs the demo's defaults on the embedded corpus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hyperclone_core.demo.corpus import CorpusError
from hyperclone_core.demo.corpus import load as load_corpus
from hyperclone_core.errors import HypercloneError


def build_parser() -> argparse.ArgumentParser:
    from hyperclone_core.demo.cli import add_settings_args
    from hyperclone_core.demo.race import PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="torch", help="backend whose engine trains the three runs")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="UTF-8 text file (byte tokens); default: the embedded corpus")
    src.add_argument("--tokens", help="token file (.npy, or .bin with --data-dtype); the last 5%% is validation")
    p.add_argument("--data-dtype", help="dtype of a .bin token file (uint16, uint32)")
    p.add_argument("--vocab", type=int, help="vocab size for --tokens (default: max id + 1)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="base settings before overrides")
    p.add_argument("--out", default="speedup-out", help="folder for results.json and loss.png")
    p.add_argument("--cache", help="folder of runs to reuse when their inputs match (see the module docstring)")
    add_settings_args(p.add_argument_group("settings"), PRESETS["default"])
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from hyperclone_core import demo

    st = demo.settings_from(args, demo.PRESETS[args.preset])
    cache = demo.Cache(args.cache) if args.cache else None
    try:
        demo.check_out(args.out)
        if args.tokens:
            from hyperclone_core.train.data import hold_out, load_tokens

            tokens = load_tokens(args.tokens, dtype=args.data_dtype, vocab=args.vocab)
            train, val = hold_out(np.asarray(tokens), 0.05)
            print(f"tokens: {args.tokens}: {len(tokens):,} (train {len(train):,}, val {len(val):,})")
            results = demo.compare(st, None, backend=args.backend, train_tokens=train, val_tokens=val,
                                   vocab=args.vocab, cache=cache)
            results["corpus"] = dict(tokens=str(args.tokens), train_tokens=len(train), val_tokens=len(val))
        else:
            corpus = load_corpus(args.text)
            print(corpus.describe())
            results = demo.compare(st, corpus, backend=args.backend, cache=cache)
        print()
        print(demo.summarize(results))
        out = demo.write_outputs(results, args.out)
    except (HypercloneError, CorpusError) as e:
        print(f"speedup: error: {e}", file=sys.stderr)
        return 2
    print(f"\nwrote {Path(out) / 'results.json'} and {Path(out) / 'loss.png'}")
    print(json.dumps(demo.finite(results["summary"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
