"""Growth inside a run: the training state grown with the plan, so a symmetric clone
continues the source's training instead of restarting it (docs/growth-in-training.md
has the derivation and the cases where exactness is impossible).

A plan maps the source's parameters linearly, ``theta' = P theta`` (gathers and
scales; Gemma's ``1 + w`` offsets are affine with the same linear part), and the
clone computes the source's function for any source weights, so
``P^T grad L'(P theta) = grad L(theta)``.  In a symmetric clone each of the ``c``
clone entries of a source entry holds ``a W[src]`` and, by symmetry, the same
gradient ``b G[src]``: ``P^T`` gives ``c a b = 1``.  Then AdamW continues exactly
with ``m' = b m``, ``v' = b^2 v``, the step kept, and per tensor an LR multiplier
``a``, an eps multiplier ``b``, a weight-decay multiplier ``1 / a`` and a clip
weight ``1 / (b^2 c)`` (the source's squared norm is ``sum_t |g'_t|^2 / (b_t^2 c_t)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from ..algebra.planner import Plan, layer_map
from ..algebra.program import AddNoise, Reshape, Scale, Take
from ..errors import ConfigError, HypercloneError, UsageError
from ..model.spec import tensor_names
from ..run.reference import execute, expand_tensor
from .engine import EngineState
from .optim import AdamW

MOMENTS = ("carry", "asymmetric", "reset")
"""How the moments cross a growth: ``carry`` (every copy gets the source's, scaled),
``asymmetric`` (the first copy of each source entry carries them, the other copies
restart at zero: a symmetry breaker), ``reset`` (a fresh AdamW: zero moments, step 0,
what growing a finished checkpoint has always done)."""

UNIFORM_RTOL = 1e-6
"""A tensor's per-entry factors within this of each other count as one scalar (the
plan stores coefficients such as 1/3 in float32)."""


@dataclass(frozen=True)
class TensorFactors:
    """How one grown tensor relates to its source: each clone entry holds ``a`` times
    its source entry, ``c`` clone entries share a source entry, and the gradient
    scales by ``b = 1 / (c a)``.  ``a == 0``: an inserted layer's zeroed writer.
    ``inexact``: why this tensor cannot follow the source exactly ('' when it can)."""

    name: str
    source: str
    a: float
    b: float
    c: float
    inserted: bool = False
    inexact: str = ""


@dataclass
class GrownState:
    """What ``grow_state`` returns: the grown ``EngineState``, the grown run's AdamW
    (the source's with the growth's multipliers folded in), the per-tensor factors,
    and the reasons the grown run cannot follow the source exactly (empty: it can)."""

    state: EngineState
    optimizer: AdamW
    factors: dict = field(default_factory=dict)
    inexact: tuple = ()


def _linear(tp):
    """The program's linear part on a tensor of ones: the per-entry factor ``a``."""
    ops = tuple(op for op in tp.ops if isinstance(op, (Take, Reshape, Scale)))
    return dataclasses.replace(tp, ops=ops)


def _gather(tp):
    ops = tuple(op for op in tp.ops if isinstance(op, (Take, Reshape)))
    return dataclasses.replace(tp, ops=ops)


def _index(plan: Plan, tp) -> np.ndarray:
    """Flat source index of every clone entry (the program's gathers on an arange)."""
    src = np.arange(int(np.prod(tp.source_shape)), dtype=np.float64).reshape(tp.source_shape)
    return np.rint(expand_tensor(_gather(tp), plan.arrays, src)).astype(np.int64).reshape(-1)


def _inserted_names(plan: Plan) -> set:
    """Tensors of the layers depth growth inserted."""
    lmap = layer_map(plan.source_decoder.layers, plan.decoder.layers)
    return {n for n, (_, i, _) in tensor_names(plan.spec, plan.decoder).items() if i is not None and lmap[i][1]}


