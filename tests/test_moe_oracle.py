"""The MoE families' decoder maths against transformers: for every model type
``families/moe.py`` grows, the numpy oracle's logits on the type's tiny model (built by
transformers from its own config class, parameters perturbed off their init) equal
transformers' own within 1e-5 x max|logit|, in float32 and float64.

``tests/test_family_types.py`` checks growth (transformers before and after); this
checks that the oracle every backend is compared with computes what transformers does:
the routing (softmax or sigmoid, renormalised or not, correction bias, grouped top-k,
scaling), shared experts, dense layers inside the stack.
"""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_core import family_for_config, io
from hyperclone_core.model.families import moe
from hyperclone_core.run.reference import forward

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TOL = 1e-5
TOKEN_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize("model_type", sorted(moe.TINY))
def test_oracle_equals_transformers(model_type, tmp_path):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        pytest.skip(f"the installed transformers has no causal LM {model_type!r}")
    cfg = transformers.AutoConfig.for_model(model_type, **dict(TOKEN_IDS, **moe.TINY[model_type]))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim == 1 else 0.05))
        for name, b in model.named_buffers():  # the routers' correction biases
            if name.endswith("e_score_correction_bias"):
                b.add_(torch.randn(b.shape, generator=gen) * 0.3)
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
        assert rel < TOL, f"{model_type} {dtype.__name__}: the oracle differs from transformers by {rel:.2e}"


@pytest.mark.parametrize("model_type", sorted(moe.TINY))
def test_live_model_grows_in_memory(model_type):
    """``hyperclone_torch.expand_model`` finds every checkpoint tensor in the live model's
    state_dict (transformers 5 keeps experts stacked and some routers renamed in memory:
    ``interop.RENAMES``/``FUSED``) and the grown model, one layer deeper, computes the same logits."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        pytest.skip(f"the installed transformers has no causal LM {model_type!r}")
    interop = pytest.importorskip("hyperclone_torch.interop")
    cfg = transformers.AutoConfig.for_model(model_type, **dict(TOKEN_IDS, **moe.TINY[model_type]))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    grown = interop.expand_model(model, width=2, layers="+1")
    tokens = torch.from_numpy(np.random.default_rng(3).integers(0, 90, (2, 12)))
    with torch.no_grad():
        want, got = model(tokens).logits.numpy(), grown(tokens).logits.numpy()
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < TOL, f"{model_type}: the grown live model's logits differ by {rel:.2e}"
