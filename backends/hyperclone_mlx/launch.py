"""``python -m hyperclone_mlx.launch -n WORLD -- -m MODULE ARGS...``: ``mlx.launch``
(ring backend) with exit codes.

``mlx.launch`` starts the processes and relays their output, but exits 0 even when
one of them fails.  This runner starts each process through itself: the process
runs ``MODULE`` (or a script) and records its exit status, and the runner exits
non-zero unless all WORLD processes recorded 0.  ``--hosts``/``--hostfile`` pass
through to ``mlx.launch`` for rings across machines (the status folder must then
be on a shared path: ``--status-dir``).
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

RANK_FLAG = "--rank-status"


def _run_rank(status_dir: str, command: list) -> int:
    """Run ``-m MODULE ARGS`` or ``SCRIPT ARGS`` in this process; record its exit status."""
    rc = 1
    try:
        if command[:1] == ["-m"] and len(command) >= 2:
            sys.argv = [command[1], *command[2:]]
            runpy.run_module(command[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(command)
            runpy.run_path(command[0], run_name="__main__")
        rc = 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: B036 - report anything, then record the failure
        traceback.print_exc()
        rc = 1
    finally:
        Path(status_dir, f"rank-{os.environ.get('MLX_RANK', '0')}").write_text(str(rc))
    return rc


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [RANK_FLAG]:
        return _run_rank(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
    if "--" not in argv:
        print("usage: python -m hyperclone_mlx.launch -n WORLD [--hosts H | --hostfile F] -- -m MODULE ARGS...",
              file=sys.stderr)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m hyperclone_mlx.launch", description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1, help="processes per host")
    ap.add_argument("--hosts", help="comma-separated hosts (mlx.launch --hosts)")
    ap.add_argument("--hostfile", help="mlx.launch --hostfile")
    ap.add_argument("--status-dir", help="where processes record their exit status (shared across hosts)")
    args = ap.parse_args(argv[:cut])
    command = argv[cut + 1:]
    if not command:
        ap.error("no command after --")
    status = Path(args.status_dir or tempfile.mkdtemp(prefix="hyperclone-mlx-launch-"))
    status.mkdir(parents=True, exist_ok=True)
    try:
        return _launch(args, command, status)
    finally:
        if not args.status_dir:
            shutil.rmtree(status, ignore_errors=True)


def _launch(args, command: list, status: Path) -> int:
    from .distributed import free_port_base, launcher

    hosts = ["--hostfile", args.hostfile] if args.hostfile else (["--hosts", args.hosts] if args.hosts else [])
    cmd = [*launcher(), "--backend", "ring", *hosts, "-n", str(args.n), "--starting-port", str(free_port_base(args.n)),
           "--python", sys.executable, "--", "-m", "hyperclone_mlx.launch", RANK_FLAG, str(status), "--", *command]
    subprocess.run(cmd, check=False)
    names = [] if args.hostfile else (args.hosts or "127.0.0.1").split(",")
    expected = args.n * len(names)
    # every status is visible when all processes run here, or the folder is shared
    complete = bool(names) and (args.status_dir or all(h.strip() in ("127.0.0.1", "localhost") for h in names))
    codes = {p.name: p.read_text().strip() for p in status.glob("rank-*")}
    failed = sorted(n for n, c in codes.items() if c != "0")
    if failed or (complete and len(codes) < expected):
        print(f"hyperclone_mlx.launch: {len(codes)} of {expected} process(es) recorded an exit status; "
              f"failed: {', '.join(f'{n} (exit {codes[n]})' for n in failed) or 'none'} (see their output above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
