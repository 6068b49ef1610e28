"""Meshes, sharding rules keyed by role, and multi-host start-up.

A mesh has three named axes: ``data`` (replicas that split the batch), ``fsdp``
(shards parameters and optimizer state, and also splits the batch) and
``tensor`` (shards heads, the ffn and the vocabulary).  Where each tensor goes
is a table keyed by the spec's role kinds (MaxText's logical axes): a role names
a *logical* axis per tensor dim (``vocab``, ``hidden``, ``heads``, ``ffn``), and
``LOGICAL`` maps logical axes to mesh axes.  Users override either table, or give
``rules`` -- role kind (or glob) -> ``PartitionSpec`` -- which wins over both.
A mesh axis that does not divide a dim is dropped for that tensor (the dim stays
whole), so every model runs on every mesh; ``spec_for`` says what was chosen.

Parallelism is applied to the model, not woven into it: the decoder maths never
sees a sharding; the engine places parameters and batches, and XLA's SPMD
partitioner inserts the collectives.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import sys
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hyperclone_core.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

ROLE_AXES: tuple = (
    ("embed", ("vocab", "hidden")),
    ("lm_head", ("vocab", "hidden")),
    ("pos_embed", (None, "hidden")),
    ("proj_in", ("hidden", None)),
    ("proj_out", (None, "hidden")),
    ("attn.o", ("hidden", "heads")),
    ("attn.o.bias", (None,)),
    ("attn.q_norm", (None,)),
    ("attn.k_norm", (None,)),
    ("attn.*.bias", ("heads",)),
    ("attn.*", ("heads", "hidden")),
    ("mlp.down", ("hidden", "ffn")),
    ("mlp.down.bias", (None,)),
    ("mlp.*.bias", ("ffn",)),
    ("mlp.*", ("ffn", "hidden")),
    ("moe.router", (None, "hidden")),
    ("moe.down", ("hidden", "ffn")),
    ("moe.*", ("ffn", "hidden")),
    ("norm.*", (None,)),
)
"""Role kind (exact, then glob, first match) -> logical axis per tensor dim.  Norm
gains and residual-stream biases stay whole (they are small and every shard reads them)."""

LOGICAL: dict = {"vocab": "tensor", "heads": "tensor", "ffn": "tensor", "hidden": "fsdp"}
"""Logical axis -> mesh axis (None: not sharded)."""


def parse_mesh(text: str, what: str = "--mesh") -> dict:
    """``"data=2,fsdp=2,tensor=2"`` -> {"data": 2, "fsdp": 2, "tensor": 2}; axes left out are 1."""
    sizes = dict.fromkeys(AXES, 1)
    for part in filter(None, (p.strip() for p in str(text or "").split(","))):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in AXES:
            raise ConfigError(f"{what} {text!r}: {part!r} is not AXIS=SIZE with AXIS one of {', '.join(AXES)} "
                              "(e.g. data=2,fsdp=2,tensor=2)")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ConfigError(f"{what} {text!r}: size {value!r} of axis {name} is not an integer") from None
        if sizes[name] < 1:
            raise ConfigError(f"{what} {text!r}: axis {name} must have size >= 1")
    return sizes


def make_mesh(sizes: Mapping[str, int], devices: Optional[Sequence] = None, what: str = "--mesh") -> Mesh:
    """A Mesh with axes (data, fsdp, tensor) over the first prod(sizes) of ``devices``."""
    devices = list(jax.devices() if devices is None else devices)
    need = math.prod(int(sizes.get(a, 1)) for a in AXES)
    if need > len(devices):
        shown = ",".join(f"{a}={sizes.get(a, 1)}" for a in AXES)
        raise ConfigError(
            f"{what} {shown} needs {need} devices; jax sees {len(devices)} ({devices[0].platform}). On a CPU, "
            f"simulate them with XLA_FLAGS=--xla_force_host_platform_device_count={need} set before jax is imported")
    grid = np.asarray(devices[:need], dtype=object).reshape([int(sizes.get(a, 1)) for a in AXES])
    return Mesh(grid, AXES)


def mesh_from(text: str, devices: Optional[Sequence] = None) -> Mesh:
    return make_mesh(parse_mesh(text), devices)


def role_axes(kind: str, ndim: int, table: Sequence = ROLE_AXES) -> tuple:
    """The logical axes of a tensor of role ``kind`` (exact match first, then globs)."""
    for pattern, names in table:
        if pattern == kind:
            return _fit(names, ndim)
    for pattern, names in table:
        if fnmatch.fnmatchcase(kind, pattern):
            return _fit(names, ndim)
    return (None,) * ndim


def _fit(names: tuple, ndim: int) -> tuple:
    return tuple(names[:ndim]) + (None,) * max(0, ndim - len(names))


def spec_for(kind: str, shape: Sequence[int], mesh: Mesh, rules: Optional[Mapping[str, Any]] = None,
             logical: Optional[Mapping[str, Any]] = None) -> PartitionSpec:
    """The PartitionSpec of a tensor of role ``kind`` and ``shape`` on ``mesh``.

    ``rules``: role kind or glob -> PartitionSpec (or a tuple of mesh axes per dim),
    checked before the defaults; ``logical`` overrides ``LOGICAL``.  Mesh axes that
    do not divide their dim are dropped, as are axes used twice."""
    want = _user_rule(kind, rules)
    if want is None:
        table = dict(LOGICAL, **(logical or {}))
        want = tuple(table.get(name) if name else None for name in role_axes(kind, len(shape)))
    want = _fit(tuple(want), len(shape))
    out, used = [], set()
    for dim, entry in zip(shape, want):
        axes = tuple(a for a in (entry if isinstance(entry, tuple) else (entry,)) if a is not None)
        for a in axes:
            if a not in mesh.shape:
                raise ConfigError(f"sharding rule for {kind}: mesh axis {a!r} is not one of {', '.join(mesh.axis_names)}")
        keep = []
        for a in axes:
            if a in used or int(dim) % (math.prod(mesh.shape[b] for b in keep) * mesh.shape[a]):
                continue
            keep.append(a)
        used.update(keep)
        out.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    while out and out[-1] is None:
        out.pop()
    return PartitionSpec(*out)


def _user_rule(kind: str, rules: Optional[Mapping[str, Any]]):
    if not rules:
        return None
    if kind in rules:
        return tuple(rules[kind])
    for pattern, spec in rules.items():
        if fnmatch.fnmatchcase(kind, pattern):
            return tuple(spec)
    return None


def sharding_for(kind: str, shape: Sequence[int], mesh: Mesh, rules=None, logical=None) -> NamedSharding:
    return NamedSharding(mesh, spec_for(kind, shape, mesh, rules, logical))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def place(x, sharding) -> jax.Array:
    """``x`` on ``sharding``: a device array is resharded on the devices; a host array is
    sliced on the host, each device of this process receiving only its part (on several
    hosts every process passes the same whole array)."""
    if isinstance(x, jax.Array):
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def batch_sharding(mesh: Mesh, leading: int = 1) -> NamedSharding:
    """Batches split over data x fsdp along the batch dim (after ``leading`` unsplit dims,
    e.g. the micro-batch index)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading), BATCH_AXES))


