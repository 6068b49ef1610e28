"""The GPT-style families (model/families/gpt.py) against transformers.

The oracle's logits equal transformers' for each tiny config and for the variants the
tiny configs leave out (non-power-of-two ALiBi head counts, GPT-BigCode without
multi-query, GPT-2 without the attention scale, head_dim growth under an explicit MPT
softmax scale); growths the checkpoint's config could not express are refused by name.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperclone_core import io
from hyperclone_core.cli import main
from hyperclone_core.errors import ConfigError
from hyperclone_core.model import families
from hyperclone_core.model.decoder import alibi_slopes
from hyperclone_core.model.families import gpt
from hyperclone_core.run.reference import forward

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TOL = 1e-5
VARIANTS = {
    "bloom-6-heads": ("bloom", dict(hidden_size=36, n_head=6)),
    "mpt-6-heads": ("mpt", dict(d_model=36, n_heads=6)),
    "bigcode-mha": ("gpt_bigcode", dict(multi_query=False)),
    "gpt2-unscaled": ("gpt2", dict(scale_attn_weights=False, reorder_and_upcast_attn=True)),
    "neo-all-local": ("gpt_neo", dict(attention_types=[[["local"], 2]], window_size=3)),
}
CASES = {mt: (mt, {}) for mt in gpt.TINY}
CASES.update(VARIANTS)


def _build(folder, model_type, overrides):
    kw = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, **dict(families.TINY[model_type], **overrides))
    cfg = transformers.AutoConfig.for_model(**kw)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim == 1 else 0.05))
    model.save_pretrained(folder)
    return folder


def _logits(folder, tokens):
    m = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return m(torch.from_numpy(tokens)).logits.numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_oracle_equals_transformers(case, tmp_path):
    src = _build(tmp_path / "src", *CASES[case])
    hf = json.loads((src / "config.json").read_text())
    family = families.family_for_config(hf)
    _, weights = io.load_weights(src)
    tokens = np.random.default_rng(3).integers(0, 90, (2, 12))
    want = _logits(src, tokens)
    got = forward(family, family.read(hf), weights, tokens, dtype=np.float64)
    assert np.abs(got - want).max() <= TOL * np.abs(want).max()


@pytest.mark.parametrize("case,growth", [
    ("bloom-6-heads", ["--width", "2", "--layers", "+1"]),
    ("bigcode-mha", ["--width", "2", "--layers", "+1"]),
    ("gpt2-unscaled", ["--width", "2", "--heads", "1"]),   # head_dim grows through the fused, transposed qkv
    ("gpt2", ["--width", "2", "--heads", "1", "--layers", "+2"]),  # and with the 1 / (layer + 1) scale
])
def test_growth_is_exact(case, growth, tmp_path):
    src = _build(tmp_path / "src", *CASES[case])
    assert main(["expand", str(src), str(tmp_path / "dst"), "--quiet", *growth]) == 0
    tokens = np.random.default_rng(3).integers(0, 90, (2, 12))
    want, got = _logits(src, tokens), _logits(tmp_path / "dst", tokens)
    assert np.abs(got - want).max() <= TOL * np.abs(want).max()


def test_alibi_slopes_follow_the_head_count():
    assert alibi_slopes(4) == (2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8)
    # 6 heads: the 4-head slopes, then the odd ones of 8 heads
    assert alibi_slopes(6) == (2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3)
    assert set(alibi_slopes(4)) != set(alibi_slopes(8)[:4])  # why heads cannot grow


@pytest.mark.parametrize("case,growth,words", [
    ("bloom", ["--width", "2", "--heads", "2"], "ALiBi"),
    ("mpt", ["--width", "2", "--ffn", "3"], "4 x hidden"),
    ("gpt_bigcode", ["--width", "2", "--heads", "2", "--kv-heads", "2"], "kv"),
    ("openai-gpt", ["--width", "2", "--layers", "+1"], "depth"),
])
def test_growth_the_config_cannot_hold_is_refused(case, growth, words, tmp_path, capsys):
    src = _build(tmp_path / "src", *CASES[case])
    assert main(["expand", str(src), str(tmp_path / "dst"), "--quiet", *growth]) != 0
    assert words in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("model_type,key,value", [
    ("bloom", "apply_residual_connection_post_layernorm", True),
    ("mpt", "expansion_ratio", 2),
    ("mpt", "attn_config", {"qk_ln": True}),
    ("mpt", "attn_config", {"alibi_bias_max": 16}),
    ("gpt2", "add_cross_attention", True),
    ("openai-gpt", "afn", "tanh"),
])
def test_configs_computing_something_else_are_refused_by_key(model_type, key, value):
    hf = dict(families.TINY[model_type], **{key: value})
    with pytest.raises(ConfigError, match=next(iter(value)) if isinstance(value, dict) else key):
        families.get_family(model_type).read(hf)
