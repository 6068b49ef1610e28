"""Llama-style families: llama, mistral, qwen2, qwen3, gemma, gemma2, olmo, olmo2, phi3, mixtral."""

from __future__ import annotations

from ..rope import raw_params
from ..spec import Family, Role, in_, out
from ._common import KV, LLAMA_KEYS, Q, attention, embeddings, gated_mlp, norm, read_llama_like

L = "model.layers.{i}"
BLOCK_NORMS = norm(f"{L}.input_layernorm", "norm.attn_in") + norm(f"{L}.post_attention_layernorm", "norm.mlp_in")
LLAMA_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + gated_mlp(f"{L}.mlp")
    + BLOCK_NORMS
)


def _llama(hf):
    bias = bool(hf.get("attention_bias", False))
    return read_llama_like(hf, "llama", qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))


llama = Family("llama", ("llama", "internlm3", "iquestcoder"), LLAMA_ROLES, _llama, LLAMA_KEYS, "LlamaForCausalLM")
"""internlm3 and iquestcoder: config classes with Llama's keys that transformers builds
and saves as LlamaForCausalLM."""

mistral = Family("mistral", ("mistral",), LLAMA_ROLES,
                 lambda hf: read_llama_like(hf, "mistral"), LLAMA_KEYS, "MistralForCausalLM")

qwen2 = Family("qwen2", ("qwen2",), LLAMA_ROLES,
               lambda hf: read_llama_like(hf, "qwen2", qkv_bias=True), LLAMA_KEYS, "Qwen2ForCausalLM")

QK_HEAD = (
    Role(f"{L}.self_attn.q_norm.weight", "attn.q_norm", (out("head_dim"),)),
    Role(f"{L}.self_attn.k_norm.weight", "attn.k_norm", (out("head_dim"),)),
)
qwen3 = Family(
    "qwen3", ("qwen3",), LLAMA_ROLES + QK_HEAD,
    lambda hf: read_llama_like(hf, "qwen3", qk_norm="head", qkv_bias=bool(hf.get("attention_bias")),
                               o_bias=bool(hf.get("attention_bias"))),
    LLAMA_KEYS, "Qwen3ForCausalLM",
)


def _gemma(hf, family="gemma", **flags):
    return read_llama_like(
        hf, family, norm_unit_offset=True, embed_scale=True,
        act=hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh",
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), **flags,
    )


gemma = Family("gemma", ("gemma",), LLAMA_ROLES, _gemma, LLAMA_KEYS, "GemmaForCausalLM")

GEMMA2_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + gated_mlp(f"{L}.mlp")
    + norm(f"{L}.input_layernorm", "norm.attn_in")
    + norm(f"{L}.post_attention_layernorm", "norm.attn_out")
    + norm(f"{L}.pre_feedforward_layernorm", "norm.mlp_in")
    + norm(f"{L}.post_feedforward_layernorm", "norm.mlp_out")
)


def _gemma2(hf):
    qpas = hf.get("query_pre_attn_scalar")
    return _gemma(
        hf, "gemma2", placement="sandwich",
        attn_scale=float(qpas) ** -0.5 if qpas else 0.0,
        attn_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
        final_softcap=float(hf.get("final_logit_softcapping") or 0.0),
    )


gemma2 = Family("gemma2", ("gemma2",), GEMMA2_ROLES, _gemma2, LLAMA_KEYS, "Gemma2ForCausalLM")

OLMO_ROLES = (
    Role("model.embed_tokens.weight", "embed", (in_("vocab"), out("hidden"))),
    Role("lm_head.weight", "lm_head", (out("vocab"), in_("hidden"))),
)
OLMO_ROLES += attention(f"{L}.self_attn", bias=True, o_bias=True) + gated_mlp(f"{L}.mlp")


def _olmo(hf):
    return read_llama_like(hf, "olmo", norm="layer_noparam", norm_eps=1e-5,
                           clip_qkv=float(hf.get("clip_qkv") or 0.0),
                           qkv_bias=bool(hf.get("attention_bias")), o_bias=bool(hf.get("attention_bias")))


olmo = Family("olmo", ("olmo",), OLMO_ROLES, _olmo, LLAMA_KEYS, "OlmoForCausalLM")