def tensor_factors(plan: Plan) -> dict:
    """``TensorFactors`` of every tensor of ``plan``, by destination name."""
    inserted = _inserted_names(plan)
    per_source: dict = {}
    for tp in plan.tensors:
        if tp.name not in inserted:
            per_source.setdefault(tp.source, []).append(tp.name)
    out = {}
    for tp in plan.tensors:
        idx = _index(plan, tp)
        a_e = np.asarray(expand_tensor(_linear(tp), plan.arrays, np.ones(tp.source_shape, np.float64)),
                         np.float64).reshape(-1)
        n_src = int(np.prod(tp.source_shape))
        c_src = np.bincount(idx, minlength=n_src).astype(np.float64)
        a_src = np.bincount(idx, weights=a_e, minlength=n_src) / np.maximum(c_src, 1)  # mean over copies
        seen = c_src > 0
        a, c = float(np.mean(a_src[seen])), float(np.mean(c_src[seen]))
        why = []
        if not np.allclose(a_e, a_e[0], rtol=UNIFORM_RTOL, atol=0) and tp.name not in inserted:
            if np.allclose(a_src[seen], a, rtol=UNIFORM_RTOL, atol=0):
                why.append(f"asymmetric mixing ({tp.strategy}): copies hold different shares, so their gradients "
                           "differ and the copies part by design")
            else:
                why.append("uneven growth: entries hold different shares "
                           f"({np.min(a_src[seen]):.4g} to {np.max(a_src[seen]):.4g}), a per-tensor LR cannot match all")
        if not np.all(c_src[seen] == c_src[seen][0]) and tp.name not in inserted:
            why.append("uneven growth: source entries have different copy counts, a per-tensor clip weight "
                       "cannot match all")
        if len(per_source.get(tp.source, ())) > 1:
            why.append(f"untied from {tp.source}: the source's one tensor served two uses, whose Adam second "
                       "moment (of the summed gradient) cannot be split between the clone's two tensors")
        if not seen.all():
            why.append("the plan drops source entries")
        b = 1.0 / (c * a) if a != 0.0 else 0.0
        out[tp.name] = TensorFactors(tp.name, tp.source, a, b, c, tp.name in inserted, "; ".join(why))
    return out


def grow_optimizer(plan: Plan, source: AdamW, factors: Optional[Mapping[str, TensorFactors]] = None,
                   shapes: Optional[Mapping] = None, inserted_lr: float = 1.0) -> AdamW:
    """The grown run's AdamW: the source's hyper-parameters, its per-tensor maps carried
    to the clone's tensors, times the growth's (LR ``a``, eps ``b``, decay ``1/a``, clip
    weight ``1/(b^2 c)``).  Inserted layers train at ``inserted_lr`` times the LR with
    the source layer's eps and decay; frozen (``inserted_lr`` 0) they weigh 0 in the
    clip norm, so the rest clips as the source does."""
    from .optim import decay_mask

    factors = tensor_factors(plan) if factors is None else factors
    shapes = {tp.name: tp.shape for tp in plan.tensors} if shapes is None else shapes
    lr, eps, wd, clip = {}, {}, {}, {}
    for n, f in factors.items():
        s = f.source
        if f.inserted:
            lr_n, eps_n, wd_n = source.mult(s) * inserted_lr, _get(source.eps_mult, s), _get(source.wd_mult, s)
            clip_n = _get(source.clip_weight, s) if inserted_lr else 0.0
        else:
            lr_n = source.mult(s) * f.a
            eps_n = _get(source.eps_mult, s) * f.b
            wd_n = _get(source.wd_mult, s) / f.a
            clip_n = _get(source.clip_weight, s) / (f.b * f.b * f.c)
        for table, v in ((lr, lr_n), (eps, eps_n), (wd, wd_n), (clip, clip_n)):
            if v != 1.0:
                table[n] = float(v)
    # a grown tensor decays as its source did (the source's mask may not be decay_mask's: a user's own groups)
    decay = frozenset(n for n, f in factors.items() if f.source in source.decay) if source.decay else \
        decay_mask(shapes)
    return dataclasses.replace(source, decay=decay, lr_mult=lr, eps_mult=eps, wd_mult=wd, clip_weight=clip)


