"""The Llama-like families read a config.json that leaves keys out as its config class
completes it: each class's own defaults (head_dim 128, eps, activation, soft-cap, the
RoPE base or whole RoPE dict, sliding-window patterns), not Llama's.

For every type of ``families/llamalike.py``: the neutral config read from a minimal
config (dims only, plus one variation) equals the one read from the config transformers
builds from it (``to_dict()``, every default filled in).
"""

from __future__ import annotations

import dataclasses

import pytest

from hyperclone_core.model.families import get_family, llamalike

transformers = pytest.importorskip("transformers")

TYPES = sorted(mt for f in llamalike.FAMILIES for mt in f.model_types)
DIMS = dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)
VARIANTS = {
    "dims": {},
    "theta": dict(rope_theta=777.0),
    "layers6": dict(num_hidden_layers=6),
    "partial": dict(partial_rotary_factor=0.5),
}


def _effective(cfg):
    """The config with its default attention scale made explicit (0 means head_dim ** -0.5)."""
    return dataclasses.replace(cfg, attn_scale=cfg.attn_scale or cfg.head_dim ** -0.5)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("model_type", TYPES)
def test_a_minimal_config_reads_as_its_class_completes_it(model_type, variant):
    mini = dict(DIMS, model_type=model_type, **VARIANTS[variant])
    if model_type == "helium":  # its o_proj is hidden x hidden: 4 heads of the default head_dim 128
        mini["hidden_size"] = 512
    family = get_family(model_type)
    full = transformers.AutoConfig.for_model(**dict(mini)).to_dict()
    assert _effective(family.read(dict(mini))) == _effective(family.read(full))
