"""Checkpoint-to-checkpoint expansion and verification, on any backend.

The source is read one tensor at a time, a big tensor a block of rows at a time
(``rowblocks``), each program runs on the backend's device, and the result is
streamed into shards whose headers were written up front.  Nothing is
visible at the destination until the whole folder is complete and its logits
match the source's within the tolerance its dtype allows (``tolerances``).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from .. import __version__
from . import card
from ..console import recipe
from ..run.protocol import load_backend
from ..run.interpreter import run_program
from ..errors import CheckpointError, HypercloneError, OutputError, PlanError, UsageError, VerificationError
from ..io import AtomicDir, Checkpoint, ShardedWriter, check_destination, copy_aux_files, hub, write_json
from ..io.safetensors import code_of, nbytes
from ..run.lazyweights import checkpoint_weights
from ..algebra.options import plan_growth
from ..algebra.planner import Plan
from ..model.spec import tensor_names
from ..console.progress import Progress
from ..run.rowblocks import gathers_only, row_program, run_rows
from ..model.testing import random_tokens
from .tolerances import coarsest, default_tolerance
from ..model.validate import read_model

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _backend(name: str, device: Optional[str]):
    """The backend, with ``--backend`` / ``--device`` problems reported as usage errors
    before any work (an absent CUDA is found here, not after the first tensor)."""
    try:
        bk = load_backend(name)
    except HypercloneError as exc:
        raise UsageError(f"--backend {name}: {exc}") from None
    if device is not None and getattr(bk, "name", name) == "numpy" and device != "cpu":
        raise UsageError(f"--device {device}: the numpy backend runs on the CPU only; pick a backend with "
                         "devices (e.g. --backend torch) or leave --device out")
    if device is not None:
        try:
            check = getattr(bk, "check_device", None)  # the backend's own capability check, by name
            if check is not None and device not in ("", "auto"):
                check(device)
            bk.to_numpy(bk.asarray(np.zeros(1, np.float32), device))
        except Exception as exc:  # noqa: BLE001 - any failure means the device cannot be used
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--device {device} is not available to the {name} backend ({first}); "
                             "choose another device or leave --device out") from None
    return bk


def _check_space(folder: Path, need: int) -> None:
    """Refuse up front an output that cannot fit the destination's disk."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if need > free:
        raise OutputError(f"{folder}: the expanded checkpoint needs {_size(need)} but only {_size(free)} are "
                          "free there; free space or choose another destination")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} bytes"


