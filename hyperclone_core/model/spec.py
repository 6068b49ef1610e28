"""The backend-neutral description of a decoder family: dims, axes, roles.

A family is data: a table of tensor roles (parameter-name pattern -> axes with a
direction) plus the neutral decoder flags read from its Hugging Face config.
Nothing about a family is special-cased elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping, Optional, Union

from ..errors import ConfigError
from .rope import hf_scaling, rope_params

Factor = Union[str, int]
Segment = tuple  # tuple[Factor, ...]: an ordered product of dims (names), constants and groups
# a group, ``(a|b)`` in the axis syntax, is a factor that is itself a tuple of segments (a concatenation)


def segment_size(segment: Segment, sizes: Mapping[str, int]) -> int:
    """The size of one segment of an axis under ``sizes``."""
    return math.prod(f if isinstance(f, int) else sum(segment_size(s, sizes) for s in f) if isinstance(f, tuple)
                     else sizes[f] for f in segment)


def _segment_dims(segments) -> set:
    return {d for s in segments for f in s
            for d in (_segment_dims(f) if isinstance(f, tuple) else [f] if isinstance(f, str) else [])}


def _segments_key(segments) -> str:
    return "|".join("*".join(f"({_segments_key(f)})" if isinstance(f, tuple) else str(f) for f in s)
                    for s in segments)


DIMS = (
    "hidden", "ffn", "kv_heads", "q_per_kv", "head_dim", "vocab", "positions",
    "experts", "layers", "embed", "moe_ffn", "shared_ffn", "q_lora", "kv_lora", "mla_qk", "mla_kv", "v_dim",
    "index_heads", "index_dim",
    "block_heads", "kv_half", "full_head_dim", "full_kv",
)
"""Named sizes.  ``heads`` = kv_heads * q_per_kv is derived; ``embed`` is the token
embedding width where it differs from ``hidden`` (OPT-350m's ``word_embed_proj_dim``).
Multi-head latent attention (MLA, DeepSeek-V2/V3) only: ``q_lora`` and ``kv_lora``, the
latent ranks of q and k/v; per head ``mla_qk`` = nope + rope features of q and k (rope
= ``head_dim``), ``mla_kv`` = nope + ``v_dim`` rows of the latent's up-projection;
``index_heads`` and ``index_dim``: DeepSeek sparse attention's indexer.  No
growth option names them: they keep their size (ratio 1).  ``moe_ffn`` (routed experts)
and ``shared_ffn`` (shared experts) are ffn sizes of MoE stacks whose dense layers or
shared experts have their own: they grow with ``ffn`` (same ratio).  ``block_heads``
(CodeGen's fused qkv in ``qkv_blocks`` blocks): the heads of one block, heads / qkv_blocks;
the planner grows it with the heads, so a grown head stays in its source head's block.
``kv_half`` (differential attention, ``diff_attn``): half the kv heads, grown by the planner
with the kv heads: every per-head axis is written over it, so each differential pair of query
heads and each half of the values keeps its source's."""


@dataclass(frozen=True)
class Axis:
    """One tensor axis: a direction and a concatenation of segments.

    ``out``: the tensor writes activations along these dims; ``in``: it reads them.
    Each segment is an ordered product of dims (names), constants (ints) and groups (a
    factor that is itself a concatenation: ``kv_heads*(q_per_kv*head_dim|head_dim|head_dim)``,
    Falcon's fused qkv, each kv head's queries then its key and value).
    """

    direction: str
    segments: tuple

    def __post_init__(self):
        if self.direction not in ("in", "out"):
            raise ValueError(f"axis direction must be 'in' or 'out', not {self.direction!r}")

    @property
    def dims(self) -> frozenset:
        return frozenset(_segment_dims(self.segments))

    def size(self, sizes: Mapping[str, int]) -> int:
        return sum(segment_size(s, sizes) for s in self.segments)

    def key(self) -> str:
        return _segments_key(self.segments)

    def __str__(self) -> str:
        return f"{self.direction}[{self.key()}]"


def _split_top(text: str, sep: str) -> list:
    """``text`` split at ``sep`` outside parentheses."""
    parts, depth, start = [], 0, 0
    for j, c in enumerate(text):
        depth += (c == "(") - (c == ")")
        if depth < 0:
            raise ValueError(f"unbalanced parentheses in axis {text!r}")
        if c == sep and depth == 0:
            parts.append(text[start:j])
            start = j + 1
    if depth:
        raise ValueError(f"unbalanced parentheses in axis {text!r}")
    return parts + [text[start:]]


def _parse_segments(text: str) -> tuple:
    segments = []
    for seg in _split_top(text, "|"):
        factors: list = []
        for f in _split_top(seg, "*"):
            f = f.strip()
            if f.startswith("(") and f.endswith(")"):
                factors.append(_parse_segments(f[1:-1]))
            else:
                factors.append(int(f) if f.isdigit() else f)
        segments.append(tuple(factors))
    return tuple(segments)


def _parse_axis(direction: str, text: str) -> Axis:
    return Axis(direction, _parse_segments(text))


def out(text: str) -> Axis:
    """``out("kv_heads*q_per_kv*head_dim")``; segments separated by ``|``; a group in parentheses."""
    return _parse_axis("out", text)


def in_(text: str) -> Axis:
    return _parse_axis("in", text)


@dataclass(frozen=True)
class Role:
    """One parameter tensor of a family.

    ``pattern`` is the checkpoint name with ``{i}`` for the layer (and ``{e}`` for
    the expert); ``kind`` is the neutral slot the oracle and backends read it as
    (``attn.q``, ``mlp.down``, ``norm.final`` ...); ``writer`` marks tensors that
    write into the residual stream (zeroed in depth copies); ``when`` restricts the
    role to configs that have it (bias flags, optional norms); ``noiseless`` marks a
    tensor whose output feeds a discrete choice (an MoE router's top-k): it gets the
    strategy's mixing but never noise, since zero-sum noise that rounds to a nonzero
    sum in bfloat16 would flip the choice.
    """

    pattern: str
    kind: str
    axes: tuple
    writer: bool = False
    when: Optional[Callable[["DecoderConfig"], bool]] = field(default=None, compare=False)
    noiseless: bool = False
    on_layer: Optional[Callable[["DecoderConfig", int], bool]] = field(default=None, compare=False)
    """A per-layer role held by some layers only: ``on_layer(cfg, i)`` (the dense and the
    MoE layers of a mixed stack: ``moe_layer``/``dense_layer``); None = every layer."""
    identity: Optional[float] = None
    """What an inserted layer's copy holds instead of its source's value, where that is not 0
    (a writer): the value making the layer the identity. 1 for a multiplier of the residual
    stream (Gemma 4's ``layer_scalar``); -1e4 for Ergo's residual gates, whose sigmoid is 0
    and whose residual factor sqrt(1 + sigmoid) exp(-softplus / 2) is 1, exactly in float."""
    per_index: str = ""
    """A role stored as one tensor per head (``{h}`` in ``pattern``: stablelm's per-head qk
    LayerNorms): the dims the head index ranges over (``kv_heads*q_per_kv``, ``kv_heads``).
    A grown head's tensor copies its source head's; the slot's expert position holds the head."""

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.pattern

    def layers(self, cfg: "DecoderConfig") -> list:
        """The layers holding this role in ``cfg`` ([None] for a role outside the layers)."""
        if not self.per_layer:
            return [None]
        return [i for i in range(cfg.layers) if self.on_layer is None or self.on_layer(cfg, i)]

    @property
    def per_expert(self) -> bool:
        return "{e}" in self.pattern

    @property
    def per_head(self) -> bool:
        return "{h}" in self.pattern

    def indices(self, cfg: "DecoderConfig") -> list:
        """The experts (``{e}``) or heads (``{h}``) of this role in ``cfg``; [None] for neither."""
        if self.per_expert:
            return list(range(cfg.experts))
        if self.per_head:
            return list(range(segment_size(tuple(self.per_index.split("*")), cfg.sizes())))
        return [None]

    def shape(self, sizes: Mapping[str, int]) -> tuple:
        return tuple(a.size(sizes) for a in self.axes)


@dataclass(frozen=True)
class DecoderConfig:
    """The neutral decoder: every flag the families differ in.

    Backends implement this one decoder; a family is a config reader plus a role
    table over it.
    """

    family: str
    vocab: int
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    positions: int
    embed: int = 0                    # token-embedding width; 0 = hidden
    experts: int = 0
    experts_per_tok: int = 0
    norm: str = "rms"                 # rms | layer | layer_noparam
    norm_eps: float = 1e-5
    norm_unit_offset: bool = False    # gemma: gain is (1 + w)
    placement: str = "pre"            # pre | post | sandwich | post_sublayer
    parallel_residual: bool = False
    final_norm: bool = True
    mlp: str = "gated"                # gated | plain
    fused_gate_up: bool = False       # phi3: one gate|up matrix
    qkv_layout: str = "separate"      # separate | concat | per_head | grouped | blocked:
    #                                   concat: q, k, v rows; per_head: heads x 3 x head_dim; grouped: kv_heads x
    #                                   (q_per_kv + 2) x head_dim (falcon's new architecture); blocked: qkv_blocks x
    #                                   (q, v, k) x block heads x head_dim (CodeGen)
    act: str = "silu"
    pos: str = "rope"                 # rope | learned | alibi (per-head linear biases, slopes from the head count)
    rope_theta: float = 10000.0
    rotary_dim: int = 0               # 0 = head_dim
    rope_type: str = "default"        # a key of rope.ROPE_TYPES
    rope_scaling: tuple = ()          # the type's parameters, sorted (key, value) pairs (rope.rope_fields)
    learned_pos_offset: int = 0
    qk_norm: str = ""                 # "" | head | full
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False
    tie_embeddings: bool = False
    embed_scale: bool = False         # gemma: embeddings times sqrt(hidden)
    attn_scale: float = 0.0           # 0 = head_dim ** -0.5
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    clip_qkv: float = 0.0
    sliding_window: int = 0
    layer_types: tuple = ()           # per layer: "full_attention" | "sliding_attention"
    embed_multiplier: float = 1.0     # granite: token embeddings times this
    residual_multiplier: float = 1.0  # granite: each sublayer's output times this before the residual add
    logit_scale: float = 1.0          # logits times this (granite: 1 / logits_scaling; cohere: logit_scale)
    rope_interleaved: bool = False    # GPT-J/Cohere/GLM: RoPE rotates pairs (2i, 2i+1), not halves
    shared_block_norm: bool = False   # parallel residual under ONE norm (phi, gptj, cohere): the MLP reads norm.attn_in's output
    qk_norm_type: str = "rms"         # the qk-norm's kind, bias if stored (LayerNorm: phi, persimmon, cohere): rms | layer
    kv_lora: int = 0                  # MLA (DeepSeek): k/v latent rank; 0 = no MLA.  head_dim is then the RoPE'd part
    q_lora: int = 0                   # MLA: q latent rank (q_a -> RMS norm -> q_b); 0 = one q projection.  Both
    #                                   latent norms are RMS with epsilon 1e-6 (transformers' MLA families)
    nope_dim: int = 0                 # MLA: per-head q/k features without RoPE (before the RoPE'd head_dim ones)
    v_dim: int = 0                    # MLA: per-head value width
    attn_chunk: int = 0               # llama4: "chunked_attention" layers attend within blocks of this many positions
    experts_stacked: str = ""         # "" | in_out | out_in | flat
    #                                   expert tensors: "" one per expert; stacked (experts, in, out), (experts, out, in),
    #                                   or DBRX's flat (experts*ffn, hidden) gate, up and down (down read (in, out))
    gate_up_interleaved: bool = False  # gpt-oss: a fused gate|up output alternates gate, up (gate = [..., ::2])
    expert_glu: str = ""              # "" | clamped
    #                                   how experts join gate and up: "" act(gate) * up; clamped (gpt-oss):
    #                                   (clip(up, +-glu_limit) + 1) * g * sigmoid(glu_alpha g), g = min(gate, glu_limit)
    glu_alpha: float = 0.0            # the clamped GLU's sigmoid gain (gpt-oss swiglu_alpha)
    glu_limit: float = 0.0            # the clamped GLU's clamp (gpt-oss swiglu_limit)
    qk_norm_skip_nope: bool = False   # llama4: NoPE layers (nope_layers) run no qk-norm
    attn_temp_floor: int = 0          # llama4 attn_temperature_tuning on NoPE layers: q times 1 + attn_temp_scale
    attn_temp_scale: float = 0.0      # * log(1 + floor((position + 1) / attn_temp_floor)); 0 = off (floor_scale, attn_scale)
    moe_input_weighted: bool = False  # llama4: each expert reads its routing weight times x (not weighted after)
    v_scale: float = 1.0              # MiMo-V2-Flash attention_value_scale: the values times this
    # MoE routing (decoder.route) and shared experts; mlp_types () = every layer MoE when experts, else dense
    mlp_types: tuple = ()             # per layer: dense | moe (first_k_dense_replace, mlp_only_layers, decoder_sparse_step)
    moe_ffn: int = 0                  # routed experts' ffn size where it differs from the dense layers' (0 = ffn)
    shared_ffn: int = 0               # the always-on shared expert MLP's ffn size (n_shared_experts x its size; 0 = none)
    moe_scoring: str = "softmax"      # softmax | sigmoid | sparsemixer
    #                                   the router's expert scores (sigmoid: DeepSeek-V3; sparsemixer: PhiMoE's two
    #                                   rounds of masked softmax, router_jitter, always 2 experts)
    moe_renorm: bool = True           # the chosen experts' scores renormalised to sum 1 (norm_topk_prob)
    moe_groups: int = 0               # grouped top-k (n_group): experts in groups ranked by their best scores' sum; 0 = none
    moe_topk_groups: int = 0          # grouped top-k (topk_group): the groups kept; the others' experts leave the choice
    moe_scale: float = 1.0            # routed experts' weights times this (routed_scaling_factor)
    clip_after_qk_norm: bool = False  # olmoe: clip_qkv clamps q and k after the full-width qk-norm, not before
    router_jitter: float = 0.0        # sparsemixer's eps (PhiMoE router_jitter_noise): experts within 2 eps of the best share
    head_bias: bool = False           # the LM head has a bias where the config says so (phimoe lm_head_bias, ernie use_bias)
    transposed_linear: bool = False   # GPT-2/openai-gpt Conv1D: attention and MLP weights stored (in, out)
    embed_norm: bool = False          # bloom: a LayerNorm (norm.embed) on the token embeddings
    attn_scale_inverse_layer: bool = False  # GPT-2 scale_attn_by_inverse_layer_idx: layer i's scale / (i + 1)
    rope_reverse: bool = False        # nanochat: RoPE turns each pair by minus its angle (rotate_half's signs flipped)
    q_scale_beta: float = 0.0         # ministral3 (llama_4_scaling_beta): q times 1 + beta * log(1 + floor(position
    q_scale_period: int = 0           # / q_scale_period)) in every layer (original_max_position_embeddings); 0 = off
    nope_layers: tuple = ()           # per layer: True = no RoPE in that layer (SmolLM3, Cohere 2); () = RoPE everywhere
    rope_sliding: tuple = ()          # sliding layers' own RoPE (Gemma 3's local base): sorted (field, value) pairs of
    #                                   rope_theta, rotary_dim, rope_type, rope_scaling; () = the same RoPE as full layers
    qk_norm_after_rope: bool = False  # HunYuan: the per-head qk-norm runs on the rotated q and k
    qkv_blocks: int = 0               # CodeGen (qkv_layout blocked): the fused qkv's blocks, each (q, v, k) x its heads
    shared_scale: float = 1.0         # the shared experts' output times this (cohere2_moe "average": 0.5, moe_scale 0.5)
    moe_group_top: int = 2            # grouped top-k: a group ranks by the sum of its this-many best scores (DeepSeek-V2's
    #                                   group_limited_greedy: 1, its best expert)
    index_topk: int = 0               # DeepSeek sparse attention (MLA + indexer, V3.2): each query reads its index_topk best
    #                                   keys by the indexer (decoder.index_keep); 0 = every key
    index_heads: int = 0              # the indexer's heads (index_n_heads)
    index_dim: int = 0                # the indexer's head width (index_head_dim); RoPE on its first head_dim features
    index_rope_interleaved: bool = False  # the indexer's RoPE rotates pairs (2i, 2i+1) (GLM-MoE-DSA), not halves
    diff_attn: bool = False           # DiffLlama's differential attention (decoder.differential): query heads h and
    #                                   h + heads/2 subtracted with a learned lambda; values in two halves of the kv heads
    v_norm: bool = False              # Gemma 4: each value head RMS-normed (no gain, norm_eps) before attention
    dyn_keep: int = 0                 # Doge keep_window_size (dynamic mask, attn.dt stored): a query reads only its
    #                                   dyn_keep keys of largest dynamic bias when the sequence is longer; 0 = every key
    k_eq_v: bool = False              # Gemma 4 attention_k_eq_v: full-attention layers have no v projection, their
    #                                   values are the raw key projection (before qk-norm and RoPE)
    full_head_dim: int = 0            # Gemma 4 global_head_dim: the full-attention layers' head size (and their RoPE
    #                                   tables'); 0 = head_dim.  Dim full_head_dim: no growth option names it
    full_kv_heads: int = 0            # Gemma 4 num_global_key_value_heads: the full-attention layers' kv heads; 0 =
    #                                   kv_heads.  Dim full_kv: grown by the kv heads' ratio

    first_attn_norm: bool = True      # ModernBERT: False = layer 0 has no attention norm (its input is the normed embedding)
    head_act: str = ""                # ModernBERT: a prediction head before the LM head (head.dense, this activation,
    #                                   norm.head); "" = none
    head_dense_bias: bool = False     # ModernBERT: the prediction head's dense has a bias (classifier_bias)
    moe_bias_on_logits: bool = False  # Kolibri1: the choice ranks the router logits plus the correction bias (not the
    #                                   scores plus it); the weights stay the chosen experts' scores
    attn_gate_act: str = "sigmoid"    # the attention output gate's (attn.gate) function: sigmoid | softplus (Laguna)
    attn_gate_per_head: bool = False  # Laguna: attn.gate gives one gate per head (every feature of the head times it)
    router_softcap: float = 0.0       # Laguna moe_router_logit_softcapping: router logits c tanh(logits / c); 0 = off
    transposed_kinds: tuple = ()      # Ergo: the kinds whose 2-D tensors are stored (in, out) (read transposed)
    full_attn_scale: float = 0.0      # Ergo global_attention_scale: full-attention layers' scores times this; 0 = off

    @property
    def q_per_kv(self) -> int:
        return self.heads // self.kv_heads

    @property
    def embed_dim(self) -> int:
        return self.embed or self.hidden

    def sizes(self) -> dict:
        """The named dims of this config (``heads`` included for convenience)."""
        out = dict(
            hidden=self.hidden, ffn=self.ffn, kv_heads=self.kv_heads, q_per_kv=self.q_per_kv,
            heads=self.heads, head_dim=self.head_dim, vocab=self.vocab,
            positions=self.positions + self.learned_pos_offset,
            experts=max(self.experts, 1), layers=self.layers, embed=self.embed_dim,
            moe_ffn=self.moe_ffn or self.ffn, shared_ffn=self.shared_ffn or self.ffn,
        )
        if self.qkv_blocks:  # CodeGen: the heads of one fused-qkv block (see DIMS)
            out["block_heads"] = self.heads // self.qkv_blocks
        if self.kv_lora:  # MLA's dims (see DIMS)
            out.update(q_lora=self.q_lora, kv_lora=self.kv_lora, mla_qk=self.nope_dim + self.head_dim,
                       mla_kv=self.nope_dim + self.v_dim, v_dim=self.v_dim)
        elif self.v_dim:  # values narrower than q and k without MLA (MiMo-V2-Flash): a dim no option grows
            out["v_dim"] = self.v_dim
        if self.full_head_dim:  # Gemma 4's full layers' head size (keeps its size, as head_dim under RoPE)
            out["full_head_dim"] = self.full_head_dim
        if self.full_kv_heads:  # Gemma 4's full layers' kv heads (grown by the kv heads' ratio)
            out["full_kv"] = self.full_kv_heads
        if self.diff_attn:  # differential attention's half of the kv heads (see DIMS)
            out["kv_half"] = self.kv_heads // 2
        if self.index_topk:  # the sparse-attention indexer's (see DIMS)
            out.update(index_heads=self.index_heads, index_dim=self.index_dim)
        return out

    def with_sizes(self, sizes: Mapping[str, int]) -> "DecoderConfig":
        heads = sizes["kv_heads"] * sizes["q_per_kv"]
        changes = dict(
            hidden=sizes["hidden"], ffn=sizes["ffn"], kv_heads=sizes["kv_heads"], heads=heads,
            head_dim=sizes["head_dim"], vocab=sizes["vocab"], layers=sizes["layers"],
            positions=sizes["positions"] - self.learned_pos_offset,
        )
        if self.embed:
            changes["embed"] = sizes["embed"]
        if self.full_kv_heads and "full_kv" in sizes:
            changes["full_kv_heads"] = sizes["full_kv"]
        if self.experts:
            changes["experts"] = sizes["experts"]
        for dim in ("moe_ffn", "shared_ffn"):  # ffn-like: grown with ffn (Growth.of)
            if getattr(self, dim) and dim in sizes:
                changes[dim] = sizes[dim]
        if self.kv_lora:
            own = self.sizes()
            fixed = [d for d in ("mla_qk", "mla_kv", "v_dim") if sizes.get(d, own[d]) != own[d]]
            if fixed:
                raise ConfigError(f"multi-head latent attention's per-head dims ({', '.join(fixed)}) keep their "
                                  "size; grow the heads instead")
            changes.update(q_lora=sizes.get("q_lora", self.q_lora), kv_lora=sizes.get("kv_lora", self.kv_lora))
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Family:
    """A decoder family: how to read its config, its roles, how to write a grown config.

    ``config_keys`` maps each HF config key to the dim it stores (``heads`` means
    kv_heads * q_per_kv); ``read`` turns an HF config dict into the neutral
    ``DecoderConfig``.  ``depth_exact`` says whether zero-writer layer copies are
    the identity (true for pre-norm, sandwich and parallel-residual stacks).
    ``rope_keys``: the top-level keys (theta, rotary fraction) that transformers 4.x
    and mlx-lm read in place of transformers 5's ``rope_parameters``.
    """

    name: str
    model_types: tuple
    roles: tuple
    read: Callable[[Mapping[str, Any]], DecoderConfig]
    config_keys: Mapping[str, str]
    architecture: str
    rope_keys: tuple = ("rope_theta", "partial_rotary_factor")
    write_layers: Optional[Callable[[dict, DecoderConfig], None]] = field(default=None, compare=False)
    """Writes, into a grown HF config (a dict, in place), the keys transformers derives
    per-layer structure from that ``write_config`` does not know: which layers are MoE
    (``mlp_only_layers``, ``first_k_dense_replace`` ...); refuses a pattern the keys
    cannot express."""
    interleaved_dims: tuple = ()
    """Dims that always grow with the ``interleave`` layout (copies side by side), whatever
    the growth's layout: MiMo-V2-Flash's q_per_kv, whose query heads read a sliding layer's
    kv heads in halves of each group (only side-by-side copies keep each in its half)."""

    def roles_for(self, cfg: DecoderConfig) -> tuple:
        return tuple(r for r in self.roles if r.when is None or r.when(cfg))

    depth_inexact: str = ""
    """Why an inserted layer changes the function although it is the identity (maths that reads
    the layer index: DiffLlama's lambda_init); depth growth then needs --inexact."""

    def depth_exact(self, cfg: DecoderConfig) -> bool:
        return cfg.placement != "post" and not self.depth_inexact

    def normalized_axes(self, cfg: DecoderConfig) -> dict:
        """Axes some norm normalizes over: they must grow uniformly."""
        axes = {"hidden": ("hidden",)}
        if cfg.qk_norm == "full":
            axes["q (full-width qk-norm)"] = ("kv_heads", "q_per_kv", "head_dim")
            axes["k (full-width qk-norm)"] = ("kv_heads", "head_dim")
        elif cfg.qk_norm == "head":
            axes["head_dim (qk-norm)"] = ("head_dim",)
        if cfg.kv_lora:
            axes["kv_lora (latent norm)"] = ("kv_lora",)
        if cfg.q_lora:
            axes["q_lora (latent norm)"] = ("q_lora",)
        return axes

    def write_config(self, hf: Mapping[str, Any], new: DecoderConfig, layer_src) -> dict:
        """The grown model's HF config: dims written back, scalars kept consistent."""
        out = dict(hf)
        sizes = dict(new.sizes(), positions=new.positions)
        for key, dim in self.config_keys.items():
            if dim == "shared_ffn" and not new.shared_ffn:
                continue  # no shared expert (sizes() reads its 0 as ffn): the key keeps its 0
            if key in out or dim in ("hidden", "ffn", "layers", "heads", "vocab"):
                out[key] = sizes[dim]
        if "head_dim" not in self.config_keys.values() and new.hidden != new.heads * new.head_dim:
            raise ConfigError(
                f"{self.name} configs have no head_dim key: hidden ({new.hidden}) must equal "
                f"heads ({new.heads}) x head_dim ({new.head_dim}); grow heads with the width"
            )
        if "head_dim" in self.config_keys.values():
            key = next(k for k, d in self.config_keys.items() if d == "head_dim")
            implicit = new.hidden // new.heads
            if out.get(key) is not None or implicit != new.head_dim or new.hidden % new.heads:
                out[key] = new.head_dim
        if layer_src is not None and (isinstance(out.get("layer_types"), list) or len(set(new.layer_types)) > 1):
            # depth growth: each new layer keeps its source layer's attention kind; a
            # pattern transformers would derive from the layer index is written out
            out["layer_types"] = list(new.layer_types)
        out["tie_word_embeddings"] = bool(new.tie_embeddings)
        out["architectures"] = [self.architecture]
        rp = out.get("rope_parameters")
        if self.rope_keys and isinstance(rp, Mapping):
            # mirrored at the top level: mlx-lm (and transformers 4.x) ignore rope_parameters and
            # would silently run their default theta
            theta_key, partial_key = self.rope_keys
            rope = rope_params(out)
            out[theta_key] = rope["theta"]
            if "partial_rotary_factor" in rp:
                out[partial_key] = rope["partial"]
        scaling = hf_scaling(out) if self.rope_keys else {}
        if scaling:
            out["rope_scaling"] = scaling  # the same: transformers 5 reads rope_scaling first
        if self.write_layers is not None:
            self.write_layers(out, new)
        return out


def expand_pattern(pattern: str, layer: Optional[int] = None, expert: Optional[int] = None) -> str:
    name = pattern
    if layer is not None:
        name = name.replace("{i}", str(layer))
    if expert is not None:  # an expert, or the head of a per-head role
        name = name.replace("{e}", str(expert)).replace("{h}", str(expert))
    return name


def tensor_names(family: Family, cfg: DecoderConfig) -> dict:
    """Every tensor the checkpoint of ``cfg`` holds: name -> (role, layer, expert)."""
    names = {}
    for role in family.roles_for(cfg):
        layers = role.layers(cfg)
        experts = role.indices(cfg)
        for i in layers:
            for e in experts:
                names[expand_pattern(role.pattern, i, e)] = (role, i, e)
    return names


def moe_layer(cfg: DecoderConfig, i: int) -> bool:
    """Whether layer ``i`` routes to experts (``mlp_types``; every layer of an MoE config without one)."""
    return bool(cfg.experts) and (not cfg.mlp_types or cfg.mlp_types[i] == "moe")


def dense_layer(cfg: DecoderConfig, i: int) -> bool:
    return not moe_layer(cfg, i)


def implicit_head_dim(hf: Mapping[str, Any], hidden: int, heads: int) -> int:
    hd = hf.get("head_dim")
    return int(hd) if hd else hidden // heads


def require(hf: Mapping[str, Any], *keys: str) -> None:
    missing = [k for k in keys if hf.get(k) is None]
    if missing:
        raise ConfigError(f"config.json lacks {', '.join(missing)} (model_type {hf.get('model_type')!r})")


__all__ = [
    "Axis", "Role", "DecoderConfig", "Family", "out", "in_", "DIMS", "rope_params",
    "tensor_names", "expand_pattern", "implicit_head_dim", "require", "moe_layer", "dense_layer",
]
