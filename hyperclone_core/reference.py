"""The numpy oracle: executes plans and runs the neutral decoder forward.

Every backend is held to these two functions.  They favour clarity over speed.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional

import numpy as np

from .plan import Plan, TensorPlan
from .spec import DecoderConfig, Family, tensor_names

# ---------------------------------------------------------------- plan execution


def zero_sum_noise(shape, axis: int, groups: np.ndarray, seed, dtype=np.float32) -> np.ndarray:
    """Standard Gaussian noise projected to sum 0 over the copies of each group
    (``seed``: an int or a list of ints, as numpy's SeedSequence takes)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(shape, dtype=np.dtype(dtype))
    project_zero_sum(noise, axis, groups)
    return noise


def project_zero_sum(x: np.ndarray, axis: int, groups: np.ndarray) -> None:
    """In place: subtract from every element the mean of its group along ``axis``."""
    from .growth import copy_ids

    n, m = len(groups), int(groups.max()) + 1
    k = n // m
    shape = x.shape[:axis] + (None,) + x.shape[axis + 1:]
    if k * m == n and k > 1 and x.flags.c_contiguous:
        j = np.arange(n)
        if np.array_equal(groups, j % m):  # tile: k blocks of m
            v = x.reshape(shape[:axis] + (k, m) + shape[axis + 1:])
            v -= v.mean(axis=axis, keepdims=True)
            return
        if np.array_equal(groups, j // k):  # interleave: m runs of k
            v = x.reshape(shape[:axis] + (m, k) + shape[axis + 1:])
            v -= v.mean(axis=axis + 1, keepdims=True)
            return
    # uneven growth: within one copy number each old index appears once, so a
    # loop over copy numbers (few) needs no scatter
    moved = np.moveaxis(x, axis, -1)
    cid = copy_ids(groups)
    sels = [np.flatnonzero(cid == c) for c in range(int(cid.max()) + 1)]
    sums = np.zeros(moved.shape[:-1] + (m,), dtype=np.float64)
    for sel in sels:
        sums[..., groups[sel]] += moved[..., sel]
    mean = (sums / np.bincount(groups, minlength=m)).astype(x.dtype)
    for sel in sels:
        moved[..., sel] -= mean[..., groups[sel]]


def mean_square(x: np.ndarray, chunk: int = 1 << 20) -> float:
    """mean(x**2) without a float64 copy of x (BLAS dot per chunk, summed in float64)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    total = sum(float(np.dot(flat[k:k + chunk], flat[k:k + chunk])) for k in range(0, flat.size, chunk))
    return total / max(flat.size, 1)


def run_program(tp: TensorPlan, arrays: Mapping[str, np.ndarray], w: np.ndarray) -> np.ndarray:
    """Execute one tensor's program on a numpy array (float32/float64)."""
    from .backend import run_program as interpret
    from .numpy_backend import backend

    return interpret(backend, tp, arrays, np.asarray(w))


def execute(plan: Plan, weights: Mapping[str, np.ndarray]) -> dict:
    """Expand a whole state dict (name -> array) with the numpy oracle."""
    return {t.name: run_program(t, plan.arrays, np.asarray(weights[t.source])) for t in plan.tensors}


# ---------------------------------------------------------------- forward


def _erf(x: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)


ACTIVATIONS: dict = {
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
}
ACT_ALIASES = {"swish": "silu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "quick_gelu": None}


def activation(name: str) -> Callable:
    key = ACT_ALIASES.get(name, name)
    if key not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not supported; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]


class Slots:
    """Weights by neutral slot: ``slots("attn.q", layer)``; None where absent."""

    def __init__(self, family: Family, cfg: DecoderConfig, weights: Mapping[str, np.ndarray], dtype):
        self.by_slot = {}
        for name, (role, i, e) in tensor_names(family, cfg).items():
            if name in weights:
                self.by_slot[(role.kind, i, e)] = np.asarray(weights[name]).astype(dtype)
        if cfg.tie_embeddings and ("lm_head", None, None) not in self.by_slot:
            self.by_slot[("lm_head", None, None)] = self.by_slot[("embed", None, None)]

    def __call__(self, kind: str, layer: Optional[int] = None, expert: Optional[int] = None):
        return self.by_slot.get((kind, layer, expert))


def _norm(cfg: DecoderConfig, x, w, b):
    x64 = x
    if cfg.norm == "rms":
        y = x64 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + cfg.norm_eps)
    else:
        mu = x64.mean(-1, keepdims=True)
        var = ((x64 - mu) ** 2).mean(-1, keepdims=True)
        y = (x64 - mu) / np.sqrt(var + cfg.norm_eps)
    if cfg.norm == "layer_noparam" or w is None:
        return y
    y = y * ((1.0 + w) if cfg.norm_unit_offset else w)
    return y + b if b is not None else y


def _linear(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


def _rope(x, positions, cfg: DecoderConfig):
    rd = cfg.rotary_dim or cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, rd, 2, dtype=np.float64) / rd))
    freqs = positions[:, None].astype(np.float64) * inv[None, :]
    emb = np.concatenate([freqs, freqs], -1)
    cos, sin = np.cos(emb).astype(x.dtype), np.sin(emb).astype(x.dtype)
    rot, rest = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = np.concatenate([-rot[..., half:], rot[..., :half]], -1)
    out = rot * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return np.concatenate([out, rest], -1)


