"""The hyperclone command: expand, plan, verify, grow, train, demo, backends.

train and demo run on a backend (--backend, default torch) through its training
engine; their options are in hyperclone_core.train.cli and hyperclone_core.demo.cli.
expand, plan and train read a TOML recipe (--config FILE; flags override it) and
expand and train write the resolved recipe into their output (recipe.toml).

Every failure ends in one line on stderr and an exit code of its class (main is the
one error boundary); --debug or HYPERCLONE_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from typing import Optional, Sequence

from . import __version__
from .console import recipe
from .model import validate
from .algebra.strategy import DEFAULT as DEFAULT_STRATEGY
from .console.argparsing import HelpFormatter, Parser, examples, fill
from .console.boundary import debug_requested, guarded
from .errors import EXIT_VERIFICATION, HypercloneError, UsageError

EXIT_CODES = """exit codes:
  0    success
  1    any other error the library reports
  2    usage: a bad option, or growth/strategy options that cannot be planned
  3    input: a missing, unreadable, corrupt or inconsistent checkpoint, config or data file
  4    output: the destination or --out may not or cannot be written (exists, not hyperclone's, an
       input, another run holds it, disk full)
  5    verification: the clone's logits differ from the source's past the tolerance, or are not finite
  6    training diverged: the loss became NaN/Inf (the step was not applied; the newest valid
       checkpoint is named)
  70   internal error: a bug (rerun with --debug and report the traceback)
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP, SIGUSR1/2); nothing partial is left at the destination

