"""The families of ``families/parallel.py`` against transformers: for every model type it
grows (its tiny config, and variants turning its optional features the other way), the
numpy oracle's logits on a model built by transformers from the type's own config class
(parameters perturbed off their init) equal transformers' own within 1e-5 x max|logit|,
in float32 and float64; and the growths whose written config differs in kind from the
source's (falcon's multi_query grown to more kv heads, written as the new architecture;
q-per-kv growth through per-head tensors and grouped fused qkv) reload in transformers
with the source's logits.  What a config of these types cannot do is refused by name.

``tests/test_family_types.py`` grows each tiny config through the CLI; this checks that
the oracle every backend is compared with computes what transformers does, on every
flag the readers take.
"""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_core import ConfigError, family_for_config, io
from hyperclone_core.cli import main
from hyperclone_core.model.families import parallel
from hyperclone_core.run.reference import forward

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TOL = 1e-5
TOKEN_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
CLASSIC = dict(new_decoder_architecture=False, num_ln_in_parallel_attn=None, num_kv_heads=None)
"""falcon's classic blocks (the tiny config is the new architecture)."""
VARIANTS = {
    "phi": [dict(qk_layernorm=False, tie_word_embeddings=True)],
    "stablelm": [dict(use_parallel_residual=False, qk_layernorm=False, use_qkv_bias=False)],
    "starcoder2": [dict(use_bias=False, sliding_window=None, tie_word_embeddings=False)],
    "persimmon": [dict(qk_layernorm=False, tie_word_embeddings=True)],
    "cohere": [dict(use_qk_norm=False, attention_bias=False, tie_word_embeddings=False)],
    "cohere2": [dict(layer_types=["sliding_attention", "sliding_attention", "full_attention"], attention_bias=False)],
    "cohere2_moe": [dict(expert_selection_fn="sigmoid", norm_topk_prob=False, shared_expert_combination_strategy="sum",
                         rms_norm_eps=1e-6),
                    dict(num_shared_experts=0, prefix_dense_sliding_window_pattern=2,
                         prefix_dense_intermediate_size=None)],
    "falcon": [dict(num_ln_in_parallel_attn=1, num_kv_heads=1), dict(CLASSIC),
               dict(CLASSIC, multi_query=False), dict(CLASSIC, multi_query=False, parallel_attn=False, bias=False)],
    "gptj": [dict(rotary_dim=8, tie_word_embeddings=True)],
    "codegen": [dict(n_head=8)],
    "gpt_neox_japanese": [dict(tie_word_embeddings=True, num_hidden_layers=3)],
}


def _cases():
    for mt in sorted(parallel.TINY):
        yield pytest.param(mt, {}, id=mt)
        for k, over in enumerate(VARIANTS.get(mt, [])):
            yield pytest.param(mt, over, id=f"{mt}-variant{k}")


def _build(model_type: str, over: dict, folder):
    cfg = transformers.AutoConfig.for_model(model_type, **dict(TOKEN_IDS, **dict(parallel.TINY[model_type], **over)))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # gains of exactly 1 and zero biases hide mistakes
            p.add_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim == 1 else 0.05))
    model.save_pretrained(folder)
    return folder


def _logits(folder, tokens) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.double().numpy()


TOKENS = np.random.default_rng(3).integers(0, 90, (2, 12))


def test_every_type_has_variants_or_none_to_turn():
    assert set(VARIANTS) <= set(parallel.TINY)


@pytest.mark.parametrize("model_type,over", list(_cases()))
def test_oracle_equals_transformers(model_type, over, tmp_path):
    folder = _build(model_type, over, tmp_path / "src")
    want = _logits(folder, TOKENS)
    hf, weights = io.load_weights(folder)
    family = family_for_config(hf)
    dec = family.read(hf)
    for dtype in (np.float32, np.float64):
        got = forward(family, dec, weights, TOKENS, dtype=dtype)
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel < TOL, f"{model_type} {over} {dtype.__name__}: oracle differs from transformers by {rel:.2e}"


GROWN = [
    ("falcon", dict(CLASSIC), ["--width", "2", "--heads", "2", "--kv-heads", "2"]),  # written as the new architecture
    ("falcon", {}, ["--width", "2", "--heads", "2", "--kv-heads", "1"]),  # grouped qkv, q_per_kv 2 -> 4
    ("stablelm", {}, ["--width", "2", "--heads", "2", "--kv-heads", "1"]),  # per-head q LayerNorms, q_per_kv grows
    ("codegen", {}, ["--width", "3"]),  # CodeGen's qkv blocks, 1 -> 3 heads each
    ("cohere2_moe", {}, ["--width", "2", "--layers", "+2"]),  # dense and MoE layers, nope layers, written back
]


@pytest.mark.parametrize("model_type,over,growth", GROWN, ids=[f"{m}-{'-'.join(g[2:])}" for m, _, g in GROWN])
def test_growth_reloads_with_the_source_logits(model_type, over, growth, tmp_path):
    src = _build(model_type, over, tmp_path / "src")
    dst = tmp_path / "dst"
    assert main(["expand", str(src), str(dst), "--quiet", *growth]) == 0
    want, got = _logits(src, TOKENS), _logits(dst, TOKENS)
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel <= TOL, f"{model_type} {over} {growth}: grown logits differ by {rel:.2e}"


def _refused(args, capsys) -> str:
    assert main(["expand", *args, "--quiet"]) == 2  # a growth the config cannot write: a plan refusal
    return capsys.readouterr().err


def test_refusals_name_what_cannot_be_done(tmp_path, capsys):
    with pytest.raises(ConfigError, match="alibi"):
        parallel.falcon.read(dict(parallel.TINY["falcon"], model_type="falcon", alibi=True))
    with pytest.raises(ConfigError, match="num_kv_heads"):
        parallel.falcon.read(dict(parallel.TINY["falcon"], model_type="falcon", **dict(CLASSIC, multi_query=False,
                                                                                       num_kv_heads=2)))
    with pytest.raises(ConfigError, match="rotary_dim"):
        parallel.gptj.read(dict(parallel.TINY["gptj"], model_type="gptj", rotary_dim=None))
    mqa = str(_build("falcon", dict(CLASSIC, parallel_attn=False), tmp_path / "mqa"))
    assert "sequential blocks" in _refused([mqa, str(tmp_path / "a"), "--kv-heads", "2"], capsys)
    japanese = str(_build("gpt_neox_japanese", {}, tmp_path / "jp"))
    assert "copy the last layer" in _refused([japanese, str(tmp_path / "b"), "--layers", "+3"], capsys)
    assert "intermediate_multiple_size" in _refused([japanese, str(tmp_path / "c"), "--ffn", "1.5"], capsys)