def expand_checkpoint(src, dst, *, width: float = 2, ffn: Optional[float] = None, ffn_size: Optional[int] = None,
                      heads: Optional[float] = None, kv_heads: Optional[float] = None, layers: Any = None,
                      strategy: Any = None, seed: int = 0, dtype: Optional[str] = None, backend: str = "numpy",
                      device: Optional[str] = None, force: bool = False, inexact: bool = False,
                      verify: bool = True, progress: bool = True, layout: str = "tile",
                      max_shard_bytes: int = 5 * 2**30, tolerance: Optional[float] = None) -> dict:
    """Expand the checkpoint folder ``src`` into ``dst``; returns the report written
    to ``dst/hyperclone.json``.  With ``verify`` (the default) the clone's logits are
    compared with the source's before anything is renamed into place: past the
    tolerance (default: by dtype) a VerificationError is raised and ``dst`` is not
    written, unless ``inexact`` was asked for (then the report states the drift)."""
    options = dict(locals())  # the call as given: DST/recipe.toml replays it
    t0 = time.perf_counter()
    src, source_hub = hub.resolve(src)  # a hub id: its snapshot in the cache
    dst = Path(dst)
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not supported; use one of {', '.join(FLOAT_DTYPES)}")
    check_destination(dst, force, protect=(src,))  # refuse a bad DST before any work
    ck = Checkpoint(src)
    family, src_cfg = read_model(ck.config, str(src / "config.json"))
    ck.validate(family, src_cfg)
    p = plan_growth(ck.config, width=width, ffn=ffn, ffn_size=ffn_size, heads=heads, kv_heads=kv_heads,
                    layers=layers, strategy=strategy, seed=seed, inexact=inexact, layout=layout,
                    where=str(src / "config.json"))
    bk = _backend(backend, device)
    out_dtypes = {t.name: dtype or ck.dtype(t.source) for t in p.tensors}
    _check_space(dst.parent, sum(nbytes(t.shape, code_of(out_dtypes[t.name])) for t in p.tensors))
    config = dict(p.config)
    if dtype:
        config["torch_dtype" if "torch_dtype" in config else "dtype"] = dtype
    with AtomicDir(dst, force=force, protect=(src,)) as tmp:
        writer = ShardedWriter(tmp, [(t.name, t.shape, out_dtypes[t.name]) for t in p.tensors],
                               max_shard_bytes, metadata={"hyperclone": __version__})
        bar = Progress(len(p.tensors), f"expand {source_hub or src.name}", "tensor", enabled=progress, every=5.0)
        write_tensors(bk, ck, p, writer, out_dtypes, device, bar)
        bar.close()
        writer.close()
        write_json(tmp / "config.json", config)
        aux = copy_aux_files(src, tmp)
        report = {
            "hyperclone_version": __version__,
            # relative to this folder (no path of this machine), or the hub id as given
            "source": str(source_hub) if source_hub else recipe.portable(src, dst),
            "family": p.family,
            "options": typed_options(options),
            "growth": p.growth,
            "strategy": p.strategy,
            "seed": seed,
            "backend": backend,
            "device": device or bk.device_name(),
            "dtype": dtype or "as source",
            "certified_exact": p.exact,
            "exact": p.exact,  # the measured outcome below, when measured
            "verified": bool(verify),
            "certificate": json.loads(p.to_json(indent=None))["certificate"],
            "copied_files": aux,
            "seconds_expand": round(time.perf_counter() - t0, 3),
        }
        if source_hub:
            report["source_hub"] = {"repo_id": source_hub.repo_id, "revision": source_hub.revision,
                                    "commit": source_hub.commit}
        if verify:
            try:
                v = verify_checkpoints(src, tmp, backend=backend, tolerance=tolerance)
            except CheckpointError as exc:  # the source was read finite: a non-finite clone is the growth's doing
                if str(tmp) not in str(exc):
                    raise
                raise _overflowed(str(exc).replace(str(tmp), str(dst)), dst, p.strategy) from None
            report["verification"] = v
            report["exact"] = bool(p.exact and v["passed"])
            if not v["finite"] or (not v["passed"] and not inexact):
                raise VerificationError(f"{dst} was not written: {failure(v)}")
        report.update(card.facts(p, config, ck.dtype, dtype))  # sizes, parameter counts, config changes
        card.write_docs(tmp, src, dst, report, ck.config, options)  # README.md (+ the base's), recipe.toml
        write_json(tmp / "hyperclone.json", report)
        (tmp / "plan.json").write_text(p.to_json(indent=None))  # the trainer's symmetry monitor reads it
    return report


def _overflowed(message: str, dst, strategy) -> PlanError:
    """The clone held NaN/Inf though every source tensor was finite: the strategy (its
    noise, scaled to weights near float32's limit, or its mixing) overflowed.  Blames
    the strategy, names the tensor and never the temp folder."""
    m = re.search(r"tensor (\S+) holds", message)
    what = f"tensor {m.group(1)}" if m else "a tensor"
    return PlanError(f"{dst} was not written: the clone's {what} overflowed to NaN/Inf while growing, though the "
                     f"source's weights are all finite: the strategy ({strategy}) does not fit weights this large "
                     "(its noise is scaled to them). Grow with --strategy symmetric (no noise), or rescale the source")


GROWTH_OPTIONS = ("width", "ffn", "ffn_size", "heads", "kv_heads", "layers", "layout")


def typed_options(options: Mapping[str, Any]) -> str:
    """The growth options as the user gave them (``--width 2 --ffn 1.5``): what the card
    and hyperclone.json show beside the resulting sizes."""
    out = []
    for k in GROWTH_OPTIONS:
        v = options.get(k)
        if v is None or (k == "layout" and v == "tile"):
            continue
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out.append(f"--{k.replace('_', '-')} {v}")
    return " ".join(out)


def write_tensors(bk, ck: Checkpoint, p: Plan, writer: ShardedWriter, out_dtypes: dict, device, bar) -> None:
    """Every program's result into ``writer``, in order.  A program bigger than one
    block runs in blocks of destination rows reading only the source rows each needs
    (``rowblocks``); one that only moves elements runs on the stored bits (bfloat16
    passes through untouched, on the numpy backend: no arithmetic to differ); the rest
    run whole.  A helper thread rounds and writes while the next block computes; a
    backend with ``row_workers`` > 1 (numpy) computes that many blocks at once."""
    from ..run.numpy_backend import backend as bits

    cache: dict = {}
    with _WriteBehind(writer) as out:
        for tp in p.tensors:
            rp = row_program(tp, p.arrays)
            if rp is not None and gathers_only(tp) and out_dtypes[tp.name] == ck.dtype(tp.source):
                for _, y in run_rows(bits, rp, p.arrays, partial(ck.read_rows, tp.source, dtype=None),
                                     workers=bits.row_workers):
                    out.write_rows(tp.name, y, raw=True)
            elif rp is not None:
                stored = partial(_stored, bk, writer, tp.name)
                for _, y in run_rows(bk, rp, p.arrays, partial(ck.read_rows, tp.source), device, cache,
                                     workers=getattr(bk, "row_workers", 1), finish=stored):
                    out.write_rows(tp.name, y, raw=True)
            else:
                x = bk.asarray(ck.read(tp.source), device)
                out.write_rows(tp.name, bk.to_numpy(run_program(bk, tp, p.arrays, x, device, cache)))
                del x
            bar.update()