def _get(table: Mapping[str, float], name: str) -> float:
    return float(table.get(name, 1.0))


def grow_state(plan: Plan, state: EngineState, optimizer: AdamW, moments: str = "carry",
               inserted_lr: float = 1.0) -> GrownState:
    """Grow a run's whole training state with ``plan``: the parameters through the
    plan's programs (noise and all, float32), the moments through the same gathers
    without noise, scaled per entry as the clone's gradients scale (``b`` and ``b^2``),
    the AdamW step kept; inserted layers start with zero moments.  ``optimizer`` is
    the source run's AdamW; the grown run must use ``GrownState.optimizer``."""
    if moments not in MOMENTS:
        raise ConfigError(f"moments {moments!r}: use one of {', '.join(MOMENTS)}")
    if inserted_lr < 0:
        raise ConfigError(f"inserted_lr must be >= 0 (got {inserted_lr})")
    missing = sorted(plan.sources() - set(state.params))
    if missing:
        raise ConfigError(f"the training state lacks the plan's source tensors {missing[:6]}; grow the state of "
                          "the run the plan was made for")
    factors = tensor_factors(plan)
    params = {n: np.asarray(w, np.float32) for n, w in execute(plan, {s: np.asarray(state.params[s], np.float32)
                                                                      for s in plan.sources()}).items()}
    m, v = {}, {}
    for tp in plan.tensors:
        f = factors[tp.name]
        if moments == "reset" or f.inserted or f.a == 0.0:
            m[tp.name] = np.zeros(tp.shape, np.float32)
            v[tp.name] = np.zeros(tp.shape, np.float32)
            continue
        idx = _index(plan, tp)
        a_e = np.asarray(expand_tensor(_linear(tp), plan.arrays, np.ones(tp.source_shape, np.float64)),
                         np.float64).reshape(-1)
        n_src = int(np.prod(tp.source_shape))
        total = np.bincount(idx, weights=a_e, minlength=n_src)  # c a per source entry
        b_e = np.divide(1.0, total[idx], out=np.zeros_like(a_e), where=total[idx] != 0)
        if moments == "asymmetric":
            keep = np.zeros(idx.size, bool)
            keep[np.unique(idx, return_index=True)[1]] = True  # the first copy of each source entry
            b_e = np.where(keep, b_e, 0.0)
        src_m = np.asarray(state.exp_avg[tp.source], np.float64).reshape(-1)
        src_v = np.asarray(state.exp_avg_sq[tp.source], np.float64).reshape(-1)
        m[tp.name] = (b_e * src_m[idx]).astype(np.float32).reshape(tp.shape)
        v[tp.name] = (b_e * b_e * src_v[idx]).astype(np.float32).reshape(tp.shape)
    step = 0 if moments == "reset" else int(state.adam_step)
    opt = grow_optimizer(plan, optimizer, factors, {n: p.shape for n, p in params.items()}, inserted_lr)
    inexact = sorted(f"{f.name}: {f.inexact}" for f in factors.values() if f.inexact)
    if inserted_lr and any(f.inserted for f in factors.values()):
        inexact.append("inserted layers: the source has none, so once their zeroed writers train (inserted_lr "
                       f"{inserted_lr:g}) the clone leaves the source's trajectory; 0 freezes them and keeps it")
    if not plan.exact:
        inexact += [f"the plan itself: {why}" for why in (plan.certificate.inexact if plan.certificate else ())]
    noisy = sorted(tp.name for tp in plan.tensors if any(isinstance(op, AddNoise) for op in tp.ops))
    if noisy:
        inexact.append(f"noise on {len(noisy)} tensors: the copies differ, so their gradients do (a symmetry breaker)")
    if moments != "carry":
        inexact.append(f"moments {moments!r}: the copies do not carry the source's optimizer state")
    return GrownState(EngineState(params, m, v, step), opt, factors, tuple(inexact))


