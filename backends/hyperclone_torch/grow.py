"""Growth of a user's own torch training state: ``expand_model(model, optimizer=opt)``.

A ``torch.optim.AdamW`` over the source model is read into the core's neutral
``EngineState`` and ``AdamW`` (its param groups' lr / eps / weight decay become
per-tensor multipliers), grown with the plan by ``train.grow.grow_state`` (moments
scaled as the clone's gradients scale, the step kept), and handed back as a new
``torch.optim.AdamW`` over the grown model: one param group per distinct
(lr, eps, weight decay, clip weight) of the grown run's per-tensor maps -- torch's
groups are how per-tensor hyper-parameters reach it.  Each group also carries
``clip_weight``, what ``clip_grad_norm_`` below weighs its squared gradient norm
by, so clipping the grown model clips as the source's clipping did.  A scheduler
must be rebuilt over the new optimizer (``initial_lr`` per group is the grown lr).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from hyperclone_core.errors import HypercloneError
from hyperclone_core.train.engine import EngineState
from hyperclone_core.train.grow import grow_state
from hyperclone_core.train.optim import AdamW


def _named(model, locs: dict) -> dict:
    """checkpoint name -> the model's live Parameter (plain, unfused tensors only)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    for name, loc in locs.items():
        if loc.expert is not None or loc.part is not None:
            raise HypercloneError(f"expand_model(optimizer=): {name} lives inside the fused tensor {loc.name}; growing "
                                  "an optimizer's state is supported for unfused parameters (transformers 4.x "
                                  "layouts, Decoder)")
        if loc.name in params:
            out[name] = params[loc.name]
    return out


def read_adamw(optimizer: torch.optim.Optimizer, named: dict) -> tuple:
    """(core AdamW, EngineState, lr) of a torch AdamW over the tensors ``named``: the
    first group's lr/eps/weight decay are the base, every group's ratios to them the
    per-tensor multipliers."""
    if not isinstance(optimizer, torch.optim.AdamW):
        raise HypercloneError(f"expand_model(optimizer=): a torch.optim.AdamW is needed, got "
                              f"{type(optimizer).__name__}")
    group_of = {}
    for g in optimizer.param_groups:
        if g.get("amsgrad") or g.get("maximize"):
            raise HypercloneError("expand_model(optimizer=): amsgrad and maximize have no growth rule; turn them off")
        for p in g["params"]:
            group_of[id(p)] = g
    missing = [n for n, p in named.items() if id(p) not in group_of]
    if missing:
        raise HypercloneError(f"expand_model(optimizer=): the optimizer does not train {missing[:4]}; give it every "
                              "parameter the growth maps (frozen ones at lr 0)")
    first = optimizer.param_groups[0]
    lr, eps = float(first["lr"]), float(first["eps"])
    wd = next((float(g["weight_decay"]) for g in optimizer.param_groups if g["weight_decay"]), 0.0)
    betas = tuple(float(b) for b in first["betas"])
    lr_mult, eps_mult, wd_mult, clip, decay = {}, {}, {}, {}, set()
    params, m, v, steps = {}, {}, {}, set()
    for n, p in named.items():
        g = group_of[id(p)]
        if tuple(float(b) for b in g["betas"]) != betas:
            raise HypercloneError("expand_model(optimizer=): param groups with different betas cannot be grown")
        if float(g["lr"]) != lr:
            lr_mult[n] = float(g["lr"]) / lr if lr else 0.0
        if float(g["eps"]) != eps:
            eps_mult[n] = float(g["eps"]) / eps
        if g["weight_decay"]:
            decay.add(n)
            if float(g["weight_decay"]) != wd:
                wd_mult[n] = float(g["weight_decay"]) / wd
        if float(g.get("clip_weight", 1.0)) != 1.0:
            clip[n] = float(g["clip_weight"])
        params[n] = p.detach().float().cpu().numpy()
        st = optimizer.state.get(p) or {}
        if "exp_avg" in st:
            m[n] = st["exp_avg"].detach().float().cpu().numpy()
            v[n] = st["exp_avg_sq"].detach().float().cpu().numpy()
            steps.add(int(float(st["step"])))
        else:
            m[n] = np.zeros_like(params[n])
            v[n] = np.zeros_like(params[n])
            steps.add(0)
    if len(steps) > 1:
        raise HypercloneError(f"expand_model(optimizer=): parameters have taken different numbers of steps "
                              f"{sorted(steps)}; grow an optimizer whose parameters all step together")
    core = AdamW(betas=betas, eps=eps, weight_decay=wd, grad_clip=0.0, decay=frozenset(decay), lr_mult=lr_mult,
                 eps_mult=eps_mult, wd_mult=wd_mult, clip_weight=clip)
    return core, EngineState(params, m, v, steps.pop() if steps else 0), lr


