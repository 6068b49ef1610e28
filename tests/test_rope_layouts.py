"""RoPE layouts and per-layer patterns (``families/patterns.py``) against transformers.

- interleaved rotary (GPT-J/Cohere/GLM: pairs (2i, 2i+1)), whole and partial, equals
  transformers' GLM rotation on the core's rotate-half tables;
- per-layer-type RoPE: the decoder's full and sliding tables equal transformers' Gemma 3
  and OLMo 3 rotary embeddings per layer type; a 4.x config (rope_theta,
  rope_local_base_freq, rope_scaling at the top level) reads as transformers 5 reads it;
- the numpy oracle's logits on every patterns type's tiny model (built by transformers
  from its own config class, parameters perturbed off their init) equal transformers'
  within 1e-5 x max|logit|, and turning the type's distinctive flag off moves them far;
- depth growth keeps each inserted layer's kind: SmolLM3's ``no_rope_layers`` extended by
  source layer, the planner's ``nope_layers`` mapped the same way;
- what the readers refuse, by key.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hyperclone_core import family_for_config, io
from hyperclone_core.errors import ConfigError
from hyperclone_core.model import decoder
from hyperclone_core.model.decoder import NumpyOps, rope_tables
from hyperclone_core.model.families import patterns
from hyperclone_core.run.reference import forward

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
TOKEN_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
DISTINCTIVE = {
    "smollm3": dict(nope_layers=()), "exaone4": dict(nope_layers=()),
    "gemma3_text": dict(rope_sliding=()), "olmo3": dict(rope_sliding=()),
    "glm": dict(rope_interleaved=False), "glm4": dict(rope_interleaved=False),
    "hunyuan_v1_dense": dict(qk_norm_after_rope=False),
    "modernbert-decoder": dict(rope_sliding=(), head_act=""),
}
"""The flag each type's tiny case turns on, and its off value: the oracle must move."""


def _tables(rd: int, T: int, theta: float = 10000.0):
    inv = 1.0 / theta ** (np.arange(0, rd, 2) / rd)
    f = np.arange(T)[:, None] * inv[None, :]
    emb = np.concatenate([f, f], -1)
    return np.cos(emb), np.sin(emb)


@pytest.mark.parametrize("rd", [16, 8, 4])
def test_interleaved_rope_equals_transformers_glm_rotation(rd):
    from transformers.models.glm.modeling_glm import apply_rotary_pos_emb

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 16))
    cos, sin = _tables(rd, 7)
    got = NumpyOps().rope(x, cos, sin, interleaved=True)
    xt = torch.from_numpy(x).transpose(1, 2)
    want, _ = apply_rotary_pos_emb(xt, xt, torch.from_numpy(cos)[None], torch.from_numpy(sin)[None])
    np.testing.assert_allclose(got, want.transpose(1, 2).numpy(), rtol=0, atol=1e-12)
    assert not np.allclose(got, NumpyOps().rope(x, cos, sin)), "interleaved must differ from rotate-half"
    np.testing.assert_array_equal(got[..., rd:], x[..., rd:])  # the unrotated share passes through


def _tiny_model(model_type: str, folder, **overrides):
    cfg = transformers.AutoConfig.for_model(model_type, **{**TOKEN_IDS, **patterns.TINY[model_type], **overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim == 1 else 0.05))
    model.save_pretrained(folder)
    return transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.mark.parametrize("model_type", sorted(patterns.TINY))
def test_oracle_equals_transformers(model_type, tmp_path):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        pytest.skip(f"the installed transformers has no causal LM {model_type!r}")
    model = _tiny_model(model_type, tmp_path)
    hf, weights = io.load_weights(tmp_path)
    family = family_for_config(hf)
    dec = family.read(hf)
    tokens = np.random.default_rng(3).integers(0, 90, (2, 12))
    with torch.no_grad():
        want = model(torch.from_numpy(tokens)).logits.numpy()
    scale = np.abs(want).max()
    for dtype in (np.float32, np.float64):
        got = forward(family, dec, weights, tokens, dtype=dtype)
        rel = np.abs(got - want).max() / scale
        assert rel < TOL, f"{model_type} {dtype.__name__}: the oracle differs from transformers by {rel:.2e}"
    for flag, off in DISTINCTIVE.get(model_type, {}).items():
        assert getattr(dec, flag) != off, f"{model_type}: the tiny case should turn {flag} on"
        got = forward(family, dataclasses.replace(dec, **{flag: off}), weights, tokens, dtype=np.float64)
        assert np.abs(got - want).max() / scale > 10 * TOL, f"{model_type}: {flag} off changes nothing"


