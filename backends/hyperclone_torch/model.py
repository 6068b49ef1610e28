"""The decoder as a torch ``nn.Module``, running the core's one decoder definition.

The maths is ``hyperclone_core.model.decoder``; this file supplies torch's ``ArrayOps``
(F.linear, F.embedding, SDPA -- flash on CUDA --, F.layer_norm, torch.erf) and a
module tree whose parameters are the checkpoint's tensors under the checkpoint's
names (``hyperclone_core.model.structure.slots``), so HF folders load directly and
``save_pretrained`` writes folders ``transformers`` loads.  Each layer is its own
module (``model.layers.N``) whose forward runs ``decoder.block``: FSDP shards per
layer and ``torch.compile`` compiles per layer.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperclone_core.model import decoder
from hyperclone_core import family_for_config
from hyperclone_core.model.decoder import ArrayOps
from hyperclone_core.errors import CheckpointError
from hyperclone_core.model.spec import DecoderConfig, Family
from hyperclone_core.model.structure import init_rule, layer_prefix, slots

_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


class _Namespace:
    """The shared array-namespace subset the decoder maths uses, in torch's spelling."""

    float16, bfloat16, float32, float64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
    exp, tanh, sqrt, log, maximum = staticmethod(torch.exp), staticmethod(torch.tanh), staticmethod(torch.sqrt), \
        staticmethod(torch.log), staticmethod(torch.maximum)
    zeros_like, where = staticmethod(torch.zeros_like), staticmethod(torch.where)
    expm1 = staticmethod(torch.expm1)

    @staticmethod
    def concatenate(xs, axis=0):
        return torch.cat(list(xs), dim=axis)

    @staticmethod
    def clip(x, lo, hi):
        return torch.clamp(x, lo, hi)

    @staticmethod
    def mean(x, axis=None, keepdims=False):
        return torch.mean(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def max(x, axis=None, keepdims=False):
        return torch.amax(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def sum(x, axis=None, keepdims=False):
        return torch.sum(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def reshape(x, shape):
        return x.reshape(shape)

    @staticmethod
    def swapaxes(x, a, b):
        return x.transpose(a, b)

    @staticmethod
    def repeat(x, n, axis):
        return x.repeat_interleave(n, dim=axis)

    @staticmethod
    def take_along_axis(x, idx, axis):
        return torch.take_along_dim(x, idx, dim=axis)


class TorchOps(ArrayOps):
    """torch's kernels for the decoder's hooks, on one device."""

    def __init__(self, device):
        super().__init__(_Namespace)
        self.device = torch.device(device)

    def compute_dtype(self, dtype):
        return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype

    def astype(self, x, dtype):
        return x.to(dtype)

    def constant(self, array, dtype=None):
        return torch.as_tensor(np.asarray(array), device=self.device).to(dtype) if dtype is not None else \
            torch.as_tensor(np.asarray(array), device=self.device)

    def stop_gradient(self, x):
        return x.detach()

    def linear(self, x, w, b=None):
        return F.linear(x, w, b)

    def embed(self, table, ids):
        return F.embedding(ids, table)

    def rsqrt(self, x):
        return torch.rsqrt(x)

    def erf(self, x):
        return torch.erf(x)

    def silu(self, x):
        return F.silu(x)

    def relu(self, x):
        return F.relu(x)

    def gelu(self, x):
        return F.gelu(x)

    def gelu_tanh(self, x):
        return F.gelu(x, approximate="tanh")

    def softmax(self, x):
        return torch.softmax(x, dim=-1)

    def rms_norm(self, x, w, eps, unit_offset):
        # pow(2), not x * x: the same function, and the backward pass torch has always run
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        if w is None:
            return y
        return y * ((1.0 + w) if unit_offset else w)

    def layer_norm(self, x, w, b, eps):
        return F.layer_norm(x, (x.shape[-1],), w, b, eps)

    def top_k(self, x, k):
        return torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]

    def attention(self, q, k, v, *, scale, window, softcap, **extra):
        """SDPA (flash on CUDA) unless a softcap needs the scores (then the core's maths)."""
        if softcap or decoder.extras_set(extra):
            return super().attention(q, k, v, scale=scale, window=window, softcap=softcap, **extra)
        rep = q.shape[2] // k.shape[2]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        kw = {}
        if rep > 1:
            if _HAS_GQA:
                kw["enable_gqa"] = True
            else:  # pragma: no cover - torch < 2.5
                k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        if window:
            i = torch.arange(q.shape[2], device=q.device)
            mask = (i[None, :] <= i[:, None]) & ((i[:, None] - i[None, :]) < window)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, **kw)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **kw)
        return out.transpose(1, 2)


