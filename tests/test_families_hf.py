"""The 14 cases against transformers: the oracle forward, and expansion then reload.

Acceptance of the core issue: ``expand`` then a transformers reload gives logits
equal to the source's within 1e-5 x max|logit| (float32), for the default strategy
and symmetric / diagonal / first_copy, at width 2 and 3, uneven ffn, kv-heads and
q-per-kv growth separately, and depth +2.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hyperclone_core import PlanError, family_for_config, io
from hyperclone_core.model import testing
from hyperclone_core.expand.checkpoint import expand_checkpoint
from hyperclone_core.run.reference import forward

pytest.importorskip("transformers")

CASES = list(testing.CASES)
TOL = 1e-5


def _growths(cfg):
    """(id, growth kwargs) of the acceptance matrix that apply to this config."""
    g = [("w2", dict(width=2)), ("w3", dict(width=3)), ("ffn1.5", dict(width=2, ffn=1.5)),
         ("depth+2", dict(width=2, layers="+2"))]
    if cfg.kv_heads > 1 and cfg.kv_heads < cfg.heads:  # grouped-query attention
        g += [("kv-only", dict(width=1, heads=2, kv_heads=2)), ("qpkv-only", dict(width=1, heads=2, kv_heads=1))]
    return g


@pytest.mark.parametrize("case", CASES)
def test_oracle_equals_transformers(case, case_dir, hf_logits):
    cfg = testing.CASES[case]
    family = family_for_config(cfg)
    dec = family.read(cfg)
    _, weights = io.load_weights(case_dir(case))
    tokens = testing.random_tokens(dec.vocab, seq=12)
    ref = hf_logits(case_dir(case), tokens)
    for dtype in (np.float32, np.float64):
        got = forward(family, dec, weights, tokens, dtype=dtype)
        assert got.dtype == dtype
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel < TOL, f"{case} {dtype.__name__}: oracle differs from transformers by {rel:.2e}"


def _matrix():
    for case in CASES:
        dec = family_for_config(testing.CASES[case]).read(testing.CASES[case])
        for gid, kw in _growths(dec):
            for strategy in ("noisy:10", "symmetric", "diagonal", "first_copy"):
                yield pytest.param(case, kw, strategy, id=f"{case}-{gid}-{strategy}")


@pytest.mark.parametrize("case,growth,strategy", list(_matrix()))
def test_expand_then_transformers_reload_preserves_logits(case, growth, strategy, case_dir, tmp_path, hf_logits):
    src = case_dir(case)
    dec = family_for_config(testing.CASES[case]).read(testing.CASES[case])
    tokens = testing.random_tokens(dec.vocab, seq=12, seed=3)
    dst = tmp_path / "grown"
    try:
        report = expand_checkpoint(src, dst, strategy=strategy, verify=False, progress=False, **growth)
    except PlanError as exc:
        # refusals must be the documented ones, never silent
        allowed = ("diagonal needs equal copy counts", "rule 'depth'", "rule 'coefficients'")
        assert any(a in str(exc) for a in allowed), str(exc)
        assert not dst.exists()
        pytest.skip(f"refused by the planner: {exc}")
    assert report["exact"]
    ref = hf_logits(src, tokens)
    got = hf_logits(dst, tokens)
    new = io.read_config(dst)
    assert new["hidden_size"] == dec.hidden * growth.get("width", 2)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel <= TOL, f"{case} {growth} {strategy}: logits differ by {rel:.2e} x max|logit|"


@pytest.mark.parametrize("case", CASES)
def test_role_tables_match_what_save_pretrained_writes(case, tmp_path):
    """Names and shapes exactly as the installed transformers saves them (no extra, none missing)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = testing.CASES[case]
    hf_cfg = transformers.AutoConfig.for_model(**cfg)
    transformers.AutoModelForCausalLM.from_config(hf_cfg).save_pretrained(tmp_path / "m")
    ck = io.Checkpoint(tmp_path / "m")
    family = family_for_config(ck.config)
    dec = family.read(ck.config)
    ck.validate(family, dec)
    ours = family.read(cfg)
    if not ours.layer_types:  # transformers fills in an all-full-attention list
        assert set(dec.layer_types) <= {"full_attention"}
        dec = dataclasses.replace(dec, layer_types=())
    assert dec == ours  # the saved config reads back as the same decoder


def test_mqa_keeps_one_kv_head(tmp_path, hf_logits):
    cfg = dict(testing.CASES["llama"], num_key_value_heads=1)
    io.save_checkpoint(tmp_path / "src", cfg, testing.random_weights(cfg))
    expand_checkpoint(tmp_path / "src", tmp_path / "dst", progress=False)
    new = io.read_config(tmp_path / "dst")
    assert new["num_key_value_heads"] == 1 and new["num_attention_heads"] == 8
    tokens = testing.random_tokens(cfg["vocab_size"])
    a, b = hf_logits(tmp_path / "src", tokens), hf_logits(tmp_path / "dst", tokens)
    assert np.abs(a - b).max() / np.abs(a).max() < TOL


SLIDING = {  # a window of 4 over 12 tokens, no layer_types: transformers derives the pattern
    "mistral": dict(sliding_window=4),
    "mixtral": dict(sliding_window=4),
    "phi3": dict(sliding_window=4),
    "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "gemma2": dict(sliding_window=4),
}


def _sliding_case(case, tmp_path, seed=1):
    cfg = {k: v for k, v in testing.CASES[case].items() if k != "layer_types"}
    cfg.update(SLIDING[case])
    folder = tmp_path / f"{case}-sliding"
    io.save_checkpoint(folder, cfg, testing.random_weights(cfg, seed=seed))
    return cfg, folder


@pytest.mark.parametrize("case", list(SLIDING))
def test_sliding_window_without_layer_types_as_transformers_derives_it(case, tmp_path, hf_logits):
    """Configs from transformers 4.x (and Mistral/Mixtral/Phi-3 in any version) set
    sliding_window with no layer_types; the oracle applies the window where
    transformers does, and depth growth keeps every layer's attention kind."""
    cfg, src = _sliding_case(case, tmp_path)
    family = family_for_config(cfg)
    dec = family.read(cfg)
    assert dec.layer_types and "sliding_attention" in dec.layer_types
    tokens = testing.random_tokens(dec.vocab, seq=12, seed=3)
    _, weights = io.load_weights(src)
    ref = hf_logits(src, tokens)
    got = forward(family, dec, weights, tokens, dtype=np.float64)
    assert np.abs(got - ref).max() / np.abs(ref).max() < TOL
    full = forward(family, dataclasses.replace(dec, layer_types=()), weights, tokens, dtype=np.float64)
    assert np.abs(full - ref).max() / np.abs(ref).max() > 1e-3  # the window matters at this length
    dst = tmp_path / "grown"
    expand_checkpoint(src, dst, width=2, layers="+1", strategy="symmetric", verify=False, progress=False)
    rel = np.abs(hf_logits(dst, tokens) - ref).max() / np.abs(ref).max()
    assert rel <= TOL, f"{case}: depth growth changed the attention pattern ({rel:.2e})"