@pytest.mark.parametrize("model_type,extra", [
    ("gemma3_text", {}),
    ("gemma3_text", dict(rope_parameters={"full_attention": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 5e5,
                                                               "original_max_position_embeddings": 16},
                                          "sliding_attention": {"rope_type": "default", "rope_theta": 30.0}})),
    ("olmo3", {}),
])
def test_per_layer_type_tables_equal_transformers(model_type, extra):
    cfg = transformers.AutoConfig.for_model(model_type, **{**TOKEN_IDS, **patterns.TINY[model_type], **extra})
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    dec = family_for_config(cfg.to_dict()).read(cfg.to_dict())
    T = 20
    x = torch.zeros(1, T, cfg.hidden_size)
    pos = torch.arange(T)[None]
    tb = decoder.tables(dec, T, NumpyOps(), np.float64)
    assert dec.rope_sliding, "the tiny case gives sliding layers their own RoPE"
    for layer_type, (cos, sin) in (("full_attention", (tb.cos, tb.sin)), ("sliding_attention", (tb.local_cos,
                                                                                                 tb.local_sin))):
        want_cos, want_sin = model.model.rotary_emb(x, pos, layer_type)
        np.testing.assert_allclose(cos, want_cos[0].double().numpy(), atol=2e-6, err_msg=layer_type)
        np.testing.assert_allclose(sin, want_sin[0].double().numpy(), atol=2e-6, err_msg=layer_type)
    for i, t in enumerate(dec.layer_types):
        assert decoder.rope_of(dec, i) == ("sliding" if t == "sliding_attention" else "rope")


def test_gemma3_4x_rope_keys_read_as_transformers_5_reads_them():
    legacy = dict(patterns.TINY["gemma3_text"], model_type="gemma3_text", rope_theta=20000.0,
                  rope_local_base_freq=77.0, rope_scaling={"rope_type": "linear", "factor": 3.0})
    legacy.pop("rope_parameters")
    family = family_for_config(legacy)
    mine = family.read(legacy)
    theirs = transformers.AutoConfig.for_model(**dict(TOKEN_IDS, **legacy)).to_dict()
    assert family.read(theirs) == mine
    assert (mine.rope_theta, mine.rope_type) == (20000.0, "linear")
    assert dict(mine.rope_sliding)["rope_theta"] == 77.0


def test_olmo3_top_level_theta_goes_to_full_layers_only():
    legacy = dict(patterns.TINY["olmo3"], model_type="olmo3", rope_theta=1234.0)
    legacy.pop("rope_parameters")
    theirs = transformers.AutoConfig.for_model(**dict(TOKEN_IDS, **legacy)).to_dict()
    mine = patterns.olmo3.read(legacy)
    assert patterns.olmo3.read(theirs) == mine
    assert mine.rope_theta == 1234.0 and dict(mine.rope_sliding)["rope_theta"] == 500000.0


def test_depth_growth_extends_no_rope_layers_by_source_layer():
    from hyperclone_core.algebra.planner import layer_map

    hf = dict(patterns.TINY["smollm3"], model_type="smollm3")
    src = patterns.smollm3.read(hf)
    assert src.nope_layers == (False, True, False, True)
    lmap = layer_map(src.layers, 6)
    sources = [s for s, _ in lmap]
    new = dataclasses.replace(src.with_sizes(dict(src.sizes(), layers=6)),
                              nope_layers=tuple(src.nope_layers[s] for s in sources),
                              layer_types=tuple(src.layer_types[s] for s in sources))
    out = patterns.smollm3.write_config(hf, new, sources)
    assert out["no_rope_layers"] == [hf["no_rope_layers"][s] for s in sources]
    assert out["layer_types"] == [src.layer_types[s] for s in sources]
    assert patterns.smollm3.read(out).nope_layers == new.nope_layers
    same = patterns.smollm3.write_config(hf, src, list(range(src.layers)))
    assert same["no_rope_layers"] == hf["no_rope_layers"]


@pytest.mark.parametrize("model_type,bad,key", [
    ("gemma3_text", dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    ("gemma3_text", dict(rope_parameters={"chunked_attention": {"rope_type": "default"}}), "chunked_attention"),
    ("gemma3_text", dict(rope_parameters={"rope_type": "default", "rope_theta": 1.0}), "rope_parameters"),
    ("smollm3", dict(no_rope_layers=[1, 0]), "no_rope_layers"),
    ("smollm3", dict(use_sliding_window=False), "use_sliding_window"),
    ("olmo3", dict(layer_types=["sliding_attention", "chunked_attention", "full_attention"]), "layer_types"),
])
def test_readers_refuse_what_they_cannot_compute(model_type, bad, key):
    hf = dict(patterns.TINY[model_type], model_type=model_type, **bad)
    if model_type == "smollm3" and "use_sliding_window" in bad:
        hf["layer_types"] = ["full_attention", "sliding_attention", "full_attention", "sliding_attention"]
    with pytest.raises(ConfigError, match=key):
        family_for_config(hf).read(hf)


def test_rope_tables_of_sliding_layers_use_their_own_fields():
    hf = dict(patterns.TINY["gemma3_text"], model_type="gemma3_text")
    dec = patterns.gemma3_text.read(hf)
    local = decoder.sliding_rope(dec)
    assert (local.rope_theta, local.rope_type) == (100.0, "default")
    np.testing.assert_allclose(rope_tables(local, 9)[0], _tables(dec.head_dim, 9, 100.0)[0], atol=1e-12)