# ---------------------------------------------------------------- growing a live run

PLAN_KEYS = ("width", "ffn", "ffn_size", "heads", "kv_heads", "layers", "strategy", "layout", "seed", "inexact",
             "untie")
"""Growth options that make the plan (``options.plan_growth``'s, ``expand``'s flags)."""
STATE_KEYS = ("moments", "inserted_lr")
"""Growth options that say how the training state crosses the growth (``grow_state``'s)."""
GROW_KEYS = PLAN_KEYS + STATE_KEYS


def _option(what: str, key: str, value: str):
    """One growth option's value, checked by the CLI's own validators (``model.validate``)."""
    from ..model import validate

    label = f"{what} {key}"
    if key in ("width", "ffn", "heads", "kv_heads"):
        return validate.finite(label, value, 0.0, validate.MAX_RATIO, lo_open=True)
    if key == "ffn_size":
        return validate.integer(label, value, 1, validate.MAX_DIM)
    if key == "layers":
        try:
            return validate.depth(value)
        except UsageError as exc:
            raise UsageError(str(exc).replace("--layers", label)) from None
    if key == "seed":
        return validate.integer(label, value, 0, 2**63 - 1)
    if key == "inserted_lr":
        return validate.finite(label, value, 0.0)
    if key in ("inexact", "untie"):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UsageError(f"{label} {value!r}: use true or false")
        return value.lower() in ("true", "1", "yes")
    if key == "layout" and value not in ("tile", "interleave"):
        raise UsageError(f"{label} {value!r}: use tile or interleave")
    if key == "moments" and value not in MOMENTS:
        raise UsageError(f"{label} {value!r}: use one of {', '.join(MOMENTS)}")
    if key == "strategy":
        from ..algebra.strategy import parse

        try:
            parse(value)
        except (HypercloneError, ValueError) as exc:
            raise UsageError(f"{label} {value!r}: {exc}") from None
    if not value:
        raise UsageError(f"{label}: empty value")
    return value


