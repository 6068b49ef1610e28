"""The framework-neutral training checkpoint, so any engine resumes any other's run.

``OUT/checkpoint-0000012/`` is a complete Hugging Face folder -- ``config.json``,
the weights as safetensors (float32 master copy), the source's tokenizer and
generation files, ``hyperclone.json`` (lineage) -- plus ``trainer/``:

- ``optimizer.safetensors``: ``exp_avg/<name>`` and ``exp_avg_sq/<name>`` (float32),
  AdamW's moments by checkpoint name;
- ``state.json``: format, step, AdamW step, the run's config, the model's and the
  data's fingerprints, the data position, the history so far, and which engine
  wrote it; for a run grown in training, ``adamw``: the per-tensor LR, eps and
  weight-decay multipliers and clip weights the growth set (``adamw_of`` restores them).

Engine-private arrays (``EngineState.extra``) go to ``trainer/engine.safetensors``
and are read back only by an engine of the same backend.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..expand.card import inherited, trained_card
from ..errors import CheckpointError
from ..io import Checkpoint, SafetensorsFile, write_hf_folder, write_json, write_safetensors
from ..io.paths import read_small
from .engine import EngineState, TrainError, check_state
from .optim import ADJUSTMENTS, AdamW

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


RUN_FILES = ("metrics.jsonl", "loss.png", "recipe.toml")
"""What ``hyperclone train`` writes in OUT besides its checkpoint folders."""


def previous_run(out) -> bool:
    """Whether ``out`` (unmarked: written before runs marked their folder) holds only
    what a training run writes, with at least one checkpoint of its: then it is a
    previous run, which ``--resume`` continues.  A folder holding anything else is
    someone else's."""
    out = Path(out)
    ours = False
    try:
        for p in out.iterdir():
            if p.name in RUN_FILES or p.name.startswith(".") or ".invalid-" in p.name:
                continue
            if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit() and p.is_dir() and not p.is_symlink():
                ours = ours or _is_ours(p)
                continue
            return False
    except OSError:
        return False
    return ours