def _stored(bk, writer: ShardedWriter, name: str, rows):
    return writer.stored(name, bk.to_numpy(rows))


class _WriteBehind:
    """``writer.write_rows`` on a helper thread, at most ``depth`` blocks behind (its
    bfloat16 rounding and the disk write overlap the next block's compute; numpy
    and file writes release the GIL).  The first error is raised in the caller."""

    def __init__(self, writer: ShardedWriter, depth: int = 2):
        self.writer, self.depth = writer, depth
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: deque = deque()

    def __enter__(self):
        return self

    def write_rows(self, name: str, rows, raw: bool = False) -> None:
        self.pending.append(self.pool.submit(self.writer.write_rows, name, rows, raw))
        while len(self.pending) > self.depth:
            self.pending.popleft().result()

    def __exit__(self, kind, exc, tb):
        try:
            while self.pending:
                future = self.pending.popleft()
                if kind is None:
                    future.result()
                else:
                    future.cancel()
        finally:
            self.pool.shutdown(wait=True)


def failure(v: dict) -> str:
    """One line saying why a verification failed."""
    if not v["finite"]:
        return ("the logits hold NaN/Inf values (non-finite differences always fail); "
                "the checkpoint's weights overflow on the test tokens")
    return (f"relative logit difference {v['relative']:.2e} exceeds the tolerance {v['tolerance']:g} "
            f"({v['dtype']}); the clone does not compute the source's function")


def verify_checkpoints(src, dst, backend: str = "numpy", batch: int = 2, seq: int = 16, seed: int = 0,
                       tolerance: Optional[float] = None) -> dict:
    """Max abs and relative logit difference between two checkpoints on random tokens,
    with the backend's decoder (the numpy oracle in float64 for ``numpy``), and whether
    it ``passed``: finite, and relative <= ``tolerance`` (default: the bound of the
    coarsest float dtype either checkpoint stores).  Every value is JSON-safe.

    A backend whose forward takes lazy weights (numpy's) streams: each model runs
    layer by layer with only the tensor at hand read (big matrices in row blocks,
    ``lazyweights``), so a clone bigger than memory is verified in a few GiB; other
    backends get the whole model."""
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"--tolerance {tolerance!r}: must be a finite number >= 0")
    bk = _backend(backend, None)
    if "forward" not in getattr(bk, "capabilities", ()):
        bk = load_backend("numpy")
    out, dtypes = [], set()
    for folder in (src, dst):
        ck = Checkpoint(folder)
        family, cfg = read_model(ck.config, str(Path(folder) / "config.json"))
        ck.validate(family, cfg)
        dtypes |= ck.float_dtypes()
        names = tensor_names(family, cfg)
        if getattr(bk, "lazy_weights", False):
            weights = checkpoint_weights(ck, names)
        else:
            weights = {n: ck.read(n) for n in ck.names() if n in names}
        tokens = random_tokens(cfg.vocab, batch, min(seq, cfg.positions), seed)
        with np.errstate(all="ignore"):  # overflow shows up as non-finite logits, reported below
            out.append(np.asarray(bk.forward(family, cfg, weights, tokens), dtype=np.float64))
        del weights
    a, b = out
    if a.shape != b.shape:
        raise CheckpointError(f"logit shapes differ: {a.shape} vs {b.shape}; the vocabularies differ")
    dtype = coarsest(dtypes)
    tol = default_tolerance(dtypes) if tolerance is None else float(tolerance)
    finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
    v = {"max_abs_diff": None, "max_abs_logit": None, "relative": None, "finite": finite, "dtype": dtype,
         "tolerance": tol, "passed": False, "tokens": [batch, int(a.shape[1])],
         "backend": getattr(bk, "name", backend)}
    if finite:
        with np.errstate(all="ignore"):
            max_abs = float(np.abs(a - b).max()) if a.size else 0.0
            scale = float(np.abs(a).max()) if a.size else 0.0
        relative = max_abs / (scale or 1.0)
        if math.isfinite(max_abs) and math.isfinite(relative):
            v.update(max_abs_diff=max_abs, max_abs_logit=scale, relative=relative, passed=relative <= tol)
        else:
            v["finite"] = False
    return v
