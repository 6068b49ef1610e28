"""What training a clone needs from its plan: per-tensor LR multipliers and the
symmetry monitor (how far the copies the plan made have diverged; the paper's
weight-symmetry analysis, its Fig. 5).  Symmetric cloning without noise stays at
1.0 for ever, which is why the default strategy adds noise."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from ..algebra.growth import copy_ids
from ..algebra.program import Reshape, Take


def _roles_by_kind(plan) -> dict:
    return {r.kind: r for r in plan.spec.roles_for(plan.decoder)}


def inverse_width_multipliers(plan) -> dict:
    """1/r on every weight whose input axis grew r-fold (mu-P style: its cloned entries
    hold 1/r of the source's values, so a step of the source's size would be r times
    too large)."""
    roles = _roles_by_kind(plan)
    out = {}
    for t in plan.tensors:
        role = roles.get(t.kind)
        if role is None:
            continue
        mult = 1.0
        for op in t.ops:
            if isinstance(op, Take) and role.axes[op.axis].direction == "in":
                mult *= t.source_shape[op.axis] / t.shape[op.axis]
        if mult != 1.0:
            out[t.name] = mult
    return out


def _kinds(plan) -> dict:
    return {t.name: t.kind for t in plan.tensors}


CLONE_LR_OFF = ("", "none")
"""``TrainConfig.clone_lr`` values that turn per-tensor LR multipliers off."""

CLONE_LR_RULES: dict = {
    "inverse_width": inverse_width_multipliers,
    "sqrt_inverse_width": lambda plan: {n: math.sqrt(m) for n, m in inverse_width_multipliers(plan).items()},
    "inverse_width_no_head": lambda plan: {n: m for n, m in inverse_width_multipliers(plan).items()
                                           if _kinds(plan)[n] != "lm_head"},
    "head_only_inverse": lambda plan: {n: m for n, m in inverse_width_multipliers(plan).items() if _kinds(plan)[n] == "lm_head"},
}
"""The clone-LR rules, their one home: name -> (plan -> {tensor name: LR multiplier}).
``hyperclone train --clone-lr``, the demo and the recipe sweep all take these names."""


def clone_lr_choices() -> tuple:
    """Every value ``TrainConfig.clone_lr`` takes as a string."""
    return (*CLONE_LR_OFF, *CLONE_LR_RULES)


def check_clone_lr(rule: str) -> None:
    """Refuse a rule name the registry does not hold, listing the ones it does."""
    if rule not in CLONE_LR_OFF and rule not in CLONE_LR_RULES:
        raise ConfigError(f"clone_lr {rule!r} is unknown; use one of {', '.join(map(repr, CLONE_LR_RULES))}, "
                          "'' or 'none' (off), or a tensor name -> multiplier map")


def clone_lr_multipliers(plan, rule: str) -> dict:
    """Per-tensor LR multipliers for a clone, by rule name (``CLONE_LR_RULES``)."""
    check_clone_lr(rule)
    return {} if rule in CLONE_LR_OFF else CLONE_LR_RULES[rule](plan)


@dataclass(frozen=True)
class CopyPairs:
    """Along ``axis`` of tensor ``name``, slice ``b[k]`` is a copy of slice ``a[k]``."""

    name: str
    kind: str
    axis: int
    a: np.ndarray
    b: np.ndarray


def symmetry_pairs(plan) -> list:
    """For every grown axis of every tensor of the plan: which destination slices
    are copies of the same source slice (from its ``take`` maps)."""
    pairs = []
    for t in plan.tensors:
        for op in t.ops:
            if isinstance(op, Reshape):
                break  # later axes no longer index the destination's
            if not isinstance(op, Take):
                continue
            src = np.asarray(plan.arrays[op.map])
            cid = copy_ids(src)
            if cid.max() < 1:
                continue
            first = np.full(int(src.max()) + 1, -1)
            first[src[cid == 0]] = np.flatnonzero(cid == 0)
            b = np.flatnonzero(cid > 0)
            pairs.append(CopyPairs(t.name, t.kind, op.axis, first[src[b]], b))
    return pairs


def symmetry(get: Callable[[str], Optional[np.ndarray]], pairs: Sequence[CopyPairs]) -> Optional[dict]:
    """Mean cosine similarity between copies, per tensor kind and overall, reading
    each tensor through ``get(name)`` (None: skipped).  Bitwise identical copies
    count as exactly 1.0 (symmetric cloning without noise)."""
    by_kind: dict = {}
    cache: dict = {}
    for p in pairs:
        if p.name not in cache:
            cache.clear()  # pairs come grouped by tensor: hold one at a time
            cache[p.name] = get(p.name)
        w = cache[p.name]
        if w is None:
            continue
        a = np.take(w, p.a, axis=p.axis).astype(np.float64).reshape(-1)
        b = np.take(w, p.b, axis=p.axis).astype(np.float64).reshape(-1)
        if np.array_equal(a, b):
            cos = 1.0
        else:
            cos = float((a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-300))
        by_kind.setdefault(p.kind, []).append(cos)
    if not by_kind:
        return None
    kinds = {k: float(np.mean(v)) for k, v in sorted(by_kind.items())}
    overall = float(np.mean([c for v in by_kind.values() for c in v]))
    return {"overall": overall, "by_kind": kinds}


__all__ = ["CLONE_LR_OFF", "CLONE_LR_RULES", "CopyPairs", "check_clone_lr", "clone_lr_choices", "clone_lr_multipliers",
           "inverse_width_multipliers", "symmetry", "symmetry_pairs"]
