"""The MLA families' decoder maths against transformers: for every model type
``families/latent.py`` grows, the numpy oracle's logits on the type's tiny model (built
by transformers from its own config class, parameters and routers' correction biases
perturbed off their init) equal transformers' own within 1e-5 x max|logit|, in float32
and float64; each type's distinctive flag, set wrong, moves them far; the configs the
decoder cannot compute are refused by key.

``tests/test_family_types.py`` checks growth (transformers before and after); this
checks that the oracle every backend is compared with computes what transformers does:
latent q and k/v with their norms, the shared RoPE'd key (interleaved or halves), the
YaRN softmax scale, V wider or narrower than q.k, MiniCPM3's scales, the sparse-attention
indexer, DeepSeek-V2's group-limited routing.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hyperclone_core import ConfigError, PlanError, family_for_config, io
from hyperclone_core.model.families import latent
from hyperclone_core.run.reference import forward

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TOL = 1e-5
TOKEN_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
FLAGS = {
    "deepseek_v3": dict(rope_interleaved=False, attn_scale=12 ** -0.5),
    "deepseek_v2": dict(moe_group_top=2, rope_interleaved=False),
    "youtu": dict(rope_interleaved=True),
    "minicpm3": dict(embed_multiplier=1.0, residual_multiplier=1.0, logit_scale=1.0),
    "deepseek_v32": dict(index_topk=64),
    "glm_moe_dsa": dict(index_rope_interleaved=False, index_topk=64),
    "axk1": dict(moe_scale=1.0),
    "glm4_moe_lite": dict(moe_scale=1.0),
    "sarvam_mla": dict(moe_renorm=True),
}
"""Per type, flags that transformers' model does not compute: each, set, moves the logits."""


def _source(model_type, tmp_path):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        pytest.skip(f"the installed transformers has no causal LM {model_type!r}")
    cfg = transformers.AutoConfig.for_model(model_type, **dict(TOKEN_IDS, **latent.TINY[model_type]))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim == 1 else 0.05))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.add_(torch.randn(b.shape, generator=gen) * 0.3)
    model.save_pretrained(tmp_path)
    model.eval()  # not reloaded: transformers' Youtu zeroes the embedding's pad row on every load
    hf, weights = io.load_weights(tmp_path)
    tokens = np.random.default_rng(3).integers(0, 90, (2, 12))
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens)).logits.numpy().astype(np.float64)
    return hf, weights, tokens, ref


@pytest.mark.parametrize("model_type", sorted(latent.TINY))
def test_oracle_equals_transformers(model_type, tmp_path):
    hf, weights, tokens, ref = _source(model_type, tmp_path)
    family = family_for_config(hf)
    dec = family.read(hf)
    for dtype in (np.float32, np.float64):
        got = forward(family, dec, weights, tokens, dtype=dtype)
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel < TOL, f"{model_type} {dtype.__name__}: the oracle differs from transformers by {rel:.2e}"
    for flag, value in FLAGS[model_type].items():
        wrong = dataclasses.replace(dec, **{flag: value})
        assert wrong != dec, f"{model_type}: {flag} is already {value!r}"
        got = forward(family, wrong, weights, tokens, dtype=np.float64)
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel > 30 * TOL, f"{model_type}: {flag}={value!r} moves the logits by only {rel:.2e}"


def _config(model_type, **changes):
    cfg = transformers.AutoConfig.for_model(model_type, **dict(TOKEN_IDS, **latent.TINY[model_type])).to_dict()
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize("model_type,changes,key", [
    ("deepseek_v3", dict(num_key_value_heads=2), "num_key_value_heads"),
    ("deepseek_v3", dict(rope_parameters=dict(rope_type="default", rope_theta=1e4, partial_rotary_factor=0.5)),
     "partial_rotary_factor"),
    ("deepseek_v3", dict(n_shared_experts=0), "n_shared_experts"),
    ("deepseek_v3", dict(num_experts_per_tok=5), "num_experts_per_tok"),
    ("deepseek_v2", dict(topk_method="noaux_tc"), "topk_method"),
    ("deepseek_v2", dict(n_group=4, topk_group=1, num_experts_per_tok=2), "group_limited_greedy"),
    ("glm_moe_dsa", dict(indexer_types=["full", "shared", "full"]), "indexer_types"),
    ("glm4_moe_lite", dict(mlp_layer_types=["dense", "moe", "sparse"]), "mlp_layer_types"),
    ("axk1", dict(q_lora_rank=None), "q_lora_rank"),
    ("youtu", dict(qk_rope_head_dim=3), "qk_rope_head_dim"),
])
def test_refused_by_key(model_type, changes, key):
    from hyperclone_core.model.validate import read_model

    with pytest.raises(ConfigError, match=key):
        read_model(_config(model_type, **changes))


def test_grouped_kv_heads_growth_is_refused(tmp_path):
    """MLA expands one k/v head per query head: growing heads without kv heads is refused."""
    from hyperclone_core.algebra.planner import Growth, plan

    hf = _config("youtu")
    family = family_for_config(hf)
    with pytest.raises(PlanError, match="--kv-heads"):
        plan(family, hf, Growth.of(family.read(hf), width=2, heads=2, kv_heads=1))


def test_minicpm3_scales_follow_the_growth():
    """scale_depth / sqrt(layers) and hidden / dim_model_base keep their values."""
    from hyperclone_core.algebra.planner import Growth, plan

    hf = _config("minicpm3")
    family = family_for_config(hf)
    new = plan(family, hf, Growth.of(family.read(hf), width=2, layers=3)).config
    assert new["scale_depth"] / new["num_hidden_layers"] ** 0.5 == pytest.approx(
        hf["scale_depth"] / hf["num_hidden_layers"] ** 0.5, rel=1e-12)
    assert new["hidden_size"] / new["dim_model_base"] == hf["hidden_size"] / hf["dim_model_base"]


@pytest.mark.parametrize("model_type", sorted(latent.TINY))
def test_live_model_grows_in_memory(model_type):
    """``hyperclone_torch.expand_model`` finds every checkpoint tensor in the live model's
    state_dict (experts stacked in memory, A.X-K1's MoE output norm under the MoE) and the
    grown model, wider and one layer deeper, computes the same logits."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        pytest.skip(f"the installed transformers has no causal LM {model_type!r}")
    interop = pytest.importorskip("hyperclone_torch.interop")
    cfg = transformers.AutoConfig.for_model(model_type, **dict(TOKEN_IDS, **latent.TINY[model_type]))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    grown = interop.expand_model(model, width=2, layers="+1")
    tokens = torch.from_numpy(np.random.default_rng(3).integers(0, 90, (2, 12)))
    with torch.no_grad():
        want, got = model(tokens).logits.numpy(), grown(tokens).logits.numpy()
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < TOL, f"{model_type}: the grown live model's logits differ by {rel:.2e}"
