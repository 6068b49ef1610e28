"""The neutral decoder in torch: one module for every family.

The module tree is built from the family's role table, so ``state_dict()`` names
are exactly the checkpoint names (``model.layers.0.self_attn.q_proj.weight``,
``gpt_neox.layers.0.attention.query_key_value.weight`` ...): HF checkpoint folders
load directly and ``save_pretrained`` writes folders ``transformers`` loads.  Each
layer is its own module (``model.layers.N``), so FSDP can shard per layer.  The
forward follows ``hyperclone_core.reference.forward`` flag by flag; that function
is the definition, this is the fast version of it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperclone_core import family_for_config
from hyperclone_core.errors import CheckpointError, ConfigError
from hyperclone_core.reference import ACT_ALIASES
from hyperclone_core.spec import DecoderConfig, Family, tensor_names

_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)

_ACTS = {
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def activation(name: str):
    key = ACT_ALIASES.get(name, name)
    if key not in _ACTS:
        raise ConfigError(f"activation {name!r} is not supported by the torch decoder; supported: {sorted(_ACTS)}")
    return _ACTS[key]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Norms and softmax run in at least float32 (bf16/fp16 upcast)."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _child(root: nn.Module, path: list) -> nn.Module:
    """The module at ``path`` under ``root``, creating plain containers on the way."""
    mod = root
    for part in path:
        if part not in mod._modules:
            mod.add_module(part, nn.Module())
        mod = mod._modules[part]
    return mod


def layer_prefix(family: Family) -> str:
    """The module path of layer ``{i}`` (``model.layers.{i}``), shared by every per-layer role."""
    prefixes = {r.pattern.split("{i}")[0] for r in family.roles if r.per_layer}
    if len(prefixes) != 1:
        raise ConfigError(f"{family.name}: per-layer roles do not share one layer prefix: {sorted(prefixes)}")
    return prefixes.pop() + "{i}"


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
    """One decoder layer; its parameters sit under it with the checkpoint's names."""

    def __init__(self, cfg: DecoderConfig, index: int):
        super().__init__()
        self.cfg = cfg
        self.index = index
        self.slots = _Slots()
        self.act = activation(cfg.act)
        self.sliding = bool(cfg.sliding_window and cfg.layer_types
                            and cfg.layer_types[index] == "sliding_attention")

    # ---------------------------------------------------------------- pieces
    def _norm(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        return norm(self.cfg, x, self.slots(kind), self.slots(kind + ".bias"))

    def _lin(self, kind: str, x, expert=None):
        return F.linear(x, self.slots(kind, expert), self.slots(kind + ".bias", expert))

    def _attention(self, x: torch.Tensor, rope) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        H, KV, D = cfg.heads, cfg.kv_heads, cfg.head_dim
        if self.slots("attn.qkv") is not None:
            qkv = self._lin("attn.qkv", x)
            if cfg.family == "gpt_neox":  # per head: heads x 3 x head_dim
                q, k, v = qkv.view(B, T, H, 3, D).unbind(3)
                q, k, v = q.reshape(B, T, H * D), k.reshape(B, T, H * D), v.reshape(B, T, H * D)
            else:
                q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
        else:
            q, k, v = self._lin("attn.q", x), self._lin("attn.k", x), self._lin("attn.v", x)
        if cfg.clip_qkv:
            q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
        if cfg.qk_norm == "full":
            q = rms(cfg, q, self.slots("attn.q_norm"))
            k = rms(cfg, k, self.slots("attn.k_norm"))
        q, k, v = q.view(B, T, H, D), k.view(B, T, KV, D), v.view(B, T, KV, D)
        if cfg.qk_norm == "head":
            q = rms(cfg, q, self.slots("attn.q_norm"))
            k = rms(cfg, k, self.slots("attn.k_norm"))
        if rope is not None:
            q, k = apply_rope(q, rope, cfg), apply_rope(k, rope, cfg)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = attend(cfg, q, k, v, self.sliding)
        return self._lin("attn.o", out.transpose(1, 2).reshape(B, T, H * D))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.experts:
            return self._moe(x)
        if self.slots("mlp.gate_up") is not None:
            gate, up = F.linear(x, self.slots("mlp.gate_up")).chunk(2, dim=-1)
            return self._lin("mlp.down", self.act(gate) * up)
        up = self._lin("mlp.up", x)
        up = self.act(self._lin("mlp.gate", x)) * up if cfg.mlp == "gated" else self.act(up)
        return self._lin("mlp.down", up)

    def _moe(self, x: torch.Tensor) -> torch.Tensor:
        """Top-k routing; each expert runs on its own tokens only."""
        cfg = self.cfg
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = torch.softmax(F.linear(flat, self.slots("moe.router")).to(_compute_dtype(x.dtype)), dim=-1)
        weights, top = torch.topk(probs, cfg.experts_per_tok, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(flat)
        for e in range(cfg.experts):
            tok, slot = torch.where(top == e)
            if tok.numel() == 0:
                continue
            h = flat[tok]
            h = self.act(self._lin("moe.gate", h, e)) * self._lin("moe.up", h, e)
            out.index_add_(0, tok, self._lin("moe.down", h, e) * weights[tok, slot, None])
        return out.view(shape)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        cfg, n = self.cfg, self._norm
        if cfg.parallel_residual:
            return x + self._attention(n("norm.attn_in", x), rope) + self._mlp(n("norm.mlp_in", x))
        if cfg.placement == "pre":
            h = x + self._attention(n("norm.attn_in", x), rope)
            return h + self._mlp(n("norm.mlp_in", h))
        if cfg.placement == "post":
            h = n("norm.attn_in", x + self._attention(x, rope))
            return n("norm.mlp_in", h + self._mlp(h))
        if cfg.placement == "sandwich":
            h = x + n("norm.attn_out", self._attention(n("norm.attn_in", x), rope))
            return h + n("norm.mlp_out", self._mlp(n("norm.mlp_in", h)))
        if cfg.placement == "post_sublayer":
            h = x + n("norm.attn_out", self._attention(x, rope))
            return h + n("norm.mlp_out", self._mlp(h))
        raise ConfigError(f"unknown norm placement {cfg.placement!r}")


# -------------------------------------------------------------------- functions


def norm(cfg: DecoderConfig, x: torch.Tensor, w, b) -> torch.Tensor:
    if cfg.norm == "rms":
        return rms(cfg, x, w)
    cdt = _compute_dtype(x.dtype)
    if cfg.norm == "layer_noparam":
        w = b = None
    w = None if w is None else w.to(cdt)
    b = None if b is None else b.to(cdt)
    return F.layer_norm(x.to(cdt), (x.shape[-1],), w, b, cfg.norm_eps).to(x.dtype)


def rms(cfg: DecoderConfig, x: torch.Tensor, w) -> torch.Tensor:
    cdt = _compute_dtype(x.dtype)
    y = x.to(cdt)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)
    if w is not None:
        y = y * ((1.0 + w.to(cdt)) if cfg.norm_unit_offset else w.to(cdt))
    return y.to(x.dtype)


def rope_tables(cfg: DecoderConfig, positions: torch.Tensor, dtype: torch.dtype, device) -> tuple:
    """cos, sin of shape (T, rotary_dim), computed in float64 on the CPU (exact
    angles at long positions; MPS has no float64)."""
    rd = cfg.rotary_dim or cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))
    freqs = positions.detach().to("cpu", torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], -1)
    return emb.cos().to(device, dtype), emb.sin().to(device, dtype)


