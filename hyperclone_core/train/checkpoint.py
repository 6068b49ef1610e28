"""The framework-neutral training checkpoint, so any engine resumes any other's run.

``OUT/checkpoint-0000012/`` is a complete Hugging Face folder -- ``config.json``,
the weights as safetensors (float32 master copy), the source's tokenizer and
generation files, ``hyperclone.json`` (lineage) -- plus ``trainer/``:

- ``optimizer.safetensors``: ``exp_avg/<name>`` and ``exp_avg_sq/<name>`` (float32),
  AdamW's moments by checkpoint name;
- ``state.json``: format, step, AdamW step, the run's config, the model's and the
  data's fingerprints, the data position, the history so far, and which engine
  wrote it.

Engine-private arrays (``EngineState.extra``) go to ``trainer/engine.safetensors``
and are read back only by an engine of the same backend.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import CheckpointError
from ..io import Checkpoint, SafetensorsFile, write_hf_folder, write_json, write_safetensors
from .engine import EngineState

FORMAT = "hyperclone.trainer/2"
OLD_FORMATS = ("hyperclone.trainer/1",)
TRAINER_DIR = "trainer"
STATE_FILE = "state.json"
OPT_FILE = "optimizer.safetensors"
EXTRA_FILE = "engine.safetensors"
PREFIX = "checkpoint-"


def folder_for(out, step: int) -> Path:
    return Path(out) / f"{PREFIX}{step:07d}"


def listed(out) -> list:
    """``[(step, folder)]`` of the checkpoint folders in ``out``, oldest first (valid or not)."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit() and p.is_dir() and not p.is_symlink():
            found.append((int(p.name[len(PREFIX):]), p))
    return sorted(found)