def parse_growth(text: str, what: str = "--grow") -> dict:
    """Growth options from their text, ``"width=2,ffn=2,layers=+2,strategy=noisy:10,
    moments=asymmetric"`` -> ``{"width": 2.0, ...}``: keys are ``GROW_KEYS`` (``-`` or
    ``_``: ``kv-heads`` is ``kv_heads``), each value checked as ``expand``'s flag is.  A
    strategy of several rules keeps its commas: after ``strategy=``, a part whose key is
    not a growth key (``attn=symmetric``) continues the strategy.  ``what`` names the
    option in errors."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"{what}: empty growth options; give e.g. width=2 or width=2,layers=+2")
    raw: dict = {}
    last = None
    for part in text.split(","):
        part = part.strip()
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if last == "strategy" and eq and key not in GROW_KEYS:
            raw["strategy"] += "," + part  # the next rule of a per-role strategy
            continue
        if not eq or not key:
            raise UsageError(f"{what} {text!r}: {part!r} is not KEY=VALUE; keys: {', '.join(GROW_KEYS)}")
        if key not in GROW_KEYS:
            raise UsageError(f"{what} {text!r}: unknown key {key!r}; keys: {', '.join(GROW_KEYS)}")
        if key in raw:
            raise UsageError(f"{what} {text!r}: {key} given twice")
        raw[key], last = value.strip(), key
    if "ffn" in raw and "ffn_size" in raw:
        raise UsageError(f"{what} {text!r}: give ffn or ffn_size, not both")
    return {k: _option(what, k, v) for k, v in raw.items()}


def format_growth_options(options: Mapping[str, Any]) -> str:
    """The text ``parse_growth`` reads back to ``options``."""
    def show(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    return ",".join(f"{k}={show(v)}" for k, v in options.items() if v is not None)


@dataclass
class GrownRun:
    """A live run after ``grow_engine``: the new engine (the old one is closed), the plan
    (the run's plan from now on: the symmetry monitor's), the AdamW the grown run must
    use (checkpoints keep it), the grown HF config, and ``grow_state``'s result (the
    factors and the reasons a clone cannot follow the source exactly)."""

    engine: Any
    plan: Plan
    optimizer: AdamW
    hf_config: dict
    grown: GrownState


def split_growth(options: Mapping[str, Any]) -> tuple:
    """(plan options, state options) of a growth-options mapping; unknown keys refused."""
    unknown = sorted(set(options) - set(GROW_KEYS))
    if unknown:
        raise UsageError(f"growth options {unknown}: unknown; keys: {', '.join(GROW_KEYS)}")
    return ({k: v for k, v in options.items() if k in PLAN_KEYS and v is not None},
            {k: v for k, v in options.items() if k in STATE_KEYS and v is not None})


def engine_factory(backend):
    """``backend.engine`` of a backend object, or ``backend`` itself when it is already
    that callable ``(hf_config, weights, config, optimizer) -> Engine``."""
    if hasattr(backend, "engine"):
        return backend.engine
    if callable(backend):
        return backend
    raise ConfigError(f"{backend!r} is neither a backend with .engine nor an engine factory")


def plan_for(hf_config: Mapping[str, Any], options: Mapping[str, Any], seed: int = 0,
             where: str = "the run's model") -> Plan:
    """The plan growth ``options`` make for a model of ``hf_config`` (``seed``: the
    noise and random-split draws' unless the options give one): a pure function of
    the config, so a resumed run re-derives the plans of its past growths."""
    from ..algebra.options import plan_growth

    plan_opts, _ = split_growth(options)
    plan_opts.setdefault("seed", seed)
    return plan_growth(dict(hf_config), where=where, **plan_opts)


def sizes_of(decoder) -> dict:
    """A model's sizes in the config's words, for a growth event's record."""
    return {k: int(getattr(decoder, k)) for k in ("hidden", "ffn", "heads", "kv_heads", "layers")}


def plan_shapes(plan: Plan) -> dict:
    return {tp.name: tuple(int(d) for d in tp.shape) for tp in plan.tensors}


def grow_engine(engine, backend, options: Mapping[str, Any], config, optimizer: AdamW, *, moments: str = "carry",
                seed: int = 0, where: str = "the run's model") -> GrownRun:
    """Grow a live run on any backend that trains: export the engine's whole state, plan
    the growth of its model with ``options`` (``parse_growth``'s keys; ``moments`` and
    ``seed`` there win over the arguments), grow the state (``grow_state``), close the
    old engine and build the grown one with ``backend.engine(plan.config, params,
    config, optimizer)`` (``backend``: a backend object, or that callable itself),
    then import the grown state.  On every rank alike (export is collective; the plan
    is a pure function of the config, the options and the seed)."""
    _, state_opts = split_growth(options)
    state = engine.export_state()
    plan = plan_for(engine.config, options, seed, where)
    grown = grow_state(plan, state, optimizer, moments=state_opts.get("moments", moments),
                       inserted_lr=float(state_opts.get("inserted_lr", 1.0)))
    del state
    engine.close()
    hf = dict(plan.config)
    new = engine_factory(backend)(hf, grown.state.params, config, grown.optimizer)
    new.import_state(grown.state)
    return GrownRun(new, plan, grown.optimizer, hf, grown)


__all__ = ["GROW_KEYS", "GrownRun", "GrownState", "MOMENTS", "TensorFactors", "engine_factory", "format_growth_options",
           "grow_engine", "grow_optimizer", "grow_state", "parse_growth", "plan_for", "plan_shapes", "sizes_of",
           "split_growth", "tensor_factors"]
