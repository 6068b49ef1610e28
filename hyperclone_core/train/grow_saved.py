"""``hyperclone grow RUN/checkpoint-N DST``: grow a saved training run.

DST is written as the OUT folder of the run continued with one more growth: it
holds ``checkpoint-N`` of the grown model -- weights, the grown AdamW moments and
step, the grown run's per-tensor maps -- and a ``state.json`` whose config is the
run's with ``N:OPTIONS`` added to its growth schedule (``growths_done`` counts it),
so the checkpoint is exactly what ``hyperclone train --grow N:OPTIONS`` would hold
right after growing at step N.  When RUN has its ``recipe.toml``, DST gets one with
``out`` and ``grow`` updated, and ``hyperclone train --config DST/recipe.toml
--resume`` continues the grown run (bit for bit on the backend that wrote RUN;
within float32 rounding on the others).  Without a recipe, pass the run's options
with ``--out DST --resume --grow N:OPTIONS`` (and the run's earlier ``--grow``s).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import CheckpointError, UsageError
from ..io import runout
from . import checkpoint as ckpt
from .config import TrainConfig, growth_schedule, growth_text
from .grow import format_growth_options, grow_state, plan_for, plan_shapes, sizes_of, split_growth
from .optim import AdamW, decay_mask


def _source_optimizer(saved: Mapping[str, Any], tc: TrainConfig, shapes: Mapping[str, tuple]) -> AdamW:
    """The AdamW the run used when it wrote the checkpoint: the config's, with the
    per-tensor maps the checkpoint kept."""
    if not isinstance(tc.clone_lr, str) or tc.clone_lr in ("", "none", "off"):
        from .loop import optimizer_for

        base = optimizer_for(tc, shapes)
    elif saved.get("adamw"):
        base = AdamW(betas=tuple(tc.betas), eps=tc.eps, weight_decay=tc.weight_decay, grad_clip=tc.grad_clip,
                     decay=decay_mask(shapes))
    else:
        raise CheckpointError(f"the run trained with clone_lr={tc.clone_lr!r} and the checkpoint does not keep the "
                              "multipliers it made (written before hyperclone kept them); grow a newer checkpoint")
    return ckpt.adamw_of(saved, base)


def grow_checkpoint(src, dst, options: Mapping[str, Any], moments: Optional[str] = None,
                    inserted_lr: Optional[float] = None, log=lambda _m: None) -> dict:
    """Grow the training checkpoint ``src`` (``OUT/checkpoint-N`` of a train run) with
    growth ``options`` (``grow.parse_growth``'s keys) into the run folder ``dst``;
    returns the growth record.  ``moments``/``inserted_lr`` override the options'."""
    src, dst = Path(src), Path(dst)
    why = ckpt.problem(src)
    if why is not None:
        raise CheckpointError(f"{src} is not a training checkpoint hyperclone can grow: {why}")
    saved = ckpt.read_state(src)
    step = int(saved["step"])
    try:
        tc = TrainConfig.from_dict(dict(saved.get("config") or {}, resume=False, out_dir=None, save_every=0,
                                        save_total_limit=0, grow=()))
    except UsageError as exc:
        raise CheckpointError(f"{src}: its run's config does not read back ({exc})") from None
    opts = dict(options)
    if moments is not None:
        opts["moments"] = moments
    if inserted_lr is not None:
        opts["inserted_lr"] = inserted_lr
    split_growth(opts)  # unknown keys refused
    schedule = growth_schedule(saved.get("config", {}).get("grow") or (), 10**9)
    done = int(saved.get("growths_done", sum(1 for at, _ in schedule if at < step)))
    if any(at == step for at, _ in schedule[done:]):
        raise UsageError(f"{src}: the run's own schedule grows at step {step} already; grow another checkpoint")
    entry = (step, opts)
    grow = [growth_text(g) for g in schedule[:done]] + [growth_text(entry)] + \
        [growth_text(g) for g in schedule[done:]]
    rd = runout.RunDir(dst, "train", {"checkpoint": src, "run": src.parent}, files=ckpt.RUN_FILES).check()
    if rd.owner() not in ("",):
        raise UsageError(f"DST {dst}: exists and is not empty; hyperclone grow writes a new run folder")

    from ..io import read_config

    hf = dict(read_config(src))
    names = list(saved["model"]["shapes"])
    shapes = {n: tuple(s) for n, s in saved["model"]["shapes"].items()}
    state, _ = ckpt.load(src, names, None, shapes=shapes)
    source_opt = _source_optimizer(saved, tc, shapes)
    plan = plan_for(hf, opts, tc.seed, where=str(src / "config.json"))
    _, state_opts = split_growth(opts)
    grown = grow_state(plan, state, source_opt, moments=state_opts.get("moments", "carry"),
                       inserted_lr=float(state_opts.get("inserted_lr", 1.0)))
    new_shapes = plan_shapes(plan)
    from .loop import _count

    event = {"step": step, "index": done + 1, "options": format_growth_options(opts),
             "before": {"sizes": sizes_of(plan.source_decoder), "params": _count(shapes)},
             "after": {"sizes": sizes_of(plan.decoder), "params": _count(new_shapes)},
             "inexact": list(grown.inexact), "grown_from": str(src.resolve())}
    config = dict(saved.get("config") or {}, grow=grow)
    history = [h for h in saved.get("history", []) if h.get("step", 0) < step or h.get("train_loss") is not None]
    trainer = dict(saved, config=config, model=ckpt.model_fingerprint(plan.config, new_shapes),
                   history=history + [{"step": step, "growth": event}], val_loss=None, growths_done=done + 1)
    for k in ("format", "adam_step", "adamw"):
        trainer.pop(k, None)
    lineage = {}
    if os.path.lexists(src / "hyperclone.json"):
        try:
            lineage = json.loads((src / "hyperclone.json").read_text())
        except (OSError, ValueError):
            lineage = {}
    lineage = dict(lineage, growths=list(lineage.get("growths", [])) + [event])
    run = rd.claim()
    try:
        folder = ckpt.folder_for(dst, step)
        ckpt.save(folder, grown.state, dict(plan.config), trainer, aux_from=src, lineage=lineage,
                  optimizer=grown.optimizer)
        runout.replace_file(folder / "plan.json", lambda tmp: Path(tmp).write_text(plan.to_json(indent=None)))
        own_recipe = src.parent / "recipe.toml"
        if own_recipe.is_file():
            from ..console import recipe
            from .cli import PATHS, write_recipe

            doc = recipe.read(own_recipe)
            for k in PATHS + ("tokenizer",):  # the run's recipe names paths from its own folder
                if isinstance(doc.get(k), str) and not (k == "tokenizer" and doc[k] in ("auto", "bytes")):
                    doc[k] = recipe.from_recipe(doc[k], own_recipe)
            doc.update(out=str(dst), grow=grow)
            write_recipe(run, doc, replay=False)  # out = DST itself: --resume continues the grown run
    finally:
        run.release()
    log(f"grew {src} at step {step}: {event['options']} ({event['before']['params']:,} -> "
        f"{event['after']['params']:,} parameters) -> {folder}")
    return event


__all__ = ["grow_checkpoint"]
