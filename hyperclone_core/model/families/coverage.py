"""Which causal-LM model types hyperclone grows, and why each other one is refused.

One row per model type of transformers' causal-LM auto mapping
(``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``): *supported* (a registered family grows it
exactly; tested against transformers) or *refused* with the reason, by kind:

- ``recurrent``: state-space, linear-attention, convolutional or recurrent layers (no
  attention + MLP stack to clone);
- ``encoder-decoder``: the decoder half of an encoder-decoder model (cross-attention);
- ``encoder``: an encoder (BERT-style) run as a decoder;
- ``multimodal``: a model with a vision or audio tower (its text decoder, where
  transformers has one, is its own row);
- ``other``: not an attention + MLP stack in the usual sense;
- ``not yet``: an attention + MLP/MoE decoder whose features the neutral decoder does
  not have yet (the reason names them).

``tests/test_coverage.py`` fails when the installed transformers has a causal-LM type
this table does not classify, when a supported row has no registered family (or the
reverse), and when ``docs/families.md`` is stale; regenerate it with
``python -m hyperclone_core.model.families > docs/families.md``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Coverage:
    """One model type: ``status`` ``supported`` or ``refused``, its ``kind`` (see the
    module docstring) and ``reason`` (for a supported type, the family that grows it)."""

    status: str
    kind: str
    reason: str


def supported(family: str) -> Coverage:
    return Coverage("supported", "supported", f"family {family}")


def needs(*features: str) -> Coverage:
    return Coverage("refused", "not yet", "not yet supported: needs " + ", ".join(features))


def refused(kind: str, reason: str) -> Coverage:
    return Coverage("refused", kind, reason)


RECURRENT = "state-space, linear-attention or recurrent layers, not an attention + MLP stack"
ENC_DEC = "the decoder half of an encoder-decoder model (cross-attention to an encoder)"
ENCODER = "an encoder (BERT-style, post-LN, learned positions and token types) run as a decoder"


def recurrent(what: str) -> Coverage:
    return refused("recurrent", f"{RECURRENT} ({what})")


def multimodal(what: str) -> Coverage:
    return refused("multimodal", f"a multimodal model ({what}); not an attention + MLP text decoder alone")


def enc_dec(what: str = "") -> Coverage:
    return refused("encoder-decoder", ENC_DEC + (f" ({what})" if what else ""))


def encoder() -> Coverage:
    return refused("encoder", ENCODER)


MLA = "multi-head latent attention"
MOE_SHARED = "MoE routing with shared experts"

COVERAGE: dict = {
    # ---------------------------------------------------------------- supported
    "llama": supported("llama"), "mistral": supported("mistral"), "mixtral": supported("mixtral"),
    "qwen2": supported("qwen2"), "qwen3": supported("qwen3"), "gemma": supported("gemma"),
    "gemma2": supported("gemma2"), "opt": supported("opt"), "gpt_neox": supported("gpt_neox"),
    "olmo": supported("olmo"), "olmo2": supported("olmo2"), "phi3": supported("phi3"),
    "internlm3": supported("llama"), "iquestcoder": supported("llama"),
    # ---------------------------------------------------------------- recurrent
    "bailing_hybrid": recurrent("linear-attention layers"), "bamba": recurrent("Mamba-2 layers"),
    "falcon_h1": recurrent("Mamba-2 heads beside attention"), "falcon_mamba": recurrent("Mamba layers"),
    "granitemoehybrid": recurrent("Mamba-2 layers"), "hrm_text": recurrent("a hierarchical recurrent loop over its stacks"),
    "inkling_text": recurrent("linear-attention and short-convolution layers"),
    "inkling2_text": recurrent("linear-attention and short-convolution layers"),
    "inkling2_loop_text": recurrent("linear-attention and short-convolution layers, looped"),
    "jamba": recurrent("Mamba layers"), "kimi_linear": recurrent("Kimi delta-attention layers"),
    "lara_mini": recurrent("gated DeltaNet layers"), "lfm2": recurrent("short-convolution layers"),
    "lfm2_moe": recurrent("short-convolution layers"), "lfm3": recurrent("short-convolution layers"),
    "mamba": recurrent("Mamba"), "mamba2": recurrent("Mamba-2"), "minimax": recurrent("lightning attention"),
    "minimax_m3_vl_text": recurrent("lightning attention and an indexed sparse attention"),
    "nemotron_h": recurrent("Mamba-2 layers"), "olmo_hybrid": recurrent("gated DeltaNet layers"),
    "qwen3_next": recurrent("gated DeltaNet layers"), "qwen3_5_text": recurrent("gated DeltaNet layers"),
    "qwen3_5_moe_text": recurrent("gated DeltaNet layers"), "qwen4_exp_text": recurrent("linear-attention layers"),
    "recurrent_gemma": recurrent("RG-LRU recurrent blocks"), "rwkv": recurrent("RWKV time mixing"),
    "xlstm": recurrent("xLSTM cells"), "zamba": recurrent("Mamba layers"), "zamba2": recurrent("Mamba-2 layers"),
    # ---------------------------------------------------------------- encoder-decoder
    "bart": enc_dec(), "bigbird_pegasus": enc_dec(), "blenderbot": enc_dec(), "blenderbot-small": enc_dec(),
    "marian": enc_dec(), "mbart": enc_dec(), "mvp": enc_dec(), "pegasus": enc_dec(), "plbart": enc_dec(),
    "prophetnet": enc_dec("n-gram prediction streams"), "trocr": enc_dec("an image encoder"),
    "whisper": enc_dec("an audio encoder"), "musicgen": enc_dec("audio codebooks over a text encoder"),
    "musicgen_melody": enc_dec("audio codebooks over a text encoder"),
    "gemma4_assistant": enc_dec("a drafter attending to its target model's states"),
    "gemma4_unified_assistant": enc_dec("a drafter attending to its target model's states"),
    # ---------------------------------------------------------------- encoder
    "bert": encoder(), "bert-generation": encoder(), "big_bird": encoder(), "camembert": encoder(),
    "data2vec-text": encoder(), "electra": encoder(), "ernie": encoder(), "megatron-bert": encoder(),
    "rembert": encoder(), "roberta": encoder(), "roberta-prelayernorm": encoder(), "roc_bert": encoder(),
    "roformer": encoder(), "xlm": encoder(), "xlm-roberta": encoder(), "xlm-roberta-xl": encoder(),
    "xmod": encoder(),
    # ---------------------------------------------------------------- multimodal
    "emu3": multimodal("image tokens from a VQ tokenizer"), "fuyu": multimodal("image patches"),
    "gemma3": multimodal("vision tower; the text decoder is gemma3_text"),
    "gemma3n": multimodal("vision and audio towers; the text decoder is gemma3n_text"),
    "gemma4": multimodal("vision tower; the text decoder is gemma4_text"),
    "gemma4_unified": multimodal("vision tower; the text decoder is gemma4_unified_text"),
    "git": multimodal("image encoder"), "got_ocr2": multimodal("vision tower"),
    "llama4": multimodal("vision tower; the text decoder is llama4_text"),
    "mllama": multimodal("cross-attention layers to a vision encoder"),
    "moshi": multimodal("audio codebook streams"), "moss_transcribe_diarize": multimodal("audio encoder"),
    "phi4_multimodal": multimodal("vision and audio towers with LoRA adapters"),
    "qwen3_5": multimodal("vision tower, gated DeltaNet layers"),
    "qwen3_5_moe": multimodal("vision tower, gated DeltaNet layers"),
    "qwen4_exp": multimodal("vision tower, linear-attention layers"),
    "dots3_note": multimodal("vision tower; the text decoder is dots3_note_text"),
    "cohere_compass_text": multimodal("the text side of a vision-language embedding model"),
    # ---------------------------------------------------------------- other
    "blt": refused("other", "byte-level patches: local encoder and decoder cross-attending a global transformer"),
    "cpmant": refused("other", "CPM-Ant's segment and relative position biases and prompt embeddings"),
    "reformer": refused("other", "LSH and local attention in reversible layers with axial positions"),
    "xlnet": refused("other", "two-stream permutation attention with relative positions"),
    "ctrl": refused("other", "sinusoidal positions and CTRL's attention layout"),
    "bitnet": refused("other", "ternary (1.58-bit) weights with sub-norms inside attention and MLP"),
    # ---------------------------------------------------------------- not yet: attention + MLP/MoE decoders
    "afmoe": supported("afmoe"),
    "apertus": supported("apertus"),
    "apertus1p5_text": supported("apertus1p5_text"),
    "arcee": supported("arcee"),
    "aria_text": supported("aria_text"),
    "axk1": supported("axk1"),
    "axk2": needs("gated RMSNorms (a low-rank sigmoid gate on each norm's output)",
                  "MLA whose q and output gate come from one projection of the q latent and its norm"),
    "beam": needs("depth-scaled residual adds (branch / sqrt(n) + residual x sqrt((n - 1) / n), n from the layer "
                  "index: no inserted layer is the identity and later layers' scales move)",
                  "scalable-softmax query scaling on its RoPE-less layers", "per-head attention output-gate biases",
                  "DeepSeek-V4-style experts"),
    "biogpt": supported("biogpt"),
    "bloom": supported("bloom"),
    "codegen": supported("codegen"),
    "cohere": supported("cohere"),
    "cohere2": supported("cohere2"),
    "cohere2_moe": supported("cohere2_moe"),
    "cwm": supported("cwm"),
    "dbrx": supported("dbrx"),
    "deepseek_v2": supported("deepseek_v2"),
    "deepseek_v3": supported("deepseek_v3"),
    "deepseek_v32": supported("deepseek_v32"),
    "deepseek_v4": needs("compressed attention with sinks", MOE_SHARED),
    "diffllama": supported("diffllama"),
    "doge": supported("doge"),
    "dory": needs("nGPT's unit-sphere (L2) norms and interpolated residuals, which width growth does not keep",
                  "recurrent loops over shared layers"),
    "dots1": supported("dots1"),
    "dots3_note_text": needs("per-layer attention configs", "an output-gated MLA (g_proj) with a normed RoPE key",
                             "MLA latent scales sqrt(hidden / rank), which change with the width"),
    "ergo": supported("ergo"),
    "ernie4_5": supported("ernie4_5"),
    "ernie4_5_moe": supported("ernie4_5_moe"),
    "exaone": supported("exaone"),
    "exaone4": supported("exaone4"),
    "exaone_moe": supported("exaone_moe"),
    "falcon": supported("falcon"),
    "flex_olmo": supported("flex_olmo"),
    "flint": supported("flint"),
    "gemma3_text": supported("gemma3_text"),
    "gemma3n_text": needs("AltUp (altup_num_inputs parallel residual streams, predicted and corrected by "
                          "input-routed learned coefficients)", "Laurel low-rank residual branches",
                          "per-layer input embeddings", "KV sharing across layers",
                          "Gaussian top-k activation sparsity (activation_sparsity_pattern)"),
    "gemma4_text": supported("gemma4_text"),
    "gemma4_unified_text": supported("gemma4_unified_text"),
    "glm": supported("glm"),
    "glm4": supported("glm4"),
    "glm4_moe": supported("glm4_moe"),
    "glm4_moe_lite": supported("glm4_moe_lite"),
    "glm_moe_dsa": supported("glm_moe_dsa"),
    "param2moe": supported("param2moe"), "sarvam_moe": supported("sarvam_moe"),
    "sarvam_mla": supported("sarvam_mla"),
    "gpt-sw3": supported("gpt2"),
    "gpt2": supported("gpt2"),
    "gpt_bigcode": supported("gpt_bigcode"),
    "gpt_neo": supported("gpt_neo"),
    "gpt_neox_japanese": supported("gpt_neox_japanese"),
    "gpt_oss": supported("gpt_oss"),
    "gptj": supported("gptj"),
    "granite": supported("granite"),
    "granite_swa": supported("granite_swa"),
    "granitemoe": supported("granitemoe"),
    "granitemoe_swa": supported("granitemoe_swa"),
    "granitemoeshared": supported("granitemoeshared"),
    "helium": supported("helium"),
    "hunyuan_v1_dense": supported("hunyuan_v1_dense"),
    "hunyuan_v1_moe": supported("hunyuan_v1_moe"),
    "hy_v3": supported("hy_v3"),
    "hy_v4": needs("hyper-connections (hc_mult residual streams mixed per layer)",
                   "attention sinks with sparse attention"),
    "hyperclovax": supported("hyperclovax"),
    "jais2": supported("jais2"),
    "jetmoe": supported("jetmoe"),
    "kolibri1": supported("kolibri1"),
    "kolibri1_1": needs("indexed (top-k sparse) attention layers whose KV other layers share", MOE_SHARED, "qk-norm"),
    "laguna": supported("laguna"),
    "llama4_text": supported("llama4_text"),
    "longcat_flash": needs("two attention + MLP sublayers per layer with a shortcut MoE", "zero-computation experts",
                           "MLA latent scales sqrt(hidden / rank), which change with the width"),
    "mellum": supported("mellum"),
    "mimo_v2_flash": supported("mimo_v2_flash"),
    "minicpm3": supported("minicpm3"),
    "minicpm5_moe": supported("minicpm5_moe"),
    "minimax_m2": supported("minimax_m2"),
    "ministral": supported("ministral"),
    "ministral3": supported("ministral3"),
    "modernbert-decoder": supported("modernbert-decoder"),
    "mpt": supported("mpt"),
    "nanochat": supported("nanochat"),
    "nemotron": supported("nemotron"),
    "olmo3": supported("olmo3"),
    "olmoe": supported("olmoe"),
    "openai-gpt": supported("openai-gpt"),
    "persimmon": supported("persimmon"),
    "phi": supported("phi"),
    "phimoe": supported("phimoe"),
    "qwen2_moe": supported("qwen2_moe"),
    "qwen3_moe": supported("qwen3_moe"),
    "seed_oss": supported("seed_oss"),
    "smollm3": supported("smollm3"),
    "solar_open": supported("solar_open"),
    "stablelm": supported("stablelm"),
    "starcoder2": supported("starcoder2"),
    "vaultgemma": supported("vaultgemma"),
    "xglm": refused("other", "sinusoidal positions computed from d_model: a wider model's position table is not "
                    "copies of the narrow one's, so no width growth is exact"),
    "youtu": supported("youtu"),
    "zaya": needs("Compressed Convolutional Attention (q and k from causal depthwise and grouped convolutions "
                  "over time plus residual projections; values half from the previous token)",
                  "its MoE router (an MLP over a down-projected residual, a skip expert, router state carried "
                  "from layer to layer)"),
}
"""model_type -> Coverage for every causal-LM type of transformers 5.25."""


def coverage(model_type: str):
    """The row of ``model_type``, or None for a type the table does not know."""
    return COVERAGE.get(model_type)


def markdown() -> str:
    """docs/families.md: every type, its status and why."""
    rows = sorted(COVERAGE.items())
    n_sup = sum(c.status == "supported" for _, c in rows)
    kinds: dict = {}
    for _, c in rows:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    lines = [
        "# Model types: what hyperclone grows", "",
        "Generated from `hyperclone_core/model/families/coverage.py` by", "",
        "```bash", "python -m hyperclone_core.model.families > docs/families.md", "```", "",
        f"Every causal-LM model type of transformers ({len(rows)}): **{n_sup} supported** (grown exactly and "
        "tested against transformers), the rest refused with the reason "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()) if k != 'supported')}).", "",
        "| model_type | status | kind | reason |", "|---|---|---|---|",
    ]
    lines += [f"| `{mt}` | {c.status} | {c.kind} | {c.reason} |" for mt, c in rows]
    return "\n".join(lines) + "\n"


__all__ = ["COVERAGE", "Coverage", "coverage", "markdown"]
