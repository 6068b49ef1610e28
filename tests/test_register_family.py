"""A family defined outside the package, as data plus a small config reader, registered
at run time (``register_family``) or through the ``hyperclone.families`` entry point:
it grows and verifies through the CLI, and the backends run it, with no core edit.

TinyLM is Llama's maths under names and config keys of its own (``blocks.{i}.attn.wq``,
``dim``, ``n_heads``), with Llama 3's RoPE scaling: the core's RoPE comes for free."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperclone_core import DecoderConfig, Family, Role, family_for_config, in_, io, out, register_family
from hyperclone_core.cli import main
from hyperclone_core.errors import ConfigError
from hyperclone_core.model import families, testing
from hyperclone_core.model.rope import rope_fields
from hyperclone_core.run.reference import forward

Q, KV, L = "kv_heads*q_per_kv*head_dim", "kv_heads*head_dim", "blocks.{i}"
ROLES = (
    Role("tok.weight", "embed", (in_("vocab"), out("hidden"))),
    Role("norm_f.weight", "norm.final", (out("hidden"),)),
    Role("head.weight", "lm_head", (out("vocab"), in_("hidden"))),
    Role(f"{L}.attn.wq.weight", "attn.q", (out(Q), in_("hidden"))),
    Role(f"{L}.attn.wk.weight", "attn.k", (out(KV), in_("hidden"))),
    Role(f"{L}.attn.wv.weight", "attn.v", (out(KV), in_("hidden"))),
    Role(f"{L}.attn.wo.weight", "attn.o", (out("hidden"), in_(Q)), writer=True),
    Role(f"{L}.ffn.w1.weight", "mlp.gate", (out("ffn"), in_("hidden"))),
    Role(f"{L}.ffn.w3.weight", "mlp.up", (out("ffn"), in_("hidden"))),
    Role(f"{L}.ffn.w2.weight", "mlp.down", (out("hidden"), in_("ffn")), writer=True),
    Role(f"{L}.attn_norm.weight", "norm.attn_in", (out("hidden"),)),
    Role(f"{L}.ffn_norm.weight", "norm.mlp_in", (out("hidden"),)),
)
KEYS = {"dim": "hidden", "ffn_dim": "ffn", "n_layers": "layers", "n_heads": "heads", "n_kv_heads": "kv_heads",
        "vocab_size": "vocab", "head_dim": "head_dim"}


def read(hf) -> DecoderConfig:
    hidden, heads = int(hf["dim"]), int(hf["n_heads"])
    head_dim, positions = int(hf.get("head_dim") or hidden // heads), int(hf.get("max_seq_len") or 256)
    return DecoderConfig(
        family="tinylm", vocab=int(hf["vocab_size"]), hidden=hidden, ffn=int(hf["ffn_dim"]),
        layers=int(hf["n_layers"]), heads=heads, kv_heads=int(hf.get("n_kv_heads") or heads), head_dim=head_dim,
        positions=positions, norm_eps=float(hf.get("norm_eps", 1e-5)), **rope_fields(hf, head_dim, positions),
    )


TINYLM = Family("tinylm", ("tinylm",), ROLES, read, KEYS, "TinyLMForCausalLM")
CONFIG = dict(model_type="tinylm", dim=32, ffn_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96,
              rope_parameters=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                   original_max_position_embeddings=8192, rope_theta=500000.0))


@pytest.fixture
def registered():
    before = dict(families.FAMILIES), dict(families._BY_MODEL_TYPE), families._plugins_loaded
    yield
    families.FAMILIES.clear()
    families.FAMILIES.update(before[0])
    families._BY_MODEL_TYPE.clear()
    families._BY_MODEL_TYPE.update(before[1])
    families._plugins_loaded = before[2]


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_unregistered_type_is_refused(registered):
    with pytest.raises(ConfigError, match="model_type 'tinylm' is not supported"):
        family_for_config(CONFIG)


def test_a_family_defined_outside_grows_and_verifies(registered, tmp_path):
    assert register_family(TINYLM) is TINYLM
    io.save_checkpoint(tmp_path / "src", CONFIG, testing.random_weights(CONFIG, seed=3))
    assert main(["expand", str(tmp_path / "src"), str(tmp_path / "dst"), "--width", "2", "--layers", "+1",
                 "--strategy", "noisy:10", "--quiet"]) == 0  # verified before it is written
    assert main(["verify", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    grown = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert (grown["dim"], grown["n_layers"], grown["n_heads"], grown["n_kv_heads"]) == (64, 3, 8, 4)
    assert grown["architectures"] == ["TinyLMForCausalLM"] and grown["rope_scaling"]["rope_type"] == "llama3"
    tokens = testing.random_tokens(96, seq=12)
    (a_cfg, a), (b_cfg, b) = io.load_weights(tmp_path / "src"), io.load_weights(tmp_path / "dst")
    want = forward(TINYLM, read(a_cfg), a, tokens)
    assert _rel(forward(TINYLM, read(b_cfg), b, tokens), want) < 1e-5
    torch_backend = pytest.importorskip("hyperclone_torch")  # a backend finds it in the registry too
    import torch

    with torch.no_grad():
        got = torch_backend.Decoder.from_pretrained(tmp_path / "dst")(torch.from_numpy(tokens)).numpy()
    assert _rel(got, want) < 1e-5


def test_a_clash_is_refused_unless_replaced(registered):
    other = Family("llama_again", ("llama",), ROLES, read, KEYS, "X")
    with pytest.raises(ValueError, match="model_type 'llama' is grown by family 'llama'"):
        register_family(other)
    register_family(other, replace=True)
    assert family_for_config({"model_type": "llama"}) is other


class _EntryPoint:
    def __init__(self, name, value, obj):
        self.name, self.value, self._obj = name, value, obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def test_entry_point_families_load_and_a_broken_one_warns(registered, monkeypatch):
    eps = [_EntryPoint("broken", "nowhere:fam", ImportError("no module named nowhere")),
           _EntryPoint("tinylm", "tinylm_pkg:families", lambda: [TINYLM])]
    monkeypatch.setattr(families, "_entry_points", lambda: eps)
    families._plugins_loaded = False
    with pytest.warns(UserWarning, match="family plugin 'broken'.*no module named nowhere"):
        assert family_for_config(CONFIG) is TINYLM