def apply_rope(x: torch.Tensor, rope: tuple, cfg: DecoderConfig) -> torch.Tensor:
    """x: (B, T, H, D); rotate-half on the first rotary_dim features."""
    cos, sin = rope
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], -1)
    out = rot * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return torch.cat([out, rest], -1) if rest.shape[-1] else out


def attend(cfg: DecoderConfig, q, k, v, sliding: bool) -> torch.Tensor:
    """Causal attention, q (B, H, T, D), k/v (B, KV, T, D).  SDPA (flash on CUDA)
    unless a softcap needs the scores."""
    T = q.shape[2]
    scale = cfg.attn_scale or cfg.head_dim ** -0.5
    rep = cfg.heads // cfg.kv_heads
    mask = None
    if sliding:
        i = torch.arange(T, device=q.device)
        mask = (i[None, :] <= i[:, None]) & ((i[:, None] - i[None, :]) < cfg.sliding_window)
    if cfg.attn_softcap:
        if rep > 1:
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        scores = torch.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
        if mask is None:
            i = torch.arange(T, device=q.device)
            mask = i[None, :] <= i[:, None]
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.to(_compute_dtype(q.dtype)), -1).to(q.dtype)
        return torch.matmul(probs, v)
    kw = {}
    if rep > 1:
        if _HAS_GQA:
            kw["enable_gqa"] = True
        else:  # pragma: no cover - torch < 2.5
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **kw)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, **kw)


