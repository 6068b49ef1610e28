"""Params pytrees and Hugging Face folders: what the jax backend grows -- through
``hyperclone expand --backend jax`` or ``expand_params`` on a pytree -- loads in
``transformers`` with the source's logits."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("transformers")

import hyperclone_jax as hj  # noqa: E402
from hyperclone_core.model import testing  # noqa: E402

BOUND = 1e-5
"""Grown vs source logits, both through transformers (float32): max |d| <= BOUND x max |logit|."""


def _close(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("case", ["llama", "gpt_neox"])
def test_expand_cli_with_jax_loads_in_transformers_with_the_source_logits(case_dir, hf_logits, tmp_path, case):
    from hyperclone_core.cli import main

    src = case_dir(case)
    dst = tmp_path / "grown"
    assert main(["expand", str(src), str(dst), "--width", "2", "--strategy", "noisy:10", "--backend", "jax",
                 "--quiet"]) == 0
    tokens = testing.random_tokens(96, 2, 12, seed=3)
    rel = _close(hf_logits(src, tokens), hf_logits(dst, tokens))
    assert rel <= BOUND, f"{case}: transformers sees the jax-grown model's logits off by {rel:.2e} of max|logit|"


def test_pytree_round_trip_and_expand_params(case_dir, hf_logits, tmp_path):
    src = case_dir("mixtral")
    config, params = hj.load_pretrained(src)
    assert all(isinstance(v, jax.Array) for v in params.values())
    grown, new = hj.expand_params(params, config, width=2, ffn=1.5, strategy="noisy:10", seed=4)
    assert new["hidden_size"] == 2 * config["hidden_size"] and new["intermediate_size"] == 72
    assert grown["model.embed_tokens.weight"].shape == (96, 64)
    hj.save_pretrained(tmp_path / "grown", new, grown)
    tokens = testing.random_tokens(96, 2, 12, seed=5)
    rel = _close(hf_logits(src, tokens), hf_logits(tmp_path / "grown", tokens))
    assert rel <= BOUND, f"mixtral grown from a pytree: logits off by {rel:.2e} of max|logit|"
    _, again = hj.load_pretrained(tmp_path / "grown")
    assert all(np.array_equal(np.asarray(again[n]), np.asarray(grown[n])) for n in grown)


def test_bfloat16_pytree_stays_bfloat16_bit_for_bit(case_dir, tmp_path):
    config, params = hj.load_pretrained(case_dir("llama"), dtype="bfloat16")
    assert {str(v.dtype) for v in params.values()} == {"bfloat16"}
    hj.save_pretrained(tmp_path / "bf16", config, params)
    cfg2, again = hj.load_pretrained(tmp_path / "bf16")
    assert cfg2["torch_dtype"] == "bfloat16"
    for n, v in params.items():
        assert again[n].dtype == v.dtype and np.array_equal(np.asarray(again[n]).view(np.uint16),
                                                            np.asarray(v).view(np.uint16)), n


def test_expand_params_names_what_is_missing():
    cfg = testing.CASES["llama"]
    params = testing.random_weights(cfg)
    params.pop("lm_head.weight")
    with pytest.raises(KeyError, match="lm_head.weight"):
        hj.expand_params(params, cfg, width=2)
