"""hyperclone_jax: the JAX backend of hyperclone.

``expand_params`` grows a params pytree (a dict keyed by Hugging Face names),
straight into a sharded layout when given a ``Mesh``; ``load_pretrained`` /
``save_pretrained`` move such pytrees to and from HF folders; ``JaxEngine`` trains
with the core trainer (optax AdamW, jit, jax.sharding); ``backend`` is the object
registered under the entry point ``hyperclone.backends: jax``.
"""

from __future__ import annotations

from .backend import JaxBackend, backend
from .distributed import make_mesh, mesh_from, spec_for
from .engine import JaxEngine
from .interop import expand_params, load_pretrained, save_pretrained

__all__ = ["JaxBackend", "JaxEngine", "backend", "expand_params", "load_pretrained", "make_mesh", "mesh_from",
           "save_pretrained", "spec_for"]
