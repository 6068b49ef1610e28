"""Multi-head latent attention (MLA) families: DeepSeek-V2/V3 and the types built on
their attention (Youtu, MiniCPM3).

MLA (``decoder.latent_attention``): q from ``q_proj`` or from a rank-``q_lora_rank``
latent (``q_a_proj`` -> RMS norm -> ``q_b_proj``); k/v from ``kv_a_proj_with_mqa``, whose
output is a rank-``kv_lora_rank`` latent (RMS-normed, then ``kv_b_proj`` gives each head
its nope part of k and its value) and ``qk_rope_head_dim`` RoPE'd features of k shared
by every head.  Growth doubles hidden and copies heads (``--width`` grows the heads
with it; the per-head dims stay); the latent ranks keep their size: the latent norms
normalize an axis that does not grow, and the projections reading it mix nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Optional

from ...errors import ConfigError
from ..rope import raw_params, yarn_mscale
from ..spec import DecoderConfig, Family, Role, in_, out
from ._common import embeddings, gated_mlp, has, norm, read_llama_like

L = "model.layers.{i}"
A = f"{L}.self_attn"
HEADS = "kv_heads*q_per_kv"


def _q_lora(cfg):
    return bool(cfg.q_lora)


def _no_q_lora(cfg):
    return not cfg.q_lora


MLA_ROLES = (
    Role(f"{A}.q_proj.weight", "attn.q", (out(f"{HEADS}*mla_qk"), in_("hidden")), when=_no_q_lora),
    Role(f"{A}.q_a_proj.weight", "attn.q_a", (out("q_lora"), in_("hidden")), when=_q_lora),
    Role(f"{A}.q_a_proj.bias", "attn.q_a.bias", (out("q_lora"),),
         when=lambda cfg: bool(cfg.q_lora and cfg.qkv_bias)),
    Role(f"{A}.q_a_layernorm.weight", "attn.q_a_norm", (out("q_lora"),), when=_q_lora),
    Role(f"{A}.q_b_proj.weight", "attn.q_b", (out(f"{HEADS}*mla_qk"), in_("q_lora")), when=_q_lora),
    Role(f"{A}.kv_a_proj_with_mqa.weight", "attn.kv_a", (out("kv_lora|head_dim"), in_("hidden"))),
    Role(f"{A}.kv_a_proj_with_mqa.bias", "attn.kv_a.bias", (out("kv_lora|head_dim"),), when=has("qkv_bias")),
    Role(f"{A}.kv_a_layernorm.weight", "attn.kv_a_norm", (out("kv_lora"),)),
    Role(f"{A}.kv_b_proj.weight", "attn.kv_b", (out(f"{HEADS}*mla_kv"), in_("kv_lora"))),
    Role(f"{A}.o_proj.weight", "attn.o", (out("hidden"), in_(f"{HEADS}*v_dim")), writer=True),
    Role(f"{A}.o_proj.bias", "attn.o.bias", (out("hidden"),), writer=True, when=has("o_bias")),
)
BLOCK_NORMS = norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
DENSE_ROLES = embeddings("model.embed_tokens.weight") + MLA_ROLES + gated_mlp(f"{L}.mlp") + BLOCK_NORMS

MLA_KEYS = {
    "hidden_size": "hidden", "intermediate_size": "ffn", "num_hidden_layers": "layers",
    "num_attention_heads": "heads", "num_key_value_heads": "kv_heads", "qk_rope_head_dim": "head_dim",
    "vocab_size": "vocab", "max_position_embeddings": "positions",
}
"""The latent ranks and the per-head dims are not written back: they keep their size."""


@dataclass(frozen=True)
class LatentFamily(Family):
    """A Family whose attention is MLA: the grown config keeps one k/v head per query
    head (MLA has no grouped kv heads), and ``rewrite`` fixes the config scalars a
    family derives from grown dims (MiniCPM3's depth and width scales)."""

    rewrite: Optional[Callable[[Mapping[str, Any], dict, DecoderConfig], dict]] = None

    def write_config(self, hf: Mapping[str, Any], new: DecoderConfig, layer_src) -> dict:
        if new.q_per_kv != 1:
            raise ConfigError(
                f"{self.name}: multi-head latent attention has one k/v head per query head; grow --heads and "
                f"--kv-heads by the same ratio (this growth gives {new.heads} heads, {new.kv_heads} kv heads)")
        out = super().write_config(hf, new, layer_src)
        return self.rewrite(hf, out, new) if self.rewrite is not None else out


def _int(hf, key, default=0) -> int:
    value = hf.get(key)
    return int(default if value is None else value)


def read_mla(hf: Mapping[str, Any], family: str, rope_interleaved: bool, **flags) -> DecoderConfig:
    """The neutral config of an MLA decoder (``flags`` override).  Refuses what the
    decoder does not compute: grouped kv heads, partial rotary on the RoPE'd part."""
    missing = [k for k in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "num_attention_heads")
               if hf.get(k) is None]
    if missing:
        raise ConfigError(f"config.json lacks {', '.join(missing)} (model_type {hf.get('model_type')!r})")
    heads = int(hf["num_attention_heads"])
    kv = _int(hf, "num_key_value_heads", heads)
    if kv != heads:
        raise ConfigError(f"num_key_value_heads ({kv}) differs from num_attention_heads ({heads}): multi-head "
                          "latent attention expands one k/v head per query head (transformers does too)")
    nope, rope_dim = int(hf["qk_nope_head_dim"]), int(hf["qk_rope_head_dim"])
    v_dim = _int(hf, "v_head_dim", 0) or int(hf["hidden_size"]) // heads
    if rope_dim <= 0 or rope_dim % 2:
        raise ConfigError(f"qk_rope_head_dim ({rope_dim}) must be a positive even number")
    cfg = read_llama_like(dict(hf, head_dim=rope_dim), family, rope_interleaved=rope_interleaved,
                          kv_lora=int(hf["kv_lora_rank"]), q_lora=_int(hf, "q_lora_rank"), nope_dim=nope,
                          v_dim=v_dim, **flags)
    if cfg.rotary_dim:
        raise ConfigError(f"partial_rotary_factor {cfg.rotary_dim / rope_dim:g}: MLA rotates all "
                          f"qk_rope_head_dim ({rope_dim}) features; a partial rotary is not supported")
    if cfg.layer_types and set(cfg.layer_types) != {"full_attention"}:
        raise ConfigError(f"layer_types {sorted(set(cfg.layer_types))}: {family} attends fully in every layer")
    # transformers' softmax scale: qk_head_dim ** -0.5, times YaRN's mscale(mscale_all_dim) squared
    scale = (nope + rope_dim) ** -0.5
    rp = raw_params(hf)
    if (rp.get("rope_type") or "default") != "default" and rp.get("mscale_all_dim"):
        m = yarn_mscale(float(dict(cfg.rope_scaling).get("factor", rp.get("factor"))), float(rp["mscale_all_dim"]))
        scale = scale * m * m
    return replace(cfg, attn_scale=scale, layer_types=())


