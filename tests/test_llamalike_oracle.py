"""The Llama-like families' decoder maths against transformers: for every model type
``families/llamalike.py`` grows (its tiny config, and variants turning its optional
features the other way), the numpy oracle's logits on a model built by transformers from
the type's own config class (parameters perturbed off their init, xIELU's scalars
included) equal transformers' own within 1e-5 x max|logit|, in float32 and float64.

``tests/test_family_types.py`` checks growth (transformers before and after); this
checks that the oracle every backend is compared with computes what transformers does:
Granite's multipliers, peri-layer norms, interleaved and reversed RoPE, Ministral 3's q
scale, relu² and xIELU, LayerNorm-1p, weightless norms, sliding patterns.
"""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_core import family_for_config, io
from hyperclone_core.model.families import llamalike
from hyperclone_core.run.reference import forward

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TOL = 1e-5
TOKEN_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
VARIANTS = {
    "granite": dict(tie_word_embeddings=True, attention_bias=False, mlp_bias=False),
    "hyperclovax": dict(use_post_norm=False),
    "nemotron": dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=1.0),
                     attention_bias=False, mlp_bias=False),
    "cwm": dict(num_hidden_layers=5, layer_types=None, mlp_bias=False),
    "ministral": dict(layer_types=None),
    "ministral3": dict(sliding_window=None),
    "arcee": dict(hidden_act="relu"),
    "apertus": dict(hidden_act="relu2", attention_bias=False),
    "nanochat": dict(tie_word_embeddings=True, final_logit_softcapping=None),
    "jais2": dict(attention_bias=False, mlp_bias=False, hidden_act="gelu"),
    "ernie4_5": dict(use_bias=False, tie_word_embeddings=False),
}
"""Per type, a second config flipping its tiny config's optional features."""


def _cases():
    for mt in sorted(llamalike.TINY):
        yield pytest.param(mt, {}, id=mt)
        if mt in VARIANTS:
            yield pytest.param(mt, VARIANTS[mt], id=f"{mt}-variant")


@pytest.mark.parametrize("model_type,variant", list(_cases()))
def test_oracle_equals_transformers(model_type, variant, tmp_path):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        pytest.skip(f"the installed transformers has no causal LM {model_type!r}")
    cfg = transformers.AutoConfig.for_model(model_type, **{**TOKEN_IDS, **llamalike.TINY[model_type], **variant})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim <= 1 else 0.05))
        for name, b in model.named_buffers():  # xIELU's beta (eps stays a small negative number)
            if name.endswith("act_fn.beta"):
                b.add_(torch.randn(b.shape, generator=gen) * 0.1)
    model.save_pretrained(tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    hf, weights = io.load_weights(tmp_path)
    family = family_for_config(hf)
    dec = family.read(hf)
    tokens = np.random.default_rng(3).integers(0, 90, (2, 12))
    with torch.no_grad():
        ref = model(torch.from_numpy(tokens)).logits.numpy().astype(np.float64)
    for dtype in (np.float32, np.float64):
        got = forward(family, dec, weights, tokens, dtype=dtype)
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel < TOL, f"{model_type} {variant} {dtype.__name__}: the oracle differs from transformers by {rel:.2e}"
