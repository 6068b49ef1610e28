"""Streaming at scale: a Llama-3.2-1B-shaped bf16 checkpoint grown to ~4.9B and verified.

The source (hidden 2048, 16 layers, 32 q / 8 kv heads, head_dim 64, ffn 8192, vocab
128256, tied embeddings; ~1.24B parameters, 2.5 GB, random weights) is generated here a
block of rows at a time, so generating it does not need the model in memory.  Then,
each in a fresh process whose own wall time and peak RSS (its ``VmHWM``) are
measured:

- ``hyperclone expand SRC DST --width 2 --ffn 2 --no-verify`` (the write; ~9.8 GB out),
- ``cp -r DST COPY`` then ``sync`` of the copy (expand fsyncs what it writes, so the
  reference does too; plain ``cp -r`` is printed as well), on the same disk,
- ``hyperclone verify SRC DST`` (streams layer by layer),
- ``hyperclone expand SRC DST2 --width 2 --ffn 2`` (the default: writes, then verifies),

and prints one table with the bounds (issue 13): expand wall <= 2x the copy, expand peak
RSS <= 2x the largest destination tensor + the interpreter's own RSS, verify RSS < 3 GiB.
It needs ~35 GB of free disk and takes several minutes; too heavy for CI::

    nice -n -5 python benchmarks/stream_1b.py                # work folder under /work, removed at the end
    python benchmarks/stream_1b.py --workdir /big/disk --keep
    python benchmarks/stream_1b.py --small                   # a ~6M model of the same shape family, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LLAMA_1B = dict(
    model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
    num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
    rms_norm_eps=1e-5, rope_parameters={"rope_theta": 500000.0, "rope_type": "default"}, rope_theta=500000.0,
    tie_word_embeddings=True, hidden_act="silu", torch_dtype="bfloat16", bos_token_id=128000,
    eos_token_id=128001,
)
SMALL = dict(LLAMA_1B, vocab_size=8000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64)
GIB = 2**30
BLOCK = 1 << 24  # elements generated at a time


def make_source(folder: Path, cfg: dict, seed: int = 0) -> tuple:
    """Write the bf16 checkpoint a block of rows at a time; (parameters, bytes)."""
    from hyperclone_core import family_for_config, io
    from hyperclone_core.io.dtypes import f32_to_bf16
    from hyperclone_core.model.spec import tensor_names
    from hyperclone_core.model.structure import tied_away

    fam = family_for_config(cfg)
    dec = fam.read(cfg)
    sizes = dec.sizes()
    layout = [(n, r.shape(sizes), "bfloat16") for n, (r, _, _) in tensor_names(fam, dec).items()
              if not tied_away(r, dec)]
    rng = np.random.default_rng(seed)
    with io.AtomicDir(folder) as tmp:
        w = io.ShardedWriter(tmp, layout)
        for name, shape, _ in layout:
            if len(shape) == 1:  # norm gains
                w.write_rows(name, f32_to_bf16(np.ones(shape, np.float32)), raw=True)
                continue
            step = max(1, BLOCK // shape[1])
            for lo in range(0, shape[0], step):
                rows = rng.standard_normal((min(step, shape[0] - lo), shape[1]), dtype=np.float32)
                rows *= np.float32(0.02)
                w.write_rows(name, f32_to_bf16(rows), raw=True)
        w.close()
        io.write_json(tmp / "config.json", cfg)
    params = sum(int(np.prod(s)) for _, s, _ in layout)
    return params, 2 * params


WRAP = r"""
import runpy, sys
report, sys.argv = sys.argv[1], ["hyperclone", *sys.argv[2:]]
try:
    if sys.argv[1:]:
        runpy.run_module("hyperclone_core.cli", run_name="__main__")
    else:  # the interpreter with the library loaded
        import hyperclone_core.cli, hyperclone_core.expand.checkpoint