def batch_ways(mesh: Optional[Mesh]) -> int:
    return 1 if mesh is None else math.prod(mesh.shape[a] for a in BATCH_AXES)


# ---------------------------------------------------------------- several hosts


def initialize_multihost() -> bool:
    """Join a multi-host run when the environment describes one; True if it did.

    JAX_COORDINATOR_ADDRESS (host:port of process 0) turns it on; JAX_NUM_PROCESSES
    and JAX_PROCESS_ID give the run's size and this process's index (left out, jax
    finds them in SLURM / Open MPI / TPU pod settings).  Each process then sees every
    device of the run in ``jax.devices()`` and feeds its slice of each global batch.
    Not testable on one machine: see the README."""
    addr = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not addr:
        return False
    if jax.distributed.is_initialized():
        return True
    n, pid = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(addr, int(n) if n else None, int(pid) if pid else None)
    return True


def process_allgather(x) -> np.ndarray:
    """A whole (possibly multi-host sharded) array on this host."""
    if jax.process_count() == 1 or getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def barrier(name: str = "hyperclone") -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def launch_command(world: int, module_args: Sequence[str]) -> tuple:
    """One process whose jax sees ``world`` host devices, the TrainConfig putting them
    on the mesh's data axis (a single controller shards the batch itself)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).strip()
    env = {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={int(world)}".strip(),
           "JAX_PLATFORMS": "cpu"}
    return [sys.executable, *module_args], env, {"parallel": "mesh", "mesh": f"data={int(world)}"}


__all__ = ["AXES", "BATCH_AXES", "LOGICAL", "ROLE_AXES", "barrier", "batch_sharding", "batch_ways",
           "initialize_multihost", "launch_command", "make_mesh", "mesh_from", "parse_mesh", "place", "process_allgather",
           "replicated", "role_axes", "sharding_for", "spec_for"]