# -------------------------------------------------------------------- the model


class Decoder(nn.Module):
    """The neutral decoder of ``family`` with config ``decoder``.

    Built with parameters on the meta device (no memory, no init); the
    classmethods ``from_weights``, ``from_pretrained`` and ``random`` fill them.
    ``config`` is the HF config dict (what ``save_pretrained`` writes).
    """

    def __init__(self, family: Family, decoder: DecoderConfig, config: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.family = family
        self.decoder = decoder
        self.config = dict(config) if config is not None else {"model_type": family.model_types[0]}
        cfg = decoder
        self.slots = _Slots()
        self._rope_cache: dict = {}
        prefix = layer_prefix(family)
        list_path = prefix.split(".{i}")[0].split(".")
        blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        _child(self, list_path[:-1]).add_module(list_path[-1], blocks)
        sizes = cfg.sizes()
        self.shapes: dict = {}
        for name, (role, i, e) in tensor_names(family, cfg).items():
            if role.kind == "lm_head" and cfg.tie_embeddings:
                continue
            shape = role.shape(sizes)
            if i is None:
                owner, rel, slots = self, name, self.slots
            else:
                owner = blocks[i]
                rel = name[len(prefix.replace("{i}", str(i))) + 1:]
                slots = owner.slots
            *path, attr = rel.split(".")
            mod = _child(owner, path)
            mod.register_parameter(attr, nn.Parameter(torch.empty(shape, device="meta")))
            slots.add((role.kind, e), mod, attr)
            self.shapes[name] = shape

    # ---------------------------------------------------------------- forward
    @property
    def layers(self) -> nn.ModuleList:
        """The per-layer modules (what FSDP shards and activation checkpointing wraps)."""
        return self.get_submodule(layer_prefix(self.family).split(".{i}")[0])

    def _rope(self, T: int, device, dtype):
        if self.decoder.pos != "rope":
            return None
        key = (T, str(device), dtype)
        if key not in self._rope_cache:
            if len(self._rope_cache) > 8:
                self._rope_cache.clear()
            self._rope_cache[key] = rope_tables(self.decoder, torch.arange(T), dtype, device)
        return self._rope_cache[key]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg, s = self.decoder, self.slots
        x = F.embedding(tokens, s("embed"))
        if cfg.embed_scale:
            x = x * torch.tensor(math.sqrt(cfg.hidden), dtype=x.dtype)
        if s("proj_in") is not None:
            x = F.linear(x, s("proj_in"))
        if cfg.pos == "learned":
            T = tokens.shape[1]
            pos = torch.arange(T, device=tokens.device) + cfg.learned_pos_offset
            x = x + F.embedding(pos, s("pos_embed"))[None]
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        cfg, s = self.decoder, self.slots
        if cfg.final_norm:
            x = norm(cfg, x, s("norm.final"), s("norm.final.bias"))
        if s("proj_out") is not None:
            x = F.linear(x, s("proj_out"))
        w = s("embed") if cfg.tie_embeddings else s("lm_head")
        logits = F.linear(x, w)
        if cfg.final_softcap:
            logits = torch.tanh(logits / cfg.final_softcap) * cfg.final_softcap
        return logits

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) for tokens (B, T)."""
        T = tokens.shape[1]
        if T > self.decoder.positions and self.decoder.pos == "learned":
            raise ConfigError(f"sequence length {T} exceeds the model's {self.decoder.positions} positions")
        x = self.embed(tokens)
        rope = self._rope(T, x.device, x.dtype)
        for block in self.layers:
            x = block(x, rope)
        return self.head(x)

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
        """A decoder holding ``weights`` (numpy arrays or torch tensors by checkpoint name)."""
        if family is None:
            model = cls.from_config(hf_config)
        else:
            model = cls(family, decoder or family.read(hf_config), hf_config)
        tensors = {}
        for name, w in weights.items():
            t = torch.from_numpy(np.ascontiguousarray(w)) if isinstance(w, np.ndarray) else w
            tensors[name] = t.to(device=device, dtype=dtype or t.dtype)
        model.assign(tensors)
        return model

    @classmethod
    def from_pretrained(cls, folder, dtype=None, device=None) -> "Decoder":
        """Load an HF checkpoint folder (safetensors only, via hyperclone_core.io);
        ``dtype`` None keeps the stored dtype (bfloat16 stays bfloat16)."""
        from hyperclone_core.io import Checkpoint

        from .backend import read_tensor

        ck = Checkpoint(folder)
        model = cls.from_config(ck.config)
        ck.validate(model.family, model.decoder)
        tensors = {}
        for name in model.shapes:
            if name in ck:
                tensors[name] = read_tensor(ck, name).to(device=device, dtype=dtype)
        model.assign(tensors)
        return model

    @classmethod
    def random(cls, hf_config: Mapping[str, Any], seed: int = 0, dtype=torch.float32, device=None,
               std: float = 0.02) -> "Decoder":
        """Fresh weights for training from scratch: matrices N(0, std), norm gains 1
        (0 under gemma's (1 + w)), biases 0.  Each tensor is written once, in place."""
        model = cls.from_config(hf_config)
        g = torch.Generator(device=device or "cpu").manual_seed(seed)
        kinds = {n: r.kind for n, (r, _, _) in tensor_names(model.family, model.decoder).items()}
        tensors = {}
        for name, shape in model.shapes.items():
            kind = kinds[name]
            t = torch.empty(shape, dtype=dtype, device=device)
            if kind.endswith(".bias"):
                t.zero_()
            elif kind.startswith("norm") or kind.endswith("_norm"):
                t.fill_(0.0 if model.decoder.norm_unit_offset else 1.0)
            else:
                t.normal_(0.0, std, generator=g)
            tensors[name] = t
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

    def save_pretrained(self, folder, force: bool = False, max_shard_bytes: int = 5 * 2**30):
        """Write the HF layout atomically (config.json + safetensors); loads in transformers."""
        from .backend import backend

        config = dict(self.config)
        dtypes = {p.dtype for p in self.parameters()}
        if len(dtypes) == 1:
            config["torch_dtype"] = str(next(iter(dtypes))).replace("torch.", "")
        return backend.save_checkpoint(folder, config, self.state_dict(), force=force,
                                       max_shard_bytes=max_shard_bytes)

    def compile_layers(self, **options) -> "Decoder":
        """``torch.compile`` each layer in place (one graph per block, so rope tables
        and the layer loop stay in Python); returns self."""
        for block in self.layers:
            block.compile(**options)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self.decoder
        return f"family={c.family}, hidden={c.hidden}, layers={c.layers}, heads={c.heads}/{c.kv_heads}"




__all__ = ["Decoder", "Block", "activation", "layer_prefix"]
