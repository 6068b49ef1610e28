"""expand_model on live transformers models: same class, same logits, exact
save/reload, no wasted init, the in-memory <-> checkpoint name mapping."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hyperclone_core.model import testing  # noqa: E402
from hyperclone_core.errors import HypercloneError  # noqa: E402
from hyperclone_torch import Decoder, expand_model  # noqa: E402
from hyperclone_torch.interop import Location, locate  # noqa: E402

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
ALL = sorted(testing.CASES)


@pytest.fixture(scope="module")
def hf_model(case_dir):
    made = {}

    def get(case):
        if case not in made:
            made[case] = transformers.AutoModelForCausalLM.from_pretrained(case_dir(case)).eval()
        return made[case]

    return get


def _logits(model, tokens):
    with torch.no_grad():
        out = model(torch.as_tensor(tokens))
    return getattr(out, "logits", out).double()


def _assert_preserved(src, new, vocab, tol=1e-5):
    tokens = testing.random_tokens(vocab, batch=2, seq=12, seed=6)
    a, b = _logits(src, tokens), _logits(new, tokens)
    assert float((a - b).abs().max()) <= tol * float(a.abs().max())


@pytest.mark.parametrize("strategy", ["symmetric", "noisy:10"])
@pytest.mark.parametrize("case", ALL)
def test_expand_model_preserves_logits_and_round_trips(case, strategy, hf_model, tmp_path):
    src = hf_model(case)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    new = expand_model(src, width=2, strategy=strategy)
    assert type(new) is type(src)
    assert new.config.hidden_size == 2 * src.config.hidden_size
    assert new.generation_config.eos_token_id == src.generation_config.eos_token_id
    _assert_preserved(src, new, src.config.vocab_size)
    # the source is untouched and shares no storage with the clone
    after = src.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    src_ptrs = {p.untyped_storage().data_ptr() for p in src.parameters()}
    assert not src_ptrs & {p.untyped_storage().data_ptr() for p in new.parameters()}
    new.save_pretrained(tmp_path / "grown")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "grown").eval()
    a, b = new.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(_logits(new, [[1, 2, 3]]), _logits(again, [[1, 2, 3]]))


def test_noisy_clone_breaks_symmetry_symmetric_does_not(hf_model):
    src = hf_model("llama")
    sym = expand_model(src, width=2, strategy="symmetric")
    noisy = expand_model(src, width=2, strategy="noisy:10")
    w_sym = sym.model.layers[0].mlp.down_proj.weight
    w_noisy = noisy.model.layers[0].mlp.down_proj.weight
    half = w_sym.shape[1] // 2
    assert torch.equal(w_sym[:, :half], w_sym[:, half:])
    assert not torch.allclose(w_noisy[:, :half], w_noisy[:, half:])
    again = expand_model(src, width=2, strategy="noisy:10")
    assert torch.equal(again.model.layers[0].mlp.down_proj.weight, w_noisy)  # seeded


@pytest.mark.parametrize("case,growth", [
    ("llama", dict(width=2, layers=3)),
    ("mixtral", dict(width=2, ffn=1.5, layers=4)),
    ("qwen2", dict(width=2, kv_heads=1)),           # kv heads kept, groups widen
    ("gpt_neox", dict(width=1, ffn=3)),
    ("gemma2", dict(width=2, layers=3)),
])
def test_mixed_growth(case, growth, hf_model):
    src = hf_model(case)
    new = expand_model(src, **growth)
    _assert_preserved(src, new, src.config.vocab_size)
    if "layers" in growth:
        assert new.config.num_hidden_layers == growth["layers"]


@pytest.mark.parametrize("case,width", [("llama_tied", 1), ("llama_tied", 2), ("gemma", 2), ("gemma2", 3)])
def test_tied_embeddings_stay_tied(hf_model, case, width):
    """Tied stays tied: when the head's input grows, its 1 / r goes into the final norm's
    gain (Gemma's 1 + w included), so the shared table serves both ends exactly."""
    src = hf_model(case)
    new = expand_model(src, width=width, ffn=2)
    assert new.config.tie_word_embeddings
    assert new.lm_head.weight.data_ptr() == new.model.embed_tokens.weight.data_ptr()
    _assert_preserved(src, new, src.config.vocab_size)


def test_untie_on_request(hf_model):
    src = hf_model("llama_tied")
    untied = expand_model(src, width=2, untie=True)
    assert not untied.config.tie_word_embeddings
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    _assert_preserved(src, untied, src.config.vocab_size)


def test_destination_is_not_randomly_initialised(hf_model, monkeypatch):
    """The grown model is built on the meta device: no init kernel touches real memory."""
    src = hf_model("llama")
    calls = []
    for name in ("normal_", "uniform_", "zero_", "fill_"):
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            if self.device.type != "meta" and self.numel() > 64:
                calls.append((_name, tuple(self.shape)))
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    expand_model(src, width=2, strategy="symmetric")
    assert calls == []


def test_decoder_in_decoder_out():
    cfg = testing.CASES["phi3"]
    src = Decoder.from_weights(cfg, testing.random_weights(cfg, seed=2))
    new = expand_model(src, width=2, layers=3)
    assert isinstance(new, Decoder) and new.decoder.hidden == 2 * src.decoder.hidden
    _assert_preserved(src, new, cfg["vocab_size"])


def test_bfloat16_model_stays_bfloat16(hf_model):
    src = hf_model("qwen3").to(torch.bfloat16)
    try:
        new = expand_model(src, width=2, strategy="symmetric")
        assert {p.dtype for p in new.parameters()} == {torch.bfloat16}
        _assert_preserved(src, new, src.config.vocab_size, tol=0.05)
    finally:
        src.to(torch.float32)


def test_locate_maps_transformers_in_memory_names():
    mem = ["lm_head.weight", "model.layers.0.mlp.gate.weight",
           "model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"]
    loc = locate(["embed_out.weight", "model.layers.0.block_sparse_moe.gate.weight",
                  "model.layers.0.block_sparse_moe.experts.3.w1.weight",
                  "model.layers.0.block_sparse_moe.experts.3.w3.weight",
                  "model.layers.0.block_sparse_moe.experts.3.w2.weight"], mem)
    assert loc["embed_out.weight"] == Location("lm_head.weight")
    assert loc["model.layers.0.block_sparse_moe.gate.weight"] == Location("model.layers.0.mlp.gate.weight")
    gate_up = torch.arange(4 * 6 * 2).reshape(4, 6, 2)
    w1 = loc["model.layers.0.block_sparse_moe.experts.3.w1.weight"].view(gate_up)
    w3 = loc["model.layers.0.block_sparse_moe.experts.3.w3.weight"].view(gate_up)
    assert torch.equal(torch.cat([w1, w3]), gate_up[3])
    assert loc["model.layers.0.block_sparse_moe.experts.3.w2.weight"] == Location(
        "model.layers.0.mlp.experts.down_proj", 3, None)
    # transformers 4.x keeps checkpoint names in memory: identity
    assert locate(["embed_out.weight"], ["embed_out.weight"])["embed_out.weight"] == Location("embed_out.weight")
    with pytest.raises(HypercloneError, match="model.mystery.weight"):
        locate(["model.mystery.weight"], mem)


def test_refuses_what_it_cannot_expand():
    with pytest.raises(HypercloneError, match="PreTrainedModel"):
        expand_model(torch.nn.Linear(2, 2))
