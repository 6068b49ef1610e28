"""The jax engine for the core trainer: optax AdamW configured to the core's closed
form, jitted steps with donated buffers, micro-batch accumulation, bfloat16
compute over float32 masters, and sharding over a Mesh.

The policy -- schedule, accumulation cadence, clipping rule, clone-aware LRs,
decay mask, evaluation, checkpoints -- is ``hyperclone_core.train``'s; this file
runs steps and moves state to and from numpy.  A step is one executable
(``_step``: loss and gradients scanned over the micro-batches, clip, AdamW, the
non-finite guard; parameters and optimizer state donated); ``gradients`` and
``evaluate`` have their own.  All are module-level jits keyed by a hashable
``StepSpec``, so engines of the same model and optimizer share executables.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperclone_core.errors import ConfigError
from hyperclone_core.model.families import FAMILIES, family_for_config
from hyperclone_core.model.spec import DecoderConfig
from hyperclone_core.model.structure import slots
from hyperclone_core.train import AdamW, EngineState, StepResult, TrainConfig, TrainError, check_state, fixed_threads
from hyperclone_core.train.optim import CLIP_EPS
from hyperclone_core.train.threads import available_cores

from . import distributed as D
from .model import OPS, JaxOps, compute_dtype, lm_loss
from .ops import QUICK_COMPILE, device_of

PARALLEL = ("none", "mesh")


@dataclass(frozen=True)
class StepSpec:
    """What a compiled step depends on besides array values (jit's static key)."""

    family: str
    cfg: DecoderConfig
    names: tuple
    dtype: str
    betas: tuple
    eps: float
    weight_decay: float
    grad_clip: float
    decay: tuple
    mult: tuple
    mesh: Any = None
    specs: tuple = ()
    eps_mult: tuple = ()
    wd_mult: tuple = ()
    clip_weight: tuple = ()

    def tree(self, values) -> dict:
        return dict(zip(self.names, values))


# ---------------------------------------------------------------- the optimizer


def global_norm(grads: dict, weights: Optional[Mapping[str, float]] = None):
    """``optim.global_norm``: with ``weights`` (``AdamW.clip_weight``), each tensor's
    square sum weighted (a grown clone's source-equivalent norm)."""
    if not weights:
        return optax.tree.norm(grads)
    return jnp.sqrt(sum(weights[n] * jnp.sum(jnp.square(g.astype(jnp.float32))) for n, g in grads.items()))


def clip_by_global_norm(clip: float, weights: Optional[Mapping[str, float]] = None) -> optax.GradientTransformation:
    """The core's clip rule (``optim.clip_coefficient``): scale by min(1, clip / (norm +
    CLIP_EPS)); off for clip <= 0 or a non-finite norm.  optax's own clip omits the
    epsilon."""

    def update(updates, state, params=None):
        if clip <= 0:
            return updates, state
        norm = global_norm(updates, weights)
        coef = jnp.where(jnp.isfinite(norm), jnp.minimum(1.0, clip / (norm + CLIP_EPS)), 1.0)
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_tensor(mult: Mapping[str, float]) -> optax.GradientTransformation:
    """Per-tensor LR multipliers (clone-aware LRs): each update times its tensor's factor."""

    def update(updates, state, params=None):
        return {n: u * mult[n] if mult[n] != 1.0 else u for n, u in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_adam_per_tensor(b1: float, b2: float, eps: Mapping[str, float]) -> optax.GradientTransformation:
    """optax's Adam with a per-tensor eps (``AdamW.eps_mult``): optax's own moment
    updates and bias corrections, ``m_hat / (sqrt(v_hat) + eps[n])`` per tensor."""
    inner = optax.scale_by_adam(b1=b1, b2=b2, eps=0.0)

    def update(updates, state, params=None):
        _, new = inner.update(updates, state)
        mu_hat = optax.tree.bias_correction(new.mu, b1, new.count)
        nu_hat = optax.tree.bias_correction(new.nu, b2, new.count)
        return {n: mu_hat[n] / (jnp.sqrt(nu_hat[n]) + eps[n]) for n in updates}, new

    return optax.GradientTransformation(inner.init, update)


def decayed_weights_per_tensor(wd: Mapping[str, float]) -> optax.GradientTransformation:
    """Decoupled decay ``u + wd[n] p`` with a per-tensor rate (``AdamW.wd_mult``; 0: none)."""

    def update(updates, state, params=None):
        return {n: u + wd[n] * params[n] if wd[n] else u for n, u in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def adamw(spec: StepSpec, lr) -> optax.GradientTransformation:
    """``optim.AdamW`` as optax: clip, Adam moments with the core's betas/eps, decoupled
    decay on the decay set, the tensor's multiplier, then -lr.  The closed form's
    p(1 - lr_n wd) - lr_n adam equals optax's p - lr_n (adam + wd p).  A grown run's
    per-tensor eps, decay and clip weights take the per-tensor transforms; without
    them the chain is optax's own, as before."""
    b1, b2 = spec.betas
    adam = (scale_by_adam_per_tensor(b1, b2, spec.tree(spec.eps * m for m in spec.eps_mult)) if spec.eps_mult
            else optax.scale_by_adam(b1=b1, b2=b2, eps=spec.eps))
    decay = (decayed_weights_per_tensor(spec.tree(spec.weight_decay * m if d else 0.0
                                                  for m, d in zip(spec.wd_mult, spec.decay))) if spec.wd_mult
             else optax.add_decayed_weights(spec.weight_decay, mask=spec.tree(spec.decay)))
    return optax.chain(
        clip_by_global_norm(spec.grad_clip, spec.tree(spec.clip_weight) if spec.clip_weight else None),
        adam,
        decay,
        scale_by_tensor(spec.tree(spec.mult)),
        optax.scale_by_learning_rate(lr),
    )


def _growth_maps(optimizer: AdamW, names) -> tuple:
    """(eps_mult, wd_mult, clip_weight) per name for ``StepSpec``; () where the map is empty."""
    return tuple(tuple(float(getattr(optimizer, k).get(n, 1.0)) for n in names) if getattr(optimizer, k) else ()
                 for k in ("eps_mult", "wd_mult", "clip_weight"))


# ---------------------------------------------------------------- the compiled pieces


def _constrain(spec: StepSpec, tree: dict) -> dict:
    if spec.mesh is None:
        return tree
    shard = dict(zip(spec.names, spec.specs))
    return {n: jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(spec.mesh, shard[n]))
            for n, x in tree.items()}


def _ops(spec: StepSpec) -> JaxOps:
    if spec.mesh is None:
        return OPS
    return JaxOps(jax.sharding.NamedSharding(spec.mesh, jax.sharding.PartitionSpec(D.BATCH_AXES)))


def _loss_of(spec: StepSpec):
    family, ops = FAMILIES[spec.family], _ops(spec)
    dt = None if spec.dtype == "float32" else compute_dtype(spec.dtype)
    return lambda p, b: lm_loss(family, spec.cfg, p, b, dt, ops)


def _grads(spec: StepSpec, params: dict, batches):
    """Mean loss and mean gradient over the micro-batches (n, B, T+1)."""
    grad = jax.value_and_grad(_loss_of(spec))
    n = batches.shape[0]
    if n == 1:
        loss, g = grad(params, batches[0])
    else:
        def body(carry, b):
            l_b, g_b = grad(params, b)
            return (carry[0] + l_b, jax.tree.map(jnp.add, carry[1], g_b)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (loss, g), _ = jax.lax.scan(body, zeros, batches)
        loss, g = loss / n, jax.tree.map(lambda x: x / n, g)
    return loss, _constrain(spec, g)


def _update(spec: StepSpec, params: dict, state, grads: dict, loss, lr):
    """Clip, AdamW at ``lr``; parameters and state unchanged unless loss and gradient are finite."""
    norm = global_norm(grads, spec.tree(spec.clip_weight) if spec.clip_weight else None)
    updates, new_state = adamw(spec, lr).update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(norm)
    keep = lambda new, old: jnp.where(ok, new, old)
    return (_constrain(spec, jax.tree.map(keep, new_params, params)), jax.tree.map(keep, new_state, state), norm, ok)


def _step(spec: StepSpec, params: dict, state, batches, lr):
    loss, grads = _grads(spec, params, batches)
    return (loss,) + _update(spec, params, state, grads, loss, lr)


def _init(spec: StepSpec, params: dict):
    state = adamw(spec, 0.0).init(params)
    return optax.tree_utils.tree_set(state, mu=_constrain(spec, optax.tree_utils.tree_get(state, "mu")),
                                     nu=_constrain(spec, optax.tree_utils.tree_get(state, "nu")))


def _loss(spec: StepSpec, params: dict, batches):
    return _loss_of(spec)(params, batches[0])


def _jits(options: Optional[dict]) -> dict:
    kw = {"compiler_options": options} if options else {}
    return {"step": jax.jit(_step, static_argnums=0, donate_argnums=(1, 2), **kw),
            "grads": jax.jit(_grads, static_argnums=0, **kw),
            "init": jax.jit(_init, static_argnums=0, **kw),
            "loss": jax.jit(_loss, static_argnums=0, **kw)}


QUICK_RUN_WORK = 2e9
"""Runs whose steps x tokens per step x parameters stay below this compile with XLA's
backend optimizations off (``QUICK_COMPILE``): there compiling (seconds) outweighs the
whole run, while an unoptimized step is ~3x slower, which a longer run would feel."""
_COMPILED = {"quick": _jits(QUICK_COMPILE), "full": _jits(None)}


# ---------------------------------------------------------------- placement


@dataclass
class Placement:
    """Where the engine's arrays live: one device, or a mesh (then per-tensor specs)."""

    device: Any = None
    mesh: Any = None

    @classmethod
    def of(cls, config: TrainConfig, rules=None) -> "Placement":
        D.initialize_multihost()
        parallel = config.parallel or "none"
        if parallel not in PARALLEL:
            raise ConfigError(f"--parallel {parallel!r}: the jax backend shards over a mesh: use --parallel mesh "
                              "with --mesh data=N,fsdp=N,tensor=N (or --parallel none); ddp/fsdp are torch's modes")
        platform = None if config.device in ("auto", "", None) else device_of(config.device).platform
        devices = jax.devices(platform) if platform else jax.devices()
        if parallel == "mesh" or config.mesh:
            text = config.mesh or f"data={len(devices)}"
            return cls(mesh=D.make_mesh(D.parse_mesh(text), devices))
        if jax.process_count() > 1:
            raise ConfigError("a multi-host run needs --parallel mesh and --mesh (the processes share one mesh)")
        return cls(device=device_of(config.device))

    def sharding(self, kind: str, shape: tuple, rules=None):
        if self.mesh is None:
            return self.device
        return D.sharding_for(kind, shape, self.mesh, rules)

    def spec(self, kind: str, shape: tuple, rules=None):
        return None if self.mesh is None else D.spec_for(kind, shape, self.mesh, rules)


class JaxEngine:
    """One model trained by jax (see ``hyperclone_core.train.Engine``)."""

    backend = "jax"

    def __init__(self, hf_config: Mapping[str, Any], weights: Mapping[str, Any], config: TrainConfig,
                 optimizer: AdamW, rules: Optional[Mapping[str, Any]] = None):
        self.config = dict(hf_config)
        family = family_for_config(self.config)
        cfg = family.read(self.config)
        stored = slots(family, cfg)
        missing = [n for n in stored if n not in weights]
        if missing:
            raise TrainError(f"the weights lack tensors the {family.name} config implies: {', '.join(missing[:6])}")
        self.names = list(stored)
        self.shapes = {n: tuple(stored[n].shape) for n in self.names}
        D.initialize_multihost()  # before jax starts, as start_threads may start it
        start_threads(config.threads)
        self.where = Placement.of(config, rules)
        self.rank, self.world = (jax.process_index(), jax.process_count())
        self._shardings = {n: self.where.sharding(stored[n].kind, self.shapes[n], rules) for n in self.names}
        specs = tuple(self.where.spec(stored[n].kind, self.shapes[n], rules) for n in self.names)
        self.spec = StepSpec(family.name, cfg, tuple(self.names), config.dtype, tuple(optimizer.betas),
                             float(optimizer.eps), float(optimizer.weight_decay), float(optimizer.grad_clip),
                             tuple(n in optimizer.decay for n in self.names),
                             tuple(optimizer.mult(n) for n in self.names), self.where.mesh,
                             specs if self.where.mesh is not None else (),
                             *_growth_maps(optimizer, self.names))
        work = config.steps * config.batch_size * config.seq_len * sum(math.prod(s) for s in self.shapes.values())
        self._jit = _COMPILED["quick" if work < QUICK_RUN_WORK else "full"]
        self._params = {n: self._put(np.asarray(weights[n], np.float32), n) for n in self.names}
        self._state = self._jit["init"](self.spec, self._params)

    # ------------------------------------------------------------ placement
    def _put(self, host: np.ndarray, name: str) -> jax.Array:
        """A private float32 copy of ``host`` on the tensor's device(s): the caller's array
        is never aliased (donation would write into it)."""
        private = np.array(host, dtype=np.float32, copy=True)
        where = self._shardings[name]
        return D.place(private, where) if self.where.mesh is not None else jax.device_put(private, where)

    def _batches(self, micro: Sequence[np.ndarray]) -> jax.Array:
        """The micro-batches as one (n, rows, T+1) array on the device(s), rows split over
        data x fsdp on a mesh."""
        rows = [np.asarray(b) for b in micro]
        if len({r.shape for r in rows}) != 1:
            raise TrainError(f"micro-batches must all have one shape, got {sorted({r.shape for r in rows})}")
        stack = np.stack(rows).astype(np.int32)
        mesh = self.where.mesh
        if mesh is None:
            return jax.device_put(stack, self.where.device)
        ways, per = D.batch_ways(mesh), stack.shape[1] * self.world
        if per % ways:
            raise TrainError(f"micro-batches of {per} sequences cannot be split over data x fsdp = {ways} devices "
                             f"of the mesh; make --batch-size / --grad-accum a multiple of {ways}")
        sharding = D.batch_sharding(mesh)
        if self.world > 1:
            return jax.make_array_from_process_local_data(sharding, stack)
        return jax.device_put(stack, sharding)

    # ------------------------------------------------------------ steps
    def step(self, micro_batches: Sequence[np.ndarray], lr: float) -> StepResult:
        loss, self._params, self._state, norm, ok = self._jit["step"](self.spec, self._params, self._state,
                                                          self._batches(micro_batches), jnp.float32(lr))
        return StepResult(float(loss), float(norm), bool(ok))

    def gradients(self, micro_batches: Sequence[np.ndarray]) -> dict:
        _, grads = self._jit["grads"](self.spec, self._params, self._batches(micro_batches))
        return {n: D.process_allgather(grads[n]).astype(np.float32) for n in self.names}

    def evaluate(self, batches: Sequence[np.ndarray]) -> float:
        losses = [float(self._jit["loss"](self.spec, self._params, self._batches([b]))) for b in batches]
        return float(np.mean(losses))

    # ------------------------------------------------------------ state
    def params(self, names: Optional[Sequence[str]] = None) -> dict:
        return {n: np.array(D.process_allgather(self._params[n]), np.float32) for n in (names or self.names)}

    def export_state(self) -> EngineState:
        get = optax.tree_utils.tree_get
        mu, nu = get(self._state, "mu"), get(self._state, "nu")
        return EngineState(self.params(), {n: np.array(D.process_allgather(mu[n]), np.float32) for n in self.names},
                           {n: np.array(D.process_allgather(nu[n]), np.float32) for n in self.names},
                           int(get(self._state, "count")))

    def import_state(self, state: EngineState) -> None:
        check_state(state, self.names, self.shapes)
        self._params = {n: self._put(state.params[n], n) for n in self.names}
        fresh = self._jit["init"](self.spec, self._params)
        if state.adam_step == 0:
            self._state = fresh
            return
        self._state = optax.tree_utils.tree_set(
            fresh, mu={n: self._put(state.exp_avg[n], n) for n in self.names},
            nu={n: self._put(state.exp_avg_sq[n], n) for n in self.names},
            count=jnp.asarray(state.adam_step, jnp.int32))

    def barrier(self) -> None:
        D.barrier()

    def close(self) -> None:
        self._params, self._state = {}, None


# ---------------------------------------------------------------- threads


_STARTED_THREADS: Optional[int] = None
"""The CPU pool size jax was started with by ``start_threads`` (None: started elsewhere
or not yet, where the pool has one thread per CPU the process could use)."""


def start_threads(asked: int) -> None:
    """``TrainConfig.threads`` on jax.  XLA's CPU client sizes its thread pool once, when
    jax starts, to the CPUs the process may run on then (no flag or option changes it:
    ``xla_cpu_multi_thread_eigen`` off, per executable or in XLA_FLAGS, still ran the
    work on the pool).  So a count is honoured by starting jax with this thread's CPU
    affinity narrowed to that many CPUs, every thread's affinity restored once the
    client stands (the pool keeps its size, its threads run on any CPU); once jax has
    started, only its count is accepted (``fixed_threads``'s usage error).  0: jax's
    own pool.  No set_threads hook: the loop cannot tune what cannot change."""
    global _STARTED_THREADS
    cores = available_cores()
    if _backends_started():
        fixed_threads("jax", asked, _STARTED_THREADS or cores,
                      "jax sizes its CPU thread pool once, when it starts, and it has started in this process")
        return
    if not asked or asked == cores:
        return
    if asked > cores or not hasattr(os, "sched_setaffinity") or not os.path.isdir("/proc/self/task"):
        fixed_threads("jax", asked, cores, f"jax's CPU pool has one thread per CPU this process may use ({cores})")
    allowed = os.sched_getaffinity(0)
    narrow = set(sorted(allowed)[:asked])
    os.sched_setaffinity(0, narrow)
    try:
        jax.devices()  # starts the clients: the CPU pool gets `asked` threads
        _STARTED_THREADS = asked
    finally:
        for tid in os.listdir("/proc/self/task"):  # the pool's threads inherited the narrow mask
            try:
                if os.sched_getaffinity(int(tid)) == narrow:
                    os.sched_setaffinity(int(tid), allowed)
            except OSError:  # a thread that has ended
                pass
        os.sched_setaffinity(0, allowed)


def _backends_started() -> bool:
    from jax._src import xla_bridge  # no public spelling of "has jax started its clients"

    return xla_bridge.backends_are_initialized()


__all__ = ["JaxEngine", "Placement", "StepSpec", "adamw", "clip_by_global_norm",
           "scale_by_tensor", "start_threads"]
