"""mlx-lm interop: folders written by ``hyperclone expand`` load with ``mlx_lm.load``
and give transformers' logits (on the same folder and the source's), and
``hyperclone_mlx.expand_model`` grows an ``mlx_lm.load``ed model into one of the
same class that generates the source's greedy tokens.

Source folders are tiny random models built and saved by transformers 5 (so their
configs carry RoPE only as ``rope_parameters``, the trap mlx-lm falls into), with
a word-level tokenizer so ``mlx_lm.load`` and ``mlx_lm.generate`` run as for a
real model.  Tied heads stay tied through width growth (the planner folds the head's
1 / r into the final norm's gain), which Gemma's mlx-lm classes need: they always tie."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hyperclone_core.model import testing  # noqa: E402
from hyperclone_core.expand.checkpoint import expand_checkpoint  # noqa: E402
from hyperclone_mlx import expand_model  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402

TOL = 1e-4
GROWTH = {"gemma2": dict(width=2, layers=3)}
"""Growth per case (default: width 2)."""
FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo2", "mixtral"]


def _config(case: str) -> dict:
    hf = dict(testing.CASES[case])
    if case == "gemma2":
        hf["sliding_window"] = 16  # mlx-lm's Gemma-2 attends globally: stay within the window (README)
    return hf


def _save_tokenizer(folder, vocab: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", bos_token="t1", eos_token="t2",
                                         unk_token="t3").save_pretrained(folder)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """``hf_folder(case, **config_changes)`` -> a transformers-saved tiny model with a tokenizer."""
    root = tmp_path_factory.mktemp("mlx_lm")
    made: dict = {}
    torch.set_num_threads(1)

    def get(case: str, **changes):
        key = (case, json.dumps(changes, sort_keys=True))
        if key not in made:
            hf = dict(_config(case), **changes)
            torch.manual_seed(0)
            model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf)).float()
            with torch.no_grad():
                for p in model.parameters():  # gains of exactly 1 and zero biases hide mistakes
                    p.add_(torch.randn_like(p) * 0.05)
            folder = root / f"{case}-{len(made)}"
            model.save_pretrained(folder)
            _save_tokenizer(folder, hf["vocab_size"])
            made[key] = folder
        return made[key]

    return get


def _hf_logits(folder, tokens) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.float().numpy()


def _mlx_logits(model, tokens) -> np.ndarray:
    return np.array(model(mx.array(tokens)).astype(mx.float32))


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


TOKENS = np.random.default_rng(0).integers(3, 96, (2, 12))


@pytest.mark.parametrize("case", FAMILIES)
def test_expanded_folder_loads_in_mlx_lm(case, hf_folder, tmp_path):
    src, dst = hf_folder(case), tmp_path / "grown"
    expand_checkpoint(src, dst, backend="mlx", progress=False, **GROWTH.get(case, dict(width=2)))
    model, _ = mlx_lm.load(str(dst))
    got, same_folder, source = _mlx_logits(model, TOKENS), _hf_logits(dst, TOKENS), _hf_logits(src, TOKENS)
    assert _rel(got, same_folder) <= TOL, f"{case}: mlx-lm vs transformers on the grown folder: {_rel(got, same_folder):.2e}"
    assert _rel(got, source) <= TOL, f"{case}: mlx-lm on the grown folder vs the source: {_rel(got, source):.2e}"


@pytest.mark.parametrize("case", FAMILIES)
def test_expand_model_generates_the_source_tokens(case, hf_folder):
    model, tokenizer, config = mlx_lm.load(str(hf_folder(case)), return_config=True)
    grown = expand_model(model, config=config, **GROWTH.get(case, dict(width=2)))
    assert type(grown) is type(model)
    assert _rel(_mlx_logits(grown, TOKENS), _mlx_logits(model, TOKENS)) <= TOL
    prompt = mx.array([1, 5, 9, 13, 17])
    want = [int(t) for t, _ in generate_step(prompt, model, max_tokens=20)]
    got = [int(t) for t, _ in generate_step(prompt, grown, max_tokens=20)]
    assert got == want, f"{case}: the grown model's greedy tokens {got} differ from the source's {want}"
    if case == "llama":
        text = mlx_lm.generate(grown, tokenizer, prompt="t5 t9 t13", max_tokens=8)
        assert text == mlx_lm.generate(model, tokenizer, prompt="t5 t9 t13", max_tokens=8) and text


def test_expand_model_reads_the_config_off_the_model(hf_folder):
    """Without config=, the model's ModelArgs (HF names) and its parameters (tied head) suffice."""
    model, _ = mlx_lm.load(str(hf_folder("llama", tie_word_embeddings=True)))
    grown = expand_model(model, width=2, strategy="symmetric", layers=3)
    assert "lm_head" not in dict(grown.named_modules()), "a tied head stays tied through width growth"
    assert _rel(_mlx_logits(grown, TOKENS), _mlx_logits(model, TOKENS)) <= TOL


