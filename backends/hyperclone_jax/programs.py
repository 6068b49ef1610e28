"""Each tensor program compiled whole, once per structure.

``run_whole_program`` traces the core's interpreter (``hyperclone_core.run.protocol.apply_ops``)
over the primitives of ``ops`` once per program *structure* and jits the result.
The structure is the program with its array names replaced by positions and its
noise seeds by slots: the index maps, coefficients and seeds are traced
arguments, so every layer's q projection (say) runs the same executable.  A
noisy program runs in blocks instead (``blocks``): the same arguments, each device
holding its output shard and one block.

With a ``Mesh`` the executable gets ``out_shardings``: each device computes only
its shard of the grown tensor, and nothing the size of the grown tensor passes
through the host.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperclone_core.run.interpreter import apply_ops, broadcast_coeffs, n_groups
from hyperclone_core.errors import HypercloneError
from hyperclone_core.algebra.noise import seed_words
from hyperclone_core.algebra.planner import AddNoise, Reshape, Scale, Take, TensorPlan

from . import blocks
from .ops import QUICK_BELOW, QUICK_COMPILE, JaxArrays, add_noise, asarray, host_layout


@dataclass(frozen=True)
class Structure:
    """A program with its data taken out: what one executable is compiled for.

    ``ops``: the program with array names replaced by ``a0, a1, ...`` and each
    AddNoise's seed by its slot in the seeds argument; ``arrays``: the shape and
    dtype of each placeholder; ``args``: the interpreter's cache keys the traced
    arguments stand for, in order; ``noise``: per AddNoise, the group count and the
    copy layout (static: they shape the program); ``sharding``: the output's;
    ``block``: elements per block of a noisy program run in blocks (0: run whole)."""

    ops: tuple
    arrays: tuple
    args: tuple
    noise: tuple
    sharding: Any = None
    quick: bool = False
    block: int = 0


def structure(tp: TensorPlan, arrays, sharding=None) -> tuple:
    """(Structure, [(cache key, host array to transfer)], [seed, ...]) of ``tp``."""
    names: dict = {}
    specs: list = []
    args: list = []
    ops: list = []
    seeds: list = []
    noise: list = []
    ndim = len(tp.source_shape)

    def placeholder(name: str) -> str:
        if name not in names:
            names[name] = f"a{len(names)}"
            a = np.asarray(arrays[name])
            specs.append((names[name], a.shape, a.dtype.str))
        return names[name]

    def need(key, host):
        if key not in [k for k, _ in args]:
            args.append((key, host))

    for op in tp.ops:
        if isinstance(op, Take):
            ops.append(Take(op.axis, placeholder(op.map)))
            need((op.map, ""), arrays[op.map])
        elif isinstance(op, Scale):
            ops.append(Scale(op.axes, placeholder(op.coeffs)))
            need((op.coeffs, f"{op.axes}/{ndim}"), broadcast_coeffs(arrays[op.coeffs], op.axes, ndim))
        elif isinstance(op, AddNoise):
            ops.append(AddNoise(op.axis, placeholder(op.groups), op.snr_db, len(seeds)))
            need((op.groups, ""), arrays[op.groups])
            seeds.append(op.seed)
            noise.append((n_groups(arrays, op), host_layout(arrays[op.groups])))
        elif isinstance(op, Reshape):
            ops.append(op)
            ndim = len(op.shape)
        else:  # Cast and any op naming no plan array: static, part of the structure
            ops.append(op)
    keys = tuple((names[k[0]], k[1]) for k, _ in args)
    quick = math.prod(tp.shape) < QUICK_BELOW
    block = blocks.BLOCK_ELEMENTS if blocks.blockable(ops) else 0
    return Structure(tuple(ops), tuple(specs), keys, tuple(noise), sharding, quick, block), args, seeds


class _Tracing(JaxArrays):
    """The primitives ``apply_ops`` calls while a program is traced (``JaxArrays``'):
    every plan array is already a traced argument in the interpreter's cache, and
    AddNoise reads its key from the traced seeds by slot."""

    def __init__(self, keys, noise: tuple, constants: frozenset = frozenset()):
        self.keys, self.noise, self.constants = keys, noise, constants

    def asarray(self, a, device=None):
        """Only constants a static op of the program names (an Offset's value, broadcast
        by the interpreter) may enter while tracing; plan data must come in as arguments,
        or one executable would carry one tensor's data to the next."""
        a = np.asarray(a)
        if a.size and float(a.flat[0]) in self.constants and np.all(a == a.flat[0]):
            return jnp.full(a.shape, a.flat[0], a.dtype)
        raise HypercloneError("internal: a plan array was requested that the jax program did not pass in "
                              "(the interpreter's cache keys changed?)")

    def add_zero_sum_noise(self, x, axis, groups, snr_db, seed, count=None):
        count, layout = self.noise[seed]
        return add_noise(x, axis, groups, snr_db, jax.random.wrap_key_data(self.keys[seed]), count, layout)


def _stand_ins(st: Structure) -> dict:
    """Host arrays with the placeholders' shapes: the interpreter reads only shapes
    and group counts from them while tracing (the data comes in as arguments)."""
    out = {name: np.zeros(shape, np.dtype(dt)) for name, shape, dt in st.arrays}
    for op, (count, _) in zip([o for o in st.ops if isinstance(o, AddNoise)], st.noise):
        out[op.groups] = np.full(out[op.groups].shape, count - 1, out[op.groups].dtype)
    return out


@functools.lru_cache(maxsize=4096)
def compiled(st: Structure):
    """The jitted program of a structure (jax then specializes it per input shape)."""
    arrays = _stand_ins(st)
    tp = TensorPlan("program", "program", "", (), (), st.ops)

    constants = frozenset(float(op.value) for op in st.ops if isinstance(getattr(op, "value", None), (int, float)))

    def program(x, args, keys):
        cache = dict(zip(st.args, args))
        return apply_ops(_Tracing(keys, st.noise, constants), tp, arrays, x, None, cache)

    kw = {"compiler_options": QUICK_COMPILE} if st.quick else {}
    if st.sharding is not None:
        kw["out_shardings"] = st.sharding
    if st.block:  # noisy: every device loops over blocks of its own shard
        mesh = None if st.sharding is None else st.sharding.mesh
        spec = None if st.sharding is None else st.sharding.spec
        return jax.jit(blocks.program(st, mesh, spec, st.block), **kw)
    return jax.jit(program, **kw)


def run_whole_program(tp: TensorPlan, arrays, x, device, cache: dict, sharding=None, put=None):
    """Run ``tp`` on ``x`` as one compiled program; None (the interpreter then runs the
    primitives) for a program that starts with noise and does not run in blocks (the
    interpreter's fused op takes only a tensor the program made)."""
    if not tp.ops or (isinstance(tp.ops[0], AddNoise) and not blocks.blockable(tp.ops)):
        return None
    st, args, seeds = structure(tp, arrays, sharding)
    put = put or (lambda a: asarray(a, device))
    device_args = []
    for key, host in args:
        if key not in cache:
            cache[key] = put(host)
        device_args.append(cache[key])
    keys = put(np.asarray([seed_words(s) for s in seeds], np.uint32).reshape(len(seeds), 2))
    return compiled(st)(x, tuple(device_args), keys)


__all__ = ["Structure", "compiled", "run_whole_program", "structure"]
