"""What a checkpoint of a config stores, and where each tensor sits in the maths.

One description every backend reads: the stored tensors by checkpoint name with
their slot (role kind, layer, expert) and shape, the tied-LM-head rule, the module
path of the layer stack, and the init rule for training from scratch.  The decoder
maths (``hyperclone_core.model.decoder``) asks for weights by slot through ``Params``;
a backend that keeps its own modules (torch's ``nn.Module``) registers exactly the
tensors ``slots`` lists, under the same names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ..errors import CheckpointError, ConfigError
from .initstream import InitStream
from .spec import DecoderConfig, Family, Role, expand_pattern


@dataclass(frozen=True)
class Slot:
    """One stored tensor: its checkpoint name, role, layer and expert, and shape."""

    name: str
    role: Role
    layer: Optional[int]
    expert: Optional[int]
    shape: tuple

    @property
    def kind(self) -> str:
        return self.role.kind


def tied_away(role: Role, cfg: DecoderConfig) -> bool:
    """The tied-LM-head rule (its one home): with tied embeddings the checkpoint
    stores no LM head; the maths reads the embedding table in its place."""
    return role.kind == "lm_head" and cfg.tie_embeddings


def tied_heads(family: Family, cfg: DecoderConfig) -> set:
    """The checkpoint names ``tied_away`` leaves out of ``cfg``'s checkpoint (empty when
    the embeddings are not tied): what a loader fills from the embedding table."""
    return {n for n, s in slots(family, cfg, stored_only=False).items() if tied_away(s.role, cfg)}


def slots(family: Family, cfg: DecoderConfig, stored_only: bool = True) -> dict:
    """Every tensor of ``cfg``'s checkpoint: name -> Slot, in role order.  A tied LM
    head is left out unless ``stored_only`` is False."""
    sizes = cfg.sizes()
    out = {}
    for role in family.roles_for(cfg):
        if stored_only and tied_away(role, cfg):
            continue
        shape = role.shape(sizes)
        for i in role.layers(cfg):
            for e in role.indices(cfg):
                name = expand_pattern(role.pattern, i, e)
                out[name] = Slot(name, role, i, e, shape)
    return out


def layer_prefix(family: Family) -> str:
    """The module path of layer ``{i}`` (``model.layers.{i}``), shared by every per-layer role."""
    prefixes = {r.pattern.split("{i}")[0] for r in family.roles if r.per_layer}
    if len(prefixes) != 1:
        raise ConfigError(f"{family.name}: per-layer roles do not share one layer prefix: {sorted(prefixes)}")
    return prefixes.pop() + "{i}"


def is_norm(kind: str) -> bool:
    return kind.startswith("norm") or kind.endswith("_norm")


ACT_INIT = {
    "mlp.act.alpha_p": math.log(math.expm1(0.8)), "mlp.act.alpha_n": math.log(math.expm1(0.8 - 0.5)),
    "mlp.act.beta": 0.5, "mlp.act.eps": -1e-6,
}
"""xIELU's learned scalars at their published start (a_p = a_n = 0.8, beta 0.5)."""


def init_rule(kind: str, cfg: DecoderConfig, std: float = 0.02) -> tuple:
    """How a tensor of ``kind`` starts when training from scratch: ``("normal", std)``
    for matrices, ``("const", v)`` for biases (0), norm gains (1, or 0 under
    Gemma's (1 + w)) and an activation's scalars (``ACT_INIT``)."""
    if kind in ACT_INIT:
        return ("const", ACT_INIT[kind])
    if kind.endswith(".bias"):
        return ("const", 0.0)
    if is_norm(kind):
        return ("const", 0.0 if cfg.norm_unit_offset else 1.0)
    return ("normal", std)


def init_weights(family: Family, cfg: DecoderConfig, seed: int = 0, std: float = 0.02,
                 dtype=np.float32) -> dict:
    """Fresh weights by ``init_rule``, as numpy, the same on every backend: the
    matrices are drawn in checkpoint order from one ``initstream.InitStream(seed)``,
    which reproduces torch's CPU generator (so they equal what
    ``torch.Generator("cpu").manual_seed(seed)`` and ``normal_`` give, to float32
    rounding)."""
    stream = InitStream(seed)
    out = {}
    for name, s in slots(family, cfg).items():
        rule, value = init_rule(s.kind, cfg, std)
        w = stream.normal(s.shape, value) if rule == "normal" else np.full(s.shape, value, np.float32)
        out[name] = w if np.dtype(dtype) == np.float32 else w.astype(dtype)
    return out


class Params:
    """Weights by slot over a mapping keyed by checkpoint name (numpy, jax, mlx or
    torch arrays): ``params("attn.q", layer=0)``; None where the config has no such
    tensor.  ``params.layer(i)`` is the getter one block's maths takes."""

    def __init__(self, family: Family, cfg: DecoderConfig, weights: Mapping[str, Any],
                 convert: Optional[Callable[[Any], Any]] = None):
        self.cfg = cfg
        self.by_slot = {}
        missing = []
        for name, s in slots(family, cfg).items():
            if name not in weights:
                missing.append(name)
                continue
            w = weights[name]
            self.by_slot[(s.kind, s.layer, s.expert)] = convert(w) if convert is not None else w
        if missing:
            raise CheckpointError(f"{family.name}: weights lack {len(missing)} tensor(s) the config implies: "
                                  f"{', '.join(missing[:6])}; are config and weights from the same model?")

    def __call__(self, kind: str, layer: Optional[int] = None, expert: Optional[int] = None):
        return self.by_slot.get((kind, layer, expert))

    def layer(self, i: int) -> Callable:
        return lambda kind, expert=None: self.by_slot.get((kind, i, expert))


__all__ = ["Params", "Slot", "init_rule", "init_weights", "is_norm", "layer_prefix", "slots", "tied_away",
           "tied_heads"]
