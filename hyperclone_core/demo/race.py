"""The race: pretrain a small model, clone it, train three models side by side.

Three models get the same budget, the same batches in the same order and the same
validation batches at the same steps:

* ``clone``: the small model HyperCloned ``width``x wide (function preserved, verified);
* ``random``: a random-init model of the clone's size (the paper's baseline);
* ``small_continue``: the small model simply kept training - the control the paper
  did not draw: if the clone cannot beat it, growing was not worth it.

Runs on any backend that trains (its engine and its plan primitives); the text
is the embedded corpus or any file, tokens are UTF-8 bytes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np

from ..run.protocol import load_backend

from ..run.interpreter import execute
from .corpus import Corpus
from ..errors import ConfigError, HypercloneError
from ..model.families import family_for_config
from ..algebra.options import plan_growth
from ..algebra.strategy import DEFAULT as DEFAULT_STRATEGY
from ..console.progress import Progress
from ..model.structure import init_weights
from ..train import TrainConfig, optimizer_for, train
from ..train.config import peak_lr
from . import report

PRESERVATION_TOLERANCE = 1e-4  # float32; the conformance suite's bound


@dataclass(frozen=True)
class Settings:
    """Everything a comparison depends on; written into results.json."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 172
    width: int = 2
    strategy: str = DEFAULT_STRATEGY
    seq_len: int = 64
    batch_size: int = 16
    pretrain_steps: int = 800
    pretrain_lr: float = 3e-3
    steps: int = 600
    lr: float = 2e-3
    clone_lr_scale: float = 0.5        # clone peak LR = lr * clone_lr_scale (docs/recipe.md)
    clone_lr: str = ""                 # TrainConfig.clone_lr (per-tensor LR for the clone); "" = off
    warmup_steps: int = 60
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 30
    eval_batches: int = 8
    seed: int = 0
    device: str = "auto"               # auto: a GPU when there is one
    dtype: str = "float32"             # TrainConfig.dtype: bfloat16 compute for GPUs
    threads: int = 0                   # intra-op CPU threads; 0 = automatic (train/threads.py: measured)

    def small_config(self, vocab: int = 256) -> dict:
        return llama_config(self.hidden, self.layers, self.heads, self.ffn, vocab, self.seq_len)


PRESETS = {
    "default": Settings(),
    "quick": Settings(pretrain_steps=300, steps=200, eval_every=20, eval_batches=4),
    # a seconds-long smoke run of every code path (benchmarks/speedup.py --preset tiny)
    "tiny": Settings(hidden=32, heads=2, ffn=64, layers=1, seq_len=32, batch_size=8, pretrain_steps=30,
                     steps=18, eval_every=6, eval_batches=2),
}


def llama_config(hidden: int, layers: int, heads: int, ffn: int, vocab: int = 256, positions: int = 256) -> dict:
    """A Llama-style HF config dict for a byte-level model."""
    return dict(
        model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=vocab, hidden_size=hidden,
        intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, max_position_embeddings=positions, rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, hidden_act="silu",
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def train_config(st: Settings, steps: int, lr: float, seed: int, clone_lr: str = "",
                 clone_lr_scale: float = 1.0) -> TrainConfig:
    kw = dict(steps=steps, batch_size=st.batch_size, seq_len=st.seq_len, lr=lr, min_lr_ratio=st.min_lr_ratio,
              warmup_steps=st.warmup_steps, weight_decay=st.weight_decay, grad_clip=st.grad_clip,
              eval_every=st.eval_every, eval_batches=st.eval_batches, seed=seed, device=st.device, dtype=st.dtype,
              threads=st.threads, clone_lr_scale=clone_lr_scale)
    if clone_lr:
        kw["clone_lr"] = clone_lr
    return TrainConfig(**kw)


def curve(result) -> list:
    return [[int(h["step"]), float(h["val_loss"])] for h in result.history if h.get("val_loss") is not None]


def last_symmetry(result) -> Optional[float]:
    vals = [h.get("symmetry") for h in result.history if h.get("symmetry") is not None]
    return float(vals[-1]) if vals else None


def seconds_of(result) -> float:
    vals = [h["seconds"] for h in result.history if h.get("seconds") is not None]
    return float(vals[-1]) if vals else 0.0


def random_weights(hf_config: dict, seed: int) -> dict:
    """Fresh weights from the core's neutral stream: every backend races from the same
    start, so two backends' tables differ only by their engines' arithmetic."""
    fam = family_for_config(hf_config)
    return init_weights(fam, fam.read(hf_config), seed=seed)


def preservation_error(bk, hf_small: dict, small: dict, p, clone: dict, tokens: np.ndarray) -> float:
    """max |logits_clone - logits_small| / max |logits_small| on real tokens, float32."""
    fam = family_for_config(hf_small)

    def logits(cfg, w):
        try:
            return np.asarray(bk.forward(fam, cfg, w, tokens, dtype="float32"), np.float64)
        except TypeError:  # a forward without dtype=
            return np.asarray(bk.forward(fam, cfg, w, tokens), np.float64)

    a, b = logits(fam.read(hf_small), small), logits(p.decoder, clone)
    return float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12))


def run(bk, hf_config: dict, weights: dict, config: TrainConfig, train_tokens, val_tokens, p=None, bar=None):
    """One training run on a fresh engine; returns (result, trained weights as numpy)."""
    shapes = {n: np.shape(w) for n, w in weights.items()}
    eng = bk.engine(hf_config, weights, config, optimizer_for(config, shapes, p))

    def tick(rec):
        if bar is not None:
            bar.update(1, loss=rec.get("train_loss"), val=rec.get("val_loss"))

    try:
        res = train(eng, config, train_tokens, val_tokens, plan=p, callback=tick)
        return res, eng.params()
    finally:
        eng.close()


