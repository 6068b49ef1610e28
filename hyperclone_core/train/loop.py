"""The training loop, once for every backend (nanoGPT's shape, Keras 3's split).

Per step: evaluate on the cadence (validation loss and the symmetry monitor), take
the schedule's LR, hand the engine this rank's micro-batches of the global batch
(a pure function of seed and step, so resume needs no sampler state) on the step's
CPU threads (``threads.py``: the user's count, or the fastest one timed), stop on a
non-finite loss, record, checkpoint on the cadence.  Resume refuses a run that
would silently differ (config, data or model changed) and starts from the newest
*valid* checkpoint, saying so.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from . import data as hdata
from ..errors import EXIT_DIVERGED, CheckpointError, ConfigError, HypercloneError
from ..console.progress import Progress
from ..io import runout
from . import checkpoint as ckpt
from .clone import CLONE_LR_OFF, clone_lr_multipliers, symmetry, symmetry_pairs
from .config import TrainConfig, lr_at
from .engine import Engine, TrainError
from .optim import AdamW, decay_mask
from .threads import LoopThreads


class NonFiniteLoss(TrainError):
    """The loss became NaN/Inf; carries the step, the newest valid checkpoint and the
    result so far (``.result``)."""

    exit_code = EXIT_DIVERGED

    def __init__(self, msg: str, step: int, checkpoint: Optional[str], result: "TrainResult"):
        super().__init__(msg)
        self.step, self.checkpoint, self.result = step, checkpoint, result


@dataclass
class TrainResult:
    history: list = field(default_factory=list)
    steps_done: int = 0
    checkpoint: Optional[str] = None
    stopped: str = ""
    resumed_from: Optional[str] = None

    @property
    def train_losses(self) -> list:
        return [h["train_loss"] for h in self.history if h.get("train_loss") is not None]

    @property
    def evals(self) -> list:
        return [h for h in self.history if h.get("val_loss") is not None]


def optimizer_for(config: TrainConfig, shapes: Mapping[str, tuple], plan=None) -> AdamW:
    """The run's AdamW: the config's hyper-parameters, decay on matrices, and the
    clone-aware LR multipliers (``config.clone_lr``: a rule applied to ``plan``, or
    an explicit name -> multiplier map)."""
    if isinstance(config.clone_lr, Mapping):
        mult = {k: float(v) for k, v in config.clone_lr.items()}
        unknown = sorted(set(mult) - set(shapes))
        if unknown:
            raise ConfigError(f"clone_lr names tensors the model does not have: {unknown[:6]}")
    elif config.clone_lr in CLONE_LR_OFF:
        mult = {}
    else:
        if plan is None:
            raise ConfigError(f"clone_lr={config.clone_lr!r} needs the plan the model was cloned with "
                              "(the clone folder's plan.json, or --plan)")
        mult = clone_lr_multipliers(plan, config.clone_lr)
    return AdamW(betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay,
                 grad_clip=config.grad_clip, decay=decay_mask(shapes), lr_mult=mult)


def as_tokens(data, vocab: Optional[int], what: str) -> np.ndarray:
    if isinstance(data, (str, Path)):
        return hdata.load_tokens(data, vocab=vocab)
    arr = data if isinstance(data, np.memmap) else np.asarray(data)
    if arr.ndim != 1 or arr.dtype.kind not in "ui":
        raise TrainError(f"{what}: expected a 1-D integer token array, got {arr.dtype} of shape {arr.shape}")
    if vocab:
        hdata.check_vocab(arr, vocab, what)
    return arr


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _first_difference(a: Mapping, b: Mapping) -> str:
    if a.get("model_type") != b.get("model_type"):
        return f"model_type {a.get('model_type')!r} there, {b.get('model_type')!r} here"
    sa, sb = a.get("shapes", {}), b.get("shapes", {})
    for n in sa:
        if n not in sb:
            return f"tensor {n} exists there, not here"
        if list(sa[n]) != list(sb[n]):
            return f"tensor {n} is {sa[n]} there, {sb[n]} here"
    extra = [n for n in sb if n not in sa]
    return f"tensor {extra[0]} exists here, not there" if extra else "different tensors"


def train(engine: Engine, config: TrainConfig, train_data, val_data=None, plan=None,
          callback: Optional[Callable[[dict], Optional[bool]]] = None, source_dir=None,
          lineage: Optional[Mapping[str, Any]] = None, log: Callable[[str], None] = _stderr,
          optimizer: Optional[AdamW] = None) -> TrainResult:
    """Train the engine's model for ``config.steps`` optimizer steps.

    ``train_data``/``val_data``: 1-D token arrays (memory-maps welcome) or token/text
    file paths.  ``plan``: the HyperCloning plan the model came from (enables the
    symmetry monitor).  ``callback(record)`` runs on every rank after each step;
    returning False stops the run (a checkpoint is written).  ``source_dir``: the
    model folder, whose tokenizer and generation files every checkpoint carries;
    ``lineage``: what ``hyperclone.json`` of each checkpoint records besides the step.
    ``optimizer``: the engine's AdamW when it carries per-tensor maps a growth set
    (``train.grow``): checkpoints keep them, so a resumed grown run continues exactly.
    """
    tc = config  # the TrainConfig (cfg is a DecoderConfig everywhere)
    hf = dict(engine.config)
    shapes = {n: tuple(s) for n, s in engine.shapes.items()}
    vocab = hf.get("vocab_size")
    positions = _positions(hf)
    if positions and tc.seq_len > positions:
        raise TrainError(f"--seq-len {tc.seq_len} exceeds the model's {positions} positions "
                         f"(max_position_embeddings in config.json); use --seq-len {positions} or less")
    world, rank = int(engine.world), int(engine.rank)
    if tc.batch_size % (world * tc.grad_accum):
        raise TrainError(f"--batch-size {tc.batch_size} (global) must be a multiple of {world} ranks x "
                         f"{tc.grad_accum} accumulation steps")
    tokens = as_tokens(train_data, vocab, "train data")
    sampler = hdata.BatchSampler(tokens, tc.batch_size, tc.seq_len, tc.seed)
    val = None if val_data is None else as_tokens(val_data, vocab, "validation data")
    val_batches = [] if val is None else hdata.fixed_batches(val, tc.eval_batches, tc.batch_size, tc.seq_len,
                                                              tc.seed, rank, world)
    pairs = symmetry_pairs(plan) if plan is not None else []
    data_fp = {"seed": tc.seed, "train": ckpt.data_fingerprint(tokens), "val": ckpt.data_fingerprint(val)}
    model_fp = ckpt.model_fingerprint(hf, shapes)
    main = rank == 0
    say = log if main else (lambda _m: None)

    result = TrainResult()
    out = Path(tc.out_dir) if tc.out_dir else None
    start = 0
    # OUT is this run's alone while it runs (runout.RunDir: its mark, its lock); the CLI
    # claims it first and this claim is then the same one
    run = runout.RunDir(out, "train", legacy=ckpt.previous_run).claim() if out is not None and main else None
    logf = None
    try:
        if out is not None:
            existing = ckpt.listed(out)
            if existing and not tc.resume:
                raise TrainError(f"{out} already holds {existing[-1][1].name}; pass --resume to continue it, or "
                                 "choose a new --out")
            if tc.resume and existing:
                start = _resume(engine, tc, out, existing, model_fp, data_fp, result, say)
            engine.barrier()
        log_path = Path(tc.log_jsonl) if tc.log_jsonl else (out / "metrics.jsonl" if out else None)
        if log_path is not None and main:
            logf = runout.open_log(log_path, "".join(json.dumps(h) + "\n" for h in result.history))
    except BaseException:
        if run is not None:
            run.release()
        raise

    tokens_per_step = tc.batch_size * tc.seq_len
    t0 = time.perf_counter() - (result.history[-1].get("seconds", 0.0) if result.history else 0.0)
    bar = Progress(tc.steps, "train", "step", enabled=tc.progress and main, initial=start)
    early: dict = {}  # step -> evaluation done before a checkpoint, reused by that step's record

    def evaluate(step: int) -> dict:
        if step in early:
            return early.pop(step)
        rec: dict = {}
        if val_batches:
            rec["val_loss"] = float(engine.evaluate(val_batches))
        sym = symmetry(lambda n: engine.params([n])[n] if n in shapes else None, pairs) if pairs else None
        if sym is not None:
            rec["symmetry"], rec["symmetry_by_kind"] = sym["overall"], sym["by_kind"]
        return rec

    def evaluates_at(step: int) -> bool:
        return bool(val_batches or pairs) and bool(tc.eval_every) and step % tc.eval_every == 0

    def emit(rec: dict) -> None:
        result.history.append(rec)
        if logf is not None:
            logf.write(json.dumps(rec) + "\n")
            logf.flush()

    def checkpoint(step: int) -> None:
        folder = ckpt.folder_for(out, step)
        newest = ckpt.listed(out)
        if newest and newest[-1][0] >= step:
            raise TrainError(f"{out} already holds {newest[-1][1].name}; refusing to write {folder.name} over or "
                             "before it (resume continues from the newest checkpoint)")
        if evaluates_at(step) and step not in early and step < tc.steps:
            early[step] = evaluate(step)
        val_loss = early.get(step, {}).get("val_loss")
        if step == tc.steps and result.history and result.history[-1].get("step") == step:
            val_loss = result.history[-1].get("val_loss", val_loss)
        state = engine.export_state()
        if main:
            trainer = {"step": step, "history": result.history, "config": tc.to_dict(), "model": model_fp,
                       "data": dict(data_fp, position=step), "val_loss": val_loss,
                       "engine": {"backend": getattr(engine, "backend", type(engine).__name__)}}
            lin = dict(lineage or {}, step=step, data=data_fp)
            ckpt.save(folder, state, hf, trainer, aux_from=source_dir, lineage=lin, optimizer=optimizer)
            ckpt.prune(out, tc.save_total_limit, tc.keep_best, log=say)
        engine.barrier()
        result.checkpoint = str(folder)

    threads = LoopThreads(engine, tc.threads, world, say)
    try:
        step = start
        while step < tc.steps:
            rec: dict = {"step": step}
            if evaluates_at(step):
                rec.update(evaluate(step))
            lr = lr_at(step, tc)
            micro = [sampler.batch(step, rank, world, m, tc.grad_accum) for m in range(tc.grad_accum)]
            threads.before()
            began = time.perf_counter()
            res = engine.step(micro, lr)
            threads.after(time.perf_counter() - began)
            if not res.updated or not math.isfinite(res.loss):
                result.stopped = f"non-finite loss ({res.loss}) at step {step}"
                good = ckpt.newest_valid(out, say) if out is not None else None
                where = (f"the newest valid checkpoint is {good}" if good else
                         "no valid checkpoint was written (use --save-every)")
                raise NonFiniteLoss(
                    f"training stopped: the loss is {res.loss} (gradient norm {res.grad_norm}) at step {step}; the "
                    f"step was not applied; {where}. Lower --lr, raise --warmup-steps or clip tighter with "
                    "--grad-clip, or check the data", step, str(good) if good else None, result)
            rec.update(train_loss=float(res.loss), lr=lr, grad_norm=float(res.grad_norm),
                       tokens=(step + 1) * tokens_per_step, seconds=round(time.perf_counter() - t0, 4))
            emit(rec)
            bar.update(1, loss=rec["train_loss"], val=rec.get("val_loss"), sym=rec.get("symmetry"), lr=lr)
            step += 1
            result.steps_done = step
            stop = callback is not None and callback(rec) is False
            if out is not None and (stop or (tc.save_every and step % tc.save_every == 0 and step < tc.steps)):
                checkpoint(step)
            if stop:
                result.stopped = f"stopped by the callback after step {step - 1}"
                return result
        result.steps_done = tc.steps
        if val_batches or pairs:
            final = {"step": tc.steps, **evaluate(tc.steps), "seconds": round(time.perf_counter() - t0, 4)}
            if not result.history or result.history[-1].get("step") != tc.steps:
                emit(final)
        if out is not None and result.checkpoint != str(ckpt.folder_for(out, tc.steps)):
            checkpoint(tc.steps)
        return result
    finally:
        bar.close()
        if logf is not None:
            logf.close()
        if run is not None:
            run.release()


def _positions(hf: Mapping[str, Any]) -> Optional[int]:
    try:
        from ..model.families import family_for_config

        return family_for_config(hf).read(hf).positions
    except HypercloneError:
        return hf.get("max_position_embeddings")


def shapes_of(engine) -> dict:
    return {n: tuple(int(d) for d in s) for n, s in engine.shapes.items()}


def _resume(engine, tc: TrainConfig, out: Path, existing: list, model_fp: dict, data_fp: dict,
            result: TrainResult, say) -> int:
    """Load the newest valid checkpoint into the engine after checking it belongs to
    this run; returns its step.  Newer invalid checkpoints are set aside (renamed,
    never deleted) so the run's next checkpoint is the newest again."""
    folder = ckpt.newest_valid(out, say)
    if folder is None:
        raise CheckpointError(f"--resume: none of the {len(existing)} checkpoint(s) in {out} can be resumed from "
                                   f"(the newest: {ckpt.problem(existing[-1][1])}); start a new --out")
    saved = ckpt.read_state(folder)
    if saved.get("model") != model_fp:
        raise CheckpointError(f"{folder} was written while training another model "
                              f"({_first_difference(saved.get('model', {}), model_fp)}); resume only the model it "
                              "was trained from, or train into a new --out")
    changed = tc.changed_fields(saved.get("config", {}))
    old_data = {k: v for k, v in (saved.get("data") or {}).items() if k in ("train", "val")}
    if old_data and old_data != {k: data_fp[k] for k in ("train", "val")} and "data" not in tc.allow_change:
        changed.append("data (the training or validation tokens differ from the run's)")
    if changed:
        raise TrainError(f"--resume from {folder.name} would silently change the run: {'; '.join(changed)}. "
                         "Use the run's settings, or allow the change explicitly with --allow-change "
                         f"{','.join(c.split(' ')[0] for c in changed)}")
    if saved["step"] >= tc.steps:
        raise TrainError(f"{folder.name} is already at step {saved['step']}, not before --steps {tc.steps}: "
                         f"nothing to train; pass --steps larger than {saved['step']} to continue")
    # read and checked against the model (every weight and moment: name, shape, dtype) before
    # anything is renamed or written, and before the engine sees it
    state, _ = ckpt.load(folder, list(engine.names), getattr(engine, "backend", None), shapes=shapes_of(engine))
    for step, other in existing:
        if step > saved["step"]:
            aside = other.with_name(f"{other.name}.invalid-{os.getpid()}")
            other.rename(aside)
            say(f"set aside {other.name} (not resumable) as {aside.name}")
    engine.import_state(state)
    start = int(saved["step"])
    # a finished run's closing evaluation is redone at the start of its next step
    result.history = [h for h in saved.get("history", []) if h["step"] < start or h.get("train_loss") is not None]
    result.checkpoint = result.resumed_from = str(folder)
    val = saved.get("val_loss")
    say(f"resumed from {folder.name} (step {start}" + (f", val loss {val:.4f})" if isinstance(val, float) else ")"))
    return start


__all__ = ["NonFiniteLoss", "TrainError", "TrainResult", "as_tokens", "optimizer_for", "train"]