OLMO2_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn", bias=True, o_bias=True)
    + gated_mlp(f"{L}.mlp")
    + (
        Role(f"{L}.self_attn.q_norm.weight", "attn.q_norm", (out(Q),)),
        Role(f"{L}.self_attn.k_norm.weight", "attn.k_norm", (out(KV),)),
    )
    + norm(f"{L}.post_attention_layernorm", "norm.attn_out")
    + norm(f"{L}.post_feedforward_layernorm", "norm.mlp_out")
)
olmo2 = Family(
    "olmo2", ("olmo2",), OLMO2_ROLES,
    lambda hf: read_llama_like(hf, "olmo2", placement="post_sublayer", qk_norm="full",
                               qkv_bias=bool(hf.get("attention_bias")), o_bias=bool(hf.get("attention_bias"))),
    LLAMA_KEYS, "Olmo2ForCausalLM",
)

PHI3_ROLES = (
    embeddings("model.embed_tokens.weight")
    + (
        Role(f"{L}.self_attn.qkv_proj.weight", "attn.qkv", (out(f"{Q}|{KV}|{KV}"), in_("hidden"))),
        Role(f"{L}.self_attn.o_proj.weight", "attn.o", (out("hidden"), in_(Q)), writer=True),
        Role(f"{L}.mlp.gate_up_proj.weight", "mlp.gate_up", (out("ffn|ffn"), in_("hidden"))),
        Role(f"{L}.mlp.down_proj.weight", "mlp.down", (out("hidden"), in_("ffn")), writer=True),
    )
    + BLOCK_NORMS
)


PHI3_ROPE_ALIASES = {"su": "longrope", "yarn": "longrope"}
"""What transformers' Phi-3 config reads these rope types as (its only scaled RoPE is LongRoPE)."""


def _phi3(hf):
    rp = raw_params(hf)
    alias = PHI3_ROPE_ALIASES.get(rp.get("rope_type"))
    if alias:
        hf = dict(hf, rope_scaling=None, rope_parameters=dict(rp, rope_type=alias, type=alias))
    return read_llama_like(hf, "phi3", original_default=4096, qkv_layout="concat", fused_gate_up=True)


phi3 = Family("phi3", ("phi3",), PHI3_ROLES, _phi3, LLAMA_KEYS, "Phi3ForCausalLM")

MOE = f"{L}.block_sparse_moe"
MIXTRAL_ROLES = (
    embeddings("model.embed_tokens.weight")
    + attention(f"{L}.self_attn")
    + (
        Role(f"{MOE}.gate.weight", "moe.router", (out("experts"), in_("hidden")), noiseless=True),
        Role(f"{MOE}.experts.{{e}}.w1.weight", "moe.gate", (out("ffn"), in_("hidden"))),
        Role(f"{MOE}.experts.{{e}}.w3.weight", "moe.up", (out("ffn"), in_("hidden"))),
        Role(f"{MOE}.experts.{{e}}.w2.weight", "moe.down", (out("hidden"), in_("ffn")), writer=True),
    )
    + BLOCK_NORMS
)
MIXTRAL_KEYS = dict(LLAMA_KEYS, num_local_experts="experts")


def _mixtral(hf):
    return read_llama_like(hf, "mixtral", experts=int(hf.get("num_local_experts") or 8),
                           experts_per_tok=int(hf.get("num_experts_per_tok") or 2))


mixtral = Family("mixtral", ("mixtral",), MIXTRAL_ROLES, _mixtral, MIXTRAL_KEYS, "MixtralForCausalLM")

FAMILIES = (llama, mistral, qwen2, qwen3, gemma, gemma2, olmo, olmo2, phi3, mixtral)

_DIMS = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
TINY = {
    "llama": dict(_DIMS, attention_bias=True, mlp_bias=True),
    "internlm3": dict(_DIMS), "iquestcoder": dict(_DIMS),
    "mistral": dict(_DIMS, sliding_window=4),
    "qwen2": dict(_DIMS, use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": dict(_DIMS, head_dim=16, attention_bias=True),
    "gemma": dict(_DIMS, head_dim=16, tie_word_embeddings=True),
    "gemma2": dict(_DIMS, head_dim=16, tie_word_embeddings=True, query_pre_attn_scalar=12, sliding_window=4,
                   attn_logit_softcapping=20.0, final_logit_softcapping=15.0),
    "olmo": dict(_DIMS, clip_qkv=2.0),
    "olmo2": dict(_DIMS),
    "phi3": dict(_DIMS, sliding_window=None, original_max_position_embeddings=64),
    "mixtral": dict(_DIMS, num_local_experts=4, num_experts_per_tok=2, sliding_window=4),
}
"""Tiny configs of every type these families grow (``families.TINY``)."""

__all__ = ["FAMILIES", "TINY", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "phi3", "mixtral"]