--debug (or HYPERCLONE_DEBUG=1) prints the traceback of any failure."""


_Parser = Parser
DESCRIPTION = ("Grow a small pretrained language model into a wider, deeper one that computes exactly the same "
               "function (HyperCloning, arXiv 2409.12903), then train it.")
EXPAND_EXAMPLES = examples(
    "hyperclone expand small wide --width 2",
    "hyperclone expand small wide --width 2 --layers +4 --strategy noisy:10 --max-shard-size 2GB",
    "hyperclone expand --config grow.toml                # every option from a recipe file",
    "hyperclone expand --config wide/recipe.toml         # replay a run, into wide-replay")
PLAN_EXAMPLES = examples(
    "hyperclone plan small --width 2 --ffn 1.5",
    "hyperclone plan small --width 2 --json > plan.json",
    "hyperclone plan --config grow.toml                  # preview an expand recipe")
VERIFY_EXAMPLES = examples(
    "hyperclone verify small wide",
    "hyperclone verify small wide --json --seq 64")
GROW_EXAMPLES = examples(
    "hyperclone grow runs/small/checkpoint-0000200 runs/grown --width 2 --strategy symmetric",
    "hyperclone train --config runs/grown/recipe.toml --resume --steps 1000   # continue the grown run",
    "hyperclone grow runs/small/checkpoint-0000200 runs/grown --width 2 --layers +2 --moments asymmetric")
BACKENDS_EXAMPLES = examples("hyperclone backends")
MAIN_EXAMPLES = examples(
    "hyperclone demo --quick                             # the whole idea on a CPU (docs/timings.md)",
    "hyperclone expand small wide --width 2              # grow a checkpoint folder",
    "hyperclone train wide --data corpus.txt --out runs/wide",
    "hyperclone COMMAND --help                           # each command's options and examples")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def shard_size(text) -> int:
    """--max-shard-size: bytes, or a number with a unit (500MB, 2GB: powers of 1000; 2GiB: of 1024)."""
    s = str(text).strip().replace(" ", "")
    k = len(s)
    while k and s[k - 1].isalpha():
        k -= 1
    number, unit = s[:k], s[k:].lower()
    try:
        x = float(number)
    except ValueError:
        x = float("nan")
    if unit not in _UNITS or not x == x or x <= 0 or x * _UNITS[unit] > 2**50:
        raise UsageError(f"--max-shard-size {text!r}: give bytes or a size like 500MB, 2GB or 2GiB (> 0)")
    return max(1, int(x * _UNITS[unit]))


def _ratio(option: str):
    return lambda text: validate.finite(option, text, 0.0, validate.MAX_RATIO, lo_open=True)


def _growth_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("growth")
    g.add_argument("--width", type=_ratio("--width"), default=2,
                   help="hidden-size ratio (an integer: norms need uniform growth) (default: 2)")
    f = g.add_mutually_exclusive_group()
    f.add_argument("--ffn", type=_ratio("--ffn"), help="ffn ratio, may be uneven, e.g. 1.5 (default: the width)")
    f.add_argument("--ffn-size", type=lambda t: validate.integer("--ffn-size", t, 1, validate.MAX_DIM),
                   help="ffn size, instead of --ffn (default: none, --ffn applies)")
    g.add_argument("--heads", type=_ratio("--heads"),
                   help="attention-head ratio (default: the width, so head_dim stays fixed; 1 under ALiBi, whose "
                        "slopes depend on the head count)")
    g.add_argument("--kv-heads", type=_ratio("--kv-heads"),
                   help="kv-head ratio (default: the head ratio; a single kv head, MQA, stays one)")
    g.add_argument("--layers", type=validate.depth,
                   help=f"new depth: a total (e.g. 26) or +K, at most {validate.MAX_LAYERS} (default: unchanged)")
    g.add_argument("--layout", choices=("tile", "interleave"), default="tile",
                   help="where copies go: in blocks (tile, the paper's) or side by side (interleave)")
    g.add_argument("--strategy", default=None,
                   help="symmetric, diagonal, first_copy, random_split:A or noisy:DB, or rules per role or name "
                        f"like mlp=noisy:10,attn=symmetric (default: {DEFAULT_STRATEGY})")
    g.add_argument("--seed", type=lambda t: validate.integer("--seed", t, 0, 2**63 - 1), default=0,
                   help="seed of the noise and random_split draws; same seed, same bytes")
    g.add_argument("--inexact", action="store_true",
                   help="allow a plan that does not preserve the function (e.g. depth on a post-LN stack)")


def _growth_kwargs(a) -> dict:
    return dict(width=a.width, ffn=a.ffn, ffn_size=a.ffn_size, heads=a.heads, kv_heads=a.kv_heads,
                layers=a.layers, strategy=a.strategy, seed=a.seed, inexact=a.inexact, layout=a.layout)


def _tolerance(text) -> float:
    return validate.finite("--tolerance", text, 0.0)


def cmd_expand(a) -> int:
    from .expand.checkpoint import expand_checkpoint

    from .expand.card import format_changes

    report = expand_checkpoint(
        a.src, a.dst, **_growth_kwargs(a), dtype=a.dtype, backend=a.backend, device=a.device,
        force=a.force, verify=not a.no_verify, progress=not a.quiet, tolerance=a.tolerance,
        max_shard_bytes=a.max_shard_size,
    )
    g = report["growth"]
    print(f"expanded {report['family']} -> {a.dst}  ({' '.join(f'{k}={v}' for k, v in g.items())}, "
          f"strategy {report['strategy']}, {report['seconds_expand']:.1f}s)")
    v = report.get("verification")
    if v:
        print(f"verified on {v['tokens'][0]}x{v['tokens'][1]} random tokens: max |logit diff| "
              f"{v['max_abs_diff']:.3e} (relative {v['relative']:.2e}, tolerance {v['tolerance']:g})"
              + ("" if v["passed"] else "  -- inexact, as --inexact allowed"))
    p = report["parameters"]
    print(f"parameters {p['before']:,} -> {p['after']:,}; wrote README.md (model card) and recipe.toml")
    changes = format_changes(report["config_changes"])
    if changes:
        print(changes)
    return 0


def cmd_grow(a) -> int:
    from .train.grow_saved import grow_checkpoint

    defaults = {"layout": "tile", "seed": 0, "inexact": False}  # seed 0: the run's own seed
    options = {k: v for k, v in _growth_kwargs(a).items() if v is not None and defaults.get(k, None) != v}
    event = grow_checkpoint(a.checkpoint, a.dst, options, moments=None if a.moments == "carry" else a.moments,
                            inserted_lr=None if a.inserted_lr == 1.0 else a.inserted_lr,
                            log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({"step": event["step"], "options": event["options"], "dst": str(a.dst),
                      "params": [event["before"]["params"], event["after"]["params"]], "inexact": event["inexact"]}))
    return 0


def cmd_plan(a) -> int:
    from .expand.card import config_changes, config_dtype, format_changes, format_summary, summary
    from .algebra.options import plan_growth
    from .io import Checkpoint, read_config
    from .model.validate import read_model

    cfg = read_config(a.src)
    p = plan_growth(cfg, **_growth_kwargs(a), where=os.path.join(a.src, "config.json"))
    dtype_of = lambda name: config_dtype(cfg)  # noqa: E731 - --no-weights-check: as config.json states
    if not a.no_weights_check:
        fam, dec = read_model(cfg)
        ck = Checkpoint(a.src)
        ck.validate(fam, dec)
        dtype_of = ck.dtype
    s = summary(p, dtype_of)
    changes = config_changes(p, p.config)
    if a.json:
        doc = json.loads(p.to_json())
        doc["summary"] = s
        doc["config_changes"] = changes
        print(json.dumps(doc, indent=1))
    else:
        print(format_summary(s))
        extra = format_changes(changes)
        body = str(p) if a.programs else p.brief()
        print(f"{extra}\n{body}" if extra else body)
    return 0


def cmd_verify(a) -> int:
    from .expand.checkpoint import failure, verify_checkpoints

    v = verify_checkpoints(a.src, a.dst, backend=a.backend, seq=a.seq, tolerance=a.tolerance)
    if a.json:
        print(json.dumps(v, indent=1, allow_nan=False))
    elif v["finite"]:
        print(f"max |logit diff| {v['max_abs_diff']:.3e}  max |logit| {v['max_abs_logit']:.3e}  "
              f"relative {v['relative']:.2e}  tolerance {v['tolerance']:g} ({v['dtype']})  "
              f"({v['tokens'][0]}x{v['tokens'][1]} tokens, {v['backend']})")
    if not v["passed"]:
        print(f"hyperclone: FAIL: {failure(v)}", file=sys.stderr)
        return EXIT_VERIFICATION
    return 0


def cmd_backends(a) -> int:
    from .run.protocol import available_backends, load_backend

    for name in sorted(available_backends()):
        try:
            b = load_backend(name)
            print(f"{name:10s} {b.version():12s} {b.device_name():20s} {', '.join(sorted(b.capabilities))}")
        except HypercloneError as exc:
            print(f"{name:10s} unavailable: {exc}")
    return 0


def _delegate(command: str, backend: str, argv: Sequence[str]) -> int:
    """``train`` and ``demo`` are the core's, run on ``backend``'s engine (found through
    the entry points, like every backend)."""
    module = {"train": "hyperclone_core.train.cli", "demo": "hyperclone_core.demo.cli"}[command]
    return int(importlib.import_module(module).main(["--backend", backend, *argv]) or 0)


def version_text() -> str:
    import numpy

    return (f"hyperclone {__version__} (Python {platform.python_version()}, numpy {numpy.__version__}; "
            "backends: hyperclone backends)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; ``parser.commands`` maps each command to its parser."""
    p = _Parser(prog="hyperclone", description=fill(DESCRIPTION), epilog=MAIN_EXAMPLES + "\n\n" + EXIT_CODES,
                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=version_text(), help="print the version and exit")
    p.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           title="commands (hyperclone COMMAND --help for each)")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of a failure (default: off)")

    def command(name, text, epilog, description=None):
        return sub.add_parser(name, help=text, description=fill(description or text[0].upper() + text[1:] + "."),
                              parents=[common], epilog=epilog, formatter_class=HelpFormatter)

    e = command("expand", "expand a checkpoint folder into a wider, deeper one computing the same function",
                EXPAND_EXAMPLES + "\n\n" + EXIT_CODES,
                "Expand the checkpoint folder SRC into DST: a wider (and deeper) model that computes the same "
                "function, checked on random tokens before DST appears. DST is a complete folder: weights, "
                "config.json, tokenizer files, a model card (README.md; the source's card is kept as "
                "BASE_MODEL_README.md), hyperclone.json, plan.json and recipe.toml.")
    e.add_argument("src", nargs="?", help="source checkpoint folder: config.json and *.safetensors "
                                          "(required, on the command line or in --config)")
    e.add_argument("dst", nargs="?", help="destination folder, written atomically "
                                          "(required, on the command line or in --config)")
    e.add_argument("--config", metavar="FILE", help=recipe.CONFIG_HELP)
    _growth_args(e)
    out = e.add_argument_group("output")
    out.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "float64"),
                     help="dtype of the written weights (default: each tensor's source dtype)")
    out.add_argument("--max-shard-size", type=shard_size, default=5 * 2**30, metavar="SIZE",
                     help="largest safetensors shard: bytes, or 500MB, 2GB (powers of 1000), 2GiB (of 1024) "
                          "(default: 5GiB)")
    out.add_argument("--force", action="store_true",
                     help="replace DST if it is a previous hyperclone output or an empty folder, atomically")
    out.add_argument("--no-verify", action="store_true", help="skip the logit check on random tokens")
    out.add_argument("--tolerance", type=_tolerance,
                     help="relative logit difference the check allows (default: by the stored dtype, 1e-4 for "
                          "float32, 5e-2 for bfloat16, 1e-2 for float16)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    run = e.add_argument_group("execution")
    run.add_argument("--backend", default="numpy",
                     help="backend executing the plan: numpy, torch, jax, mlx or a plugin (see hyperclone backends)")
    run.add_argument("--device", help="device for the backend, e.g. cuda, cuda:1, mps, gpu (default: the backend's)")
    e.set_defaults(func=cmd_expand)

    pl = command("plan", "print the plan and its certificate without touching weights", PLAN_EXAMPLES,
                 "Print what expand would do: a summary (parameters and bytes before and after, per role), "
                 "the config.json changes beyond the growth and the certificate (--programs adds each tensor's "
                 "program). No weight is read or written.")
    pl.add_argument("src", nargs="?", help="source checkpoint folder (required, on the command line or in --config)")
    pl.add_argument("--config", metavar="FILE",
                    help="a TOML recipe of expand; its growth options are used, the others ignored (default: none)")
    _growth_args(pl)
    pl.add_argument("--programs", action="store_true", help="also print every tensor's program (ops and maps)")
    pl.add_argument("--json", action="store_true",
                    help="print the plan as JSON (hyperclone.plan/1, readable by Plan.from_json) with the summary")
    pl.add_argument("--no-weights-check", action="store_true",
                    help="read config.json only; bytes then assume the dtype config.json states")
    pl.set_defaults(func=cmd_plan)

    v = command("verify", "compare two checkpoints' logits; fails (exit 5) past the tolerance",
                VERIFY_EXAMPLES + "\n\n" + EXIT_CODES,
                "Run SRC and DST on the same random tokens and compare their logits: the max absolute and the "
                "relative difference (max |diff| / max |logit|). Exit 5 past the tolerance or on NaN/Inf.")
    v.add_argument("src", help="the first checkpoint folder (e.g. the source)")
    v.add_argument("dst", help="the second checkpoint folder (e.g. the clone)")
    v.add_argument("--backend", default="numpy",
                   help="backend running both models (numpy is the float64 oracle)")
    v.add_argument("--seq", type=lambda t: validate.integer("--seq", t, 1, validate.MAX_SEQ), default=16,
                   help="tokens per sequence (2 sequences; capped at the model's positions)")
    v.add_argument("--tolerance", type=_tolerance,
                   help="fail (exit 5) past this relative difference (default: by the stored dtype, 1e-4 "
                        "for float32, 5e-2 for bfloat16, 1e-2 for float16); NaN/Inf always fails")
    v.add_argument("--json", action="store_true", help="print the result as JSON (no NaN: missing values are null)")
    v.set_defaults(func=cmd_verify)

    gr = command("grow", "grow a saved training run: its checkpoint, trainer state and all, into a new run folder",
                 GROW_EXAMPLES + "\n\n" + EXIT_CODES,
                 "Grow RUN/checkpoint-N, a checkpoint hyperclone train wrote, into DST: a run folder holding "
                 "checkpoint-N of the grown model with the whole training state grown (AdamW's moments scaled as "
                 "the clone's gradients scale, the step kept, the per-tensor LR/eps/decay multipliers and clip "
                 "weights), the growth added to the run's --grow schedule, and the run's recipe.toml updated: "
                 "hyperclone train --config DST/recipe.toml --resume continues it on any backend.")
    gr.add_argument("checkpoint", help="RUN/checkpoint-N, written by hyperclone train")
    gr.add_argument("dst", help="the new run folder (absent or empty)")
    _growth_args(gr)
    gr.set_defaults(seed=0)
    gr.add_argument("--moments", choices=("carry", "asymmetric", "reset"), default="carry",
                    help="AdamW moments: carry (the clone continues the run), asymmetric (one copy keeps them: a "
                         "symmetry breaker), reset (a fresh optimizer) (default: carry)")
    gr.add_argument("--inserted-lr", type=lambda t: validate.finite("--inserted-lr", t, 0.0), default=1.0,
                    help="LR multiplier of layers --layers inserts (0 freezes them) (default: 1)")
    gr.set_defaults(func=cmd_grow)

    b = command("backends", "list installed backends, their versions, devices and capabilities", BACKENDS_EXAMPLES)
    b.set_defaults(func=cmd_backends)

    for name, text in (("train", "continue training a checkpoint folder (hyperclone train --help)"),
                       ("demo", "pretrain a small model, clone it 2x, race it against a random twin "
                                "(hyperclone demo --help)")):
        s = sub.add_parser(name, help=text, add_help=False)
        s.add_argument("--backend", default="torch", help="backend whose engine trains (default: torch)")
        s.set_defaults(func=None, delegate=name)
    p.commands = {"expand": e, "plan": pl, "verify": v, "grow": gr, "backends": b}
    return p


# ---------------------------------------------------------------- the error boundary


def _command(argv: list) -> tuple:
    """(command, its arguments): the first token that is not a top-level option."""
    for k, tok in enumerate(argv):
        if not tok.startswith("-"):
            return tok, argv[k + 1:]
    return None, []


PLAN_IGNORES = ("dst", "dtype", "max_shard_size", "force", "no_verify", "tolerance", "quiet", "backend", "device")
"""Options of an expand recipe that plan has no use for (plan --config reads expand recipes)."""


def _run(argv: list, debug: bool = False) -> int:
    parser = build_parser()
    name, rest = _command(argv)
    sub = parser.commands.get(name)
    path = recipe.config_path(rest) if sub is not None else None
    if path is not None:
        recipe.apply(sub, rest, path, ignore=PLAN_IGNORES if name == "plan" else (), paths=("src", "dst"))
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "delegate", None):
        return _delegate(args.delegate, args.backend, extra + (["--debug"] if debug else []))  # their boundary prints it
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    needs = {"expand": ("src", "dst"), "plan": ("src",)}.get(args.command, ())
    missing = [d.upper() for d in needs if getattr(args, d, None) is None]
    if missing:
        raise UsageError(f"hyperclone {args.command} needs {' and '.join(missing)} (on the command line, or as "
                         f"{' and '.join(d.lower() for d in missing)} in a --config recipe); "
                         f"see 'hyperclone {args.command} --help'")
    return args.func(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; every failure becomes one line on stderr and its class's exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    if "--debug" in argv and next((a for a in argv if not a.startswith("-")), None) in ("train", "demo"):
        argv = [a for a in argv if a != "--debug"]  # their own parsers do not know it
    return guarded(lambda: _run(argv, debug), debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
