"""Checkpoint-to-checkpoint expansion and verification, on any backend.

The source is read one tensor at a time (the next one is read while the
current one is expanded), each program runs on the backend's device, and the
result is streamed into shards whose headers were written up front.  Nothing is
visible at the destination until the whole folder is complete.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import __version__
from .backend import load_backend, run_program
from .errors import CheckpointError, ConfigError
from .families import family_for_config
from .io import AtomicDir, Checkpoint, ShardedWriter, copy_aux_files, write_json
from .plan import Growth, Plan, plan
from .testing import random_tokens

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


class Progress:
    """A dependency-free progress line on stderr (tqdm-like when it is a terminal)."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.total, self.label, self.n = total, label, 0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start = time.perf_counter()
        self.last = -1

    def update(self, nbytes: int = 0) -> None:
        self.n += 1
        if not self.enabled:
            return
        pct = int(100 * self.n / max(self.total, 1))
        if self.tty:
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {self.n}/{self.total} tensors "
                             f"{time.perf_counter() - self.start:5.1f}s")
            if self.n == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif pct // 25 != self.last // 25 or self.n == self.total:
            sys.stderr.write(f"{self.label}: {self.n}/{self.total} tensors ({pct}%)\n")
        self.last = pct


def make_plan(src_config: dict, *, width: float = 2, ffn: Optional[float] = None, ffn_size: Optional[int] = None,
              heads: Optional[float] = None, kv_heads: Optional[float] = None, layers: Optional[Any] = None,
              strategy: Any = None, seed: int = 0, inexact: bool = False, layout: str = "tile") -> Plan:
    """The plan for the CLI's growth options; ``layers`` may be a total or ``"+K"``."""
    family = family_for_config(src_config)
    cfg = family.read(src_config)
    if isinstance(layers, str):
        layers = cfg.layers + int(layers[1:]) if layers.startswith("+") else int(layers)
    growth = Growth.of(cfg, width=width, ffn=ffn, ffn_size=ffn_size, heads=heads, kv_heads=kv_heads,
                       layers=layers, layout=layout)
    return plan(family, src_config, growth, strategy, seed=seed, allow_inexact=inexact)


def expand_checkpoint(src, dst, *, width: float = 2, ffn: Optional[float] = None, ffn_size: Optional[int] = None,
                      heads: Optional[float] = None, kv_heads: Optional[float] = None, layers: Any = None,
                      strategy: Any = None, seed: int = 0, dtype: Optional[str] = None, backend: str = "numpy",
                      device: Optional[str] = None, force: bool = False, inexact: bool = False,
                      verify: bool = True, progress: bool = True, layout: str = "tile",
                      max_shard_bytes: int = 5 * 2**30) -> dict:
    """Expand the checkpoint folder ``src`` into ``dst``; returns the report written
    to ``dst/hyperclone.json``."""
    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not supported; use one of {', '.join(FLOAT_DTYPES)}")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: the destination is the source; choose another folder")
    ck = Checkpoint(src)
    family = family_for_config(ck.config)
    src_cfg = family.read(ck.config)
    ck.validate(family, src_cfg)
    p = make_plan(ck.config, width=width, ffn=ffn, ffn_size=ffn_size, heads=heads, kv_heads=kv_heads,
                  layers=layers, strategy=strategy, seed=seed, inexact=inexact, layout=layout)
    bk = load_backend(backend)
    out_dtypes = {t.name: dtype or ck.dtype(t.source) for t in p.tensors}
    delay = float(os.environ.get("HYPERCLONE_WRITE_DELAY", "0") or 0)  # crash-safety tests only
    config = dict(p.config)
    if dtype:
        config["torch_dtype" if "torch_dtype" in config else "dtype"] = dtype
    with AtomicDir(dst, force=force) as tmp:
        writer = ShardedWriter(tmp, [(t.name, t.shape, out_dtypes[t.name]) for t in p.tensors],
                               max_shard_bytes, metadata={"hyperclone": __version__})
        bar = Progress(len(p.tensors), f"expand {src.name}", progress)
        cache: dict = {}
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(ck.read, p.tensors[0].source) if p.tensors else None
            for k, tp in enumerate(p.tensors):
                arr = pending.result()
                if k + 1 < len(p.tensors):
                    pending = pool.submit(ck.read, p.tensors[k + 1].source)
                held = [bk.asarray(arr, device)]
                del arr  # the program holds the only reference: the source is freed once gathered
                y = bk.to_numpy(run_program(bk, tp, p.arrays, held.pop(), device, cache))
                writer.write(tp.name, y)
                del y
                bar.update()
                if delay:
                    time.sleep(delay)
        writer.close()
        write_json(tmp / "config.json", config)
        aux = copy_aux_files(src, tmp)
        report = {
            "hyperclone_version": __version__,
            "source": str(src.resolve()),
            "family": p.family,
            "growth": p.growth,
            "strategy": p.strategy,
            "seed": seed,
            "backend": backend,
            "device": device or bk.device_name(),
            "dtype": dtype or "as source",
            "exact": p.exact,
            "certificate": json.loads(p.to_json(indent=None))["certificate"],
            "copied_files": aux,
            "seconds_expand": round(time.perf_counter() - t0, 3),
        }
        if verify:
            report["verification"] = verify_checkpoints(src, tmp, backend=backend)
        write_json(tmp / "hyperclone.json", report)
        (tmp / "plan.json").write_text(p.to_json(indent=None))  # the trainer's symmetry monitor reads it
    return report


def verify_checkpoints(src, dst, backend: str = "numpy", batch: int = 2, seq: int = 16, seed: int = 0) -> dict:
    """Max abs and relative logit difference between two checkpoints on random tokens,
    with the backend's decoder (the numpy oracle in float64 for ``numpy``)."""
    bk = load_backend(backend)
    if "forward" not in getattr(bk, "capabilities", ()):
        bk = load_backend("numpy")
    out = []
    for folder in (src, dst):
        ck = Checkpoint(folder)
        family = family_for_config(ck.config)
        cfg = family.read(ck.config)
        ck.validate(family, cfg)
        weights = {n: ck.read(n) for n in ck.names() if n in _names(family, cfg)}
        tokens = random_tokens(cfg.vocab, batch, min(seq, cfg.positions), seed)
        out.append(np.asarray(bk.forward(family, cfg, weights, tokens), dtype=np.float64))
        del weights
    a, b = out
    if a.shape != b.shape:
        raise CheckpointError(f"logit shapes differ: {a.shape} vs {b.shape}; the vocabularies differ")
    max_abs = float(np.abs(a - b).max())
    scale = float(np.abs(a).max()) or 1.0
    return {"max_abs_diff": max_abs, "max_abs_logit": scale, "relative": max_abs / scale,
            "tokens": [batch, int(a.shape[1])], "backend": getattr(bk, "name", backend)}


def _names(family, cfg):
    from .spec import tensor_names
    return tensor_names(family, cfg)
