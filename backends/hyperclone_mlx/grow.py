"""Growth of a user's own MLX training state: ``expand_model(model, optimizer=opt)``.

A ``mlx.optimizers.AdamW`` (or a ``MultiOptimizer`` of AdamWs, what this returns)
over an mlx-lm model is read into the core's neutral ``EngineState`` and ``AdamW``
through the model's checkpoint-name map (``interop.locate``: stacked experts are
rows), grown with the plan by ``train.grow.grow_state`` (moments scaled as the
clone's gradients scale, the step kept), and handed back as optimizers over the
grown model: one AdamW per distinct (lr, eps, weight decay) of the grown run's
per-tensor maps, joined by a ``MultiOptimizer`` when there are several -- MLX's
filters are how per-tensor hyper-parameters reach it.  The grown moments go through
the grown model's own ``sanitize``, as its weights do, so they land where the
weights land.  ``clip_grad_norm`` below clips on the source-equivalent norm.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from hyperclone_core.errors import HypercloneError
from hyperclone_core.train.engine import EngineState
from hyperclone_core.train.grow import grow_state
from hyperclone_core.train.optim import AdamW

CLIP_EPS = 1e-6
"""As ``mlx.optimizers.clip_grad_norm``: the scale is max_norm / (norm + CLIP_EPS)."""


def _where(what: str) -> str:
    return f"expand_model(optimizer=): {what}"


def _adamws(optimizer) -> list:
    """The AdamWs of ``optimizer`` with their path filters (None: the fallback)."""
    if isinstance(optimizer, optim.MultiOptimizer):
        parts = list(zip(optimizer.optimizers, optimizer.filters[:-1] + [None]))
    else:
        parts = [(optimizer, None)]
    for o, _ in parts:
        if type(o) is not optim.AdamW:
            raise HypercloneError(_where(f"an mlx.optimizers.AdamW (or a MultiOptimizer of them) is needed, got "
                                         f"{type(o).__name__}"))
    return parts


def _owner(parts, path: str, w):
    for o, f in parts:
        if f is None or f(path, w):
            return o
    return parts[-1][0]  # pragma: no cover - the last part takes everything


def _lr(o) -> float:
    return float(o.learning_rate.item() if isinstance(o.learning_rate, mx.array) else o.learning_rate)


def read_adamw(optimizer, model, where: Mapping[str, tuple]) -> tuple:
    """(core AdamW, EngineState, lr, schedule, bias_correction) of ``optimizer`` over
    the checkpoint tensors of ``model`` (``where``: name -> (mlx path, row))."""
    parts = _adamws(optimizer)
    first = parts[0][0]
    betas = tuple(float(b) for b in first.betas)
    if any(tuple(float(b) for b in o.betas) != betas or o.bias_correction != first.bias_correction
           for o, _ in parts):
        raise HypercloneError(_where("AdamWs with different betas or bias_correction cannot be grown together"))
    schedule = first._schedulers.get("learning_rate")
    if any(o._schedulers.get("learning_rate") is not schedule for o, _ in parts):
        raise HypercloneError(_where("the AdamWs follow different learning-rate schedules; give them one"))
    params = dict(tree_flatten(model.trainable_parameters()))
    states = {}
    for o, _ in parts:
        states[id(o)] = dict(tree_flatten(o.state)) if o._initialized else {}
    lr, eps = _lr(first), float(first.eps)
    wd = next((float(o.weight_decay) for o, _ in parts if float(o.weight_decay)), 0.0)
    lr_mult, eps_mult, wd_mult, decay = {}, {}, {}, set()
    ps, m, v, steps = {}, {}, {}, set()
    for name, (path, row) in where.items():
        if path not in params:
            raise HypercloneError(_where(f"{name} ({path}) is not a trainable parameter of the model; unfreeze it "
                                         "(growth needs every tensor's optimizer state)"))
        w = params[path]
        o = _owner(parts, path, w)
        if _lr(o) != lr:
            lr_mult[name] = _lr(o) / lr if lr else 0.0
        if float(o.eps) != eps:
            eps_mult[name] = float(o.eps) / eps
        if float(o.weight_decay):
            decay.add(name)
            if float(o.weight_decay) != wd:
                wd_mult[name] = float(o.weight_decay) / wd
        def pick(x, row=row):
            return x if row is None else x[row]

        ps[name] = np.array(pick(w).astype(mx.float32))
        st = states[id(o)]
        if f"{path}.m" in st:
            m[name] = np.array(pick(st[f"{path}.m"]).astype(mx.float32))
            v[name] = np.array(pick(st[f"{path}.v"]).astype(mx.float32))
            steps.add(int(st["step"].item()))
        else:
            m[name], v[name] = np.zeros_like(ps[name]), np.zeros_like(ps[name])
            steps.add(0)
    if len(steps) > 1:
        raise HypercloneError(_where(f"parameters have taken different numbers of steps {sorted(steps)}"))
    core = AdamW(betas=betas, eps=eps, weight_decay=wd, grad_clip=0.0, decay=frozenset(decay), lr_mult=lr_mult,
                 eps_mult=eps_mult, wd_mult=wd_mult)
    return core, EngineState(ps, m, v, steps.pop() if steps else 0), lr, schedule, bool(first.bias_correction)


def _scaled(schedule, mult: float):
    return lambda step: mult * schedule(step)


def grown_optimizer(optimizer, model, new, plan, src_where: Mapping[str, tuple], dst_where: Mapping[str, tuple],
                    moments: str = "carry", inserted_lr: float = 1.0):
    """The MLX optimizer of ``new`` (the grown ``model``) continuing ``optimizer``'s run."""
    core, state, lr, schedule, bias_correction = read_adamw(optimizer, model, src_where)
    grown = grow_state(plan, state, core, moments=moments, inserted_lr=inserted_lr)
    opt = grown.optimizer
    group_of: dict = {}
    clip_weights: dict = {}
    for tp in plan.tensors:
        path, _ = dst_where[tp.name]
        key = (opt.mult(tp.name), opt.eps_of(tp.name), opt.decay_of(tp.name))
        if group_of.setdefault(path, key) != key:
            raise HypercloneError(_where(f"{path} stacks tensors the grown run trains with different settings"))
        cw = float(opt.clip_weight.get(tp.name, 1.0))
        if clip_weights.setdefault(path, cw) != cw:
            raise HypercloneError(_where(f"{path} stacks tensors with different clip weights"))
    groups: dict = defaultdict(set)
    for path, key in group_of.items():
        groups[key].add(path)
    made = []
    for (mult, eps, wd), paths in groups.items():
        rate = _scaled(schedule, mult) if schedule is not None else lr * mult
        made.append((optim.AdamW(rate, betas=list(core.betas), eps=eps, weight_decay=wd,
                                 bias_correction=bias_correction), paths))
    # the grown moments in the grown model's layout: through its own sanitize, as the weights
    fix = new.sanitize if hasattr(new, "sanitize") else (lambda d: d)
    grown_m = fix({n: mx.array(a) for n, a in grown.state.exp_avg.items()})
    grown_v = fix({n: mx.array(a) for n, a in grown.state.exp_avg_sq.items()})
    params = dict(tree_flatten(new.trainable_parameters()))
    step = mx.array(grown.state.adam_step, dtype=mx.uint64)
    for o, paths in made:
        o.init(tree_unflatten([(p, params[p]) for p in sorted(paths)]))
        st = dict(tree_flatten(o.state))
        for p in paths:
            st[f"{p}.m"] = grown_m[p].astype(params[p].dtype)
            st[f"{p}.v"] = grown_v[p].astype(params[p].dtype)
        st["step"] = step
        o.state = tree_unflatten(list(st.items()))
    if len(made) == 1:
        result = made[0][0]
    else:
        filters = [lambda path, w, s=frozenset(paths): path in s for _, paths in made[:-1]]
        result = optim.MultiOptimizer([o for o, _ in made], filters)
    result.hyperclone_clip_weights = clip_weights
    result.hyperclone_inexact = grown.inexact
    return result


def clip_grad_norm(grads, max_norm: float, optimizer=None) -> tuple:
    """``mlx.optimizers.clip_grad_norm`` whose squared norm weighs each parameter by the
    clip weight ``expand_model(optimizer=)`` attached to ``optimizer`` (1 where absent):
    on a grown clone, the source's clipping norm.  Returns (clipped grads, norm)."""
    weights = getattr(optimizer, "hyperclone_clip_weights", {}) if optimizer is not None else {}
    flat = tree_flatten(grads)
    sq = sum(float(weights.get(k, 1.0)) * mx.sum(mx.square(g.astype(mx.float32))) for k, g in flat)
    norm = mx.sqrt(sq)
    scale = mx.minimum(max_norm / (norm + CLIP_EPS), 1.0)
    return tree_unflatten([(k, (g * scale).astype(g.dtype)) for k, g in flat]), norm


__all__ = ["clip_grad_norm", "grown_optimizer", "read_adamw"]
