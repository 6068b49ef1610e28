"""``expand_model``: grow a live ``transformers`` model (or a ``Decoder``) in memory.

The plan speaks checkpoint names (what ``save_pretrained`` writes); a live model's
``state_dict`` may use other in-memory names.  Two differences exist in the
families we support, and both are data here, not code paths:

* renames: transformers 5 calls GPT-NeoX's ``embed_out.weight`` ``lm_head.weight``
  and Mixtral's router ``block_sparse_moe.gate.weight`` ``mlp.gate.weight``;
* fused experts: transformers 5 stacks Mixtral's experts into
  ``mlp.experts.gate_up_proj`` [E, 2*ffn, hidden] (w1 rows, then w3 rows) and
  ``mlp.experts.down_proj`` [E, hidden, ffn] (w2).

Each checkpoint tensor is located in memory as (in-memory name, expert index,
part of dim 0).  Sources are read as views of the live tensors; results go
straight into the destination (a fused destination tensor is allocated once and
its parts written in place), then the destination model -- built with its
parameters on the meta device, so nothing is initialised for nothing -- takes
them with ``load_state_dict(assign=True)``.  On transformers 4.x the in-memory
names equal the checkpoint names and every location is the identity.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import importlib
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from torch import nn

from hyperclone_core import family_for_config
from hyperclone_core.algebra.options import plan_growth
from hyperclone_core.model.structure import tied_heads
from hyperclone_core.run.interpreter import run_program
from hyperclone_core.errors import HypercloneError

from . import ops
from .backend import backend
from .model import Decoder
from .populate import _Populator

RENAMES = (
    (re.compile(r"^embed_out\.weight$"), "lm_head.weight"),
    (re.compile(r"\.block_sparse_moe\.gate\.weight$"), ".mlp.gate.weight"),
    (re.compile(r"\.block_sparse_moe\.gate\.weight$"), ".mlp.router.weight"),  # phimoe
    (re.compile(r"\.block_sparse_moe\.router\.layer\.weight$"), ".block_sparse_moe.router.weight"),  # granitemoe
    (re.compile(r"\.block_sparse_moe\.input_linear\.weight$"), ".block_sparse_moe.experts.gate_up_proj"),
    (re.compile(r"\.block_sparse_moe\.output_linear\.weight$"), ".block_sparse_moe.experts.down_proj"),
    (re.compile(r"\.mlp\.experts\.fc1\.weight$"), ".mlp.experts.gate_up_proj"),  # aria: (experts, in, out) both
    (re.compile(r"\.mlp\.experts\.fc2\.weight$"), ".mlp.experts.down_proj"),
    (re.compile(r"\.mlp\.moe_statics\.e_score_correction_bias$"), ".mlp.gate.moe_statics.e_score_correction_bias"),
    (re.compile(r"\.self_attn\.q_proj\.(weight|bias)$"), r".self_attn.q_gate_proj.\1"),  # minicpm5_moe: q|gate per head
    (re.compile(r"\.post_mlp_layernorm\.weight$"), ".mlp.post_mlp_layernorm.weight"),  # axk1: the MoE's output norm
    # moe_extra's types: correction biases, routers, shared experts and norms under their checkpoint names
    (re.compile(r"\.mlp\.e_score_correction_bias$"), ".mlp.gate.e_score_correction_bias"),  # exaone_moe
    (re.compile(r"\.mlp\.expert_bias$"), ".mlp.e_score_correction_bias"),  # hy_v3
    (re.compile(r"\.mlp\.router\.gate\.weight$"), ".mlp.gate.weight"),  # hy_v3
    (re.compile(r"\.mlp\.shared_mlp\.(\w+)\.(weight|bias)$"), r".mlp.shared_experts.\1.\2"),  # hy_v3
    (re.compile(r"\.moe\.router\.expert_bias$"), ".mlp.gate.e_score_correction_bias"),  # kolibri1
    (re.compile(r"\.post_attn_norm\.weight$"), ".post_self_attn_layernorm.weight"),  # kolibri1
    (re.compile(r"\.post_ffn_norm\.weight$"), ".post_mlp_layernorm.weight"),  # kolibri1
    (re.compile(r"\.mlp\.shared_expert\.(\w+)\.weight$"), r".mlp.shared_experts.\1.weight"),  # laguna
    (re.compile(r"\.mlp\.experts\.e_score_correction_bias$"), ".mlp.gate.e_score_correction_bias"),  # laguna
    (re.compile(r"\.block_sparse_moe\.e_score_correction_bias$"), ".mlp.e_score_correction_bias"),  # minimax_m2
)
"""Checkpoint name -> transformers' in-memory name (regex, replacement); the first whose
result the model has applies."""

FUSED = (
    (re.compile(r"^(.*)\.block_sparse_moe\.experts\.(\d+)\.w1\.weight$"), r"\1.mlp.experts.gate_up_proj", (0, 2)),
    (re.compile(r"^(.*)\.block_sparse_moe\.experts\.(\d+)\.w3\.weight$"), r"\1.mlp.experts.gate_up_proj", (1, 2)),
    (re.compile(r"^(.*)\.block_sparse_moe\.experts\.(\d+)\.w2\.weight$"), r"\1.mlp.experts.down_proj", None),
    # Qwen-MoE, OLMoE, DeepSeek-style ... experts: experts.{e}.gate_proj/up_proj/down_proj
    (re.compile(r"^(.*)\.experts\.(\d+)\.gate_proj\.weight$"), r"\1.experts.gate_up_proj", (0, 2)),
    (re.compile(r"^(.*)\.experts\.(\d+)\.up_proj\.weight$"), r"\1.experts.gate_up_proj", (1, 2)),
    (re.compile(r"^(.*)\.experts\.(\d+)\.down_proj\.weight$"), r"\1.experts.down_proj", None),
)
"""Checkpoint name -> (stacked in-memory name, expert = group 2, part (k of n) of the expert's dim 0)."""


@dataclass(frozen=True)
class Location:
    """Where a checkpoint tensor lives in a model's state_dict."""

    name: str
    expert: Optional[int] = None
    part: Optional[tuple] = None

    def view(self, t: torch.Tensor) -> torch.Tensor:
        if self.expert is not None:
            t = t[self.expert]
        if self.part is not None:
            k, n = self.part
            size = t.shape[0] // n
            t = t[k * size:(k + 1) * size]
        return t


def locate(checkpoint_names: Iterable[str], memory_names: Iterable[str], where: str = "model") -> dict:
    """checkpoint name -> Location in a state_dict whose keys are ``memory_names``."""
    mem = set(memory_names)
    out = {}
    for name in checkpoint_names:
        if name in mem:
            out[name] = Location(name)
            continue
        loc = None
        for pattern, repl in RENAMES:
            renamed = pattern.sub(repl, name)
            if renamed != name and renamed in mem:
                loc = Location(renamed)
                break
        if loc is None:
            for pattern, repl, part in FUSED:
                m = pattern.match(name)
                if m and m.expand(repl) in mem:
                    loc = Location(m.expand(repl), int(m.group(2)), part)
                    break
        if loc is None:
            raise HypercloneError(
                f"tensor {name} of the checkpoint layout has no counterpart in the {where}'s state_dict "
                f"(keys like {sorted(mem)[:4]}); this transformers version stores it under a name "
                "hyperclone_torch.interop does not know: add it to RENAMES or FUSED"
            )
        out[name] = loc
    return out


def _no_init_weights():
    """transformers' switch that skips weight init (its meta-device normal_ calls
    cost ~0.2 s on a 250M model for values nobody reads); a no-op without it."""
    for where in ("transformers.initialization", "transformers.modeling_utils"):
        with contextlib.suppress(Exception):
            return importlib.import_module(where).no_init_weights()
    return contextlib.nullcontext()


@contextlib.contextmanager
def parameters_on_meta():
    """Build modules with their parameters on the meta device (buffers stay real:
    rotary tables are cheap and must be right).  Works on transformers 4.x and 5.x."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def _hf_config(model) -> tuple:
    if isinstance(model, Decoder):
        return model.family, dict(model.config)
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        raise HypercloneError(
            f"expand_model takes a transformers PreTrainedModel or a hyperclone_torch.Decoder, "
            f"not {type(model).__name__}"
        )
    hf = cfg.to_dict()
    return family_for_config(hf), hf


def _empty_like_class(model, plan) -> nn.Module:
    """The destination, same class as ``model``, parameters on meta."""
    if isinstance(model, Decoder):
        return type(model)(model.family, plan.decoder, plan.config)
    config = type(model.config).from_dict(dict(plan.config))
    attn = getattr(model.config, "_attn_implementation", None)
    if attn is not None:
        with contextlib.suppress(Exception):
            config._attn_implementation = attn
    with parameters_on_meta(), _no_init_weights():
        new = type(model)(config)
    if getattr(model, "generation_config", None) is not None and hasattr(new, "generation_config"):
        new.generation_config = copy.deepcopy(model.generation_config)  # eos/pad ids, sampling defaults
    return new


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@torch.no_grad()
def expand_model(model, *, width: float = 2, ffn: Optional[float] = None, heads: Optional[float] = None,
                 kv_heads: Optional[float] = None, layers: Any = None, strategy: Any = None,
                 seed: int = 0, layout: str = "tile", untie: bool = False, return_plan: bool = False,
                 optimizer: Optional[torch.optim.Optimizer] = None, moments: str = "carry", inserted_lr: float = 1.0):
    """Grow ``model`` (transformers PreTrainedModel of a supported family, or a
    Decoder) into a model of the same class whose logits equal the source's.

    ``optimizer``: the ``torch.optim.AdamW`` training ``model``; then the result is
    ``(grown model, grown optimizer)`` (plus the plan with ``return_plan``): a new
    AdamW over the grown model holding the grown moments and step, its param groups
    the per-tensor lr / eps / weight decay the growth sets (``hyperclone_torch.grow``),
    so a symmetric clone trained on continues the source's run.  Clip with
    ``hyperclone_torch.clip_grad_norm_(grown_optimizer, max_norm)``, which weighs each
    group by its ``clip_weight`` (the source-equivalent norm).  ``moments``: carry,
    asymmetric (a symmetry breaker) or reset; ``inserted_lr``: the LR multiplier of
    layers depth growth inserts (0 freezes them).

    ``width`` grows hidden (and, unless given, ffn and heads) by that ratio;
    ``layers`` is the new total depth; tied embeddings stay tied unless ``untie``.  Runs on the model's device and dtype; the
    source is not modified and shares no storage with the result.
    """
    _, hf = _hf_config(model)
    plan = plan_growth(hf, width=width, ffn=ffn, heads=heads, kv_heads=kv_heads, layers=layers, strategy=strategy,
                       seed=seed, layout=layout, untie=untie, where=f"{type(model).__name__}.config")

    src_state = model.state_dict()
    new = _empty_like_class(model, plan)
    dst_names = list(new.state_dict().keys())
    src_loc = locate(plan.sources(), src_state.keys(), "source model")
    dst_loc = locate([t.name for t in plan.tensors], dst_names, "grown model")

    meta = {n: p for n, p in new.named_parameters() if p.device.type == "meta"}
    out: dict = {}
    cache: dict = {}
    src_dtype = {n: src_state[src_loc[n].name].dtype for n in plan.sources()}
    on_cpu = all(t.device.type == "cpu" for t in src_state.values())
    specs = [(tp.shape, _final_dtype(tp, src_dtype[tp.source])) if on_cpu and dst_loc[tp.name].expert is None
             and dst_loc[tp.name].part is None else None for tp in plan.tensors]
    with ops.inplace_scope(), _Populator(specs) as ahead, _copy_threads(on_cpu):
        for k, tp in enumerate(plan.tensors):
            ops.provide_output(ahead.get(k))
            _execute(tp, plan, src_state, src_loc[tp.source], dst_loc[tp.name], meta, out, cache)
            if k % 8 == 7:
                _return_freed_memory()

    missing = [n for n in meta if n not in out]
    tied = plan.decoder.tie_embeddings
    heads = {_in_memory(n) for n in tied_heads(plan.spec, plan.decoder)}
    if missing and not all(n in heads for n in missing):
        raise HypercloneError(f"expand_model: the plan gives no values for {missing[:6]} of {type(new).__name__}")
    new.load_state_dict(out, strict=False, assign=True)
    if tied and hasattr(new, "tie_weights"):
        new.tie_weights()
    still = [n for n, p in new.named_parameters() if p.device.type == "meta"]
    if still:
        raise HypercloneError(f"expand_model: parameters {still[:6]} were left uninitialised")
    new.train(model.training)
    _return_freed_memory()
    if optimizer is not None:
        from .grow import grown_adamw

        new_opt = grown_adamw(optimizer, model, new, plan, src_loc,
                              locate([t.name for t in plan.tensors], dict(new.named_parameters()).keys(), "grown model"),
                              moments=moments, inserted_lr=inserted_lr)
        return (new, new_opt, plan) if return_plan else (new, new_opt)
    return (new, plan) if return_plan else new


def _execute(tp, plan, src_state, src: Location, dst: Location, meta, out, cache) -> None:
    """Run one tensor's program on the live source; put the result in place."""
    x = src.view(src_state[src.name])
    y = run_program(backend, tp, plan.arrays, x, x.device, cache)
    ops.release()
    if dst.expert is None and dst.part is None:
        if _shares_storage(y, x):
            y = y.clone()
        out[dst.name] = y.contiguous()
        return
    if dst.name not in out:
        out[dst.name] = torch.empty(meta[dst.name].shape, dtype=y.dtype, device=y.device)
    dst.view(out[dst.name]).copy_(y)


def _final_dtype(tp, dtype: torch.dtype) -> torch.dtype:
    casts = [op.dtype for op in tp.ops if type(op).__name__ == "Cast"]
    return ops.torch_dtype(casts[-1]) if casts else dtype


COPY_THREADS = 1
"""Intra-op threads for the copies of an in-memory CPU expansion (restored after).
The work is memory-bound and the populator thread holds the other core; a second
intra-op thread collapses when another process is busy (see ``benchmarks/expand.py``
``--copy-threads``)."""


@contextlib.contextmanager
def _copy_threads(enabled: bool):
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(COPY_THREADS)
    try:
        yield
    finally:
        if enabled:
            torch.set_num_threads(before)


def _return_freed_memory() -> None:
    """Hand the intermediates' freed heap pages back to the OS: glibc keeps them
    otherwise (~1.2 GiB of peak RSS on a 250M -> 1B expansion); a no-op elsewhere."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _in_memory(name: str) -> str:
    """A checkpoint name as transformers names the parameter in memory (``RENAMES``)."""
    for pattern, repl in RENAMES:
        name = pattern.sub(repl, name)
    return name


__all__ = ["expand_model", "locate", "Location", "parameters_on_meta", "RENAMES", "FUSED"]
