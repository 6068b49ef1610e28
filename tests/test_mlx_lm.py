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
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hyperclone_core.model import families, testing  # noqa: E402
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


# ---------------------------------------------------------------- every model type, from families.TINY

MLX_LM_VERSION = mlx_lm.__version__
WITHIN = "mlx-lm attends globally where transformers uses the sliding window: tested within the window"
ADJUST = {
    "mistral": ({"sliding_window": 64}, WITHIN),
    "mixtral": ({"sliding_window": 64}, WITHIN),
    "ministral3": ({"sliding_window": 64}, WITHIN),
    "qwen2": ({"use_sliding_window": False}, WITHIN),
    "starcoder2": ({"sliding_window": 64}, WITHIN),
    "gemma2": ({"sliding_window": 64}, WITHIN),
    "qwen3": ({"attention_bias": False}, "mlx-lm's Qwen3 has no attention biases: tested with attention_bias false"),
    "seed_oss": ({"attention_out_bias": False, "mlp_bias": False},
                 "mlx-lm's Seed-OSS has q/k/v biases only: tested without o_proj and MLP biases"),
    "afmoe": ({"attention_bias": False}, "mlx-lm's AFMoE has no attention biases: tested with attention_bias false"),
    "laguna": ({"attention_bias": False}, "mlx-lm's Laguna has no attention biases: tested with attention_bias false"),
}
"""model_type -> (tiny-config changes, why): what mlx-lm's class of the type cannot run, turned
off so the rest is tested."""
FAILS = {
    "olmo": "mlx-lm's olmo reads AI2's pre-transformers format (d_model, n_layers) and exits the process at "
            "import when ai2-olmo is missing",
    "apertus": "mlx-lm's ModelArgs requires mlp_bias, post_norm and qk_norm, keys transformers' Apertus config "
               "does not save",
    "cohere2": "mlx-lm's Cohere2 fails reading a transformers 5 config (IndexError building its layer pattern)",
    "deepseek_v2": "mlx-lm's DeepSeek-V2 reads rope_scaling as a dict; transformers 5 saves none",
    "minicpm3": "mlx-lm's MiniCPM3 reads rope_scaling as a dict; transformers 5 saves none",
    "ernie4_5_moe": "mlx-lm's ERNIE 4.5 MoE has no LM-head bias (use_bias)",
    "exaone": "mlx-lm's ModelArgs requires layer_norm_epsilon, a key transformers 5's EXAONE config does not save",
    "exaone4": "mlx-lm's ModelArgs requires head_dim and rope_scaling, keys transformers 5's EXAONE 4 config "
               "does not save",
    "glm": "mlx-lm's GLM differs from transformers on partial interleaved rotary with attention biases "
           "(1.5e-2 relative on the source too)",
    "gpt2": "mlx-lm's ModelArgs requires n_ctx, a key transformers 5's GPT-2 config does not save",
    "gpt_neox": "mlx-lm's GPT-NeoX hard-codes the 4x MLP (intermediate_size 48 != 4 x 32); "
                "test_gpt_neox_with_mlx_lms_shape_loads covers the 4x shape",
    "gptj": "mlx-lm's GPT-J hard-codes the 4x MLP (n_inner 48 != 4 x 32)",
    "gpt_oss": "mlx-lm's GPT-OSS reads the experts as separate gate/up/down tensors (quantized-checkpoint layout), "
               "not transformers' fused gate_up_proj",
    "internlm3": "mlx-lm's InternLM3 ignores head_dim (it takes hidden / heads)",
    "llama4_text": "mlx-lm's Llama 4 has no attention biases and reads other expert tensor names",
    "mellum": "mlx-lm's mellum is an MoE model: its ModelArgs requires num_experts",
    "nanochat": "mlx-lm's nanochat reads another tensor layout (21 tensors of transformers' format rejected)",
    "olmo3": "mlx-lm's ModelArgs requires rope_theta at the top level, which the OLMo 3 family does not mirror "
             "(per-layer-type RoPE)",
    "olmoe": "mlx-lm's OLMoE differs from transformers with clip_qkv and attention biases (3e-2 relative on "
             "the source too)",
    "phi": "mlx-lm's Phi has no q/k LayerNorms (qk_layernorm)",
    "qwen2_moe": "mlx-lm's Qwen2-MoE has no dense layers (mlp_only_layers / decoder_sparse_step)",
    "qwen3_moe": "mlx-lm's ModelArgs requires num_experts, a key transformers 5's Qwen3-MoE config does not save",
    "dots1": "mlx-lm's dots.llm1 has no attention biases, and without them its logits still differ (7e-1 "
             "relative): its routing is not transformers' (sigmoid scores, grouped top-k, correction bias)",
    "gemma3_text": "mlx-lm's Gemma 3 fails reading a transformers 5 config (IndexError building its layer pattern)",
    "mimo_v2_flash": "mlx-lm's ModelArgs requires 16 keys transformers' config does not save (hybrid_layer_pattern, "
                     "sliding_window_size, swa_* ...)",
    "exaone_moe": "mlx-lm's ModelArgs requires head_dim and is_moe_layer, keys transformers 5's EXAONE-MoE config "
                  "does not save",
    "gemma4_text": "mlx-lm's Gemma 4 has no attention biases (the tiny config turns attention_bias on)",
    "glm4_moe": "mlx-lm's ModelArgs requires head_dim and rope_scaling, keys transformers 5's GLM-4-MoE config "
                "does not save",
    "glm_moe_dsa": "mlx-lm's ModelArgs requires topk_method, scoring_func and moe_layer_freq, keys transformers' "
                   "config does not have",
    "minimax_m2": "mlx-lm's MiniMax ModelArgs requires shared_intermediate_size, a key transformers' MiniMax-M2 "
                  "config does not have",
    "phimoe": "mlx-lm's PhiMoE logits differ from transformers' (7e-2 relative on the grown tiny model)",
    "solar_open": "mlx-lm's ModelArgs requires intermediate_size, first_k_dense_replace and partial_rotary_factor, "
                  "keys transformers 5's Solar Open config does not save",
}
"""model_type -> why mlx-lm (this version) cannot load the grown tiny model or gives other logits
(checked: each must still fail, strict xfail)."""