def grown_adamw(optimizer: torch.optim.Optimizer, source, grown_model, plan, src_locs: dict, dst_locs: dict,
                moments: str = "carry", inserted_lr: float = 1.0) -> torch.optim.AdamW:
    """The torch AdamW of ``grown_model`` continuing ``optimizer``'s run on ``source``."""
    core, state, lr = read_adamw(optimizer, _named(source, src_locs))
    grown = grow_state(plan, state, core, moments=moments, inserted_lr=inserted_lr)
    new_params = _named(grown_model, dst_locs)
    opt = grown.optimizer
    groups: dict = defaultdict(list)
    for n in (tp.name for tp in plan.tensors):
        if n in new_params:
            key = (lr * opt.mult(n), opt.eps_of(n), opt.decay_of(n), float(opt.clip_weight.get(n, 1.0)))
            groups[key].append(n)
    first = optimizer.param_groups[0]
    extra = {k: first[k] for k in ("foreach", "fused", "capturable", "differentiable") if k in first}
    new = torch.optim.AdamW([{"params": [new_params[n] for n in names], "lr": g_lr, "eps": eps, "weight_decay": wd,
                              "clip_weight": cw} for (g_lr, eps, wd, cw), names in groups.items()],
                            lr=lr, betas=core.betas, **extra)
    step_like = next((s["step"] for s in optimizer.state.values() if "step" in s), None)
    for n, p in new_params.items():
        if not grown.state.adam_step:
            break
        step = torch.tensor(float(grown.state.adam_step), dtype=torch.float32) if step_like is None else \
            torch.full_like(step_like, float(grown.state.adam_step))
        new.state[p] = {"step": step,
                        "exp_avg": torch.from_numpy(grown.state.exp_avg[n]).to(p.device, p.dtype),
                        "exp_avg_sq": torch.from_numpy(grown.state.exp_avg_sq[n]).to(p.device, p.dtype)}
    new.hyperclone_inexact = grown.inexact  # why the grown run cannot follow the source exactly (empty: it can)
    return new


def clip_grad_norm_(optimizer: torch.optim.Optimizer, max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` over ``optimizer``'s parameters with each param
    group's ``clip_weight`` (1 when absent) weighing its squared norm: on an optimizer
    ``expand_model(optimizer=)`` returned, the source's clipping norm (a grown clone's
    raw norm is not).  Returns the (weighted) norm before clipping."""
    total = None
    for g in optimizer.param_groups:
        w = float(g.get("clip_weight", 1.0))
        for p in g["params"]:
            if p.grad is not None:
                s = w * p.grad.detach().double().pow(2).sum()
                total = s if total is None else total + s
    if total is None:
        return torch.tensor(0.0)
    norm = total.sqrt()
    coef = float(max_norm) / (float(norm) + eps)
    if coef < 1.0:
        for g in optimizer.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.grad.detach().mul_(coef)
    return norm.float()


__all__ = ["clip_grad_norm_", "grown_adamw", "read_adamw"]