@functools.lru_cache(maxsize=16)
def torch_ops(device) -> TorchOps:
    return TorchOps(device)


def _child(root: nn.Module, path: list) -> nn.Module:
    """The module at ``path`` under ``root``, creating plain containers on the way."""
    mod = root
    for part in path:
        if part not in mod._modules:
            mod.add_module(part, nn.Module())
        mod = mod._modules[part]
    return mod


class _Slots:
    """Parameters of a module by neutral kind; resolved at call time so that
    ``load_state_dict(assign=True)`` and FSDP's parameter swaps stay visible."""

    def __init__(self):
        self.where: dict = {}

    def add(self, key, module: nn.Module, attr: str):
        self.where[key] = (module, attr)

    def __call__(self, kind: str, expert: Optional[int] = None):
        hit = self.where.get((kind, expert))
        return None if hit is None else getattr(hit[0], hit[1])


class Block(nn.Module):
    """One decoder layer: its parameters under the checkpoint's names; its forward is ``decoder.block``."""

    def __init__(self, cfg: DecoderConfig, index: int):
        super().__init__()
        self.cfg = cfg
        self.index = index
        self.slots = _Slots()

    def forward(self, x: torch.Tensor, tables: decoder.Tables) -> torch.Tensor:
        return decoder.block(self.cfg, self.slots, x, self.index, tables, torch_ops(x.device))