def _mlx_lm_module(model_type: str):
    """mlx-lm's model module for the type (after its own remapping), or None."""
    import importlib.util

    from mlx_lm.utils import MODEL_REMAPPING

    name = MODEL_REMAPPING.get(model_type, model_type)
    return name if importlib.util.find_spec(f"mlx_lm.models.{name}") is not None else None


def _type_params():
    for mt in sorted(families.TINY):
        if _mlx_lm_module(mt) is None:
            continue
        marks = []
        if mt == "olmo":
            marks = [pytest.mark.skip(reason=FAILS[mt])]
        elif mt in FAILS:
            marks = [pytest.mark.xfail(strict=True, reason=FAILS[mt])]
        yield pytest.param(mt, marks=marks, id=mt)


def type_table() -> list:
    """The README rows: (model_type, loads, why), one per type a built-in family grows."""
    rows = []
    for mt in sorted(families.TINY):
        if _mlx_lm_module(mt) is None:
            rows.append((mt, "no", f"mlx-lm {MLX_LM_VERSION} has no model for it"))
        elif mt in FAILS:
            rows.append((mt, "no", FAILS[mt]))
        else:
            rows.append((mt, "yes", ADJUST[mt][1] if mt in ADJUST else "tested"))
    return rows


def _tiny_folder(root, model_type: str):
    hf = dict(dict(pad_token_id=0, bos_token_id=1, eos_token_id=2), **families.TINY[model_type])
    hf.update(ADJUST.get(model_type, ({}, ""))[0])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf)).float().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # gains of exactly 1 and zero biases hide mistakes
            p.add_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim == 1 else 0.05))
        want = model(torch.from_numpy(TOKENS)).logits.float().numpy()
    model.save_pretrained(root / "src")
    return root / "src", want


@pytest.mark.parametrize("model_type", list(_type_params()))
def test_every_type_mlx_lm_has_loads_grown(model_type, tmp_path):
    """Every model type a built-in family grows and mlx-lm has a model for: the tiny config
    (``families.TINY``), built and saved by transformers, grown --width 2 on mlx, loads with
    mlx-lm's loader and gives transformers' logits on the source within 1e-4."""
    from mlx_lm.utils import load_model

    src, want = _tiny_folder(tmp_path, model_type)
    dst = tmp_path / "grown"
    expand_checkpoint(src, dst, width=2, backend="mlx", progress=False)
    model, _ = load_model(Path(dst))
    got = _mlx_logits(model, TOKENS)
    assert got.shape == want.shape and _rel(got, want) <= TOL, (
        f"{model_type}: mlx-lm on the grown folder vs transformers on the source: "
        f"{_rel(got, want) if got.shape == want.shape else got.shape}")


def test_every_listed_type_is_a_supported_one():
    stale = sorted((set(ADJUST) | set(FAILS)) - set(families.TINY))
    assert not stale, f"ADJUST / FAILS list types no built-in family grows (any more): {stale}"
    has_model = sorted(t for t in FAILS if _mlx_lm_module(t) is None)
    assert not has_model, f"FAILS lists types mlx-lm has no model for (the table says so itself): {has_model}"


README = Path(__file__).resolve().parents[1] / "backends" / "hyperclone_mlx" / "README.md"
BEGIN, END = "<!-- mlx-lm types: begin (python tests/test_mlx_lm.py writes it) -->", "<!-- mlx-lm types: end -->"


def _render() -> str:
    lines = [BEGIN, "", f"| model type | `mlx_lm` loads the grown folder (mlx-lm {MLX_LM_VERSION}) | why / how tested |",
             "|---|---|---|"]
    lines += [f"| {mt} | {ok} | {why} |" for mt, ok, why in type_table()]
    return "\n".join(lines + ["", END])


def test_readme_type_table_is_current():
    text = README.read_text()
    assert BEGIN in text and END in text, f"{README} lost its generated mlx-lm table markers"
    current = text[text.index(BEGIN):text.index(END) + len(END)]
    assert current == _render(), (f"{README}'s mlx-lm type table is out of date (types or reasons changed): "
                                  "run `python tests/test_mlx_lm.py` to rewrite it")


if __name__ == "__main__":
    text = README.read_text()
    README.write_text(text[:text.index(BEGIN)] + _render() + text[text.index(END) + len(END):])
    print(f"wrote the mlx-lm type table of {README}")