def model_fingerprint(hf_config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> dict:
    return {"model_type": hf_config.get("model_type"), "shapes": {n: list(s) for n, s in shapes.items()}}


def data_fingerprint(tokens: Optional[np.ndarray], sample_bytes: int = 1 << 20) -> Optional[dict]:
    """Length, dtype and a sha256 of the first, middle and last MiB of a token array:
    cheap on a memory-mapped file of any size, and different for any realistic change."""
    if tokens is None:
        return None
    arr = np.asarray(tokens).reshape(-1)
    raw = arr.view(np.uint8) if arr.flags.c_contiguous else np.ascontiguousarray(arr).view(np.uint8)
    h = hashlib.sha256()
    n = raw.size
    for start in sorted({0, max(0, n // 2 - sample_bytes // 2), max(0, n - sample_bytes)}):
        h.update(raw[start:start + sample_bytes].tobytes())
    return {"tokens": int(arr.size), "dtype": str(arr.dtype), "sha256": h.hexdigest()[:32]}


def problem(folder) -> Optional[str]:
    """Why ``folder`` is not a checkpoint a run can resume from (None: it is): a
    readable state.json of a known format, weights and both moments for every
    tensor, finite values."""
    folder = Path(folder)
    try:
        state = read_state(folder)
        ck = Checkpoint(folder)
        opt = SafetensorsFile(folder / TRAINER_DIR / OPT_FILE)
    except (CheckpointError, OSError) as exc:
        return str(exc)
    names = list(state.get("model", {}).get("shapes", {}))
    if not names:
        return f"{folder}: {STATE_FILE} lists no tensors"
    old = state.get("format") in OLD_FORMATS
    keys = set(opt.keys())
    for n in names:
        if n not in ck:
            return f"{folder}: the weights lack {n}"
        want = [f"state/{n}/exp_avg", f"state/{n}/exp_avg_sq"] if old else [f"exp_avg/{n}", f"exp_avg_sq/{n}"]
        if not all(k in keys for k in want):
            return f"{folder}: the optimizer state lacks the moments of {n}"
        try:
            ck.read(n)
            for k in want:
                if not np.isfinite(np.asarray(opt.raw(k), np.float64)).all():
                    return f"{folder}: {OPT_FILE} holds non-finite values in {k}"
        except CheckpointError as exc:
            return str(exc)
    return None


def read_state(folder) -> dict:
    path = Path(folder) / TRAINER_DIR / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); resume from an earlier checkpoint or start a new --out") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt not in (FORMAT,) + OLD_FORMATS:
        raise CheckpointError(f"{path}: not a hyperclone training state (format {fmt!r})")
    if not isinstance(state.get("step"), int) or state["step"] < 0 or not isinstance(state.get("history", []), list):
        raise CheckpointError(f"{path}: step or history is missing or invalid")
    return state


def newest_valid(out, log=None) -> Optional[Path]:
    """The newest checkpoint in ``out`` that passes ``problem``; each newer one that
    does not is named (through ``log``, else a warning) with the reason."""
    for _, folder in reversed(listed(out)):
        why = problem(folder)
        if why is None:
            return folder
        msg = f"skipping {folder.name}: {why}"
        (log or (lambda m: warnings.warn(m, stacklevel=3)))(msg)
    return None


def save(folder, state: EngineState, hf_config: Mapping[str, Any], trainer: Mapping[str, Any],
         aux_from=None, lineage: Optional[Mapping[str, Any]] = None) -> Path:
    """Write one checkpoint atomically (an HF folder plus ``trainer/``); refuses to
    replace an existing folder."""

    def trainer_files(tmp: Path) -> None:
        (tmp / TRAINER_DIR).mkdir()
        moments = {}
        for n in state.params:
            moments[f"exp_avg/{n}"] = np.asarray(state.exp_avg[n], np.float32)
            moments[f"exp_avg_sq/{n}"] = np.asarray(state.exp_avg_sq[n], np.float32)
        write_safetensors(tmp / TRAINER_DIR / OPT_FILE, moments)
        if state.extra:
            write_safetensors(tmp / TRAINER_DIR / EXTRA_FILE, {k: np.asarray(v) for k, v in state.extra.items()})
        write_json(tmp / TRAINER_DIR / STATE_FILE, dict(trainer, format=FORMAT, adam_step=int(state.adam_step)))
        if lineage is not None:
            write_json(tmp / "hyperclone.json", dict(lineage))

    return write_hf_folder(folder, hf_config, {n: np.asarray(a) for n, a in state.params.items()},
                           metadata={"hyperclone": "train"}, aux_from=aux_from, before_commit=trainer_files)


def load(folder, names: Sequence[str], backend: Optional[str] = None) -> tuple:
    """(EngineState, trainer state) of a checkpoint, for the tensors ``names``.
    Engine-private arrays are returned only to the backend that wrote them."""
    folder = Path(folder)
    state = read_state(folder)
    ck = Checkpoint(folder)
    opt = SafetensorsFile(folder / TRAINER_DIR / OPT_FILE)
    old = state["format"] in OLD_FORMATS
    params, m, v = {}, {}, {}
    for n in names:
        if n not in ck:
            raise CheckpointError(f"{folder}: the weights lack {n}")
        params[n] = ck.read(n, np.float32)
        km, kv = (f"state/{n}/exp_avg", f"state/{n}/exp_avg_sq") if old else (f"exp_avg/{n}", f"exp_avg_sq/{n}")
        if km not in opt.keys() or kv not in opt.keys():
            raise CheckpointError(f"{folder / TRAINER_DIR / OPT_FILE}: no moments for {n}")
        m[n] = np.array(opt.raw(km), dtype=np.float32)
        v[n] = np.array(opt.raw(kv), dtype=np.float32)
    if old:  # torch wrote a step per tensor; they are equal
        step = int(np.asarray(opt.raw(f"state/{names[0]}/step")).reshape(-1)[0]) if names else 0
    else:
        step = int(state.get("adam_step", 0))
    extra = {}
    extra_path = folder / TRAINER_DIR / EXTRA_FILE
    if extra_path.is_file() and backend is not None and state.get("engine", {}).get("backend") == backend:
        f = SafetensorsFile(extra_path)
        extra = {k: np.array(f.raw(k)) for k in f.keys()}
    return EngineState(params, m, v, step, extra), state


def prune(out, keep: int, keep_best: bool = False, log=None) -> list:
    """Delete the oldest checkpoints beyond the newest ``keep`` (0: keep all); with
    ``keep_best``, the one with the lowest val loss stays too.  Only folders this
    trainer wrote (a valid state.json) are ever deleted."""
    if keep <= 0:
        return []
    ours = [(s, p) for s, p in listed(out) if _is_ours(p)]
    doomed = ours[:-keep] if len(ours) > keep else []
    if keep_best and doomed:
        best = _best(ours)
        doomed = [(s, p) for s, p in doomed if p != best]
    removed = []
    for _, p in doomed:
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
        if log is not None:
            log(f"removed {p.name} (save_total_limit {keep})")
    return removed


def _is_ours(folder: Path) -> bool:
    try:
        read_state(folder)
        return True
    except CheckpointError:
        return False


def _best(ours) -> Optional[Path]:
    scored = [(v, p) for _, p in ours if (v := val_loss_at(p)) is not None]
    return min(scored)[1] if scored else None


def val_loss_at(folder) -> Optional[float]:
    """The val loss evaluated at a checkpoint's own step (None if it was not evaluated there)."""
    v = read_state(folder).get("val_loss")
    return float(v) if isinstance(v, (int, float)) else None


__all__ = [
    "EXTRA_FILE", "FORMAT", "OPT_FILE", "STATE_FILE", "TRAINER_DIR", "data_fingerprint", "folder_for", "listed",
    "load", "model_fingerprint", "newest_valid", "problem", "prune", "read_state", "save", "val_loss_at",
]
