"""Growth of a user's own optax training state: ``expand_params(..., opt_state=...)``.

The source run's ``optax.adamw`` state (its ``ScaleByAdamState``: count, mu, nu) and
hyper-parameters are read into the core's neutral ``EngineState`` and ``AdamW``,
grown with the plan by ``train.grow.grow_state`` (moments scaled as the clone's
gradients scale, the count kept), and handed back as a new optax transformation and
its state: an ``optax.multi_transform`` with one ``optax.adamw`` per distinct
(lr, eps, weight decay) of the grown run's per-tensor maps -- optax's partitions are
how per-tensor hyper-parameters reach it -- behind ``clip_by_weighted_global_norm``
when the source clipped, which weighs each tensor's squared gradient norm so that
clipping the grown model clips as the source's clipping did.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperclone_core.errors import HypercloneError
from hyperclone_core.train.engine import EngineState
from hyperclone_core.train.grow import grow_state
from hyperclone_core.train.optim import AdamW

HYPERPARAMETERS = ("learning_rate", "b1", "b2", "eps", "weight_decay", "mask", "grad_clip")
"""The keys ``adamw=`` takes: ``optax.adamw``'s arguments, plus ``grad_clip`` (the max
norm of the ``optax.clip_by_global_norm`` the source chained in front, 0: none)."""


def _where(what: str) -> str:
    return f"expand_params(opt_state=): {what}"


def _adam_states(tree) -> list:
    """Every ``optax.ScaleByAdamState`` inside an optax state (through chains, masks,
    injected hyper-parameters)."""
    found = []

    def visit(node):
        if isinstance(node, optax.ScaleByAdamState):
            found.append(node)
        elif isinstance(node, tuple):  # chains and every optax NamedTuple state
            for child in node:
                visit(child)
        elif isinstance(node, Mapping):
            for child in node.values():
                visit(child)

    visit(tree)
    return found


def hyperparameters(opt_state, adamw: Optional[Mapping[str, Any]]) -> dict:
    """The source's AdamW settings: ``adamw`` (``HYPERPARAMETERS``), completed by what an
    ``optax.inject_hyperparams(optax.adamw)`` state holds; optax's defaults otherwise."""
    hp = dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4, mask=None, grad_clip=0.0)
    injected = getattr(opt_state, "hyperparams", None)
    if isinstance(injected, Mapping):
        if float(injected.get("eps_root", 0.0)):
            raise HypercloneError(_where("eps_root has no growth rule; use eps_root=0"))
        hp.update({k: float(v) for k, v in injected.items() if k in HYPERPARAMETERS})
    unknown = sorted(set(adamw or {}) - set(HYPERPARAMETERS))
    if unknown:
        raise HypercloneError(_where(f"adamw= has no option {unknown}; it takes {', '.join(HYPERPARAMETERS)}"))
    hp.update(adamw or {})
    if "learning_rate" not in hp:
        raise HypercloneError(_where("the source's learning_rate is unknown: pass adamw=dict(learning_rate=..., "
                                     "weight_decay=..., ...) as given to optax.adamw, or use "
                                     "optax.inject_hyperparams(optax.adamw)"))
    return hp


def read_adamw(params: Mapping[str, Any], opt_state, hp: Mapping[str, Any], names) -> tuple:
    """(core AdamW, EngineState) of the source's optax AdamW over the tensors ``names``."""
    states = _adam_states(opt_state)
    if len(states) != 1:
        raise HypercloneError(_where(f"found {len(states)} Adam states; grow the state of one optax.adamw over "
                                     "every parameter (optionally chained behind clip_by_global_norm)"))
    adam = states[0]
    if not isinstance(adam.mu, Mapping) or any(n not in adam.mu for n in names):
        missing = [n for n in names if not isinstance(adam.mu, Mapping) or n not in adam.mu]
        raise HypercloneError(_where(f"the Adam state does not hold {missing[:4]}; it must be the state of the "
                                     "params pytree keyed by checkpoint names"))
    mask = hp.get("mask")
    if callable(mask):
        mask = mask(params)
    decay = frozenset(n for n in names if mask is None or bool(mask[n]))
    core = AdamW(betas=(float(hp["b1"]), float(hp["b2"])), eps=float(hp["eps"]),
                 weight_decay=float(hp["weight_decay"]), grad_clip=float(hp.get("grad_clip") or 0.0), decay=decay)
    state = EngineState({n: np.asarray(params[n], np.float32) for n in names},
                        {n: np.asarray(adam.mu[n], np.float32) for n in names},
                        {n: np.asarray(adam.nu[n], np.float32) for n in names}, int(adam.count))
    return core, state


