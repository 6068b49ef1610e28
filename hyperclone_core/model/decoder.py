"""The decoder maths, written once for every family and every backend.

Every family is one ``DecoderConfig`` (norm kind and placement, MLP kind, RoPE,
fused-QKV layout, GQA, qk-norm, sliding windows, softcaps, parallel residual,
MoE routing); nothing here names a family.  The functions take an ``ArrayOps``:
an array namespace ``xp`` that numpy, ``jax.numpy`` and ``mlx.core`` all serve
(the functions used are the subset they share), plus a few hooks a backend may
override for speed or exactness (``linear``, ``embed``, fused ``attention``,
``rms_norm``/``layer_norm``, ``rope``, ``erf``, stable ``top_k``,
``stop_gradient``, the dtype policy).  numpy running it is the oracle; tracing
backends compile it; torch runs it inside its ``nn.Module`` for FSDP and compile.

RoPE tables and attention masks are built on the host in float64/bool numpy and
handed over with ``ops.constant`` (JAX without x64 and MLX on GPU have no float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import ConfigError
from . import rope
from .spec import DecoderConfig

ACT_ALIASES = {"swish": "silu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "gelu_python": "gelu", "gelu_python_tanh": "gelu_tanh",
               "gelu_accurate": "gelu_tanh"}
ACTIVATIONS = ("silu", "relu", "gelu", "gelu_tanh", "relu2", "xielu")
"""``xielu`` (Apertus) has learned per-layer scalars (``mlp.act.alpha_p`` ...): ``mlp`` reads them."""


def activation_key(name: str) -> str:
    """The canonical name of an HF activation; refuses, naming the supported ones."""
    key = ACT_ALIASES.get(name, name)
    if key not in ACTIVATIONS:
        raise ConfigError(f"activation {name!r} is not supported; supported: {sorted(ACTIVATIONS + tuple(ACT_ALIASES))}")
    return key


# ---------------------------------------------------------------- host tables


def rope_tables(cfg: DecoderConfig, T: int) -> tuple:
    """cos, sin of shape (T, rotary_dim) in float64 on the host (exact angles at long
    positions), for the config's RoPE variant (``rope.ROPE_TYPES``) at length T, times
    the variant's attention factor as transformers applies it."""
    inv, factor = rope.inv_freq(cfg, T)
    freqs = np.arange(T, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], -1)
    sign = -1.0 if cfg.rope_reverse else 1.0  # nanochat: rotate_half's signs flipped, each angle negated
    return np.cos(emb) * factor, np.sin(emb) * (factor * sign)


