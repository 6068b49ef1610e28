"""The jax backend object: plan primitives (``ops.JaxArrays``) and whole-program
compilation (sharded over a Mesh when given one), the decoder forward, the
training engine and its launcher; checkpoints bit for bit come with the
primitives (the core's ``ArrayPrimitives``)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import numpy as np

from . import distributed as D
from . import ops, programs


class JaxBackend(ops.JaxArrays):
    """``mesh``/``rules`` (optional): expansion then produces every destination tensor
    with the sharding its role's rule names (``distributed.spec_for``)."""

    name = "jax"
    # distributed: one controller over a Mesh (data, fsdp, tensor); multi-host via jax.distributed
    capabilities = frozenset({"expand", "forward", "train", "distributed"})
    parallel_modes = ("none", "mesh")  # hyperclone train --parallel mesh --mesh data=N,fsdp=N,tensor=N

    def check_device(self, device: str) -> None:
        """Refuse a --device jax does not have, by name, before any work."""
        from hyperclone_core.errors import HypercloneError, UsageError

        try:
            ops.device_of(device)
        except (HypercloneError, ValueError) as exc:
            raise UsageError(str(exc).replace(f"device {device!r}: ", "")) from None

    def __init__(self, mesh=None, rules: Optional[Mapping[str, Any]] = None):
        self.mesh, self.rules = mesh, rules

    def with_mesh(self, mesh, rules: Optional[Mapping[str, Any]] = None) -> "JaxBackend":
        return JaxBackend(mesh, rules)

    def version(self) -> str:
        return jax.__version__

    def device_name(self) -> str:
        d = jax.devices()[0]
        where = f"mesh {dict(self.mesh.shape)}" if self.mesh is not None else f"{jax.device_count()} device(s)"
        return f"{d.platform} ({d.device_kind}, {where})"

    # ---------------------------------------------------------------- primitives
    def asarray(self, a, device=None):
        if self.mesh is not None:
            return ops.asarray(a, sharding=D.replicated(self.mesh))
        return ops.asarray(a, device)

    def target(self, kind: str, shape: tuple):
        """Where a destination tensor of role ``kind`` goes (None: the default device)."""
        return None if self.mesh is None else D.sharding_for(kind, shape, self.mesh, self.rules)

    def run_whole_program(self, tp, arrays, x, device, cache):
        return programs.run_whole_program(tp, arrays, x, device, cache, self.target(tp.kind, tuple(tp.shape)),
                                     lambda a: self.asarray(a, device))

    # ---------------------------------------------------------------- model
    def forward(self, family, cfg, weights: Mapping[str, Any], tokens, dtype: Optional[str] = None,
                device: Optional[str] = None) -> np.ndarray:
        """Logits as float32 numpy, computed in ``dtype`` (float32 unless "bfloat16")."""
        from .model import forward

        return np.asarray(forward(family, cfg, weights, tokens, dtype, device), np.float32)

    # ---------------------------------------------------------------- training
    def engine(self, hf_config, weights, config, optimizer):
        from .engine import JaxEngine

        return JaxEngine(hf_config, weights, config, optimizer, rules=self.rules)

    def launch_command(self, world, module_args):
        return D.launch_command(world, module_args)


backend = JaxBackend()

__all__ = ["JaxBackend", "backend"]