def _softmax(x, axis=-1):
    x = x - x.max(axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis, keepdims=True)


def attention(cfg: DecoderConfig, s: Slots, i: int, x, positions):
    B, T, _ = x.shape
    H, KV, D = cfg.heads, cfg.kv_heads, cfg.head_dim
    fused = s("attn.qkv", i)
    if fused is not None:
        qkv = _linear(x, fused, s("attn.qkv.bias", i))
        if cfg.family == "gpt_neox":  # per head: heads x 3 x head_dim
            qkv = qkv.reshape(B, T, H, 3, D)
            q, k, v = (qkv[:, :, :, j].reshape(B, T, H * D) for j in range(3))
        else:  # concatenated q | k | v
            q, k, v = np.split(qkv, [H * D, H * D + KV * D], axis=-1)
    else:
        q = _linear(x, s("attn.q", i), s("attn.q.bias", i))
        k = _linear(x, s("attn.k", i), s("attn.k.bias", i))
        v = _linear(x, s("attn.v", i), s("attn.v.bias", i))
    if cfg.clip_qkv:
        q, k, v = (np.clip(t, -cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
    if cfg.qk_norm == "full":
        q = _norm(_rms(cfg), q, s("attn.q_norm", i), None)
        k = _norm(_rms(cfg), k, s("attn.k_norm", i), None)
    q = q.reshape(B, T, H, D)
    k = k.reshape(B, T, KV, D)
    v = v.reshape(B, T, KV, D)
    if cfg.qk_norm == "head":
        q = _norm(_rms(cfg), q, s("attn.q_norm", i), None)
        k = _norm(_rms(cfg), k, s("attn.k_norm", i), None)
    if cfg.pos == "rope":
        q, k = _rope(q, positions, cfg), _rope(k, positions, cfg)
    rep = H // KV
    k = np.repeat(k, rep, axis=2)
    v = np.repeat(v, rep, axis=2)
    scale = cfg.attn_scale or D ** -0.5
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) * np.asarray(scale, x.dtype)
    if cfg.attn_softcap:
        scores = np.tanh(scores / cfg.attn_softcap) * cfg.attn_softcap
    qi, ki = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = ki <= qi
    if cfg.sliding_window and cfg.layer_types and cfg.layer_types[i] == "sliding_attention":
        allowed &= (qi - ki) < cfg.sliding_window
    scores = np.where(allowed[None, None], scores, -np.inf)
    probs = _softmax(scores)
    out = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, H * D)
    return _linear(out, s("attn.o", i), s("attn.o.bias", i))