def test_rope_theta_only_in_rope_parameters_reaches_mlx_lm(hf_folder, tmp_path):
    """transformers 5 saves RoPE only as rope_parameters, which mlx-lm ignores (silently
    using its default theta); the grown folder's config carries it where mlx-lm reads it."""
    src = hf_folder("llama", rope_parameters={"rope_theta": 500000.0, "rope_type": "default"}, rope_theta=500000.0)
    dst = tmp_path / "grown"
    expand_checkpoint(src, dst, width=2, backend="mlx", progress=False)
    model, _ = mlx_lm.load(str(dst))
    assert model.args.rope_theta == 500000.0
    assert _rel(_mlx_logits(model, TOKENS), _hf_logits(src, TOKENS)) <= TOL


def test_gpt_neox_with_mlx_lms_shape_loads(hf_folder, tmp_path):
    """mlx-lm's GPT-NeoX needs ffn = 4 x hidden and runs the tanh GELU (README): a
    folder of that shape, written by hyperclone expand, loads and matches."""
    src = hf_folder("gpt_neox", intermediate_size=128, hidden_act="gelu_new")
    dst = tmp_path / "grown"
    expand_checkpoint(src, dst, width=2, backend="mlx", progress=False)
    model, _ = mlx_lm.load(str(dst))
    assert _rel(_mlx_logits(model, TOKENS), _hf_logits(dst, TOKENS)) <= TOL


ROPE_SCALING = {
    "linear": ("llama", dict(rope_type="linear", factor=4.0, rope_theta=10000.0), 12),
    "dynamic": ("llama", dict(rope_type="dynamic", factor=2.0, rope_theta=10000.0), 80),
    "yarn": ("llama", dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16, rope_theta=10000.0), 12),
    "llama3": ("llama", dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=8192, rope_theta=500000.0), 12),
    # mlx-lm's LongRoPE always runs the long factors: compare past the original length
    "longrope": ("phi3", dict(rope_type="longrope", short_factor=[1.0, 1.1, 1.5, 2.0],
                              long_factor=[1.0, 2.0, 4.0, 8.0], original_max_position_embeddings=16,
                              rope_theta=10000.0), 24),
}


@pytest.mark.parametrize("variant", list(ROPE_SCALING))
def test_scaled_rope_reaches_mlx_lm(variant, hf_folder, tmp_path):
    """transformers 5 saves RoPE scaling only in rope_parameters; mlx-lm reads rope_scaling
    (phi3's needs its 'type' key): the grown folder carries both, so mlx-lm runs the same
    scaled RoPE as transformers on the source."""
    case, params, T = ROPE_SCALING[variant]
    changes = dict(rope_parameters=params, rope_theta=params["rope_theta"])
    if variant == "llama3":
        changes["max_position_embeddings"] = 131072
    if case == "phi3":
        changes["original_max_position_embeddings"] = 16
    src, dst = hf_folder(case, **changes), tmp_path / "grown"
    expand_checkpoint(src, dst, width=2, backend="mlx", progress=False)
    model, _ = mlx_lm.load(str(dst))
    tokens = np.random.default_rng(1).integers(3, 96, (2, T))
    got, want = _mlx_logits(model, tokens), _hf_logits(src, tokens)
    assert _rel(got, want) <= TOL, f"{variant}: mlx-lm on the grown folder vs transformers on the source"