def compare(st: Settings, corpus: Optional[Corpus], backend: str = "torch", log: Callable[[str], None] = print,
            train_tokens: Optional[np.ndarray] = None, val_tokens: Optional[np.ndarray] = None,
            vocab: Optional[int] = None, progress: bool = False) -> dict:
    """Pretrain, clone, train the three runs; return curves, summary and settings.
    ``progress``: one bar over the whole race (phase, step, loss, ETA) on stderr."""
    bk = load_backend(backend)
    if "train" not in getattr(bk, "capabilities", ()):
        raise ConfigError(f"backend {backend!r} does not train (capabilities: {', '.join(sorted(bk.capabilities))}); "
                          "use --backend torch, jax or mlx")
    train_tokens = np.frombuffer(corpus.train, dtype=np.uint8) if train_tokens is None else train_tokens
    val_tokens = np.frombuffer(corpus.val, dtype=np.uint8) if val_tokens is None else val_tokens
    if vocab is None:
        vocab = 256 if train_tokens.dtype == np.uint8 else int(max(train_tokens.max(), val_tokens.max())) + 1
    t0 = time.perf_counter()

    bar = Progress(st.pretrain_steps + 3 * st.steps, "demo", "step", enabled=progress)
    hf_small = st.small_config(vocab)
    small = random_weights(hf_small, st.seed)
    n_small = sum(int(np.prod(np.shape(w))) for w in small.values())
    log(f"small model: hidden {st.hidden}, {st.layers} layers, {n_small:,} parameters; "
        f"pretraining {st.pretrain_steps} steps at lr {st.pretrain_lr:g}")
    bar.set_label("demo: pretrain small")
    pre, small = run(bk, hf_small, small, train_config(st, st.pretrain_steps, st.pretrain_lr, st.seed + 1),
                     train_tokens, val_tokens, bar=bar)

    p = plan_growth(hf_small, width=st.width, strategy=st.strategy, seed=st.seed, where="the demo's small model")
    clone = execute(bk, p, small)
    n_clone = sum(int(np.prod(np.shape(w))) for w in clone.values())
    rows = max(1, min(4, len(val_tokens) // st.seq_len))
    probe = np.asarray(val_tokens[: rows * st.seq_len], dtype=np.int64).reshape(rows, -1)
    err = preservation_error(bk, hf_small, small, p, clone, probe)
    if not err <= PRESERVATION_TOLERANCE:
        raise HypercloneError(
            f"the clone's logits differ from the small model's by {err:.2e} (relative), above "
            f"{PRESERVATION_TOLERANCE:g}: strategy {st.strategy!r} did not preserve the function; "
            f"run the conformance suite for this backend (pytest --pyargs hyperclone_conformance "
            f"--hyperclone-backend {backend})")
    log(f"clone: {st.width}x wide ({n_clone:,} parameters), strategy {st.strategy}; "
        f"verified preservation error (max |dlogits| / max |logits|) {err:.2e}")

    hf_clone = dict(p.config)
    twin = random_weights(hf_clone, st.seed + 2)
    runs = {}
    for name, hf, w, scale, clone_lr, pl in (
        ("clone", hf_clone, clone, st.clone_lr_scale, st.clone_lr, p),
        ("random", hf_clone, twin, 1.0, "", None),
        ("small_continue", hf_small, small, 1.0, "", None),
    ):
        tc = train_config(st, st.steps, st.lr, st.seed + 3, clone_lr, scale)
        log(f"training {name}: {st.steps} steps, peak lr {peak_lr(tc):g}" + (f", clone_lr {clone_lr}" if clone_lr else ""))
        t1 = time.perf_counter()
        bar.set_label(f"demo: train {name}")
        runs[name], _ = run(bk, hf, w, tc, train_tokens, val_tokens, pl, bar=bar)
        log(f"  {name}: final val loss {curve(runs[name])[-1][1]:.4f} ({time.perf_counter() - t1:.0f} s)")

    bar.close()
    curves = {name: curve(res) for name, res in runs.items()}
    seconds = {name: seconds_of(res) for name, res in runs.items()}
    seconds["pretrain"] = seconds_of(pre)
    steps = {name: [s for s, _ in c] for name, c in curves.items()}
    if len({tuple(v) for v in steps.values()}) != 1:
        raise HypercloneError(f"the three runs were evaluated at different steps {steps}; "
                              "the comparison needs the same eval_every for all")
    summary = dict(
        clone_vs_random=report.speedup(curves["clone"], curves["random"]),
        small_continue_vs_random=report.speedup(curves["small_continue"], curves["random"]),
        clone_beats_small=curves["clone"][-1][1] < curves["small_continue"][-1][1],
        forgetting=report.forgetting_dip(curves["clone"]),
        symmetry=last_symmetry(runs["clone"]),
        headline=report.headline(curves),
        with_pretraining=report.with_pretraining(curves, st.pretrain_steps, n_small / n_clone),
        preservation_error=err,
        run_seconds=seconds,
        seconds=time.perf_counter() - t0,
    )
    return dict(
        clone=curves["clone"], random=curves["random"], small_continue=curves["small_continue"],
        pretrain=curve(pre), curves=curves, summary=summary, settings=asdict(st), backend=backend,
        corpus=corpus.to_dict() if corpus is not None else None,
    )


__all__ = ["PRESERVATION_TOLERANCE", "PRESETS", "Settings", "compare", "llama_config", "train_config"]