def model_fingerprint(hf_config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> dict:
    return {"model_type": hf_config.get("model_type"), "shapes": {n: list(s) for n, s in shapes.items()}}


def data_fingerprint(tokens: Optional[np.ndarray], sample_bytes: int = 1 << 20) -> Optional[dict]:
    """Length, dtype and a sha256 of the first, middle and last MiB of a token array:
    cheap on a memory-mapped file of any size, and different for any realistic change."""
    if tokens is None:
        return None
    from .data import check_mapped

    check_mapped(tokens)
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


MAX_STATE_BYTES = 256 << 20


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _schema_problem(state) -> Optional[str]:
    """What in a state.json does not have the type the trainer reads it as (None: all do)."""
    if not isinstance(state, dict):
        return "not a JSON object"
    if not _count(state.get("step")):
        return f"step is {state.get('step')!r}, not an integer >= 0"
    if "adam_step" in state and not _count(state["adam_step"]):
        return f"adam_step is {state['adam_step']!r}, not an integer >= 0"
    history = state.get("history", [])
    if not isinstance(history, list):
        return "history is not a list"
    for k, h in enumerate(history):
        if not isinstance(h, dict) or not _count(h.get("step")):
            return f"history[{k}] is not a record with an integer step"
        bad = [key for key in ("train_loss", "val_loss", "lr", "grad_norm", "seconds", "symmetry") if not _number(h.get(key))]
        if bad:
            return f"history[{k}].{bad[0]} is {h[bad[0]]!r}, not a number"
    for key in ("config", "engine", "data"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            return f"{key} is not an object"
    model = state.get("model", {})
    shapes = model.get("shapes") if isinstance(model, dict) else None
    if not isinstance(shapes, dict) or not all(
            isinstance(n, str) and isinstance(s, list) and all(_count(d) for d in s) for n, s in shapes.items()):
        return "model.shapes is not a map of tensor names to shapes"
    if not _number(state.get("val_loss")):
        return f"val_loss is {state.get('val_loss')!r}, not a number"
    return None


def read_state(folder) -> dict:
    """``trainer/state.json``, read as a regular file of bounded size (a FIFO is refused,
    never waited on) and checked against its schema: every field the trainer reads has
    its type, so nothing downstream meets a string where it counts steps."""
    path = Path(folder) / TRAINER_DIR / STATE_FILE
    try:
        state = json.loads(read_small(path, "training state", MAX_STATE_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); resume from an earlier checkpoint or start a new --out") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt not in (FORMAT,) + OLD_FORMATS:
        raise CheckpointError(f"{path}: not a hyperclone training state (format {fmt!r})")
    why = _schema_problem(state)
    if why is not None:
        raise CheckpointError(f"{path}: {why}; resume from an earlier checkpoint or start a new --out")
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
         aux_from=None, lineage: Optional[Mapping[str, Any]] = None, optimizer: Optional[AdamW] = None) -> Path:
    """Write one checkpoint atomically (an HF folder plus ``trainer/``); refuses to
    replace an existing folder.  ``optimizer``: the run's AdamW, whose per-tensor maps
    (set by a growth) are kept in ``state.json`` when it has any."""
    adjust = optimizer.adjustments() if optimizer is not None else {}
    if any(adjust.values()):
        trainer = dict(trainer, adamw=adjust)

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
            (tmp / "README.md").write_text(trained_card(Path(folder).name, hf_config, lineage, trainer,
                                                        inherited(aux_from) if aux_from is not None else {}),
                                           encoding="utf-8", errors="backslashreplace")

    return write_hf_folder(folder, hf_config, {n: np.asarray(a) for n, a in state.params.items()},
                           metadata={"hyperclone": "train"}, aux_from=aux_from, before_commit=trainer_files)


def load(folder, names: Sequence[str], backend: Optional[str] = None,
         shapes: Optional[Mapping[str, Sequence[int]]] = None) -> tuple:
    """(EngineState, trainer state) of a checkpoint, for the tensors ``names``.
    Engine-private arrays are returned only to the backend that wrote them.  Every
    weight and moment is checked (name, shape, dtype) against ``shapes`` (the model
    being trained; default: the checkpoint's own weights) before it is returned: a
    state that does not fit is a CheckpointError naming the tensor, never an engine's
    crash or a silently reshaped optimizer."""
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
        for k in (km, kv):  # the writer stores float32 of the parameter's shape: anything else is not this run's
            if opt.dtype(k) != "float32" or opt.shape(k) != tuple(params[n].shape):
                raise CheckpointError(
                    f"{folder / TRAINER_DIR / OPT_FILE}: {k} is {opt.dtype(k)} of shape {list(opt.shape(k))}, but the "
                    f"model's {n} is float32 of shape {list(params[n].shape)}; this optimizer state does not belong "
                    "to this model (resume from another checkpoint, or start a new --out)")
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
    loaded = EngineState(params, m, v, step, extra)
    want = {n: tuple(shapes[n]) if shapes is not None and n in shapes else params[n].shape for n in names}
    try:  # the core's check every engine's import_state runs, here before any engine sees the state
        check_state(loaded, list(names), want)
    except TrainError as exc:
        raise CheckpointError(f"{folder}: {exc}") from None
    return loaded, state


def adamw_of(trainer: Mapping[str, Any], base: AdamW) -> AdamW:
    """``base`` (the run's AdamW as its config makes it) with the per-tensor maps a
    grown run's checkpoint kept (``trainer``: ``load``'s state); ``base`` unchanged
    for a run that never grew."""
    saved = trainer.get("adamw") or {}
    bad = [k for k in saved if k not in ADJUSTMENTS or not isinstance(saved[k], dict)]
    if bad:
        raise CheckpointError(f"{STATE_FILE}: adamw holds unknown or malformed entries {bad}")
    return replace(base, **{k: {n: float(v) for n, v in saved[k].items()} for k in saved})


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
    "EXTRA_FILE", "FORMAT", "RUN_FILES", "previous_run", "adamw_of",
    "OPT_FILE", "STATE_FILE", "TRAINER_DIR", "data_fingerprint", "folder_for", "listed",
    "load", "model_fingerprint", "newest_valid", "problem", "prune", "read_state", "save", "val_loss_at",
]