def _dense_only(hf: Mapping[str, Any], family: str) -> None:
    """Until MoE layers are supported here: refuse a config with any."""
    layers = _int(hf, "num_hidden_layers")
    experts = _int(hf, "n_routed_experts")
    first = _int(hf, "first_k_dense_replace", 0)
    if experts and first < layers:
        raise ConfigError(f"{family}: first_k_dense_replace ({first}) < num_hidden_layers ({layers}) makes "
                          "MoE layers, not supported yet for this family")


def _dense_rewrite(hf, out, new: DecoderConfig) -> dict:
    """Every layer stays dense: first_k_dense_replace covers the grown depth."""
    if "first_k_dense_replace" in out:
        out["first_k_dense_replace"] = new.layers
    return out


def _deepseek_v3(hf):
    _dense_only(hf, "deepseek_v3")
    bias = bool(hf.get("attention_bias", False))
    return read_mla(hf, "deepseek_v3", rope_interleaved=bool(hf.get("rope_interleave", True)),
                    qkv_bias=bias, o_bias=bias, norm_eps=float(hf.get("rms_norm_eps") or 1e-6))


def _deepseek_v2(hf):
    _dense_only(hf, "deepseek_v2")
    bias = bool(hf.get("attention_bias", False))
    return read_mla(hf, "deepseek_v2", rope_interleaved=True, qkv_bias=bias, o_bias=bias,
                    mlp_bias=bool(hf.get("mlp_bias", False)), norm_eps=float(hf.get("rms_norm_eps") or 1e-6))


