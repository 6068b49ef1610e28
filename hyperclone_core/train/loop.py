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
from ..errors import EXIT_DIVERGED, CheckpointError, ConfigError, HypercloneError, OptionError
from ..console.progress import Progress
from ..console.progress import say as say_line
from ..io import runout
from . import checkpoint as ckpt
from .clone import CLONE_LR_OFF, clone_lr_multipliers, symmetry, symmetry_pairs
from .config import TrainConfig, growth_schedule, lr_at
from .engine import Engine, TrainError
from .optim import AdamW, decay_mask
from .grow import engine_factory, grow_engine, plan_for, plan_shapes, sizes_of
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
    engine: Any = None
    """The engine the run ended with: the one it was given, or the one its last growth
    (or a resume into a grown checkpoint) built -- then the caller closes this one."""

    @property
    def growths(self) -> list:
        """The run's growth events (``{"step", "options", "before", "after", ...}``)."""
        return [h["growth"] for h in self.history if h.get("growth") is not None]

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
            raise OptionError(f"--clone-lr {config.clone_lr}: needs the plan the model was cloned with "
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
    say_line(msg, sys.stderr)  # never glued onto the progress bar's line


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
          optimizer: Optional[AdamW] = None, backend=None) -> TrainResult:
    """Train the engine's model for ``config.steps`` optimizer steps.

    ``train_data``/``val_data``: 1-D token arrays (memory-maps welcome) or token/text
    file paths.  ``plan``: the HyperCloning plan the model came from (enables the
    symmetry monitor).  ``callback(record)`` runs on every rank after each step;
    returning False stops the run (a checkpoint is written).  ``source_dir``: the
    model folder, whose tokenizer and generation files every checkpoint carries;
    ``lineage``: what ``hyperclone.json`` of each checkpoint records besides the step.
    ``optimizer``: the engine's AdamW when it carries per-tensor maps a growth set
    (``train.grow``): checkpoints keep them, so a resumed grown run continues exactly.

    Growth inside the run (``config.grow``, ``"STEP:OPTIONS"``): at the start of step
    STEP the loop grows the engine with ``grow.grow_engine`` -- ``backend`` (a backend
    object or its ``engine`` factory; default: the engine's registered backend) builds
    the grown engine, the growth's plan becomes the symmetry monitor's, the history
    gets a growth record, and checkpoints from then on are of the grown model with
    the grown AdamW's maps.  ``--resume`` of a checkpoint before or after a growth
    rebuilds the engine the checkpoint holds (re-deriving the growths' plans) and
    continues bit for bit.  The loop closes the engines it replaces (the given one
    included) and returns the one it ended with as ``TrainResult.engine``.
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
    growths = growth_schedule(tc.grow, tc.steps)
    done = 0  # growths applied to the engine so far
    given = engine
    data_fp = {"seed": tc.seed, "train": ckpt.data_fingerprint(tokens), "val": ckpt.data_fingerprint(val)}
    model_fp = ckpt.model_fingerprint(hf, shapes)
    main = rank == 0
    say = log if main else (lambda _m: None)

    def factory():
        if backend is not None:
            return engine_factory(backend)
        from ..run.protocol import load_backend

        try:
            return engine_factory(load_backend(engine.backend))
        except HypercloneError as exc:
            raise TrainError(f"growing the run needs the engine's backend ({exc}); pass train(..., backend=)") \
                from None

    def source_optimizer() -> AdamW:
        return optimizer if optimizer is not None else optimizer_for(tc, shapes, plan)

    def adopt(saved: Mapping[str, Any]):
        """How a checkpoint of this run is resumed: None (into the engine as it is), a
        model mismatch (str), or (names, shapes, build) of the engine it holds: the
        model its past growths made (their plans re-derived), with the AdamW maps the
        checkpoint kept."""
        nonlocal done, plan, pairs, optimizer, hf, shapes, model_fp
        n = saved.get("growths_done")
        n = sum(1 for at, _ in growths if at < int(saved["step"])) if n is None else int(n)
        if n > len(growths):
            return (f"it was written after {n} growths, and this run's --grow schedule has {len(growths)}")
        target_hf, target_shapes, target_plan = hf, shapes, plan
        if saved.get("model") != model_fp:
            if not n:
                return None
            h = hf
            for i in range(n):
                target_plan = plan_for(h, growths[i][1], tc.seed)
                h = dict(target_plan.config)
            target_hf, target_shapes = h, plan_shapes(target_plan)
            fp = ckpt.model_fingerprint(target_hf, target_shapes)
            if fp != saved.get("model"):
                then = (saved.get("config") or {}).get("grow")
                return (f"the model this run's first {n} growth(s) make differs from the checkpoint's "
                        f"({_first_difference(saved.get('model', {}), fp)}); the run grew with --grow "
                        f"{' --grow '.join(then or ['(none)'])}")
            base = AdamW(betas=tuple(tc.betas), eps=tc.eps, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip,
                         decay=decay_mask(target_shapes))
        else:
            base = source_optimizer()
        target_opt = ckpt.adamw_of(saved, base)
        done = n
        if target_hf is hf and (optimizer is None or optimizer.adjustments() == target_opt.adjustments()):
            return "same"
        old_names = list(engine.names)

        def build(state):
            nonlocal hf, shapes, model_fp, plan, pairs, optimizer
            engine.close()
            new = factory()(dict(target_hf), state.params, tc, target_opt)
            hf, shapes, optimizer = dict(new.config), shapes_of(new), target_opt
            model_fp = ckpt.model_fingerprint(hf, shapes)
            if target_plan is not plan:
                plan = target_plan
                pairs = symmetry_pairs(plan)
            return new

        names = old_names if target_hf is hf else list(target_shapes)
        return names, target_shapes, build

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
                start, engine = _resume(engine, tc, out, existing, model_fp, data_fp, result, say, adopt)
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
            if growths:
                trainer["growths_done"] = done
                lin["growths"] = result.growths
            ckpt.save(folder, state, hf, trainer, aux_from=source_dir, lineage=lin, optimizer=optimizer)
            ckpt.prune(out, tc.save_total_limit, tc.keep_best, log=say)
        engine.barrier()
        result.checkpoint = str(folder)

    def grow(step: int) -> None:
        """The run's next growth, at the start of ``step``: the engine rebuilt grown, its
        plan the monitor's, its AdamW the checkpoints', a growth record."""
        nonlocal engine, hf, shapes, model_fp, plan, pairs, optimizer, threads, done
        _, options = growths[done]
        before = {"sizes": _sizes(hf), "params": _count(shapes)}
        run = grow_engine(engine, factory(), options, tc, source_optimizer(), seed=tc.seed)
        engine, hf, optimizer = run.engine, dict(run.hf_config), run.optimizer
        shapes = shapes_of(engine)
        model_fp = ckpt.model_fingerprint(hf, shapes)
        plan, pairs = run.plan, symmetry_pairs(run.plan)
        threads = LoopThreads(engine, tc.threads, world, say)
        done += 1
        early.pop(step, None)  # an evaluation a checkpoint did just before: of the model before the growth
        event = {"step": step, "index": done, "options": tc.grow[done - 1].partition(":")[2],
                 "before": before, "after": {"sizes": _sizes(hf), "params": _count(shapes)},
                 "inexact": list(run.grown.inexact)}
        emit({"step": step, "growth": event, "seconds": round(time.perf_counter() - t0, 4)})
        say(f"grew at step {step}: {event['options']} ({before['params']:,} -> {event['after']['params']:,} "
            "parameters)" + (f"; inexact: {len(event['inexact'])} reason(s), see the growth record"
                             if event["inexact"] else ""))

    threads = LoopThreads(engine, tc.threads, world, say)
    try:
        step = start
        while step < tc.steps:
            while done < len(growths) and growths[done][0] <= step:
                grow(step)
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
                result.engine = engine
                return result
        result.steps_done = tc.steps
        if val_batches or pairs:
            final = {"step": tc.steps, **evaluate(tc.steps), "seconds": round(time.perf_counter() - t0, 4)}
            if not result.history or result.history[-1].get("step") != tc.steps:
                emit(final)
            bar.update(0, val=final.get("val_loss"), sym=final.get("symmetry"))  # the bar ends on the final evaluation
        if out is not None and result.checkpoint != str(ckpt.folder_for(out, tc.steps)):
            checkpoint(tc.steps)
        result.engine = engine
        return result
    except BaseException:
        if engine is not given:  # built here: nobody else holds it
            engine.close()
        raise
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


def _sizes(hf: Mapping[str, Any]) -> dict:
    try:
        from ..model.families import family_for_config

        return sizes_of(family_for_config(hf).read(hf))
    except HypercloneError:
        return {}


def _count(shapes: Mapping[str, tuple]) -> int:
    return int(sum(int(np.prod(s, dtype=np.int64)) for s in shapes.values()))


def shapes_of(engine) -> dict:
    return {n: tuple(int(d) for d in s) for n, s in engine.shapes.items()}


def _resume(engine, tc: TrainConfig, out: Path, existing: list, model_fp: dict, data_fp: dict,
            result: TrainResult, say, adopt: Optional[Callable] = None) -> tuple:
    """Load the newest valid checkpoint into the engine after checking it belongs to
    this run; returns its step and the engine holding it (``adopt``: the loop's answer
    to which model the checkpoint holds -- a grown run's is rebuilt).  Newer invalid
    checkpoints are set aside (renamed, never deleted) so the run's next checkpoint is
    the newest again."""
    folder = ckpt.newest_valid(out, say)
    if folder is None:
        raise CheckpointError(f"--resume: none of the {len(existing)} checkpoint(s) in {out} can be resumed from "
                                   f"(the newest: {ckpt.problem(existing[-1][1])}); start a new --out")
    saved = ckpt.read_state(folder)
    how = adopt(saved) if adopt is not None else None
    if isinstance(how, str) and how != "same":
        raise CheckpointError(f"{folder} does not continue this run: {how}; resume with the run's --grow schedule, "
                              "or train into a new --out")
    if how is None and saved.get("model") != model_fp:
        raise CheckpointError(f"{folder} was written while training another model "
                              f"({_first_difference(saved.get('model', {}), model_fp)}); resume only the model it "
                              "was trained from, or train into a new --out")
    names, shapes, build = how if isinstance(how, tuple) else (list(engine.names), shapes_of(engine), None)
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
    state, _ = ckpt.load(folder, names, getattr(engine, "backend", None), shapes=shapes)
    for step, other in existing:
        if step > saved["step"]:
            aside = other.with_name(f"{other.name}.invalid-{os.getpid()}")
            other.rename(aside)
            say(f"set aside {other.name} (not resumable) as {aside.name}")
    if build is not None:
        engine = build(state)
    engine.import_state(state)
    start = int(saved["step"])
    # a finished run's closing evaluation is redone at the start of its next step
    result.history = [h for h in saved.get("history", []) if h["step"] < start or h.get("train_loss") is not None
                      or h.get("growth") is not None]
    result.checkpoint = result.resumed_from = str(folder)
    val = saved.get("val_loss")
    say(f"resumed from {folder.name} (step {start}" + (f", val loss {val:.4f})" if isinstance(val, float) else ")"))
    return start, engine


__all__ = ["NonFiniteLoss", "TrainError", "TrainResult", "as_tokens", "optimizer_for", "train"]
