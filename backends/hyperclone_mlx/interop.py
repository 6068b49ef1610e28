"""``expand_model``: grow a model ``mlx_lm`` loaded into a model of the same mlx-lm
class, computing the same function, that ``mlx_lm.generate`` runs.

The plan speaks checkpoint names; an mlx-lm model keeps its weights under the
names its ``sanitize`` gives the checkpoint's (mostly the same; Mixtral stacks its
experts into ``switch_mlp``, GPT-NeoX moves ``gpt_neox.*`` under ``model.``).  The
correspondence is read off ``sanitize`` itself: it is run on one-element probes
numbered by checkpoint tensor, and where each number lands (alone, or row ``e``
of a stack) says where that tensor lives.  So a family mlx-lm adds is handled
without a table here, and a ``sanitize`` that does more than rename and stack is
refused by name instead of mis-read.  The grown tensors go through the new
model's own ``sanitize`` and ``load_weights(strict=True)``, as ``mlx_lm.load``
does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from hyperclone_core import family_for_config
from hyperclone_core.algebra.options import plan_growth
from hyperclone_core.run.interpreter import run_program
from hyperclone_core.errors import HypercloneError
from hyperclone_core.model.structure import slots, tied_heads

from .backend import backend

NOT_LOADABLE = {
    "opt": "mlx-lm has no OPT model",
    "olmo": "mlx-lm's olmo module reads AI2's pre-transformers OLMo format (d_model, n_layers) and exits the "
            "process when the ai2-olmo package is missing; transformers-format OLMo folders cannot load",
}
"""Families of ours mlx-lm cannot load, with the reason (never import those modules:
mlx_lm.models.olmo calls sys.exit at import without ai2-olmo)."""


def model_config(model, config: Optional[Mapping[str, Any]] = None) -> dict:
    """The HF config of an mlx-lm model: ``config`` when given (what ``mlx_lm.load(...,
    return_config=True)`` and ``mlx_lm.utils.load_model`` return), else the model's
    ``args`` (its ModelArgs keeps the HF names it uses); a tied head is read off the
    parameters when the args do not say."""
    if config is not None:
        return dict(config)
    args = getattr(model, "args", None)
    if args is None or not dataclasses.is_dataclass(args):
        raise HypercloneError(f"expand_model takes an mlx-lm model (with .args), not {type(model).__name__}; "
                              "or pass config= (mlx_lm.load(path, return_config=True))")
    hf = {k: v for k, v in dataclasses.asdict(args).items() if v is not None}
    if "tie_word_embeddings" not in hf:  # tied when the model holds none of the heads a tied checkpoint leaves out
        family = family_for_config(hf)
        heads = tied_heads(family, family.read(dict(hf, tie_word_embeddings=True)))
        hf["tie_word_embeddings"] = not any(k.endswith(h) for k, _ in tree_flatten(model.parameters()) for h in heads)
    return hf


def locate(model, family, cfg) -> dict:
    """checkpoint name -> (mlx-lm parameter name, row of a stack or None), read off
    ``model.sanitize`` (see the module docstring)."""
    names = list(slots(family, cfg))
    probes = {n: mx.array([float(k)], dtype=mx.float32) for k, n in enumerate(names)}
    seen = model.sanitize(dict(probes)) if hasattr(model, "sanitize") else probes
    where: dict = {}
    for key, arr in seen.items():
        if not isinstance(arr, mx.array) or arr.size == 0:
            continue
        ids = np.array(arr.astype(mx.float32)).reshape(-1)
        if arr.shape == (1,):
            where[names[int(ids[0])]] = (key, None)
        elif arr.ndim == 2 and arr.shape[1] == 1:
            for row, k in enumerate(ids):
                where[names[int(k)]] = (key, row)
        else:
            raise HypercloneError(f"{type(model).__module__}.sanitize turns checkpoint tensors into {key} of shape "
                                  f"{list(arr.shape)}: more than renaming and stacking, which expand_model cannot invert")
    lost = [n for n in names if n not in where]
    if lost:
        raise HypercloneError(f"{type(model).__module__}.sanitize drops {lost[:4]} that the {family.name} config implies "
                              "(is tie_word_embeddings right? pass config= from mlx_lm.load(..., return_config=True))")
    return where


def _source_tensors(model, where: Mapping[str, tuple], family, cfg) -> dict:
    params = dict(tree_flatten(model.parameters()))
    extra = sorted(set(params) - {k for k, _ in where.values()})
    if extra:
        hint = " (a quantized model: dequantize it first, mlx_lm.utils.dequantize_model)" \
            if any(k.endswith((".scales", ".biases")) for k in extra) else ""
        raise HypercloneError(f"the model holds parameters {extra[:4]} outside the {family.name} checkpoint layout"
                              + hint)
    shapes = {n: s.shape for n, s in slots(family, cfg).items()}
    out = {}
    for name, (key, row) in where.items():
        x = params[key] if row is None else params[key][row]
        if tuple(x.shape) != tuple(shapes[name]):
            raise HypercloneError(f"tensor {name} ({key}) has shape {list(x.shape)}; the config implies "
                                  f"{list(shapes[name])}: are model and config from the same checkpoint?")
        out[name] = x
    return out


def _grown_args(model, hf: Mapping[str, Any], plan, family):
    """The grown model's ModelArgs: the source's config as mlx-lm read it, with the
    grown sizes (and tie / layer pattern) of the plan's config -- so whatever mlx-lm
    makes of the other keys (its RoPE defaults, say) is the same on both sides."""
    keys = set(family.config_keys) | {"tie_word_embeddings", "layer_types", "head_dim"}
    grown = dict(hf, **{k: v for k, v in plan.config.items() if k in keys})
    args_type = type(model.args)
    if hasattr(args_type, "from_dict"):
        return args_type.from_dict(grown)
    names = {f.name for f in dataclasses.fields(args_type)}
    return args_type(**{k: v for k, v in grown.items() if k in names})


def _check_holds(new, family, plan) -> None:
    """Refuse, naming them, grown tensors the mlx-lm class has no parameter for."""
    where = locate(new, family, plan.decoder)
    params = {k for k, _ in tree_flatten(new.parameters())}
    homeless = sorted(n for n, (k, _) in where.items() if k not in params)
    if homeless:
        why = (" (the growth unties the embedding and the LM head -- they need different scales -- and this "
               "mlx-lm class always ties them; grow depth only, or grow the transformers model with "
               "hyperclone_torch.expand_model)") if plan.source_decoder.tie_embeddings and \
            not plan.decoder.tie_embeddings else ""
        raise HypercloneError(f"{type(new).__module__}.Model has no parameter for the grown {', '.join(homeless[:4])}"
                              + why)


def expand_model(model, *, width: float = 2, ffn: Optional[float] = None, heads: Optional[float] = None,
                 kv_heads: Optional[float] = None, layers: Any = None, strategy: Any = None,
                 seed: int = 0, layout: str = "tile", config: Optional[Mapping[str, Any]] = None,
                 return_plan: bool = False, optimizer=None, moments: str = "carry", inserted_lr: float = 1.0):
    """Grow an mlx-lm ``model`` (``mlx_lm.load`` / ``mlx_lm.utils.load_model``) into a
    model of the same class whose logits equal the source's; see
    ``hyperclone_torch.expand_model`` for the growth options.  ``config``: the HF
    config the model was loaded with (default: from ``model.args``).  Runs on MLX's
    default device in the model's dtype; the source is not modified.

    ``optimizer``: the ``mlx.optimizers.AdamW`` (or ``MultiOptimizer`` of AdamWs)
    training ``model``; then the result is ``(grown model, grown optimizer)`` (plus the
    plan): training on continues the source's run (a symmetric clone's exactly), with
    ``hyperclone_mlx.clip_grad_norm(grads, max_norm, grown_optimizer)`` in place of
    ``mlx.optimizers.clip_grad_norm`` where the source clipped (``grow.py``)."""
    hf = model_config(model, config)
    family = family_for_config(hf)
    plan = plan_growth(hf, width=width, ffn=ffn, heads=heads, kv_heads=kv_heads, layers=layers, strategy=strategy,
                       seed=seed, layout=layout, where=f"{type(model).__module__}.Model config")
    cfg = plan.source_decoder
    src_where = locate(model, family, cfg)
    src = _source_tensors(model, src_where, family, cfg)
    new = type(model)(_grown_args(model, hf, plan, family))
    _check_holds(new, family, plan)
    grown: dict = {}
    cache: dict = {}
    for tp in plan.tensors:
        y = run_program(backend, tp, plan.arrays, src[tp.source], None, cache)
        mx.eval(y)  # one program's graph at a time
        grown[tp.name] = y
    weights = new.sanitize(grown) if hasattr(new, "sanitize") else grown
    new.load_weights(list(weights.items()), strict=True)
    mx.eval(new.parameters())
    new.train(getattr(model, "training", False))
    if optimizer is not None:
        from .grow import grown_optimizer

        opt = grown_optimizer(optimizer, model, new, plan, src_where, locate(new, family, plan.decoder),
                              moments=moments, inserted_lr=inserted_lr)
        return (new, opt, plan) if return_plan else (new, opt)
    return (new, plan) if return_plan else new


__all__ = ["NOT_LOADABLE", "expand_model", "locate", "model_config"]
