"""Tiny configs of every family and random weights for them: what the project's tests
and the conformance suite build models from (no download, no framework)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .families import family_for_config
from .structure import ACT_INIT, is_norm, slots, tied_away

_LLAMA = dict(
    vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    rms_norm_eps=1e-6, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
    rope_theta=10000.0,  # what transformers 4.x reads (it ignores rope_parameters)
    tie_word_embeddings=False, hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=0,
)

CASES: dict = {
    "llama": dict(_LLAMA, model_type="llama", attention_bias=False),
    "llama_tied": dict(_LLAMA, model_type="llama", tie_word_embeddings=True),
    "mistral": dict(_LLAMA, model_type="mistral", sliding_window=None),
    "qwen2": dict(_LLAMA, model_type="qwen2", use_sliding_window=False),
    "qwen3": dict(_LLAMA, model_type="qwen3", head_dim=8),
    "gemma": dict(_LLAMA, model_type="gemma", head_dim=8, hidden_activation="gelu_pytorch_tanh",
                  hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True),
    "gemma2": dict(_LLAMA, model_type="gemma2", head_dim=8, hidden_activation="gelu_pytorch_tanh",
                   hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True, query_pre_attn_scalar=8,
                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4,
                   layer_types=["sliding_attention", "full_attention"]),
    "opt": dict(model_type="opt", vocab_size=96, hidden_size=32, ffn_dim=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                do_layer_norm_before=True, activation_function="relu", enable_bias=True,
                tie_word_embeddings=True, pad_token_id=1, bos_token_id=2, eos_token_id=2),
    "opt_postln": dict(model_type="opt", vocab_size=96, hidden_size=32, ffn_dim=48, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=16,
                       do_layer_norm_before=False, activation_function="relu", enable_bias=True,
                       tie_word_embeddings=True, pad_token_id=1, bos_token_id=2, eos_token_id=2),
    "gpt_neox": dict(model_type="gpt_neox", vocab_size=96, hidden_size=32, intermediate_size=48,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                     rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.5, "rope_type": "default"},
                     rotary_pct=0.5, rotary_emb_base=10000.0,  # the 4.x keys
                     use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5,
                     attention_bias=True, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    "olmo": dict(_LLAMA, model_type="olmo", clip_qkv=8.0),
    "olmo2": dict(_LLAMA, model_type="olmo2"),
    "phi3": dict(_LLAMA, model_type="phi3", num_key_value_heads=2,
                 rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 1.0, "rope_type": "default"},
                 original_max_position_embeddings=64, sliding_window=None),
    "mixtral": dict(_LLAMA, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2,
                    sliding_window=None),
}
"""The 14 cases: 12 families, OPT in both styles, a tied Llama.  RoPE settings
are given both as transformers 5's ``rope_parameters`` and as the 4.x top-level
keys, so the same configs build the same models under either major version."""


def random_weights(hf_config: Mapping, seed: int = 0, dtype=np.float32, scale: float = 0.2) -> dict:
    """Random weights for every stored tensor of ``hf_config``; norm gains and biases
    are perturbed away from their defaults (gains of exactly 1 hide mistakes)."""
    family = family_for_config(hf_config)
    cfg = family.read(hf_config)
    rng = np.random.default_rng(seed)
    out = {}
    for name, s in slots(family, cfg, stored_only=False).items():
        shape, kind = s.shape, s.kind
        if kind in ACT_INIT:  # xIELU's scalars: near their start (eps stays a small negative number)
            w = np.asarray(ACT_INIT[kind] + (0.0 if kind == "mlp.act.eps" else 0.1) * rng.standard_normal(shape))
        elif is_norm(kind):
            base = 0.0 if (cfg.norm_unit_offset or kind.endswith(".bias")) else 1.0
            w = base + 0.3 * rng.standard_normal(shape)
        elif len(shape) == 1:
            w = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = shape[-1] if kind not in ("embed", "pos_embed") else 1
            w = rng.standard_normal(shape) * (scale if fan_in == 1 else fan_in ** -0.5)
        if not tied_away(s.role, cfg):  # drawn either way, so tied and untied cases share a stream
            out[name] = w.astype(dtype)
    return out


def random_tokens(vocab: int, batch: int = 2, seq: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, seq))