class WeightedClipState(NamedTuple):
    pass


def clip_by_weighted_global_norm(max_norm: float, weights: Mapping[str, float]) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` whose squared norm weighs tensor ``n`` by
    ``weights[n]`` (1 where absent): on a grown clone, the source-equivalent norm."""

    def init(params):
        return WeightedClipState()

    def update(updates, state, params=None):
        sq = sum(float(weights.get(n, 1.0)) * jnp.sum(jnp.square(u.astype(jnp.float32))) for n, u in updates.items())
        norm = jnp.sqrt(sq)
        coef = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return {n: (u * coef).astype(u.dtype) for n, u in updates.items()}, state

    return optax.GradientTransformation(init, update)


def _scaled(lr, mult: float) -> Any:
    if callable(lr):
        return lambda count: mult * lr(count)
    return mult * float(lr)


def grown_optax(params: Mapping[str, Any], opt_state, plan, new_params: Mapping[str, Any],
                adamw: Optional[Mapping[str, Any]] = None, moments: str = "carry",
                inserted_lr: float = 1.0) -> tuple:
    """``(tx, state)``: the optax transformation and state of ``new_params`` continuing the
    source run whose params are ``params`` and optax state ``opt_state``."""
    hp = hyperparameters(opt_state, adamw)
    core, state = read_adamw(params, opt_state, hp, sorted(plan.sources()))
    grown = grow_state(plan, state, core, moments=moments, inserted_lr=inserted_lr)
    opt = grown.optimizer
    names = [tp.name for tp in plan.tensors if tp.name in new_params]
    groups: dict = defaultdict(list)
    for n in names:
        groups[(opt.mult(n), opt.eps_of(n), opt.decay_of(n))].append(n)
    labels, txs = {}, {}
    for k, ((mult, eps, wd), ns) in enumerate(groups.items()):
        label = f"group{k}"
        txs[label] = optax.adamw(_scaled(hp["learning_rate"], mult), b1=core.betas[0], b2=core.betas[1], eps=eps,
                                 weight_decay=wd)
        labels.update({n: label for n in ns})
    extra = sorted(set(new_params) - set(labels))
    if extra:
        raise HypercloneError(_where(f"the grown params hold tensors the plan does not make: {extra[:4]}"))
    partition = optax.multi_transform(txs, labels)
    pstate = partition.init(dict(new_params))
    count = jnp.asarray(grown.state.adam_step, jnp.int32)

    def filled(label, adam):
        def fill(moment: Mapping[str, np.ndarray], old):
            return {n: (jax.device_put(jnp.asarray(moment[n]), new_params[n].sharding)
                        if labels.get(n) == label and isinstance(new_params[n], jax.Array) else
                        jnp.asarray(moment[n]) if labels.get(n) == label else v) for n, v in old.items()}
        return adam._replace(count=count, mu=fill(grown.state.exp_avg, adam.mu),
                             nu=fill(grown.state.exp_avg_sq, adam.nu))

    inner = {}
    for label, masked in pstate.inner_states.items():
        chain = masked.inner_state
        inner[label] = masked._replace(inner_state=tuple(filled(label, s) if isinstance(s, optax.ScaleByAdamState)
                                                         else s for s in chain))
    pstate = pstate._replace(inner_states=inner)
    if core.grad_clip:
        weights = {n: float(opt.clip_weight.get(n, 1.0)) for n in names}
        tx = optax.chain(clip_by_weighted_global_norm(core.grad_clip, weights), partition)
        return tx, (WeightedClipState(), pstate), grown.inexact
    return partition, pstate, grown.inexact


__all__ = ["HYPERPARAMETERS", "clip_by_weighted_global_norm", "grown_optax", "hyperparameters", "read_adamw"]
