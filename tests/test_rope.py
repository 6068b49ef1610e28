"""Every RoPE variant transformers implements, in the core once (``model/rope.py``).

The core's inverse frequencies and attention factor equal transformers' own
``ROPE_INIT_FUNCTIONS`` (at lengths on both sides of the variants' thresholds); a
rope_type the installed transformers has and the core does not know fails here.
Acceptance: every rope_type grows exactly on llama, qwen2 and phi3 configs (a
Llama-3.2-shaped ``llama3`` config among them): a tiny model built by transformers,
grown ``--width 2`` by ``hyperclone expand``, reloaded by transformers, gives the
source's logits within 1e-5 x max|logit| and the same 20 greedy tokens.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hyperclone_core import family_for_config, io
from hyperclone_core.cli import main
from hyperclone_core.errors import ConfigError
from hyperclone_core.model import rope, testing
from hyperclone_core.model.decoder import rope_tables
from hyperclone_core.run.reference import forward

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import modeling_rope_utils  # noqa: E402

TOL = 1e-5
LLAMA_32 = dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192, rope_theta=500000.0)
"""Llama-3.2-1B's rope_parameters as its config.json has them."""
VARIANTS = {
    "default": dict(rope_type="default", rope_theta=10000.0),
    "linear": dict(rope_type="linear", factor=4.0, rope_theta=10000.0),
    "dynamic": dict(rope_type="dynamic", factor=2.0, rope_theta=10000.0),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16, rope_theta=10000.0),
    "yarn_mscale": dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=8, mscale=0.707,
                        mscale_all_dim=1.0, beta_fast=16, beta_slow=2, truncate=False, rope_theta=20000.0),
    "longrope": dict(rope_type="longrope", short_factor=[1.0, 1.1, 1.5, 2.0], long_factor=[1.0, 2.0, 4.0, 8.0],
                     original_max_position_embeddings=16, rope_theta=10000.0),
    "llama3": LLAMA_32,
    "proportional": dict(rope_type="proportional", partial_rotary_factor=0.5, factor=2.0, rope_theta=10000.0),
}
LONG = {"dynamic": 80, "longrope": 24}
"""Lengths past the variant's threshold (max_position_embeddings 64 / original 16)."""
PHI3_TYPES = ("default", "longrope")
"""The only types transformers' Phi-3 config accepts (it reads su and yarn as longrope)."""


def _variant(name: str) -> str:
    return rope.raw_params({"rope_parameters": VARIANTS[name]})["rope_type"]


def _config(case: str, variant: str) -> dict:
    hf = dict(testing.CASES[case], rope_parameters=dict(VARIANTS[variant]))
    hf.pop("rope_theta", None)
    if variant == "llama3":
        hf["max_position_embeddings"] = 131072  # Llama-3.2's
    if case == "phi3":
        hf["original_max_position_embeddings"] = VARIANTS[variant].get("original_max_position_embeddings", 64)
    return hf


def test_every_transformers_rope_type_is_known():
    theirs = set(modeling_rope_utils.ROPE_INIT_FUNCTIONS) | {"default"}
    missing = theirs - set(rope.ROPE_TYPES)
    assert not missing, f"transformers implements rope_type {sorted(missing)}; add them to model/rope.py"
    assert {_variant(v) for v in VARIANTS} == set(rope.ROPE_TYPES), "every variant has a case here"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("T", [12, 80])
def test_frequencies_equal_transformers(variant, T):
    hf = _config("llama", variant)
    cfg = transformers.AutoConfig.for_model(**hf)
    rope_type = _variant(variant)
    dec = family_for_config(hf).read(hf)
    fn = modeling_rope_utils.ROPE_INIT_FUNCTIONS.get(rope_type)
    if fn is None:
        inv, factor = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    else:  # transformers' forward hands a length-dependent variant the length past its threshold only
        grows = (rope_type == "dynamic" and T > cfg.max_position_embeddings) or rope_type == "longrope"
        inv, factor = fn(cfg, None, seq_len=T if grows else None)
    ours, our_factor = rope.inv_freq(dec, T)
    np.testing.assert_allclose(ours, inv.double().numpy(), rtol=2e-6, atol=0)
    assert our_factor == pytest.approx(factor, rel=1e-12)
    cos, _ = rope_tables(dec, T)
    assert cos.shape == (T, 2 * len(ours)) and cos[0, 0] == pytest.approx(factor)


def test_unknown_rope_type_is_refused_by_name():
    hf = dict(testing.CASES["llama"], rope_parameters=dict(rope_type="warp", rope_theta=1e4))
    with pytest.raises(ConfigError, match="rope_type 'warp' is not supported; supported: default, dynamic"):
        family_for_config(hf).read(hf)


def test_missing_parameters_are_named():
    hf = dict(testing.CASES["llama"], rope_parameters=dict(rope_type="llama3", factor=8.0, rope_theta=1e4))
    with pytest.raises(ConfigError, match="needs low_freq_factor, high_freq_factor"):
        family_for_config(hf).read(hf)


def test_per_layer_rope_is_refused_not_misread():
    hf = dict(testing.CASES["llama"], rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                       "sliding_attention": {"rope_type": "default"}})
    with pytest.raises(ConfigError, match="per-layer-type RoPE"):
        family_for_config(hf).read(hf)


