"""The core's decoder under ``jax.numpy``, jitted.

The maths is ``hyperclone_core.model.decoder``; this file supplies jax's ``ArrayOps``
(fused attention through ``jax.nn.dot_product_attention``, exact ``erf``, a
stable top-k for routing, ``stop_gradient``) and two ways to compile it:

* ``lm_loss``: the whole model in one trace (what the engine's step jits);
* ``forward``: the model one piece at a time -- embedding, each block, head --
  each jitted on the part of the config it reads.  A block's executable then
  serves every layer of a model, every depth of a growth and every family whose
  blocks are alike, which keeps compilation off the critical path of the
  conformance suite's ~100 model configs.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hyperclone_core.model import decoder
from hyperclone_core.model.decoder import ArrayOps
from hyperclone_core.errors import ConfigError
from hyperclone_core.model.spec import DecoderConfig, Family
from hyperclone_core.model.structure import Params

from .ops import QUICK_COMPILE, device_of

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_LOW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def compute_dtype(name: Optional[str]) -> Any:
    key = name or "float32"
    if key not in COMPUTE_DTYPES:
        raise ConfigError(f"dtype {name!r}: the jax backend computes in {', '.join(COMPUTE_DTYPES)} "
                          "(float64 needs jax_enable_x64, which hyperclone does not turn on)")
    return COMPUTE_DTYPES[key]


class JaxOps(ArrayOps):
    """jax's kernels for the decoder's hooks.  ``activations`` (a sharding, optional)
    pins the residual stream's layout where it starts (batch over data x fsdp), so
    XLA's partitioner need not guess it from the embedding table's."""

    def __init__(self, activations=None):
        super().__init__(jnp)
        self.activations = activations

    def compute_dtype(self, dtype):
        return jnp.float32 if jnp.dtype(dtype) in _LOW else dtype

    def low_precision(self) -> tuple:
        return (jnp.bfloat16, jnp.float16)

    def astype(self, x, dtype):
        return x if x.dtype == jnp.dtype(dtype) else x.astype(dtype)

    def constant(self, array, dtype=None):
        return jnp.asarray(np.asarray(array), dtype=dtype)

    def stop_gradient(self, x):
        return jax.lax.stop_gradient(x)

    def embed(self, table, ids):
        if self.activations is None:
            return jnp.take(table, ids, axis=0)
        # the table gathered whole for the lookup (as FSDP gathers a layer's weights):
        # a lookup into hidden-sharded rows would need an all-to-all XLA cannot plan
        whole = jax.sharding.NamedSharding(self.activations.mesh, jax.sharding.PartitionSpec())
        x = jnp.take(jax.lax.with_sharding_constraint(table, whole), ids, axis=0)
        return jax.lax.with_sharding_constraint(x, self.activations)

    def rsqrt(self, x):
        return jax.lax.rsqrt(x)

    def erf(self, x):
        return jax.scipy.special.erf(x)

    def softmax(self, x):
        return jax.nn.softmax(x, axis=-1)

    def top_k(self, x, k):
        return jnp.argsort(-x, axis=-1, stable=True)[..., :k]

    def attention(self, q, k, v, *, scale, window, softcap, **extra):
        """``jax.nn.dot_product_attention`` (GQA and the causal/sliding mask built in;
        cuDNN flash attention where jax picks it) unless a softcap needs the scores, or the
        values are narrower than the keys (MiMo-V2-Flash: the fused kernel wants one head size)."""
        if softcap or decoder.extras_set(extra) or v.shape[-1] != q.shape[-1]:
            return super().attention(q, k, v, scale=scale, window=window, softcap=softcap, **extra)
        return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True,
                                            local_window_size=(window - 1, 0) if window else None)


OPS = JaxOps()


def params(family: Family, cfg: DecoderConfig, weights: Mapping[str, Any], dtype=None) -> Params:
    """Weights by slot, cast to the compute ``dtype`` inside the trace (the float32
    masters stay what the optimizer updates)."""
    if dtype is None:
        return Params(family, cfg, weights)
    return Params(family, cfg, weights, convert=lambda w: OPS.astype(w, dtype))


def lm_loss(family: Family, cfg: DecoderConfig, weights: Mapping[str, Any], batch, dtype=None, ops: JaxOps = OPS):
    """Mean next-token cross entropy of a (B, T+1) batch (float32), for jit and grad."""
    logits = decoder.forward(cfg, params(family, cfg, weights, dtype), batch[:, :-1], ops)
    return decoder.cross_entropy(ops, logits, batch[:, 1:])


# ---------------------------------------------------------------- forward, piece by piece


def _getter(w: Mapping[str, Any]):
    return lambda kind, expert=None: w.get(kind if expert is None else f"{kind}#{expert}")


def _ends_config(cfg: DecoderConfig) -> DecoderConfig:
    """What embedding and head read: no family name, no layer count."""
    return replace(cfg, family="", layers=0, layer_types=(), nope_layers=())


def _block_config(cfg: DecoderConfig, layer: int) -> DecoderConfig:
    """What block ``layer`` reads: a one-layer config carrying its attention type (and its
    attention scale where it depends on the layer index: GPT-2's 1 / (layer + 1)); differential
    attention, whose lambda_init reads the layer index, keeps the whole config (``_block`` then
    runs layer ``layer`` of it)."""
    if cfg.diff_attn:
        return cfg
    types = (cfg.layer_types[layer],) if cfg.layer_types else ()
    nope = (cfg.nope_layers[layer],) if cfg.nope_layers else ()
    scale = {}
    if cfg.attn_scale_inverse_layer:
        scale = dict(attn_scale=(cfg.attn_scale or cfg.head_dim ** -0.5) / (layer + 1), attn_scale_inverse_layer=False)
    return replace(cfg, family="", layers=1, layer_types=types, nope_layers=nope,
                   first_attn_norm=cfg.first_attn_norm or layer != 0, **scale)


@functools.partial(jax.jit, static_argnums=0, compiler_options=QUICK_COMPILE)
def _embed(cfg: DecoderConfig, w, tokens):
    return decoder.embed(cfg, _getter(w), tokens, OPS)


@functools.partial(jax.jit, static_argnums=(0, 3), compiler_options=QUICK_COMPILE)
def _block(cfg: DecoderConfig, w, x, layer: int):
    tb = decoder.tables(cfg, x.shape[1], OPS, x.dtype)
    return decoder.block(cfg, _getter(w), x, layer, tb, OPS)


@functools.partial(jax.jit, static_argnums=0, compiler_options=QUICK_COMPILE)
def _head(cfg: DecoderConfig, w, x):
    return decoder.head(cfg, _getter(w), x, OPS)


def split_by_layer(p: Params) -> tuple:
    """(weights outside the layers, [weights of layer i]) keyed by kind (``kind#e`` for experts)."""
    top: dict = {}
    layers: list = [dict() for _ in range(p.cfg.layers)]
    for (kind, layer, expert), w in p.by_slot.items():
        key = kind if expert is None else f"{kind}#{expert}"
        (top if layer is None else layers[layer])[key] = w
    return top, layers


def forward(family: Family, cfg: DecoderConfig, weights: Mapping[str, Any], tokens, dtype: Optional[str] = None,
            device=None) -> jax.Array:
    """Logits (B, T, vocab) in the compute dtype; ``weights`` by checkpoint name (numpy
    or jax), converted to ``dtype`` (bfloat16 rounds to nearest even)."""
    dt = compute_dtype(dtype)
    tokens = np.asarray(tokens)
    decoder.check_length(cfg, tokens.shape[1])
    dev = device_of(device)
    p = Params(family, cfg, weights, convert=lambda w: jax.device_put(jnp.asarray(w, dtype=dt), dev))
    top, layers = split_by_layer(p)
    ends = _ends_config(cfg)
    x = _embed(ends, top, jax.device_put(tokens.astype(np.int32), dev))
    for i, w in enumerate(layers):
        x = _block(_block_config(cfg, i), w, x, i if cfg.diff_attn else 0)
    return _head(ends, top, x)


__all__ = ["JaxOps", "OPS", "compute_dtype", "forward", "lm_loss", "params", "split_by_layer"]
