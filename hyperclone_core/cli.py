"""The ``hyperclone`` command: expand, plan, verify, train, demo, backends.

``train`` and ``demo`` run on a backend (``--backend``, default torch) and are
handed to that backend's ``train.main`` / ``demo.main``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Optional, Sequence

from .errors import HypercloneError


def _growth_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("growth")
    g.add_argument("--width", type=float, default=2, help="hidden-size ratio (an integer: norms need uniform growth); default 2")
    f = g.add_mutually_exclusive_group()
    f.add_argument("--ffn", type=float, help="ffn ratio (may be uneven, e.g. 1.5); default: the width")
    f.add_argument("--ffn-size", type=int, help="ffn size (instead of --ffn)")
    g.add_argument("--heads", type=float, help="attention-head ratio; default: the width (head_dim fixed)")
    g.add_argument("--kv-heads", type=float, help="kv-head ratio; default: the head ratio (MQA stays 1)")
    g.add_argument("--layers", help="new depth: a total (e.g. 26) or +K; default: unchanged")
    g.add_argument("--layout", choices=("tile", "interleave"), default="tile",
                   help="where copies go: in blocks (tile, the paper's) or side by side")
    g.add_argument("--strategy", default=None,
                   help="symmetric | diagonal | first_copy | random_split:A | noisy:DB (default noisy:10); "
                        "rules like mlp=noisy:10,attn=symmetric")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--inexact", action="store_true", help="allow a plan that does not preserve the function")


def _growth_kwargs(a) -> dict:
    return dict(width=a.width, ffn=a.ffn, ffn_size=a.ffn_size, heads=a.heads, kv_heads=a.kv_heads,
                layers=a.layers, strategy=a.strategy, seed=a.seed, inexact=a.inexact, layout=a.layout)


def cmd_expand(a) -> int:
    from .expand import expand_checkpoint

    report = expand_checkpoint(
        a.src, a.dst, **_growth_kwargs(a), dtype=a.dtype, backend=a.backend, device=a.device,
        force=a.force, verify=not a.no_verify, progress=not a.quiet,
    )
    g = report["growth"]
    print(f"expanded {report['family']} -> {a.dst}  ({' '.join(f'{k}={v}' for k, v in g.items())}, "
          f"strategy {report['strategy']}, {report['seconds_expand']:.1f}s)")
    v = report.get("verification")
    if v:
        print(f"verified on {v['tokens'][0]}x{v['tokens'][1]} random tokens: max |logit diff| "
              f"{v['max_abs_diff']:.3e} (relative {v['relative']:.2e})")
    return 0


def cmd_plan(a) -> int:
    from .expand import make_plan
    from .io import Checkpoint, read_config

    cfg = read_config(a.src)
    p = make_plan(cfg, **_growth_kwargs(a))
    if not a.no_weights_check:
        from .families import family_for_config
        fam = family_for_config(cfg)
        Checkpoint(a.src).validate(fam, fam.read(cfg))
    print(p.to_json() if a.json else p)
    return 0


def cmd_verify(a) -> int:
    from .expand import verify_checkpoints

    v = verify_checkpoints(a.src, a.dst, backend=a.backend, seq=a.seq)
    print(json.dumps(v, indent=1) if a.json else
          f"max |logit diff| {v['max_abs_diff']:.3e}  max |logit| {v['max_abs_logit']:.3e}  "
          f"relative {v['relative']:.2e}  ({v['tokens'][0]}x{v['tokens'][1]} tokens, {v['backend']})")
    if a.tolerance is not None and v["relative"] > a.tolerance:
        print(f"FAIL: relative difference {v['relative']:.2e} > tolerance {a.tolerance:g}", file=sys.stderr)
        return 1
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
    module = f"hyperclone_{backend}.{command}"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise HypercloneError(
            f"`hyperclone {command}` needs the {backend} backend ({exc.name} is not installed); "
            f"pip install 'hyperclone[{backend}]'"
        ) from None
    return int(mod.main(list(argv)) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hyperclone", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("expand", help="expand a checkpoint folder into a wider/deeper one")
    e.add_argument("src")
    e.add_argument("dst")
    _growth_args(e)
    e.add_argument("--dtype", help="output dtype (float32, bfloat16, float16); default: as the source")
    e.add_argument("--backend", default="numpy", help="backend executing the plan (numpy, torch, ...)")
    e.add_argument("--device", help="device for the backend (e.g. cuda, cuda:1, mps)")
    e.add_argument("--force", action="store_true", help="replace DST if it exists (atomically)")
    e.add_argument("--no-verify", action="store_true", help="skip the logit check on random tokens")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_expand)

    pl = sub.add_parser("plan", help="print the plan and its certificate without touching weights")
    pl.add_argument("src")
    _growth_args(pl)
    pl.add_argument("--json", action="store_true")
    pl.add_argument("--no-weights-check", action="store_true", help="read config.json only")
    pl.set_defaults(func=cmd_plan)

    v = sub.add_parser("verify", help="max and relative logit difference between two checkpoints")
    v.add_argument("src")
    v.add_argument("dst")
    v.add_argument("--backend", default="numpy")
    v.add_argument("--seq", type=int, default=16)
    v.add_argument("--tolerance", type=float, help="exit 1 if the relative difference exceeds this")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    b = sub.add_parser("backends", help="list installed backends and their capabilities")
    b.set_defaults(func=cmd_backends)

    for name, text in (("train", "continue training a checkpoint (see `hyperclone train --help`)"),
                       ("demo", "pretrain, clone 2x and race the clone against a random twin")):
        s = sub.add_parser(name, help=text, add_help=False)
        s.add_argument("--backend", default="torch")
        s.set_defaults(func=None, delegate=name)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    try:
        if getattr(args, "delegate", None):
            return _delegate(args.delegate, args.backend, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args.func(args)
    except HypercloneError as exc:
        print(f"hyperclone: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperclone: interrupted; no destination was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