def _rms(cfg: DecoderConfig) -> DecoderConfig:
    from dataclasses import replace
    return replace(cfg, norm="rms", norm_unit_offset=cfg.norm_unit_offset)


def mlp(cfg: DecoderConfig, s: Slots, i: int, x):
    act = activation(cfg.act)
    if cfg.experts:
        return _moe(cfg, s, i, x, act)
    fused = s("mlp.gate_up", i)
    if fused is not None:
        gate, up = np.split(_linear(x, fused), 2, axis=-1)
        return _linear(act(gate) * up, s("mlp.down", i), s("mlp.down.bias", i))
    up = _linear(x, s("mlp.up", i), s("mlp.up.bias", i))
    if cfg.mlp == "gated":
        up = act(_linear(x, s("mlp.gate", i), s("mlp.gate.bias", i))) * up
    else:
        up = act(up)
    return _linear(up, s("mlp.down", i), s("mlp.down.bias", i))


def _moe(cfg, s, i, x, act):
    logits = _linear(x, s("moe.router", i))
    probs = _softmax(logits)
    top = np.argsort(-probs, axis=-1, kind="stable")[..., : cfg.experts_per_tok]
    weights = np.take_along_axis(probs, top, -1)
    weights = weights / weights.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for e in range(cfg.experts):
        w = (weights * (top == e)).sum(-1, keepdims=True)
        h = act(_linear(x, s("moe.gate", i, e))) * _linear(x, s("moe.up", i, e))
        out = out + w * _linear(h, s("moe.down", i, e))
    return out


def forward(family: Family, cfg: DecoderConfig, weights: Mapping[str, np.ndarray], tokens,
            dtype=np.float32) -> np.ndarray:
    """Logits (batch, seq, vocab) of the neutral decoder on ``tokens`` (batch, seq)."""
    s = Slots(family, cfg, weights, dtype)
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    positions = np.arange(T)
    x = s("embed")[tokens]
    if cfg.embed_scale:
        x = x * np.asarray(math.sqrt(cfg.hidden), dtype)
    if s("proj_in") is not None:
        x = _linear(x, s("proj_in"))
    if cfg.pos == "learned":
        x = x + s("pos_embed")[positions + cfg.learned_pos_offset][None]

    def n(kind, i=None, h=None):
        return _norm(cfg, h, s(kind, i), s(kind + ".bias", i))

    for i in range(cfg.layers):
        if cfg.parallel_residual:
            x = x + attention(cfg, s, i, n("norm.attn_in", i, x), positions) + mlp(cfg, s, i, n("norm.mlp_in", i, x))
        elif cfg.placement == "pre":
            h = x + attention(cfg, s, i, n("norm.attn_in", i, x), positions)
            x = h + mlp(cfg, s, i, n("norm.mlp_in", i, h))
        elif cfg.placement == "post":
            h = n("norm.attn_in", i, x + attention(cfg, s, i, x, positions))
            x = n("norm.mlp_in", i, h + mlp(cfg, s, i, h))
        elif cfg.placement == "sandwich":
            h = x + n("norm.attn_out", i, attention(cfg, s, i, n("norm.attn_in", i, x), positions))
            x = h + n("norm.mlp_out", i, mlp(cfg, s, i, n("norm.mlp_in", i, h)))
        elif cfg.placement == "post_sublayer":
            h = x + n("norm.attn_out", i, attention(cfg, s, i, x, positions))
            x = h + n("norm.mlp_out", i, mlp(cfg, s, i, h))
        else:
            raise ValueError(f"unknown norm placement {cfg.placement!r}")
    if cfg.final_norm:
        x = n("norm.final", None, x)
    if s("proj_out") is not None:
        x = _linear(x, s("proj_out"))
    logits = x @ s("lm_head").T
    if cfg.final_softcap:
        logits = np.tanh(logits / cfg.final_softcap) * cfg.final_softcap
    return logits
