"""The ``hyperclone`` command: expand, plan, verify, train, demo, backends.

``train`` and ``demo`` run on a backend (``--backend``, default torch) through its
training engine; their options are in ``hyperclone_core.train.cli`` and
``hyperclone_core.demo.cli``.

Every failure ends in one line on stderr and an exit code of its class (``main``
is the one error boundary); ``--debug`` or ``HYPERCLONE_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Optional, Sequence

from . import validate
from .argparsing import Parser
from .boundary import debug_requested, guarded
from .errors import EXIT_VERIFICATION, HypercloneError

EXIT_CODES = """exit codes:
  0    success
  1    any other error the library reports
  2    usage: a bad option, or growth/strategy options that cannot be planned
  3    input: a missing, unreadable, corrupt or inconsistent checkpoint, config or data file
  4    output: the destination may not or cannot be written (exists, not hyperclone's, disk full)
  5    verification: the clone's logits differ from the source's past the tolerance, or are not finite
  6    training diverged: the loss became NaN/Inf (the step was not applied; the newest valid
       checkpoint is named)
  70   internal error: a bug (rerun with --debug and report the traceback)
  130  interrupted (Ctrl-C); nothing partial is left at the destination

--debug (or HYPERCLONE_DEBUG=1) prints the traceback of any failure."""


_Parser = Parser


def _ratio(option: str):
    return lambda text: validate.finite(option, text, 0.0, validate.MAX_RATIO, lo_open=True)


def _growth_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("growth")
    g.add_argument("--width", type=_ratio("--width"), default=2,
                   help="hidden-size ratio (an integer: norms need uniform growth); default 2")
    f = g.add_mutually_exclusive_group()
    f.add_argument("--ffn", type=_ratio("--ffn"), help="ffn ratio (may be uneven, e.g. 1.5); default: the width")
    f.add_argument("--ffn-size", type=lambda t: validate.integer("--ffn-size", t, 1, validate.MAX_DIM),
                   help="ffn size (instead of --ffn)")
    g.add_argument("--heads", type=_ratio("--heads"), help="attention-head ratio; default: the width (head_dim fixed)")
    g.add_argument("--kv-heads", type=_ratio("--kv-heads"),
                   help="kv-head ratio; default: the head ratio (MQA stays 1)")
    g.add_argument("--layers", type=validate.depth,
                   help=f"new depth: a total (e.g. 26) or +K, at most {validate.MAX_LAYERS}; default: unchanged")
    g.add_argument("--layout", choices=("tile", "interleave"), default="tile",
                   help="where copies go: in blocks (tile, the paper's) or side by side")
    g.add_argument("--strategy", default=None,
                   help="symmetric | diagonal | first_copy | random_split:A | noisy:DB (default noisy:10); "
                        "rules like mlp=noisy:10,attn=symmetric")
    g.add_argument("--seed", type=lambda t: validate.integer("--seed", t, 0, 2**63 - 1), default=0)
    g.add_argument("--inexact", action="store_true", help="allow a plan that does not preserve the function")


def _growth_kwargs(a) -> dict:
    return dict(width=a.width, ffn=a.ffn, ffn_size=a.ffn_size, heads=a.heads, kv_heads=a.kv_heads,
                layers=a.layers, strategy=a.strategy, seed=a.seed, inexact=a.inexact, layout=a.layout)


def _tolerance(text) -> float:
    return validate.finite("--tolerance", text, 0.0)


def cmd_expand(a) -> int:
    from .expand import expand_checkpoint

    report = expand_checkpoint(
        a.src, a.dst, **_growth_kwargs(a), dtype=a.dtype, backend=a.backend, device=a.device,
        force=a.force, verify=not a.no_verify, progress=not a.quiet, tolerance=a.tolerance,
    )
    g = report["growth"]
    print(f"expanded {report['family']} -> {a.dst}  ({' '.join(f'{k}={v}' for k, v in g.items())}, "
          f"strategy {report['strategy']}, {report['seconds_expand']:.1f}s)")
    v = report.get("verification")
    if v:
        print(f"verified on {v['tokens'][0]}x{v['tokens'][1]} random tokens: max |logit diff| "
              f"{v['max_abs_diff']:.3e} (relative {v['relative']:.2e}, tolerance {v['tolerance']:g})"
              + ("" if v["passed"] else "  -- inexact, as --inexact allowed"))
    return 0


def cmd_plan(a) -> int:
    from .expand import make_plan
    from .io import Checkpoint, read_config
    from .validate import read_model

    cfg = read_config(a.src)
    p = make_plan(cfg, **_growth_kwargs(a), where=os.path.join(a.src, "config.json"))
    if not a.no_weights_check:
        fam, dec = read_model(cfg)
        Checkpoint(a.src).validate(fam, dec)
    print(p.to_json() if a.json else p)
    return 0


def cmd_verify(a) -> int:
    from .expand import failure, verify_checkpoints

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
    from .backend import available_backends, load_backend

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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hyperclone", description=__doc__.splitlines()[0], epilog=EXIT_CODES,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    sub = p.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of a failure")

    e = sub.add_parser("expand", help="expand a checkpoint folder into a wider/deeper one", parents=[common],
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("src")
    e.add_argument("dst")
    _growth_args(e)
    e.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "float64"),
                   help="output dtype; default: as the source")
    e.add_argument("--backend", default="numpy", help="backend executing the plan (numpy, torch, ...)")
    e.add_argument("--device", help="device for the backend (e.g. cuda, cuda:1, mps)")
    e.add_argument("--force", action="store_true",
                   help="replace DST if it is a previous hyperclone output or empty (atomically)")
    e.add_argument("--no-verify", action="store_true", help="skip the logit check on random tokens")
    e.add_argument("--tolerance", type=_tolerance,
                   help="relative logit difference the check allows (default: 1e-4 for float32, 5e-2 for "
                        "bfloat16, 1e-2 for float16 weights)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_expand)

    pl = sub.add_parser("plan", help="print the plan and its certificate without touching weights",
                        parents=[common])
    pl.add_argument("src")
    _growth_args(pl)
    pl.add_argument("--json", action="store_true")
    pl.add_argument("--no-weights-check", action="store_true", help="read config.json only")
    pl.set_defaults(func=cmd_plan)

    v = sub.add_parser("verify", help="compare two checkpoints' logits; fails past the tolerance",
                       parents=[common], epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("src")
    v.add_argument("dst")
    v.add_argument("--backend", default="numpy")
    v.add_argument("--seq", type=lambda t: validate.integer("--seq", t, 1, validate.MAX_SEQ), default=16)
    v.add_argument("--tolerance", type=_tolerance,
                   help="fail (exit 5) past this relative difference (default: by the stored dtype, 1e-4 "
                        "for float32, 5e-2 for bfloat16, 1e-2 for float16); NaN/Inf always fails")
    v.add_argument("--json", action="store_true", help="print the result as JSON (no NaN: missing values are null)")
    v.set_defaults(func=cmd_verify)

    b = sub.add_parser("backends", help="list installed backends and their capabilities", parents=[common])
    b.set_defaults(func=cmd_backends)

    for name, text in (("train", "continue training a checkpoint (see `hyperclone train --help`)"),
                       ("demo", "pretrain, clone 2x and race the clone against a random twin")):
        s = sub.add_parser(name, help=text, add_help=False)
        s.add_argument("--backend", default="torch")
        s.set_defaults(func=None, delegate=name)
    return p


# ---------------------------------------------------------------- the error boundary


def _run(argv: list) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "delegate", None):
        return _delegate(args.delegate, args.backend, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; every failure becomes one line on stderr and its class's exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    if "--debug" in argv and next((a for a in argv if not a.startswith("-")), None) in ("train", "demo"):
        argv = [a for a in argv if a != "--debug"]  # their own parsers do not know it
    return guarded(lambda: _run(argv), debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