def _matrix():
    for case in ("llama", "qwen2", "phi3"):
        for variant in VARIANTS:
            if case == "phi3" and _variant(variant) not in PHI3_TYPES:
                continue
            yield pytest.param(case, variant, id=f"{case}-{variant}")


def _build(folder, hf: dict):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf)).float()
    with torch.no_grad():
        for p in model.parameters():  # gains of exactly 1 and zero biases hide mistakes
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)


def _load(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def _logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.float().numpy()


def _greedy(model, prompt) -> list:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False)
    return out[0, len(prompt):].tolist()


def test_phi3_refuses_what_transformers_refuses():
    """PHI3_TYPES is transformers' list, not a convenience: every other type fails there."""
    for variant in VARIANTS:
        if _variant(variant) in PHI3_TYPES or variant == "yarn_mscale":
            continue
        with pytest.raises(Exception, match="type field must be one of|Missing required keys"):  # yarn reads as longrope
            transformers.AutoConfig.for_model(**_config("phi3", variant))


@pytest.mark.parametrize("case,variant", list(_matrix()))
def test_every_rope_type_grows_exactly(case, variant, tmp_path):
    hf = _config(case, variant)
    src, dst = tmp_path / "src", tmp_path / "dst"
    _build(src, hf)
    assert main(["expand", str(src), str(dst), "--width", "2", "--quiet"]) == 0
    grown = json.loads((dst / "config.json").read_text())
    assert grown["hidden_size"] == 2 * hf["hidden_size"]
    if _variant(variant) != "default":  # mirrored where transformers 4.x and mlx-lm read it
        assert grown["rope_scaling"]["type"] == grown["rope_scaling"]["rope_type"] == _variant(variant)
    saved = json.loads((src / "config.json").read_text())
    fields = ("rope_theta", "rotary_dim", "rope_type", "rope_scaling")
    read, saved_read = family_for_config(hf).read(hf), family_for_config(saved).read(saved)
    assert [getattr(saved_read, f) for f in fields] == [getattr(read, f) for f in fields], "the saved config reads back"
    a, b = _load(src), _load(dst)
    assert b.config.rope_parameters["rope_type"] == a.config.rope_parameters["rope_type"]
    for T in (12, LONG.get(variant, 0)):
        if not T:
            continue
        tokens = testing.random_tokens(hf["vocab_size"], seq=T, seed=3)
        want, got = _logits(a, tokens), _logits(b, tokens)
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        assert rel <= TOL, f"{case} {variant} T={T}: logits differ by {rel:.2e} x max|logit|"
        # the core's decoder runs the same variant: the oracle equals transformers on the grown folder
        fam = family_for_config(grown)
        _, weights = io.load_weights(dst)
        ours = forward(fam, fam.read(grown), weights, tokens, dtype=np.float64)
        rel = float(np.abs(ours - got).max() / np.abs(got).max())
        assert rel <= TOL, f"{case} {variant} T={T}: the oracle differs from transformers by {rel:.2e}"
    prompt = [1, 5, 9, 13, 17]
    assert _greedy(b, prompt) == _greedy(a, prompt)


def test_scaled_rope_changes_the_function():
    """The cases above would pass if every variant ran as default RoPE; they do not."""
    base = family_for_config(testing.CASES["llama"]).read(_config("llama", "default"))
    for variant in VARIANTS:
        if variant == "default":
            continue
        dec = family_for_config(testing.CASES["llama"]).read(_config("llama", variant))
        T = LONG.get(variant, 12)
        a, b = rope_tables(base, T), rope_tables(dec, T)
        assert not np.allclose(a[0], b[0]), variant


def test_yarn_attention_factor_is_transformers_default():
    dec = family_for_config(testing.CASES["llama"]).read(_config("llama", "yarn"))
    assert dict(dec.rope_scaling)["attention_factor"] == pytest.approx(0.1 * math.log(4.0) + 1.0)


def _backend_logits(name: str, fam, dec, hf, weights, tokens) -> np.ndarray:
    if name == "torch":
        from hyperclone_torch.model import Decoder

        with torch.no_grad():
            return Decoder.from_weights(hf, weights)(torch.from_numpy(tokens)).float().numpy()
    if name == "jax":
        pytest.importorskip("jax")
        from hyperclone_jax import model

        return np.asarray(model.forward(fam, dec, weights, tokens))
    mx = pytest.importorskip("mlx.core")
    from hyperclone_mlx import model

    return np.array(model.logits(fam, dec, {k: mx.array(v) for k, v in weights.items()}, mx.array(tokens)))


@pytest.mark.parametrize("backend", ["torch", "jax", "mlx"])
@pytest.mark.parametrize("variant", ["yarn_mscale", "longrope", "llama3", "dynamic", "proportional"])
def test_every_backend_runs_the_variant(backend, variant):
    """Each backend's decoder (torch's nn.Module, jax's jitted blocks, mlx's fused RoPE
    from the core's frequencies) equals the numpy oracle on a scaled variant, past the
    length threshold where the variant has one."""
    hf = _config("llama", variant)
    fam = family_for_config(hf)
    dec = fam.read(hf)
    weights = testing.random_weights(hf, seed=4)
    tokens = testing.random_tokens(hf["vocab_size"], batch=2, seq=LONG.get(variant, 12), seed=4)
    want = forward(fam, dec, weights, tokens, dtype=np.float64)
    got = _backend_logits(backend, fam, dec, hf, weights, tokens)
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel <= 1e-5, f"{backend} {variant}: {rel:.2e}"
