"""Params pytrees keyed by Hugging Face names: read and write HF folders, and grow
them -- on one device, or straight into a sharded layout on a Mesh.

A pytree here is a flat dict ``{"model.layers.0.self_attn.q_proj.weight": array}``
with the checkpoint's names, the layout ``transformers`` and every hyperclone
backend read, so a folder written here loads in ``transformers`` as is.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import NamedSharding, PartitionSpec

from hyperclone_core.run.interpreter import run_program
from hyperclone_core.algebra.options import plan_growth
from hyperclone_core.io import Checkpoint
from hyperclone_core.model.structure import slots
from hyperclone_core.model.validate import read_model

from . import blocks
from . import distributed as D
from .backend import JaxBackend
from .ops import JaxArrays, jax_dtype

_ARRAYS = JaxArrays()


def load_pretrained(folder, dtype: Optional[str] = None, mesh=None, rules: Optional[Mapping[str, Any]] = None) -> tuple:
    """(config dict, params) of an HF checkpoint folder (safetensors only).  Tensors keep
    their stored dtype unless ``dtype`` is given; with ``mesh`` each goes straight to
    the shards its role's rule names (no full copy per device)."""
    ck = Checkpoint(folder)
    family, cfg = read_model(ck.config, str(Path(folder) / "config.json"))
    ck.validate(family, cfg)
    kinds = {n: s.kind for n, s in slots(family, cfg).items()}
    out = {}
    for n in ck.names():
        if n not in kinds:
            continue
        where = D.sharding_for(kinds[n], ck.shape(n), mesh, rules) if mesh is not None else None
        x = _ARRAYS.from_stored(np.asarray(ck.raw(n)), ck.dtype(n), where)  # straight to its shards
        out[n] = x.astype(jax_dtype(dtype)) if dtype else x
    return dict(ck.config), out


def save_pretrained(folder, config: Mapping[str, Any], params: Mapping[str, Any], force: bool = False,
                    max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write ``params`` as an HF folder (``transformers`` loads it; bfloat16 stays bfloat16)."""
    config = dict(config)
    dtypes = {jnp.dtype(x.dtype).name for x in params.values()}
    if len(dtypes) == 1:
        config["torch_dtype"] = dtypes.pop()
    return _ARRAYS.save_checkpoint(folder, config, params, force=force, max_shard_bytes=max_shard_bytes)


def expand_params(params: Mapping[str, Any], config: Mapping[str, Any], *, width: float = 2,
                  ffn: Optional[float] = None, ffn_size: Optional[int] = None, heads: Optional[float] = None,
                  kv_heads: Optional[float] = None, layers: Any = None, strategy: Any = None, seed: int = 0,
                  layout: str = "tile", mesh=None, rules: Optional[Mapping[str, Any]] = None,
                  return_plan: bool = False, opt_state=None, adamw: Optional[Mapping[str, Any]] = None,
                  moments: str = "carry", inserted_lr: float = 1.0):
    """Grow a params pytree (HF names -> numpy or jax arrays) into one whose logits equal
    the source's; returns ``(params, config)`` (and the plan with ``return_plan``).

    ``opt_state``: the state of the ``optax.adamw`` training ``params`` (alone or chained
    behind ``optax.clip_by_global_norm``); its settings come from ``adamw`` (``optax.adamw``'s
    arguments plus ``grad_clip``, see ``grow.HYPERPARAMETERS``) or from an
    ``optax.inject_hyperparams(optax.adamw)`` state.  Then the result is ``(params,
    config, tx, opt_state)`` (plus the plan): continuing with ``tx`` follows the source
    run's own training (a symmetric clone's exactly; ``moments`` and ``inserted_lr`` as in
    ``train.grow.grow_state``).  With ``return_plan`` the plan follows, then the reasons
    the grown run cannot follow the source exactly (empty when it can).

    With ``mesh`` every grown tensor is produced by its device shards directly
    (``out_shardings`` of its compiled program) from a source each device holds the
    needed part of (``source_spec``), so the host never holds a grown tensor; ``rules``
    (role kind or glob -> PartitionSpec) override ``distributed.ROLE_AXES``.  The
    source is not modified."""
    p = plan_growth(dict(config), width=width, ffn=ffn, ffn_size=ffn_size, heads=heads, kv_heads=kv_heads,
                    layers=layers, strategy=strategy, seed=seed, layout=layout, where="config")
    missing = sorted(s for s in p.sources() if s not in params)
    if missing:
        raise KeyError(f"expand_params: params lack {', '.join(missing[:6])} (keys are the checkpoint's HF names)")
    bk = JaxBackend(mesh, rules)
    cache: dict = {}
    out = {}
    for k, tp in enumerate(p.tensors):
        x = params[tp.source]
        if mesh is not None:
            x = D.place(x, NamedSharding(mesh, source_spec(tp, bk.target(tp.kind, tuple(tp.shape)).spec)))
        elif not isinstance(x, jax.Array):
            x = jnp.asarray(np.asarray(x))
        y = run_program(bk, tp, p.arrays, x, None, cache)
        target = bk.target(tp.kind, tuple(tp.shape))
        if target is not None and not y.sharding.is_equivalent_to(target, y.ndim):
            y = jax.device_put(y, target)  # the interpreter's generic path (noise first) places nothing
        out[tp.name] = y.block_until_ready()  # one program in flight: its source copies are freed before the next
        del x
        if k % 8 == 7:
            _return_freed_memory()
    _return_freed_memory()
    if opt_state is not None:
        from .grow import grown_optax

        tx, state, inexact = grown_optax(params, opt_state, p, out, adamw=adamw, moments=moments,
                                         inserted_lr=inserted_lr)
        return (out, dict(p.config), tx, state, p, inexact) if return_plan else (out, dict(p.config), tx, state)
    if adamw is not None:
        raise TypeError("expand_params: adamw= describes the optimizer of opt_state=; pass both")
    return (out, dict(p.config), p) if return_plan else (out, dict(p.config))


def _return_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps the transient source copies'
    pages otherwise, and the host's peak grows with them); a no-op elsewhere."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def source_spec(tp, target: PartitionSpec) -> PartitionSpec:
    """Where ``tp``'s source goes (``blocks.source_spec``): every device then computes its
    shard of the grown tensor from what it holds, with no all-gather of the source."""
    return blocks.source_spec(tp.ops, tp.source_shape, tp.shape, target)


__all__ = ["expand_params", "load_pretrained", "save_pretrained", "source_spec"]
