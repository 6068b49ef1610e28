"""The torch Decoder: equal to the numpy oracle for every case, loads transformers
checkpoints of every family, writes folders transformers loads, random init."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hyperclone_core import family_for_config, tensor_names  # noqa: E402
from hyperclone_core.run import reference  # noqa: E402
from hyperclone_core.model import testing  # noqa: E402
from hyperclone_core.errors import CheckpointError, ConfigError  # noqa: E402
from hyperclone_core.io import save_checkpoint  # noqa: E402
from hyperclone_torch import Decoder  # noqa: E402

torch.set_num_threads(1)
ALL = sorted(testing.CASES)


def _logits(model, tokens):
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).double().numpy()


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("case", ALL)
def test_decoder_equals_the_oracle_in_float32(case):
    cfg = testing.CASES[case]
    fam = family_for_config(cfg)
    w = testing.random_weights(cfg, seed=4)
    tokens = testing.random_tokens(cfg["vocab_size"], batch=2, seq=12, seed=4)  # > gemma2's window of 4
    want = reference.forward(fam, fam.read(cfg), w, tokens, dtype=np.float64)
    model = Decoder.from_weights(cfg, w)
    assert next(model.parameters()).dtype == torch.float32
    assert _rel(_logits(model, tokens), want) <= 1e-5


@pytest.mark.parametrize("case", ALL)
def test_decoder_loads_checkpoints_and_matches_transformers(case, case_dir, hf_logits):
    folder = case_dir(case)
    tokens = testing.random_tokens(testing.CASES[case]["vocab_size"], seq=10, seed=2)
    model = Decoder.from_pretrained(folder)
    assert _rel(_logits(model, tokens), hf_logits(folder, tokens)) <= 1e-5


@pytest.mark.parametrize("case", ["llama_tied", "gpt_neox", "mixtral", "opt_postln", "gemma2"])
def test_save_pretrained_loads_in_transformers_and_back(case, tmp_path, hf_logits):
    cfg = testing.CASES[case]
    model = Decoder.from_weights(cfg, testing.random_weights(cfg, seed=5))
    tokens = testing.random_tokens(cfg["vocab_size"], seq=8, seed=3)
    model.save_pretrained(tmp_path / "m")
    assert _rel(hf_logits(tmp_path / "m", tokens), _logits(model, tokens)) <= 1e-5
    again = Decoder.from_pretrained(tmp_path / "m")
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", ALL)
def test_parameter_names_are_the_checkpoint_names(case):
    cfg = testing.CASES[case]
    fam = family_for_config(cfg)
    dec = fam.read(cfg)
    model = Decoder.from_config(cfg)
    names = set(tensor_names(fam, dec))
    if dec.tie_embeddings:
        names -= {n for n, (r, _, _) in tensor_names(fam, dec).items() if r.kind == "lm_head"}
    assert set(model.state_dict()) == names
    assert len(model.layers) == dec.layers
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated yet


def test_bfloat16_checkpoint_stays_bfloat16(tmp_path):
    cfg = testing.CASES["qwen2"]
    w = testing.random_weights(cfg, seed=1)
    save_checkpoint(tmp_path / "bf", cfg, w, dtype="bfloat16")
    model = Decoder.from_pretrained(tmp_path / "bf")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tokens = testing.random_tokens(cfg["vocab_size"], seq=8)
    full = Decoder.from_pretrained(tmp_path / "bf", dtype=torch.float32)
    assert _rel(_logits(model, tokens), _logits(full, tokens)) < 0.05  # bf16 activations
    model.save_pretrained(tmp_path / "bf2")
    again = Decoder.from_pretrained(tmp_path / "bf2")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("case", ["llama", "gemma", "opt"])
def test_random_init(case):
    cfg = testing.CASES[case]
    a = Decoder.random(cfg, seed=0)
    b = Decoder.random(cfg, seed=0)
    c = Decoder.random(cfg, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    kinds = {n: r.kind for n, (r, _, _) in tensor_names(a.family, a.decoder).items()}
    gain = 0.0 if a.decoder.norm_unit_offset else 1.0
    for n, t in sa.items():
        if kinds[n].endswith(".bias"):
            assert float(t.abs().max()) == 0.0, n
        elif kinds[n].startswith("norm"):
            assert torch.all(t == gain), n
        else:
            assert abs(float(t.std()) - 0.02) < 0.005 and not torch.equal(t, sc[n]), n
    tokens = testing.random_tokens(cfg["vocab_size"], seq=6)
    assert np.isfinite(_logits(a, tokens)).all()


def test_gradients_reach_every_parameter():
    cfg = testing.CASES["mixtral"]
    model = Decoder.random(cfg, seed=0, std=0.2)
    tokens = torch.as_tensor(testing.random_tokens(cfg["vocab_size"], batch=4, seq=16))
    model(tokens).logsumexp(-1).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []


def test_mismatched_weights_are_named(tmp_path):
    cfg = testing.CASES["llama"]
    w = testing.random_weights(cfg)
    w.pop("model.layers.1.mlp.up_proj.weight")
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        Decoder.from_weights(cfg, w)
    w = testing.random_weights(cfg)
    w["model.norm.weight"] = np.ones(7, np.float32)
    with pytest.raises(CheckpointError, match=r"model.norm.weight has shape \[7\]"):
        Decoder.from_weights(cfg, w)


def test_learned_positions_refuse_long_sequences():
    cfg = testing.CASES["opt"]
    model = Decoder.from_weights(cfg, testing.random_weights(cfg))
    with pytest.raises(ConfigError, match="64 positions"):
        model(torch.zeros(1, 65, dtype=torch.long))