def causal_mask(T: int, window: int = 0, chunk: int = 0) -> np.ndarray:
    """(T, T) bool: query q may attend key k (k <= q, and q - k < window if a window is set,
    and both in the same block of ``chunk`` positions if chunked: Llama 4's local layers)."""
    q, k = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = k <= q
    if window:
        allowed &= (q - k) < window
    if chunk:
        allowed &= (q // chunk) == (k // chunk)
    return allowed


def alibi_slopes(heads: int, max_bias: float = 8.0) -> tuple:
    """ALiBi's per-head slopes (Press et al.; bloom, mpt, falcon): for a power of two n
    heads 2 ** (-max_bias * i / n), i = 1..n; otherwise the slopes of the largest power
    of two p below, then every other slope of 2p heads (the odd i's) for the rest.  They
    depend on the head count alone, so growth keeps the heads (it grows head_dim)."""
    def geometric(n):
        return [2.0 ** (-max_bias * (i + 1) / n) for i in range(n)]
    p = 2 ** int(math.floor(math.log2(heads)))
    slopes = geometric(p)
    if p != heads:
        slopes += geometric(2 * p)[0::2][:heads - p]
    return tuple(slopes)


def relative_positions(T: int) -> np.ndarray:
    """(T, T) float64: k - q, key position minus query position (ALiBi's distance)."""
    return (np.arange(T)[None, :] - np.arange(T)[:, None]).astype(np.float64)


def window_of(cfg: DecoderConfig, layer: int) -> int:
    """The sliding window of ``layer`` (0: full causal attention)."""
    if cfg.sliding_window and cfg.layer_types and cfg.layer_types[layer] == "sliding_attention":
        return int(cfg.sliding_window)
    return 0


def chunk_of(cfg: DecoderConfig, layer: int) -> int:
    """The attention chunk of ``layer`` (0: none; Llama 4's "chunked_attention" layers)."""
    if cfg.attn_chunk and cfg.layer_types and cfg.layer_types[layer] == "chunked_attention":
        return int(cfg.attn_chunk)
    return 0


def sliding_rope(cfg: DecoderConfig) -> DecoderConfig:
    """The config whose RoPE fields the sliding layers use (``rope_sliding`` over ``cfg``'s)."""
    return replace(cfg, **dict(cfg.rope_sliding)) if cfg.rope_sliding else cfg


def rope_of(cfg: DecoderConfig, layer: int) -> str:
    """Which RoPE ``layer`` applies: "" (none: a NoPE layer or no RoPE at all),
    "sliding" (the sliding layers' own tables) or "rope"."""
    if cfg.pos != "rope" or (cfg.nope_layers and cfg.nope_layers[layer]):
        return ""
    if (cfg.rope_sliding or cfg.full_head_dim) and cfg.layer_types and cfg.layer_types[layer] == "sliding_attention":
        return "sliding"
    return "rope"


def head_dim_of(cfg: DecoderConfig, layer: int) -> int:
    """The head size of ``layer``: ``full_head_dim`` on a full-attention layer where set (Gemma 4)."""
    if cfg.full_head_dim and cfg.layer_types and cfg.layer_types[layer] == "full_attention":
        return cfg.full_head_dim
    return cfg.head_dim


@dataclass
class Tables:
    """What every layer of one forward shares: sequence length and the RoPE tables
    (in the compute dtype, on the device); ``local_cos``/``local_sin``: the sliding
    layers' tables where they have their own RoPE (``rope_sliding``)."""

    T: int
    cos: Any = None
    sin: Any = None
    local_cos: Any = None
    local_sin: Any = None


def tables(cfg: DecoderConfig, T: int, ops: "ArrayOps", dtype) -> Tables:
    if cfg.pos != "rope":
        return Tables(T)
    # Gemma 4: the full layers' tables span their own head size (full_head_dim), the sliding layers' head_dim
    cos, sin = rope_tables(replace(cfg, head_dim=cfg.full_head_dim) if cfg.full_head_dim else cfg, T)
    tb = Tables(T, ops.constant(cos, dtype), ops.constant(sin, dtype))
    if cfg.rope_sliding or cfg.full_head_dim:
        cos, sin = rope_tables(sliding_rope(cfg), T)
        tb.local_cos, tb.local_sin = ops.constant(cos, dtype), ops.constant(sin, dtype)
    return tb


# ---------------------------------------------------------------- the namespace and its hooks


def extras_set(extra) -> bool:
    """Whether any optional feature passed to a hook (``attention``'s sinks or ALiBi
    slopes, ``rope``'s layout ...) is on: a backend override whose fused kernel does
    not know them hands the call to the core's maths (``super()``) instead."""
    return any(v is not None and v is not False and not (isinstance(v, (int, float)) and v == 0)
               for v in extra.values())


def _refuse_extras(hook: str, extra) -> None:
    if extras_set(extra):
        raise NotImplementedError(f"ArrayOps.{hook} has no option {sorted(k for k in extra)}")


class ArrayOps:
    """The array functions the maths calls.  Defaults use only ``xp``'s shared subset
    (``concatenate``, ``exp``, ``tanh``, ``sqrt``, ``clip``, ``where``, ``mean``,
    ``max``, ``sum``, ``reshape``, ``swapaxes``, ``repeat``, ``take_along_axis``,
    ``zeros_like``, ``argsort``) and array methods (``astype``, ``.T``, indexing, ``@``);
    a backend subclasses and overrides a hook where its framework has a fused or
    exact kernel.  An override must compute the same function (the conformance
    suite compares every backend with numpy running these defaults)."""

    def __init__(self, xp: Any):
        self.xp = xp

    # dtypes ------------------------------------------------------------
    def compute_dtype(self, dtype):
        """Norms and softmax run in at least float32."""
        return self.xp.float32 if dtype in self.low_precision() else dtype

    def low_precision(self) -> tuple:
        return tuple(getattr(self.xp, n) for n in ("float16", "bfloat16") if hasattr(self.xp, n))

    def astype(self, x, dtype):
        return x if x.dtype == dtype else x.astype(dtype)

    def constant(self, array: np.ndarray, dtype=None):
        """A host numpy array (float64 tables, bool masks, int indices) on the device."""
        return self.xp.asarray(array, dtype=dtype)

    def stop_gradient(self, x):
        return x

    # linear algebra ----------------------------------------------------
    def linear(self, x, w, b=None):
        y = x @ w.T
        return y if b is None else y + b

    def embed(self, table, ids):
        return table[ids]

    # elementwise -------------------------------------------------------
    def rsqrt(self, x):
        return 1.0 / self.xp.sqrt(x)

    def erf(self, x):  # pragma: no cover - numpy overrides; others supply theirs
        raise NotImplementedError(f"{type(self).__name__} has no erf: exact GELU needs one")

    def act(self, name: str) -> Callable:
        return getattr(self, activation_key(name))

    def silu(self, x):
        return x / (1.0 + self.xp.exp(-x))

    def relu(self, x):
        return self.xp.maximum(x, 0)

    def gelu(self, x):
        return 0.5 * x * (1.0 + self.erf(x / math.sqrt(2.0)))

    def gelu_tanh(self, x):
        return 0.5 * x * (1.0 + self.xp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))

    def relu2(self, x):
        r = self.relu(x)
        return r * r

    def expm1(self, x):
        return self.xp.expm1(x)

    def xielu(self, x, alpha_p, alpha_n, beta, eps):
        """xIELU (Apertus): with a_p = softplus(alpha_p), a_n = beta + softplus(alpha_n),
        a_p x^2 + beta x for x > 0, else (expm1(min(x, eps)) - x) a_n + beta x; the four
        parameters are 0-d or 1-element arrays in x's dtype."""
        xp = self.xp
        a_p = xp.log(1.0 + xp.exp(alpha_p))
        a_n = beta + xp.log(1.0 + xp.exp(alpha_n))
        neg = (self.expm1(xp.where(x > eps, eps, x)) - x) * a_n + beta * x
        return xp.where(x > 0, a_p * x * x + beta * x, neg)

    def softmax(self, x):
        x = x - self.xp.max(x, axis=-1, keepdims=True)
        e = self.xp.exp(x)
        return e / self.xp.sum(e, axis=-1, keepdims=True)

    # norms -------------------------------------------------------------
    def rms_norm(self, x, w, eps: float, unit_offset: bool):
        """x in the compute dtype; ``w`` may be None (no gain)."""
        y = x * self.rsqrt(self.xp.mean(x * x, axis=-1, keepdims=True) + eps)
        if w is None:
            return y
        return y * ((1.0 + w) if unit_offset else w)

    def layer_norm(self, x, w, b, eps: float):
        mu = self.xp.mean(x, axis=-1, keepdims=True)
        d = x - mu
        y = d * self.rsqrt(self.xp.mean(d * d, axis=-1, keepdims=True) + eps)
        if w is not None:
            y = y * w
        return y if b is None else y + b

    # positions and attention ----------------------------------------
    def rope(self, x, cos, sin, interleaved: bool = False, **extra):
        """RoPE on the first ``cos.shape[-1]`` features of x (B, T, H, D); cos and sin are
        the rotate-half tables (each frequency twice: ``[f, f]``).  Rotate-half pairs
        feature i with i + rd/2; ``interleaved`` (GPT-J, Cohere, GLM) pairs 2i with 2i + 1,
        pair i turning by frequency i."""
        _refuse_extras("rope", extra)
        xp = self.xp
        rd = cos.shape[-1]
        rot, rest = x[..., :rd], x[..., rd:]
        half = rd // 2
        if interleaved:
            shape = tuple(rot.shape)
            pairs = xp.reshape(rot, shape[:-1] + (half, 2))
            a, b = pairs[..., 0], pairs[..., 1]
            c, s = cos[None, :, None, :half], sin[None, :, None, :half]
            out = xp.reshape(xp.concatenate([(a * c - b * s)[..., None], (b * c + a * s)[..., None]], axis=-1), shape)
        else:
            rotated = xp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
            out = rot * cos[None, :, None, :] + rotated * sin[None, :, None, :]
        return xp.concatenate([out, rest], axis=-1) if rest.shape[-1] else out

    def attention(self, q, k, v, *, scale: float, window: int, softcap: float, sinks=None, chunk: int = 0,
                  alibi=None, keep=None, key_bias=None, **extra):
        """Causal attention; q (B, T, H, D), k/v (B, T, KV, D) with H a multiple of KV
        (query head h reads kv head h // (H // KV)); returns (B, T, H, D).  ``extra``:
        the optional features (``extras_set``), keyword arguments a backend's fused
        kernel does not know and hands back here.  ``sinks`` (H,): a learned logit per
        head that joins each softmax's denominator and reads no value (gpt-oss);
        ``chunk``: keys only from the query's block of that many positions (Llama 4);
        ``alibi`` (H,): per-head slopes of ALiBi's linear bias slope_h * (k - q) (a per-row
        shift of transformers' slope_h * k, which the softmax ignores), added to the
        scaled scores (bloom, mpt); ``keep`` (B, T, T) bool: the keys each query may read
        besides causality (DeepSeek sparse attention's indexer, ``index_keep``), or (B, H, T, T)
        per head (Doge); ``key_bias`` (B, H, T): a bias per head on each key, added to the
        scaled scores (Doge's dynamic mask, ``dynamic_key_bias``)."""
        _refuse_extras("attention", extra)
        xp = self.xp
        H, KV = q.shape[2], k.shape[2]
        if H != KV:
            k, v = xp.repeat(k, H // KV, axis=2), xp.repeat(v, H // KV, axis=2)
        q, k, v = (xp.swapaxes(t, 1, 2) for t in (q, k, v))
        scores = (q @ xp.swapaxes(k, -1, -2)) * scale
        if alibi is not None:
            slopes = self.constant(np.asarray(alibi, np.float64).reshape(-1, 1, 1), scores.dtype)
            scores = scores + slopes * self.constant(relative_positions(q.shape[2]), scores.dtype)
        if key_bias is not None:
            scores = scores + self.astype(key_bias, scores.dtype)[:, :, None, :]
        if softcap:
            scores = xp.tanh(scores / softcap) * softcap
        allowed = self.constant(causal_mask(q.shape[2], window, chunk))
        if keep is not None:
            allowed = allowed & (keep if len(keep.shape) == 4 else keep[:, None])
        scores = xp.where(allowed, scores, -math.inf)
        cdt = self.compute_dtype(scores.dtype)
        if sinks is None:
            probs = self.softmax(self.astype(scores, cdt))
        else:  # the sink is one more column of the softmax, dropped after it
            column = self.astype(xp.zeros_like(scores[..., :1]), cdt) + xp.reshape(self.astype(sinks, cdt), (H, 1, 1))
            probs = self.softmax(xp.concatenate([self.astype(scores, cdt), column], axis=-1))[..., :-1]
        return xp.swapaxes(self.astype(probs, q.dtype) @ v, 1, 2)

    # routing -------------------------------------------------------------
    def top_k(self, x, k: int):
        """Indices of the k largest entries along the last axis, largest first; ties go
        to the lower index (what transformers' routing picks)."""
        return self.xp.argsort(-x, axis=-1, kind="stable")[..., :k]


class NumpyOps(ArrayOps):
    """numpy: the oracle (float64 by default)."""

    def __init__(self):
        super().__init__(np)
        self._erf = np.frompyfunc(math.erf, 1, 1)

    def erf(self, x):
        return self._erf(x).astype(x.dtype)


# ---------------------------------------------------------------- the maths

Get = Callable[..., Any]
"""A weight getter: ``get(kind, expert=None)`` -> array or None (see ``structure.Params``)."""


def norm(cfg: DecoderConfig, o: ArrayOps, x, w, b):
    """The family's norm of x, computed in the compute dtype and returned in x's."""
    cdt = o.compute_dtype(x.dtype)
    y = o.astype(x, cdt)
    if cfg.norm == "layer_noparam":
        w = b = None
    w = None if w is None else o.astype(w, cdt)
    if w is not None and cfg.norm_unit_offset and cfg.norm != "rms":  # nemotron's LayerNorm-1p: gain (1 + w)
        w = 1.0 + w
    b = None if b is None else o.astype(b, cdt)
    if cfg.norm == "rms":
        y = o.rms_norm(y, w, cfg.norm_eps, cfg.norm_unit_offset)
    else:
        y = o.layer_norm(y, w, b, cfg.norm_eps)
    return o.astype(y, x.dtype)


def _per_head(o: ArrayOps, get: Get, kind: str, heads: int):
    """A gain stored whole, or one tensor per head (a ``{h}`` role, stablelm): then stacked
    to (heads, head_dim)."""
    w = get(kind)
    if w is not None or get(kind, 0) is None:
        return w
    rows = [get(kind, h) for h in range(heads)]
    return o.xp.concatenate([o.xp.reshape(r, (1, r.shape[0])) for r in rows], axis=0)


def _qk_norm(cfg: DecoderConfig, o: ArrayOps, x, w, b=None):
    """The qk-norm (``cfg.qk_norm_type``) of q or k: its gain (and bias) shared by every
    head (head_dim,), over the full width, or one per head, shaped (heads, head_dim) over
    x's (B, T, heads, head_dim): the norm runs gainless and the per-head gain follows."""
    qcfg = replace(cfg, norm=cfg.qk_norm_type)
    if w is None or len(w.shape) == 1:
        return norm(qcfg, o, x, w, b)
    cdt = o.compute_dtype(x.dtype)
    y = norm(qcfg, o, o.astype(x, cdt), None, None) * o.astype(w, cdt)
    return o.astype(y if b is None else y + o.astype(b, cdt), x.dtype)


LATENT_NORM_EPS = 1e-6
"""The epsilon of MLA's q and k/v latent RMS norms (transformers builds them with its default)."""
INDEX_NORM_EPS = 1e-6
"""The epsilon of the sparse-attention indexer's key LayerNorm (transformers' constant)."""


def latent_attention(cfg: DecoderConfig, get: Get, x, layer: int, tb: Tables, o: ArrayOps):
    """Multi-head latent attention (DeepSeek-V2/V3's MLA): q from a projection (or a
    rank-``q_lora`` latent, RMS-normed, projected up), k/v from one rank-``kv_lora``
    latent (RMS-normed, projected up to each head's nope part of k and its value) plus
    one RoPE'd part of k (``head_dim`` features) shared by every head; a head's q.k
    sums its nope and RoPE'd features.  Heads are padded with zeros to one width for
    the attention hook (exact: zero features add nothing to q.k, zero value columns
    are cut off)."""
    xp = o.xp
    B, T, _ = x.shape
    H, N, R, V, L = cfg.heads, cfg.nope_dim, cfg.head_dim, cfg.v_dim, cfg.kv_lora
    lcfg = replace(cfg, norm="rms", norm_eps=LATENT_NORM_EPS, norm_unit_offset=False)
    if cfg.q_lora:
        q_lat = norm(lcfg, o, o.linear(x, get("attn.q_a"), get("attn.q_a.bias")), get("attn.q_a_norm"), None)
        q = o.linear(q_lat, get("attn.q_b"))
    else:
        q = o.linear(x, get("attn.q"))
    q = xp.reshape(q, (B, T, H, N + R))
    kv_a = o.linear(x, get("attn.kv_a"), get("attn.kv_a.bias"))
    kv = o.linear(norm(lcfg, o, kv_a[..., :L], get("attn.kv_a_norm"), None), get("attn.kv_b"))
    kv = xp.reshape(kv, (B, T, H, N + V))
    q_rot = o.rope(q[..., N:], tb.cos, tb.sin, interleaved=cfg.rope_interleaved)
    k_rot = o.rope(xp.reshape(kv_a[..., L:], (B, T, 1, R)), tb.cos, tb.sin, interleaved=cfg.rope_interleaved)
    q = xp.concatenate([q[..., :N], q_rot], axis=-1) if N else q_rot
    k = xp.concatenate([kv[..., :N], xp.repeat(k_rot, H, axis=2)], axis=-1) if N else xp.repeat(k_rot, H, axis=2)
    v = kv[..., N:]
    if V < N + R:
        v = xp.concatenate([v, xp.zeros_like(k[..., :N + R - V])], axis=-1)
    elif V > N + R:
        q, k = (xp.concatenate([t, xp.zeros_like(v[..., :V - N - R])], axis=-1) for t in (q, k))
    keep = index_keep(cfg, get, x, q_lat, tb, o) if cfg.index_topk else None
    out = o.attention(q, k, v, scale=cfg.attn_scale or (N + R) ** -0.5, window=window_of(cfg, layer),
                      softcap=cfg.attn_softcap, keep=keep)
    return o.linear(xp.reshape(out[..., :V], (B, T, H * V)), get("attn.o"), get("attn.o.bias"))


def index_keep(cfg: DecoderConfig, get: Get, x, q_lat, tb: Tables, o: ArrayOps):
    """DeepSeek sparse attention's indexer (V3.2, GLM-MoE-DSA): the (B, T, T) keys each query
    reads, its ``index_topk`` best by the score sum_h w_h relu(q_h . k / sqrt(index_dim)) (q_h
    from the q latent, one k per position LayerNorm-ed, both RoPE'd on their first head_dim
    features, w = x's projection / sqrt(index_heads)); None when every key fits.  Keys tied
    at the k-th best score go to the lower index (transformers' torch.topk breaks such ties
    its own way: relu's exact zeros tie where no index head fires)."""
    xp = o.xp
    B, T, _ = x.shape
    Hi, Di, R = cfg.index_heads, cfg.index_dim, cfg.head_dim
    topk = min(cfg.index_topk, T)
    if topk >= T:
        return None
    cdt = o.compute_dtype(x.dtype)
    q = xp.reshape(o.linear(q_lat, get("attn.index_q")), (B, T, Hi, Di))
    k = norm(replace(cfg, norm="layer", norm_eps=INDEX_NORM_EPS), o, o.linear(x, get("attn.index_k")),
             get("attn.index_k_norm"), get("attn.index_k_norm.bias"))
    k = xp.reshape(k, (B, T, 1, Di))
    q, k = (o.astype(xp.concatenate([o.rope(t[..., :R], tb.cos, tb.sin, interleaved=cfg.index_rope_interleaved),
                                     t[..., R:]], axis=-1), cdt) for t in (q, k))
    scores = o.relu((xp.swapaxes(q, 1, 2) @ xp.swapaxes(xp.swapaxes(k, 1, 2), -1, -2)) * Di ** -0.5)  # (B, Hi, T, T)
    w = o.astype(o.linear(x, get("attn.index_w")), cdt) * Hi ** -0.5  # (B, T, Hi)
    index = xp.sum(scores * xp.swapaxes(w, 1, 2)[..., None], axis=1)  # (B, T, T)
    index = o.stop_gradient(xp.where(o.constant(causal_mask(T)), index, -math.inf))
    order = o.top_k(index, T)  # every key, best first (ties: the lower index first)
    rank = o.top_k(-o.astype(order, cdt), T)  # the inverse permutation: each key's place in that order
    return rank < topk


def attention(cfg: DecoderConfig, get: Get, x, layer: int, tb: Tables, o: ArrayOps):
    if cfg.kv_lora:
        return latent_attention(cfg, get, x, layer, tb, o)
    if get("attn.moa.q") is not None:
        return mixture_of_attention(cfg, get, x, layer, tb, o)
    xp = o.xp
    B, T, _ = x.shape
    H, KV, D = cfg.heads, cfg.kv_heads, head_dim_of(cfg, layer)
    gate = None  # an output gate: the attention's output times sigmoid(gate)
    if cfg.qkv_layout == "separate":
        if get("attn.q_gate") is not None:  # per head its query, then its gate (MiniCPM5-MoE's gated attention)
            qg = xp.reshape(o.linear(x, get("attn.q_gate"), get("attn.q_gate.bias")), (B, T, H, 2 * D))
            q, gate = (xp.reshape(t, (B, T, H * D)) for t in (qg[..., :D], qg[..., D:]))
        else:
            q = o.linear(x, get("attn.q"), get("attn.q.bias"))
        if get("attn.gate") is not None:  # a separate output-gate projection (AFMoE's gate_proj)
            gate = o.linear(x, get("attn.gate"), get("attn.gate.bias"))
        k = o.linear(x, get("attn.k"), get("attn.k.bias"))
        # a layer without a value projection (Gemma 4's attention_k_eq_v) reads its raw keys as values
        v = k if cfg.k_eq_v and get("attn.v") is None else o.linear(x, get("attn.v"), get("attn.v.bias"))
        KV = k.shape[-1] // D  # the layer's own (MiMo-V2-Flash's sliding layers have twice the kv heads)
    else:
        qkv = o.linear(x, get("attn.qkv"), get("attn.qkv.bias"))
        if cfg.qkv_layout == "per_head":  # heads x 3 x head_dim
            qkv = xp.reshape(qkv, (B, T, H, 3, D))
            q, k, v = (xp.reshape(qkv[:, :, :, j], (B, T, H * D)) for j in range(3))
        elif cfg.qkv_layout == "grouped":  # per kv head: its q_per_kv queries, its key, its value (falcon)
            G = H // KV
            qkv = xp.reshape(qkv, (B, T, KV, G + 2, D))
            q = xp.reshape(qkv[:, :, :, :G], (B, T, H * D))
            k, v = (xp.reshape(qkv[:, :, :, G + j], (B, T, KV * D)) for j in range(2))
        elif cfg.qkv_layout == "blocked":  # CodeGen: qkv_blocks blocks x (q, v, k) x the block's heads x head_dim
            nb = cfg.qkv_blocks
            qkv = xp.reshape(qkv, (B, T, nb, 3, H // nb, D))
            q, v, k = (xp.reshape(qkv[:, :, :, j], (B, T, H * D)) for j in range(3))
        else:  # "concat": q | k | v
            q, k, v = qkv[..., :H * D], qkv[..., H * D:(H + KV) * D], qkv[..., (H + KV) * D:]
    if cfg.clip_qkv and not cfg.clip_after_qk_norm:
        q, k, v = (xp.clip(t, -cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
    if cfg.qk_norm == "full":
        q, k = _qk_norm(cfg, o, q, _per_head(o, get, "attn.q_norm", H), get("attn.q_norm.bias")), \
            _qk_norm(cfg, o, k, _per_head(o, get, "attn.k_norm", KV), get("attn.k_norm.bias"))
    if cfg.clip_qkv and cfg.clip_after_qk_norm:  # OLMoE clamps the normed q and k
        q, k, v = (xp.clip(t, -cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
    Dv = cfg.v_dim or D  # MiMo-V2-Flash: values narrower than queries and keys
    q, k, v = xp.reshape(q, (B, T, H, D)), xp.reshape(k, (B, T, KV, D)), xp.reshape(v, (B, T, KV, Dv))
    if cfg.v_scale != 1.0:
        v = v * cfg.v_scale
    if cfg.v_norm:  # Gemma 4: each value head RMS-normed, without a gain
        v = norm(replace(cfg, norm="rms", norm_unit_offset=False), o, v, None, None)
    if cfg.qk_norm == "head" and not cfg.qk_norm_after_rope:
        q, k = _qk_norm(cfg, o, q, _per_head(o, get, "attn.q_norm", H), get("attn.q_norm.bias")), \
            _qk_norm(cfg, o, k, _per_head(o, get, "attn.k_norm", KV), get("attn.k_norm.bias"))
    which = rope_of(cfg, layer)
    if which:
        cos, sin = (tb.local_cos, tb.local_sin) if which == "sliding" else (tb.cos, tb.sin)
        q, k = (o.rope(t, cos, sin, interleaved=cfg.rope_interleaved) for t in (q, k))
    nope = bool(cfg.nope_layers and cfg.nope_layers[layer])
    if cfg.qk_norm == "head" and cfg.qk_norm_after_rope and not (nope and cfg.qk_norm_skip_nope):
        # HunYuan, Llama 4: the rotated heads are normed
        q, k = _qk_norm(cfg, o, q, _per_head(o, get, "attn.q_norm", H), get("attn.q_norm.bias")), \
            _qk_norm(cfg, o, k, _per_head(o, get, "attn.k_norm", KV), get("attn.k_norm.bias"))
    if nope and cfg.attn_temp_floor:  # Llama 4's temperature tuning: q grows with the position
        t = np.arange(T, dtype=np.float64) + 1.0
        temp = 1.0 + cfg.attn_temp_scale * np.log1p(np.floor(t / cfg.attn_temp_floor))
        q = q * o.constant(temp[None, :, None, None], q.dtype)
    if cfg.q_scale_beta:  # Ministral 3: q times 1 + beta * log(1 + floor(position / period)), every layer
        temp = 1.0 + cfg.q_scale_beta * np.log1p(np.floor(np.arange(T, dtype=np.float64) / cfg.q_scale_period))
        q = q * o.constant(temp[None, :, None, None], q.dtype)
    scale = (cfg.attn_scale or D ** -0.5) / (layer + 1 if cfg.attn_scale_inverse_layer else 1)
    if cfg.full_attn_scale and not window_of(cfg, layer):  # Ergo's global_attention_scale
        scale = scale * cfg.full_attn_scale
    kw = dict(scale=scale, window=window_of(cfg, layer), softcap=cfg.attn_softcap, sinks=get("attn.sinks"),
              chunk=chunk_of(cfg, layer), alibi=alibi_slopes(H) if cfg.pos == "alibi" else None)
    if get("attn.dt") is not None:  # Doge's dynamic mask
        kw["key_bias"], kw["keep"] = dynamic_key_bias(cfg, get, v, H, layer, o)
    out = differential(cfg, get, q, k, v, layer, o, **kw) if cfg.diff_attn else o.attention(q, k, v, **kw)
    out = xp.reshape(out, (B, T, H * Dv))
    if gate is not None:
        if cfg.attn_gate_act == "softplus":  # Laguna; torch's threshold 20
            gate = xp.where(gate > 20.0, gate, xp.log(1.0 + xp.exp(xp.clip(gate, None, 20.0))))
        else:
            gate = _sigmoid(o, gate)
        if cfg.attn_gate_per_head:  # one gate per head
            out = xp.reshape(xp.reshape(out, (B, T, H, Dv)) * gate[..., None], (B, T, H * Dv))
        else:
            out = out * gate
    return o.linear(out, get("attn.o"), get("attn.o.bias"))


def dynamic_key_bias(cfg: DecoderConfig, get: Get, v, H: int, layer: int, o: ArrayOps) -> tuple:
    """Doge's dynamic mask: (key_bias (B, H, T), keep (B, H, T, T) or None).  Each kv head biases
    every key by exp(A softplus(dt)), dt the ``attn.dt`` projection of the key's values (all kv
    heads'), ``attn.dt_a`` the head's A; under ``dyn_keep`` a query reads only the ``dyn_keep``
    keys it may read (causal, in the layer's window or chunk) of largest bias (ties: the lower
    index) when the sequence is longer."""
    xp = o.xp
    B, T, KV, Dv = v.shape
    cdt = o.compute_dtype(v.dtype)
    dt = o.astype(o.linear(xp.reshape(v, (B, T, KV * Dv)), get("attn.dt"), get("attn.dt.bias")), cdt)
    soft = xp.where(dt > 20.0, dt, xp.log(1.0 + xp.exp(xp.clip(dt, None, 20.0))))  # softplus (torch's threshold 20)
    bias = xp.exp(o.astype(get("attn.dt_a"), cdt) * soft)  # (B, T, KV)
    bias = xp.swapaxes(xp.repeat(bias, H // KV, axis=-1), 1, 2)  # (B, H, T)
    keep = None
    if cfg.dyn_keep and T > cfg.dyn_keep:
        allowed = o.constant(causal_mask(T, window_of(cfg, layer), chunk_of(cfg, layer)))
        ranked = o.stop_gradient(xp.where(allowed, bias[:, :, None, :], -math.inf))
        order = o.top_k(ranked, T)
        keep = o.top_k(-o.astype(order, cdt), T) < cfg.dyn_keep  # each key's place in that order
    return o.astype(bias, v.dtype), keep


def diff_lambda_init(layer: int) -> float:
    """Differential attention's lambda_init of ``layer`` (a function of the layer index alone)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


def differential(cfg: DecoderConfig, get: Get, q, k, v, layer: int, o: ArrayOps, **kw):
    """DiffLlama's differential attention, (B, T, heads/2, 2 head_dim): each query head
    attends twice, to the values of the first half of the kv heads then of the second (kv head
    j of a half serving the query heads of kv heads j and j + KV/2); query head h's two outputs,
    side by side, minus lambda times those of head h + heads/2, RMS-normed over the 2 head_dim
    features (no gain) and times 1 - lambda_init.  lambda = exp(lambda_q1 . lambda_k1) -
    exp(lambda_q2 . lambda_k2) + lambda_init (``diff_lambda_init``)."""
    xp = o.xp
    H, half = q.shape[2], v.shape[2] // 2
    v1, v2 = (xp.concatenate([t, t], axis=2) for t in (v[:, :, :half], v[:, :, half:]))
    out = xp.concatenate([o.attention(q, k, v1, **kw), o.attention(q, k, v2, **kw)], axis=-1)
    cdt = o.compute_dtype(q.dtype)
    lam1, lam2 = (o.astype(xp.exp(xp.sum(o.astype(get(f"attn.lambda_q{j}"), cdt) * o.astype(get(f"attn.lambda_k{j}"), cdt))),
                           q.dtype) for j in (1, 2))
    init = diff_lambda_init(layer)
    y = out[:, :, :H // 2] - (lam1 - lam2 + init) * out[:, :, H // 2:]
    y = norm(replace(cfg, norm="rms", norm_unit_offset=False), o, y, None, None)
    return y * o.constant(np.asarray(1.0 - init), y.dtype)


def mixture_of_attention(cfg: DecoderConfig, get: Get, x, layer: int, tb: Tables, o: ArrayOps):
    """JetMoE's mixture of attention heads: the router (``attn.moa.router``, routed as ``route``
    routes the MLP's experts) picks experts per token; expert e's query projection
    (``attn.moa.q`` [e]: kv_heads heads) attends to the shared keys and values (fused
    ``attn.kv``: k | v), its output projection (``attn.moa.o`` [e]) maps the heads back, and
    the token sums them weighted by its routing weights, plus ``attn.moa.bias``.  A query head
    reads only the keys and values, so every expert is computed densely on every token."""
    xp = o.xp
    B, T, _ = x.shape
    KV, D = cfg.kv_heads, cfg.head_dim
    top, weights = route(cfg, lambda kind: get("attn.moa.router") if kind == "moe.router" else None, x, o)
    kv = o.linear(x, get("attn.kv"))
    k, v = xp.reshape(kv[..., :KV * D], (B, T, KV, D)), xp.reshape(kv[..., KV * D:], (B, T, KV, D))
    which = rope_of(cfg, layer)
    cos, sin = (tb.local_cos, tb.local_sin) if which == "sliding" else (tb.cos, tb.sin)
    if which:
        k = o.rope(k, cos, sin, interleaved=cfg.rope_interleaved)
    kw = dict(scale=cfg.attn_scale or D ** -0.5, window=window_of(cfg, layer), softcap=cfg.attn_softcap,
              chunk=chunk_of(cfg, layer))
    wq, wo = get("attn.moa.q"), get("attn.moa.o")
    out = xp.zeros_like(x)
    for e in range(cfg.experts):
        w_e = xp.sum(weights * o.astype(top == e, weights.dtype), axis=-1, keepdims=True)
        q = xp.reshape(o.linear(x, wq[e]), (B, T, KV, D))
        if which:
            q = o.rope(q, cos, sin, interleaved=cfg.rope_interleaved)
        y = xp.reshape(o.attention(q, k, v, **kw), (B, T, KV * D))
        out = out + w_e * o.linear(y, wo[e])
    b = get("attn.moa.bias")
    return out if b is None else out + b


def activation(cfg: DecoderConfig, get: Get, x, o: ArrayOps) -> Callable:
    """The MLP's activation; xIELU's learned scalars come from the layer's weights."""
    if activation_key(cfg.act) != "xielu":
        return o.act(cfg.act)
    ap, an, beta, eps = (o.astype(get(f"mlp.act.{n}"), x.dtype) for n in ("alpha_p", "alpha_n", "beta", "eps"))
    return lambda h: o.xielu(h, ap, an, beta, eps)


def mlp(cfg: DecoderConfig, get: Get, x, o: ArrayOps):
    act = activation(cfg, get, x, o)
    if cfg.experts and get("moe.router") is not None:  # a dense layer of an MoE stack has no router
        return moe(cfg, get, x, o, act)
    if cfg.fused_gate_up:
        gu = o.linear(x, get("mlp.gate_up"), get("mlp.gate_up.bias"))
        half = gu.shape[-1] // 2
        return o.linear(act(gu[..., :half]) * gu[..., half:], get("mlp.down"), get("mlp.down.bias"))
    up = o.linear(x, get("mlp.up"), get("mlp.up.bias"))
    up = act(o.linear(x, get("mlp.gate"), get("mlp.gate.bias"))) * up if cfg.mlp == "gated" else act(up)
    return o.linear(up, get("mlp.down"), get("mlp.down.bias"))


def moe(cfg: DecoderConfig, get: Get, x, o: ArrayOps, act: Callable):
    """Top-k routing (``route``), computed densely (every expert on every token, weighted by
    its routing weight, 0 where not chosen): static shapes for tracing backends, and no
    gradient through the index arrays; plus the shared experts (``shared_experts``)."""
    xp = o.xp
    top, weights = route(cfg, get, x, o)
    out = xp.zeros_like(x)
    for e in range(cfg.experts):
        w_e = xp.sum(weights * o.astype(top == e, weights.dtype), axis=-1, keepdims=True)
        if cfg.moe_input_weighted:  # Llama 4: the weight scales the expert's input
            out = out + expert(cfg, get, w_e * x, o, act, e)
        else:
            out = out + w_e * expert(cfg, get, x, o, act, e)
    b = get("moe.bias")  # JetMoE: a bias on the routed experts' sum
    if b is not None:
        out = out + b
    shared = shared_experts(cfg, get, x, o, act)
    if shared is not None and cfg.shared_scale != 1.0:  # cohere2_moe's "average": (routed + shared) / 2
        shared = shared * o.constant(np.asarray(cfg.shared_scale), shared.dtype)
    return out if shared is None else out + shared


def _sigmoid(o: ArrayOps, x):
    return 1.0 / (1.0 + o.xp.exp(-x))


def route(cfg: DecoderConfig, get: Get, x, o: ArrayOps) -> tuple:
    """The router: (top (..., k) chosen experts, best first; weights (..., k) in x's dtype).

    Scores are the softmax (or, ``moe_scoring`` "sigmoid", the sigmoid) of the router's
    logits, in the compute dtype.  The choice ranks the scores plus the correction bias
    (``moe.correction.bias``: DeepSeek-V3's ``e_score_correction_bias``, Ernie's
    ``moe_statics``) where one is stored; under grouped top-k (``moe_groups``) only the
    experts of the ``moe_topk_groups`` groups with the largest top-``moe_group_top`` sums
    compete.  The weights are the chosen experts' scores (without the bias), renormalised
    to sum 1 under ``moe_renorm`` (a softmax over the top-k logits is the same), times
    ``moe_scale``."""
    xp = o.xp
    logits = o.astype(o.linear(x, get("moe.router"), get("moe.router.bias")), o.compute_dtype(x.dtype))
    if cfg.router_softcap:  # Laguna: soft-capped logits
        logits = xp.tanh(logits / cfg.router_softcap) * cfg.router_softcap
    if cfg.moe_scoring == "sparsemixer":
        top, weights = _sparsemixer(o, logits, cfg.router_jitter)
        return top, o.astype(weights, x.dtype)
    scores = _sigmoid(o, logits) if cfg.moe_scoring == "sigmoid" else o.softmax(logits)
    choice = o.stop_gradient(logits if cfg.moe_bias_on_logits else scores)
    bias = get("moe.correction.bias")
    if bias is not None:
        choice = choice + o.stop_gradient(o.astype(bias, choice.dtype))
    if cfg.moe_groups > 1:
        choice = _group_limited(o, choice, cfg.moe_groups, cfg.moe_topk_groups, cfg.moe_group_top)
    top = o.top_k(choice, cfg.experts_per_tok)
    weights = xp.take_along_axis(scores, top, axis=-1)
    if cfg.moe_renorm:
        weights = weights / xp.sum(weights, axis=-1, keepdims=True)
    if cfg.moe_scale != 1.0:
        weights = weights * cfg.moe_scale
    return top, o.astype(weights, x.dtype)


def _sparsemixer(o: ArrayOps, logits, eps: float) -> tuple:
    """PhiMoE's sparsemixer at inference: two rounds, each choosing the best expert left and
    weighting it by its softmax among the experts whose logit is within 2 ``eps`` (relative:
    (best - s) / max(|s|, best)) of the best; the first choice leaves the second round."""
    xp = o.xp
    ids = o.constant(np.arange(logits.shape[-1]))
    masked, tops, weights = logits, [], []
    for _ in range(2):
        i = o.top_k(o.stop_gradient(masked), 1)
        best = xp.take_along_axis(masked, i, axis=-1)
        far = o.stop_gradient((best - logits) / xp.maximum(xp.maximum(logits, -logits), best) > 2 * eps)
        gates = o.softmax(xp.where(far, -math.inf, masked))
        tops.append(i)
        weights.append(xp.take_along_axis(gates, i, axis=-1))
        masked = xp.where(ids == i, -math.inf, masked)
    return xp.concatenate(tops, axis=-1), xp.concatenate(weights, axis=-1)


def _group_limited(o: ArrayOps, choice, groups: int, keep: int, top: int = 2):
    """``choice`` (..., E) with the experts outside the ``keep`` best of ``groups`` equal
    groups set to -inf (out of the choice); a group ranks by the sum of its ``top`` largest entries."""
    xp = o.xp
    E = choice.shape[-1]
    lead = tuple(choice.shape[:-1])
    g = xp.reshape(choice, lead + (groups, E // groups))
    best2 = xp.take_along_axis(g, o.top_k(g, min(top, E // groups)), axis=-1)
    kept = o.top_k(xp.sum(best2, axis=-1), keep)  # (..., keep)
    ids = o.constant(np.arange(groups))
    hit = xp.sum(o.astype(kept[..., :, None] == ids, choice.dtype), axis=-2) > 0  # (..., groups)
    mask = xp.repeat(hit, E // groups, axis=-1)
    return xp.where(mask, choice, -math.inf)


def shared_experts(cfg: DecoderConfig, get: Get, x, o: ArrayOps, act: Callable):
    """The always-on shared expert MLP (None where the layer has none): gate/up/down or a fused
    gate|up (``moe.shared.*``), times sigmoid(``moe.shared.router`` x) where that gate is
    stored (Qwen2-MoE's ``shared_expert_gate``)."""
    down = get("moe.shared.down")
    if down is None:
        return None
    gu = get("moe.shared.gate_up")
    if gu is not None:
        h = o.linear(x, gu, get("moe.shared.gate_up.bias"))
        half = h.shape[-1] // 2
        gate, up = h[..., :half], h[..., half:]
    elif get("moe.shared.gate") is None:  # Ergo: an ungated shared expert
        gate, up = None, o.linear(x, get("moe.shared.up"), get("moe.shared.up.bias"))
    else:
        gate = o.linear(x, get("moe.shared.gate"), get("moe.shared.gate.bias"))
        up = o.linear(x, get("moe.shared.up"), get("moe.shared.up.bias"))
    y = o.linear(act(up) if gate is None else act(gate) * up, down, get("moe.shared.down.bias"))
    sn = get("moe.shared.norm")  # Ergo: the shared expert's output RMS-normed
    if sn is not None:
        y = norm(replace(cfg, norm="rms", norm_unit_offset=False), o, y, sn, None)
    g = get("moe.shared.router")
    return y if g is None else _sigmoid(o, o.linear(x, g)) * y


def _stacked(cfg: DecoderConfig, get: Get, kind: str, e: int) -> tuple:
    """Expert e's (out, in) matrix and bias from the stacked tensors ``kind`` (``experts_stacked``)."""
    w, b = get(kind), get(kind + ".bias")
    return (w[e].T if cfg.experts_stacked == "in_out" else w[e]), (None if b is None else b[e])


def expert(cfg: DecoderConfig, get: Get, x, o: ArrayOps, act: Callable, e: int):
    """Expert e's gated MLP on x: its own tensors (``moe.gate``/``moe.up``/``moe.down``) or row
    e of stacked ones (``moe.experts.gate_up``/``moe.experts.down``, gate|up fused as halves or
    interleaved), joined by ``expert_glu``."""
    if cfg.experts_stacked == "flat":  # DBRX: (experts*ffn, hidden) gate, up, and down read (in, out)
        gate_w, up_w, down_w = (o.xp.reshape(w, (cfg.experts, -1, w.shape[-1]))[e]
                                for w in (get("moe.experts.gate"), get("moe.experts.up"), get("moe.experts.down")))
        gate, up = o.linear(x, gate_w), o.linear(x, up_w)
        down, down_b = down_w.T, None
    elif cfg.experts_stacked and get("moe.experts.gate_up") is None:  # Ergo: ungated experts (act(up))
        w, b = _stacked(cfg, get, "moe.experts.up", e)
        dw, db = _stacked(cfg, get, "moe.experts.down", e)
        y = o.linear(act(o.linear(x, w, b)), dw, db)
        g = get("moe.experts.norm")  # Ergo: each expert's output RMS-normed by its own gain
        return y if g is None else norm(replace(cfg, norm="rms", norm_unit_offset=False), o, y, g[e], None)
    elif cfg.experts_stacked:
        w, b = _stacked(cfg, get, "moe.experts.gate_up", e)
        h = o.linear(x, w, b)
        if cfg.gate_up_interleaved:  # gate, up, gate, up, ...
            pairs = o.xp.reshape(h, tuple(h.shape[:-1]) + (h.shape[-1] // 2, 2))
            gate, up = pairs[..., 0], pairs[..., 1]
        else:
            half = h.shape[-1] // 2
            gate, up = h[..., :half], h[..., half:]
        down, down_b = _stacked(cfg, get, "moe.experts.down", e)
    else:
        gate = o.linear(x, get("moe.gate", e), get("moe.gate.bias", e))
        up = o.linear(x, get("moe.up", e), get("moe.up.bias", e))
        down, down_b = get("moe.down", e), get("moe.down.bias", e)
    if cfg.expert_glu == "clamped":  # gpt-oss
        xp = o.xp
        gate = xp.clip(gate, None, cfg.glu_limit)
        up = xp.clip(up, -cfg.glu_limit, cfg.glu_limit)
        h = (up + 1.0) * (gate / (1.0 + xp.exp(-cfg.glu_alpha * gate)))
    else:
        h = act(gate) * up
    return o.linear(h, down, down_b)


def _scaled(cfg: DecoderConfig, o: ArrayOps, y):
    """A sublayer's output times the residual multiplier (granite), in y's dtype."""
    if cfg.residual_multiplier == 1.0:
        return y
    return y * o.constant(np.asarray(cfg.residual_multiplier), y.dtype)


def _transposed(get: Get) -> Get:
    """A getter that hands out 2-D weights stored (in, out) as the (out, in) ``linear`` reads."""
    def t(kind, expert=None):
        w = get(kind, expert) if expert is not None else get(kind)
        return w.T if w is not None and len(w.shape) == 2 else w
    return t


def _transposed_kinds(get: Get, kinds: frozenset) -> Get:
    """A getter reading the 2-D tensors of ``kinds`` transposed (stored (in, out))."""
    def t(kind, *expert):
        w = get(kind, *expert)
        return w.T if w is not None and kind in kinds and len(w.shape) == 2 else w
    return t


def _residual_add(o: ArrayOps, w, x, y):
    """x + y, or under Ergo's learned per-channel gate w: sigmoid(w) y + sqrt(1 + sigmoid(w))
    exp(-softplus(w) / 2) x."""
    if w is None:
        return x + y
    xp = o.xp
    w = o.astype(w, o.compute_dtype(x.dtype))
    e = xp.exp(-xp.maximum(w, -w))  # sigmoid without overflow (an inserted layer's gate is -1e4: exactly 0)
    s = xp.where(w >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    soft = xp.where(w > 20.0, w, xp.log(1.0 + xp.exp(xp.clip(w, None, 20.0))))  # softplus (torch's threshold 20)
    keep = xp.sqrt(1.0 + s) * xp.exp(-0.5 * soft)
    return o.astype(s * y + keep * x, x.dtype)


def block(cfg: DecoderConfig, get: Get, x, layer: int, tb: Tables, o: ArrayOps):
    """One decoder layer: its norm placement around attention and MLP (each sublayer's
    output times ``residual_multiplier``).  Conv1D-stored weights (``transposed_linear``)
    are read transposed: every 2-D tensor of the layer is a projection.  A layer storing
    ``layer.scalar`` (Gemma 4) multiplies its output, the whole residual stream, by it."""
    scalar = get("layer.scalar")
    if scalar is not None:
        inner = block(cfg, lambda kind, *e: None if kind == "layer.scalar" else get(kind, *e), x, layer, tb, o)
        return inner * scalar
    if cfg.transposed_linear:
        get = _transposed(get)
    if cfg.transposed_kinds:  # Ergo: some tensors stored (in, out)
        get = _transposed_kinds(get, frozenset(cfg.transposed_kinds))

    def n(kind, h):
        if kind == "norm.attn_in" and layer == 0 and not cfg.first_attn_norm:
            return h  # ModernBERT: layer 0's attention reads the (normed) embeddings as they are
        return norm(cfg, o, h, get(kind), get(kind + ".bias"))

    def attn(h):
        return attention(cfg, get, h, layer, tb, o)

    def ff(h):
        return mlp(cfg, get, h, o)

    def r(y):  # what a sublayer adds to the residual stream
        return _scaled(cfg, o, y)

    if cfg.parallel_residual:  # under one norm (shared_block_norm) or one each
        h = n("norm.attn_in", x)
        return x + r(attn(h)) + r(ff(h if cfg.shared_block_norm else n("norm.mlp_in", x)))
    if cfg.placement == "pre":
        g = get("res.attn")  # Doge: a learned gain on the residual stream (per channel) under each sublayer
        h = (x if g is None else x * g) + r(attn(n("norm.attn_in", x)))
        y = ff(n("norm.mlp_in", h))
        if get("norm.mlp_out") is not None:  # A.X-K1: a layer storing one norms its MLP's output
            y = n("norm.mlp_out", y)
        g = get("res.mlp")
        return (h if g is None else h * g) + r(y)
    if cfg.placement == "post":
        h = n("norm.attn_in", x + r(attn(x)))
        return n("norm.mlp_in", h + r(ff(h)))
    if cfg.placement == "sandwich":
        h = _residual_add(o, get("res.attn_gate"), x, r(n("norm.attn_out", attn(n("norm.attn_in", x)))))
        return _residual_add(o, get("res.mlp_gate"), h, r(n("norm.mlp_out", ff(n("norm.mlp_in", h)))))
    if cfg.placement == "post_sublayer":
        h = x + r(n("norm.attn_out", attn(x)))
        return h + r(n("norm.mlp_out", ff(h)))
    raise ValueError(f"unknown norm placement {cfg.placement!r}")


def embed(cfg: DecoderConfig, get: Get, tokens, o: ArrayOps):
    """Token (and learned position) embeddings, scaled and projected as the family says."""
    x = o.embed(get("embed"), tokens)
    if cfg.embed_scale:
        x = x * o.constant(np.asarray(math.sqrt(cfg.hidden)), x.dtype)
    if cfg.embed_multiplier != 1.0:
        x = x * o.constant(np.asarray(cfg.embed_multiplier), x.dtype)
    if get("proj_in") is not None:
        x = o.linear(x, get("proj_in"))
    if cfg.pos == "learned":
        T = tokens.shape[1]
        pos = o.constant(np.arange(T) + cfg.learned_pos_offset)
        x = x + o.embed(get("pos_embed"), pos)[None]
    if cfg.embed_norm:  # bloom's word_embeddings_layernorm
        x = norm(cfg, o, x, get("norm.embed"), get("norm.embed.bias"))
    return x


def head(cfg: DecoderConfig, get: Get, x, o: ArrayOps):
    """Final norm, projection and LM head (the embedding table when tied), softcapped."""
    if cfg.final_norm:
        x = norm(cfg, o, x, get("norm.final"), get("norm.final.bias"))
    if get("proj_out") is not None:
        x = o.linear(x, get("proj_out"))
    if cfg.head_act:  # ModernBERT's prediction head: dense, activation, norm
        x = norm(cfg, o, o.act(cfg.head_act)(o.linear(x, get("head.dense"), get("head.dense.bias"))),
                 get("norm.head"), get("norm.head.bias"))
    logits = o.linear(x, get("embed") if cfg.tie_embeddings else get("lm_head"), get("lm_head.bias"))
    if cfg.logit_scale != 1.0:
        logits = logits * o.constant(np.asarray(cfg.logit_scale), logits.dtype)
    if cfg.final_softcap:
        logits = o.xp.tanh(logits / cfg.final_softcap) * cfg.final_softcap
    return logits


def check_length(cfg: DecoderConfig, T: int) -> None:
    if cfg.pos == "learned" and T > cfg.positions:
        raise ConfigError(f"sequence length {T} exceeds the model's {cfg.positions} positions (learned position embeddings)")


def forward(cfg: DecoderConfig, params, tokens, o: ArrayOps,
            layers: Optional[Sequence[Callable]] = None, tb: Optional[Tables] = None):
    """Logits (B, T, vocab) of tokens (B, T).

    ``params`` is a ``structure.Params`` (or any getter ``params(kind, layer=None,
    expert=None)`` with ``params.layer(i)``).  ``layers``, if given, are callables
    ``layer(x, tables)`` run in place of ``block`` (torch passes its per-layer
    modules, so FSDP's hooks fire); ``tb`` lets a caller cache the tables."""
    T = tokens.shape[1]
    check_length(cfg, T)
    x = embed(cfg, params, tokens, o)
    tb = tb if tb is not None else tables(cfg, T, o, x.dtype)
    for i in range(cfg.layers):
        x = layers[i](x, tb) if layers is not None else block(cfg, params.layer(i), x, i, tb, o)
    return head(cfg, params, x, o)


def cross_entropy(o: ArrayOps, logits, targets):
    """Mean next-token cross entropy in (at least) float32."""
    xp = o.xp
    x = o.astype(logits, o.compute_dtype(logits.dtype))
    x = x - o.stop_gradient(xp.max(x, axis=-1, keepdims=True))
    logz = xp.log(xp.sum(xp.exp(x), axis=-1, keepdims=True))
    picked = xp.take_along_axis(x, targets[..., None], axis=-1)
    return xp.mean(logz - picked)


__all__ = [
    "ACTIVATIONS", "ACT_ALIASES", "ArrayOps", "extras_set", "NumpyOps", "Tables", "activation_key", "attention", "block",
    "alibi_slopes", "relative_positions", "differential", "diff_lambda_init", "dynamic_key_bias", "head_dim_of",
    "latent_attention", "index_keep",
    "causal_mask", "check_length", "chunk_of", "cross_entropy", "embed", "expert", "forward", "head", "mlp", "moe", "norm",
    "rope_of", "rope_tables", "route", "shared_experts", "sliding_rope", "tables", "window_of",
]