def _youtu(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_mla(hf, "youtu", rope_interleaved=bool(hf.get("rope_interleave", True)), qkv_bias=bias, o_bias=bias,
                    norm_eps=float(hf.get("rms_norm_eps") or 1e-6),
                    tie_embeddings=bool(hf.get("tie_word_embeddings", True)))


def _minicpm3(hf):
    bias = bool(hf.get("attention_bias", False))
    layers, hidden = _int(hf, "num_hidden_layers"), _int(hf, "hidden_size")
    depth = hf.get("scale_depth")
    base = hf.get("dim_model_base")
    return read_mla(
        hf, "minicpm3", rope_interleaved=False, qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)),
        norm_eps=float(hf.get("rms_norm_eps") or 1e-5), tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        embed_multiplier=float(12 if hf.get("scale_emb") is None else hf["scale_emb"]),
        residual_multiplier=1.0 if depth is None else float(depth) / math.sqrt(layers),
        logit_scale=1.0 if base is None else float(base) / hidden,
    )


def _minicpm3_rewrite(hf, out, new: DecoderConfig) -> dict:
    """MiniCPM3 derives its residual scale from the depth (scale_depth / sqrt(layers)) and
    its logit scale from the width (hidden / dim_model_base): both written so they stay."""
    old_layers, old_hidden = int(hf["num_hidden_layers"]), int(hf["hidden_size"])
    if hf.get("scale_depth") is not None and new.layers != old_layers:
        out["scale_depth"] = float(hf["scale_depth"]) * math.sqrt(new.layers / old_layers)
    if hf.get("dim_model_base") is not None and new.hidden != old_hidden:
        base = int(hf["dim_model_base"]) * new.hidden
        if base % old_hidden:
            raise ConfigError(f"minicpm3: dim_model_base ({hf['dim_model_base']}) x {new.hidden} / {old_hidden} is "
                              "not an integer; the logit scale hidden_size / dim_model_base cannot be kept")
        out["dim_model_base"] = base // old_hidden
    return out


deepseek_v3 = LatentFamily("deepseek_v3", ("deepseek_v3",), DENSE_ROLES, _deepseek_v3, MLA_KEYS,
                           "DeepseekV3ForCausalLM", rewrite=_dense_rewrite)
deepseek_v2 = LatentFamily("deepseek_v2", ("deepseek_v2",), DENSE_ROLES, _deepseek_v2, MLA_KEYS,
                           "DeepseekV2ForCausalLM", rewrite=_dense_rewrite)
youtu = LatentFamily("youtu", ("youtu",), DENSE_ROLES, _youtu, MLA_KEYS, "YoutuForCausalLM")
minicpm3 = LatentFamily("minicpm3", ("minicpm3",), DENSE_ROLES, _minicpm3, MLA_KEYS, "MiniCPM3ForCausalLM",
                        rewrite=_minicpm3_rewrite)

FAMILIES = (deepseek_v3, deepseek_v2, youtu, minicpm3)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=False,
             q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)
_YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=2.0, original_max_position_embeddings=32,
             mscale=1.0, mscale_all_dim=0.8, beta_fast=32.0, beta_slow=1.0)
TINY = {
    "deepseek_v3": dict(_DIMS, first_k_dense_replace=2, n_routed_experts=4, num_experts_per_tok=2,
                        moe_intermediate_size=24, attention_bias=True, rope_parameters=_YARN),
    "deepseek_v2": dict(_DIMS, q_lora_rank=None, first_k_dense_replace=2, n_routed_experts=4, num_experts_per_tok=2,
                        moe_intermediate_size=24, attention_bias=True, mlp_bias=True),
    "youtu": dict(_DIMS, v_head_dim=16, rope_interleave=False, tie_word_embeddings=True),
    "minicpm3": dict(_DIMS, attention_bias=True, mlp_bias=True, scale_emb=3.0, scale_depth=1.4, dim_model_base=8,
                     tie_word_embeddings=True),
}
"""Tiny configs of every type these families grow (``families.TINY``): small MLA sizes
(q_lora 16, kv_lora 16, nope 8, rope 4, v 8; Youtu's v 16 is wider than q.k's 12)."""

__all__ = ["FAMILIES", "TINY", "LatentFamily", "read_mla", "deepseek_v2", "deepseek_v3", "minicpm3", "youtu"]