finally:  # this process's own high-water mark (a forked child's rusage would include the parent's pages)
    open(report, "w").write(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""


def run(cmd: list) -> dict:
    """Wall seconds (and, for ``hyperclone(...)``, peak RSS) of one fresh process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "hwm"
        if cmd[0] == "hyperclone":
            cmd = [sys.executable, "-c", WRAP, str(report), *cmd[1:]]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        rss = int(report.read_text()) * 1024 if report.exists() else None
    return {"seconds": seconds, "rss": rss, "rc": res.returncode, "out": res.stdout, "err": res.stderr}


def hyperclone(*args) -> list:
    return ["hyperclone", *map(str, args)]


def largest_tensor_bytes(folder: Path) -> int:
    from hyperclone_core.io import Checkpoint

    ck = Checkpoint(folder)
    return max(ck.where[n].header[n]["data_offsets"][1] - ck.where[n].header[n]["data_offsets"][0]
               for n in ck.names())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def check(res: dict, what: str) -> None:
    if res["rc"] != 0:
        tail = (res["err"].strip().splitlines() or [f"exit {res['rc']}"])[-1]
        raise SystemExit(f"{what} failed (exit {res['rc']}): {tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", help="an empty or new folder for the checkpoints (default: a temp dir under /work)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--small", action="store_true", help="a small model of the same shape family (seconds)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    cfg = SMALL if args.small else LLAMA_1B
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="stream_1b-",
                                                                       dir="/work" if Path("/work").is_dir() else None))
    base.mkdir(parents=True, exist_ok=True)
    src, dst, dst2, copy = base / "src", base / "dst", base / "dst-verified", base / "copy"
    try:
        t0 = time.perf_counter()
        params, nbytes = make_source(src, cfg)
        print(f"source: {params / 1e9:.3f}B parameters, {nbytes / GIB:.2f} GiB bf16, generated in "
              f"{time.perf_counter() - t0:.1f} s ({src})", flush=True)
        baseline = run(hyperclone())
        expand = run(hyperclone("expand", src, dst, "--width", 2, "--ffn", 2, "--no-verify", "--quiet"))
        check(expand, "expand")
        out_bytes, largest = folder_bytes(dst), largest_tensor_bytes(dst)
        cp = run(["cp", "-r", str(dst), str(copy)])
        check(cp, "cp")
        files = [str(p) for p in sorted(copy.iterdir()) if p.is_file()]
        sync = run(["sync", *files])
        check(sync, "sync")
        shutil.rmtree(copy)
        verify = run(hyperclone("verify", src, dst))
        check(verify, "verify")
        both = run(hyperclone("expand", src, dst2, "--width", 2, "--ffn", 2, "--quiet"))
        check(both, "expand (verifying)")
        shutil.rmtree(dst2)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    copy_s = cp["seconds"] + sync["seconds"]
    rss_bound = 2 * largest + baseline["rss"]
    rows = [
        ("expand --no-verify", expand["seconds"], expand["rss"],
         f"wall <= 2x copy ({2 * copy_s:.0f} s), RSS <= {rss_bound / GIB:.2f} GiB",
         expand["seconds"] <= 2 * copy_s and expand["rss"] <= rss_bound),
        ("copy (cp -r + sync)", copy_s, None, "reference", None),
        ("  cp -r alone", cp["seconds"], cp["rss"], "", None),
        ("verify", verify["seconds"], verify["rss"], "RSS < 3 GiB", verify["rss"] < 3 * GIB),
        ("expand (verifies)", both["seconds"], both["rss"], "RSS < 3 GiB", both["rss"] < 3 * GIB),
        ("interpreter baseline", baseline["seconds"], baseline["rss"], "", None),
    ]
    print(f"\n{cfg['hidden_size']}x{cfg['num_hidden_layers']} layers -> width 2, ffn 2: destination "
          f"{out_bytes / GIB:.2f} GiB, largest tensor {largest / GIB:.3f} GiB")
    print(verify["out"].strip())
    print(f"\n{'row':22s} {'seconds':>8s} {'peak RSS GiB':>13s}  {'bound':44s} ok")
    for name, s, rss, bound, ok in rows:
        flag = "" if ok is None else ("ok" if ok else "OVER")
        shown = "-" if rss is None else f"{rss / GIB:.2f}"
        print(f"{name:22s} {s:8.1f} {shown:>13s}  {bound:44s} {flag}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [dict(zip(("row", "seconds", "rss", "bound", "ok"), r))
                                                        for r in rows], "out_bytes": out_bytes,
                                               "largest": largest}, indent=1))
    return 0 if all(ok is not False for *_, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