class Decoder(nn.Module):
    """The decoder of ``family`` with config ``decoder``.

    Built with parameters on the meta device (no memory, no init); the
    classmethods ``from_weights``, ``from_pretrained`` and ``random`` fill them.
    ``config`` is the HF config dict (what ``save_pretrained`` writes); ``cfg`` the
    ``DecoderConfig``, also ``decoder`` unless the checkpoint has top-level ``decoder.*``
    tensors (ModernBERT's LM head), whose module takes that name.
    """

    def __init__(self, family: Family, cfg: DecoderConfig, config: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.family = family
        self.cfg = cfg
        if not any(name.split(".")[0] == "decoder" for name in slots(family, cfg)):
            self.decoder = cfg
        self.config = dict(config) if config is not None else {"model_type": family.model_types[0]}
        decoder.activation_key(cfg.act)  # refuse an unknown activation before anything is built
        self.slots = _Slots()
        self._tables: dict = {}
        prefix = layer_prefix(family)
        list_path = prefix.split(".{i}")[0].split(".")
        blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        _child(self, list_path[:-1]).add_module(list_path[-1], blocks)
        self.shapes: dict = {}
        for name, s in slots(family, cfg).items():
            if s.layer is None:
                owner, rel, getter = self, name, self.slots
            else:
                owner = blocks[s.layer]
                rel = name[len(prefix.replace("{i}", str(s.layer))) + 1:]
                getter = owner.slots
            *path, attr = rel.split(".")
            mod = _child(owner, path)
            mod.register_parameter(attr, nn.Parameter(torch.empty(s.shape, device="meta")))
            getter.add((s.kind, s.expert), mod, attr)
            self.shapes[name] = s.shape

    @property
    def layers(self) -> nn.ModuleList:
        """The per-layer modules (what FSDP shards and activation checkpointing wraps)."""
        path = layer_prefix(self.family).split(".{i}")[0]
        if "." not in path:  # a top-level list named like this property (Ergo's "layers")
            mods = self.__dict__.get("_modules", {})
            if path not in mods:
                raise AttributeError(path)
            return mods[path]
        return self.get_submodule(path)

    def tables(self, T: int, device, dtype) -> decoder.Tables:
        key = (T, str(device), dtype)
        if key not in self._tables:
            if len(self._tables) > 8:
                self._tables.clear()
            self._tables[key] = decoder.tables(self.cfg, T, torch_ops(device), dtype)
        return self._tables[key]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens (B, T)."""
        emb = self.slots("embed")
        tb = self.tables(tokens.shape[1], emb.device, emb.dtype)
        return decoder.forward(self.cfg, self.slots, tokens, torch_ops(emb.device), layers=self.layers, tb=tb)

    # ---------------------------------------------------------------- building
    @classmethod
    def from_config(cls, hf_config: Mapping[str, Any]) -> "Decoder":
        """An empty (meta) decoder for an HF config dict."""
        family = family_for_config(hf_config)
        return cls(family, family.read(hf_config), hf_config)

    @classmethod
    def from_weights(cls, hf_config: Mapping[str, Any], weights: Mapping[str, Any], dtype=None,
                     device=None, family: Optional[Family] = None,
                     decoder: Optional[DecoderConfig] = None) -> "Decoder":
        """A decoder holding ``weights`` (numpy arrays or torch tensors by checkpoint name;
        numpy arrays are copied, so the caller's arrays are never written by training)."""
        if family is None:
            model = cls.from_config(hf_config)
        else:
            model = cls(family, decoder or family.read(hf_config), hf_config)
        tensors = {}
        for name, w in weights.items():
            t = torch.from_numpy(np.array(w, copy=True)) if isinstance(w, np.ndarray) else w
            tensors[name] = t.to(device=device, dtype=dtype or t.dtype)
        model.assign(tensors)
        return model

    @classmethod
    def from_pretrained(cls, folder, dtype=None, device=None) -> "Decoder":
        """Load an HF checkpoint folder (safetensors only, via hyperclone_core.io);
        ``dtype`` None keeps the stored dtype (bfloat16 stays bfloat16)."""
        from hyperclone_core.io import Checkpoint

        from .ops import TorchArrays

        ck = Checkpoint(folder)
        model = cls.from_config(ck.config)
        ck.validate(model.family, model.cfg)
        stored = TorchArrays().from_stored
        model.assign({name: stored(np.asarray(ck.raw(name)), ck.dtype(name)).to(device=device, dtype=dtype)
                      for name in model.shapes if name in ck})
        return model

    @classmethod
    def random(cls, hf_config: Mapping[str, Any], seed: int = 0, dtype=torch.float32, device=None,
               std: float = 0.02) -> "Decoder":
        """Fresh weights by the core's ``init_rule``, drawn from a seeded torch.Generator
        in checkpoint order; each tensor is written once, in place."""
        model = cls.from_config(hf_config)
        g = torch.Generator(device=device or "cpu").manual_seed(seed)
        kinds = {n: s.kind for n, s in slots(model.family, model.cfg).items()}
        tensors = {}
        for name, shape in model.shapes.items():
            rule, value = init_rule(kinds[name], model.cfg, std)
            t = torch.empty(shape, dtype=dtype, device=device)
            tensors[name] = t.normal_(0.0, value, generator=g) if rule == "normal" else t.fill_(value)
        model.assign(tensors)
        return model

    def assign(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Put tensors in place (no copy); every parameter must be given, with its shape."""
        missing = [n for n in self.shapes if n not in tensors]
        extra = [n for n in tensors if n not in self.shapes]
        if missing or extra:
            raise CheckpointError(
                f"{self.family.name} decoder: weights do not match the config: "
                f"missing {missing[:6]}, unexpected {extra[:6]}; are config and weights from the same model?"
            )
        for name, t in tensors.items():
            if tuple(t.shape) != tuple(self.shapes[name]):
                raise CheckpointError(f"tensor {name} has shape {list(t.shape)}; the config implies {list(self.shapes[name])}")
        self.load_state_dict(dict(tensors), strict=True, assign=True)
        self._tables.clear()

    def save_pretrained(self, folder, force: bool = False, max_shard_bytes: int = 5 * 2**30):
        """Write the HF layout atomically (config.json + safetensors); loads in transformers."""
        from .ops import TorchArrays

        config = dict(self.config)
        dtypes = {p.dtype for p in self.parameters()}
        if len(dtypes) == 1:
            config["torch_dtype"] = str(next(iter(dtypes))).replace("torch.", "")
        return TorchArrays().save_checkpoint(folder, config, self.state_dict(), force=force,
                                             max_shard_bytes=max_shard_bytes)

    def compile_layers(self, **options) -> "Decoder":
        """``torch.compile`` each layer in place (one graph per block, so the tables and
        the layer loop stay in Python); returns self."""
        for block in self.layers:
            block.compile(**options)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self.cfg
        return f"family={c.family}, hidden={c.hidden}, layers={c.layers}, heads={c.heads}/{c.kv_heads}"


__all__ = ["Block", "Decoder", "TorchOps", "torch_ops"]
