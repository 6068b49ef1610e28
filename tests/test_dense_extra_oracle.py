"""The numpy oracle equals transformers on the dense_extra families (diffllama, gemma4_text,
gemma4_unified_text, doge): each type's tiny model and variants turning its own features
another way (more kv heads per differential half, a sliding window under Doge's dynamic
mask, Gemma 4's default layer pattern and RoPE, stored layer scalars away from 1), float32
and float64; and the configs each reader must refuse are refused by key."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_core import family_for_config, io
from hyperclone_core.errors import ConfigError
from hyperclone_core.model.families import dense_extra
from hyperclone_core.run.reference import forward

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TOL = 1e-5
TOKEN_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
VARIANTS = {
    "diffllama": [{}, dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, num_hidden_layers=3)],
    "gemma4_text": [{}, dict(attention_k_eq_v=True, num_global_key_value_heads=2),
                    dict(attention_k_eq_v=True, num_global_key_value_heads=1, num_key_value_heads=4),
                    dict(num_hidden_layers=7, layer_types=None, rope_parameters=None, attention_bias=False,
                             final_logit_softcapping=None, sliding_window=3)],
    "gemma4_unified_text": [{}, dict(attention_k_eq_v=False, attention_bias=True, global_head_dim=32,
                                     rope_parameters={"sliding_attention": {"rope_type": "default",
                                                                            "rope_theta": 100.0,
                                                                            "partial_rotary_factor": 0.5},
                                                      "full_attention": {"rope_type": "proportional",
                                                                         "partial_rotary_factor": 0.25,
                                                                         "rope_theta": 1000.0}})],
    "doge": [{}, dict(sliding_window=5, keep_window_size=3, num_key_value_heads=4, attention_bias=False),
             dict(keep_window_size=64)],
}


def _cases():
    for mt, variants in VARIANTS.items():
        for i, v in enumerate(variants):
            yield pytest.param(mt, v, id=f"{mt}-{i}")


def _model(model_type, variant, path):
    cfg = transformers.AutoConfig.for_model(model_type, **{**TOKEN_IDS, **dense_extra.TINY[model_type], **variant})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim <= 1 else 0.05))
        for name, b in model.named_buffers():  # Gemma 4's stored layer scalars
            if name.endswith("layer_scalar"):
                b.mul_(0.5 + torch.rand(b.shape, generator=gen))
    model.save_pretrained(path)
    return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("model_type,variant", list(_cases()))
def test_oracle_equals_transformers(model_type, variant, tmp_path):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        pytest.skip(f"the installed transformers has no causal LM {model_type!r}")
    model = _model(model_type, variant, tmp_path)
    hf, weights = io.load_weights(tmp_path)
    family = family_for_config(hf)
    dec = family.read(hf)
    # no token twice in a row: Doge's first layer biases keys by their token alone, and torch.topk
    # breaks the ties of repeated tokens at the keep_window_size boundary its own way
    rng = np.random.default_rng(3)
    tokens = np.stack([rng.permutation(90)[:12] for _ in range(2)])
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens)).logits.numpy().astype(np.float64)
    for dtype in (np.float32, np.float64):
        got = forward(family, dec, weights, tokens, dtype=dtype)
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel < TOL, f"{model_type} {variant} {dtype.__name__}: the oracle differs from transformers by {rel:.2e}"


REFUSED = [
    ("diffllama", dict(num_key_value_heads=3, num_attention_heads=6), "num_key_value_heads"),
    ("doge", dict(is_moe=True), "is_moe"),
    ("gemma4_text", dict(enable_moe_block=True), "enable_moe_block"),
    ("gemma4_text", dict(hidden_size_per_layer_input=256), "hidden_size_per_layer_input"),
    ("gemma4_text", dict(num_kv_shared_layers=1), "num_kv_shared_layers"),
    ("gemma4_text", dict(use_bidirectional_attention="all"), "use_bidirectional_attention"),
    ("gemma4_text", dict(per_layer_config={"0": {"head_dim": 32}}), "head_dim"),
    ("gemma4_text", dict(per_layer_config={"2": {"num_key_value_heads": 1}}), "per_layer_config"),
    ("gemma4_text", dict(attention_k_eq_v=True, num_global_key_value_heads=3), "kv heads"),
]


@pytest.mark.parametrize("model_type,change,key", REFUSED, ids=[f"{m}-{k}" for m, _, k in REFUSED])
def test_refused_by_key(model_type, change, key):
    hf = dict(dense_extra.TINY[model_type], model_type=model_type, **change)
    with pytest.raises(ConfigError, match=key):
        family_for_config(hf).read(hf)


@pytest.mark.parametrize("key,value", [("keep_window_size", 0), ("is_moe", "yes"), ("attention_dropout", 2.0),
                                       ("hidden_size_per_layer_input", -1), ("global_head_dim", 1.5)])
def test_config_values_checked_by_key(key, value):
    from hyperclone_core.model.validate import check_config

    with pytest.raises(ConfigError, match=key):
        check_config(dict(dense_extra.TINY["doge"], model_type="doge", **{key: value}))


def test_doge_default_expert_count_is_a_valid_config():
    """DogeConfig writes num_experts 16384 (its product-key MoE's, off by default) into every config.json."""
    from hyperclone_core.model.validate import check_config

    check_config(dict(dense_extra.TINY["doge"], model_type="doge", num_experts=16384, is_moe=False))
