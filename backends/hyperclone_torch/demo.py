"""``hyperclone demo``: pretrain a small model, clone it 2x, race it against a random twin.

Three models get the same budget, the same batches in the same order and the same
validation batches at the same steps:

* ``clone``: the small model HyperCloned 2x wide (function preserved, verified);
* ``random``: a random-init model of the clone's size (the paper's baseline);
* ``small_continue``: the small model simply kept training - the control the paper
  did not draw: if the clone cannot beat it, growing was not worth it.

The text is the embedded corpus (``hyperclone_core.corpus``; no download) or
``--text FILE``; tokens are UTF-8 bytes.  ``benchmarks/speedup.py`` runs the same
comparison at any scale through :func:`compare`.  The defaults come from the sweep
in ``docs/recipe.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from hyperclone_core.corpus import Corpus, CorpusError
from hyperclone_core.corpus import load as load_corpus
from hyperclone_core.errors import HypercloneError
from hyperclone_core.io import AtomicDir, write_json

RUNS = ("clone", "random", "small_continue")
PRESERVATION_TOLERANCE = 1e-4  # float32; the conformance suite's bound


@dataclass(frozen=True)
class Settings:
    """Everything a comparison depends on; written into results.json."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 172
    width: int = 2
    strategy: str = "noisy:10"
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
    device: str = "cpu"
    dtype: str = "float32"             # TrainConfig.dtype: bfloat16 autocast for GPUs
    threads: int = 2

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


# ---------------------------------------------------------------- summary numbers


def steps_to_reach(curve, target: float) -> Optional[float]:
    """First step where the val-loss curve is <= target, linearly interpolated
    between evaluations; None if it never gets there."""
    prev = None
    for step, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(step)
            s0, l0 = prev
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        prev = (step, loss)
    return None


def speedup(curve, target_curve) -> dict:
    """How much sooner ``curve`` reaches ``target_curve``'s final loss."""
    final_step, target = target_curve[-1]
    reached = steps_to_reach(curve, target)
    out = dict(target_loss=target, target_step=final_step, reached_at=reached,
               ahead_at_start=reached is not None and reached <= 0)
    if reached is None:
        out["speedup"] = None
    elif reached <= 0:
        out["speedup"] = math.inf  # ahead before training: the inherited model alone beats the twin
    else:
        out["speedup"] = final_step / reached
    return out


def forgetting_dip(curve) -> dict:
    """How far the clone's val loss rose above where it started (0 if it never did)."""
    start = curve[0][1]
    peak_step, peak = max(curve, key=lambda p: p[1])
    return dict(start=start, peak=peak, peak_step=peak_step, dip=max(0.0, peak - start))


def fmt_speedup(s: dict) -> str:
    if s["speedup"] is None:
        return f"never reached {s['target_loss']:.4f} in {s['target_step']} steps (< 1x)"
    if math.isinf(s["speedup"]):
        return f"already below {s['target_loss']:.4f} at step 0 (before any training)"
    return (f"reached {s['target_loss']:.4f} at step {s['reached_at']:.0f} of {s['target_step']} "
            f"-> {s['speedup']:.2f}x")


def table(curves: dict) -> str:
    """The printed table: step and the val loss of every run."""
    steps = [s for s, _ in curves["clone"]]
    lines = [f"{'step':>6}  " + "  ".join(f"{r:>14}" for r in RUNS)]
    for k, step in enumerate(steps):
        lines.append(f"{step:>6}  " + "  ".join(f"{curves[r][k][1]:>14.4f}" for r in RUNS))
    return "\n".join(lines)


def summarize(results: dict) -> str:
    c = results["curves"]
    s = results["summary"]
    lines = [table(c), ""]
    lines.append(f"clone vs random twin:        {fmt_speedup(s['clone_vs_random'])}")
    lines.append(f"small-continue vs random:    {fmt_speedup(s['small_continue_vs_random'])}")
    lines.append(f"final val loss: clone {c['clone'][-1][1]:.4f}, random {c['random'][-1][1]:.4f}, "
                 f"small_continue {c['small_continue'][-1][1]:.4f} -> clone "
                 f"{'beats' if s['clone_beats_small'] else 'does NOT beat'} the small-model control")
    w = s["with_pretraining"]
    lines.append(f"counting the source's pretraining ({w['pretrain_steps']} small steps ~ "
                 f"{w['charged_steps']:.0f} wide steps): "
                 + ("clone never reached the twin" if w["speedup"] is None else f"{w['speedup']:.2f}x"))
    d = s["forgetting"]
    lines.append(f"forgetting dip: {d['dip']:.4f} (val loss {d['start']:.4f} at step 0, "
                 f"peak {d['peak']:.4f} at step {d['peak_step']})")
    sym = s.get("symmetry")
    lines.append("symmetry monitor (last): " + ("n/a" if sym is None else f"{sym:.4f}"))
    return "\n".join(lines)


# ---------------------------------------------------------------- the comparison


def _train_config(st: Settings, steps: int, lr: float, seed: int, clone_lr: str = ""):
    from .train import TrainConfig

    kw = dict(steps=steps, batch_size=st.batch_size, seq_len=st.seq_len, lr=lr,
              min_lr_ratio=st.min_lr_ratio, warmup_steps=st.warmup_steps, weight_decay=st.weight_decay,
              grad_clip=st.grad_clip, eval_every=st.eval_every, eval_batches=st.eval_batches, seed=seed,
              device=st.device, dtype=st.dtype)
    if clone_lr:
        kw["clone_lr"] = clone_lr
    return TrainConfig(**kw)


def _curve(result) -> list:
    return [[int(h["step"]), float(h["val_loss"])] for h in result.history
            if h.get("val_loss") is not None]


def _last_symmetry(result) -> Optional[float]:
    vals = [h.get("symmetry") for h in result.history if h.get("symmetry") is not None]
    if not vals:
        return None
    v = vals[-1]
    if isinstance(v, dict):  # per-tensor values: report the mean
        v = float(np.mean(list(v.values())))
    return float(v)


def preservation_error(small, clone, tokens: np.ndarray) -> float:
    """max |logits_clone - logits_small| / max |logits_small| on real tokens."""
    import torch

    x = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    dev = next(small.parameters()).device
    with torch.no_grad():
        a = small(x.to(dev)).float()
        b = clone(x.to(next(clone.parameters()).device)).float().to(dev)
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def compare(st: Settings, corpus: Corpus, log: Callable[[str], None] = print,
            train_tokens: Optional[np.ndarray] = None, val_tokens: Optional[np.ndarray] = None,
            vocab: Optional[int] = None) -> dict:
    """Pretrain, clone, train the three runs; return curves, summary and settings."""
    import torch

    from .interop import expand_model
    from .model import Decoder
    from .train import train

    if st.threads:
        torch.set_num_threads(st.threads)
    train_tokens = np.frombuffer(corpus.train, dtype=np.uint8) if train_tokens is None else train_tokens
    val_tokens = np.frombuffer(corpus.val, dtype=np.uint8) if val_tokens is None else val_tokens
    if vocab is None:
        vocab = 256 if train_tokens.dtype == np.uint8 else int(max(train_tokens.max(), val_tokens.max())) + 1
    t0 = time.perf_counter()

    small = Decoder.random(st.small_config(vocab), seed=st.seed).to(st.device)
    log(f"small model: hidden {st.hidden}, {st.layers} layers, {_params(small):,} parameters; "
        f"pretraining {st.pretrain_steps} steps at lr {st.pretrain_lr:g}")
    pre = train(small, _train_config(st, st.pretrain_steps, st.pretrain_lr, st.seed + 1), train_tokens, val_tokens)
    pre_curve = _curve(pre)

    clone, plan = expand_model(small, width=st.width, strategy=st.strategy, seed=st.seed, return_plan=True)
    rows = max(1, min(4, len(val_tokens) // st.seq_len))
    probe = np.asarray(val_tokens[: rows * st.seq_len], dtype=np.int64).reshape(rows, -1)
    err = preservation_error(small, clone, probe)
    if not err <= PRESERVATION_TOLERANCE:
        raise HypercloneError(
            f"the clone's logits differ from the small model's by {err:.2e} (relative), above "
            f"{PRESERVATION_TOLERANCE:g}: strategy {st.strategy!r} did not preserve the function; "
            "run the conformance suite for this backend (pytest --pyargs hyperclone_conformance)")
    log(f"clone: {st.width}x wide ({_params(clone):,} parameters), strategy {st.strategy}; "
        f"verified preservation error (max |dlogits| / max |logits|) {err:.2e}")

    twin = Decoder.random(clone.config, seed=st.seed + 2).to(st.device)
    cont = copy.deepcopy(small)
    runs = {}
    for name, model, lr, clone_lr, p in (
        ("clone", clone, st.lr * st.clone_lr_scale, st.clone_lr, plan),
        ("random", twin, st.lr, "", None),
        ("small_continue", cont, st.lr, "", None),
    ):
        log(f"training {name}: {st.steps} steps, peak lr {lr:g}" + (f", clone_lr {clone_lr}" if clone_lr else ""))
        t1 = time.perf_counter()
        res = train(model, _train_config(st, st.steps, lr, st.seed + 3, clone_lr), train_tokens, val_tokens,
                    plan=p)
        runs[name] = res
        log(f"  {name}: final val loss {_curve(res)[-1][1]:.4f} ({time.perf_counter() - t1:.0f} s)")

    curves = {name: _curve(res) for name, res in runs.items()}
    seconds = {name: _seconds(res) for name, res in runs.items()}
    seconds["pretrain"] = _seconds(pre)
    steps = {name: [s for s, _ in c] for name, c in curves.items()}
    if len({tuple(v) for v in steps.values()}) != 1:
        raise HypercloneError(f"the three runs were evaluated at different steps {steps}; "
                              "the comparison needs the same eval_every for all")
    summary = dict(
        clone_vs_random=speedup(curves["clone"], curves["random"]),
        small_continue_vs_random=speedup(curves["small_continue"], curves["random"]),
        clone_beats_small=curves["clone"][-1][1] < curves["small_continue"][-1][1],
        forgetting=forgetting_dip(curves["clone"]),
        symmetry=_last_symmetry(runs["clone"]),
        with_pretraining=with_pretraining(curves, st.pretrain_steps, _params(small) / _params(clone)),
        preservation_error=err,
        run_seconds=seconds,
        seconds=time.perf_counter() - t0,
    )
    return dict(
        clone=curves["clone"], random=curves["random"], small_continue=curves["small_continue"],
        pretrain=pre_curve, curves=curves, summary=summary, settings=asdict(st),
        corpus=corpus.to_dict() if corpus is not None else None,
    )


def _seconds(result) -> float:
    vals = [h["seconds"] for h in result.history if h.get("seconds") is not None]
    return float(vals[-1]) if vals else 0.0


def with_pretraining(curves: dict, pretrain_steps: int, cost_ratio: float) -> dict:
    """The speed-up when the source's pretraining is charged to the clone: a small-model
    step costs ``cost_ratio`` (parameter ratio, ~ FLOPs ratio) of a wide-model step."""
    s = speedup(curves["clone"], curves["random"])
    charged = pretrain_steps * cost_ratio
    out = dict(pretrain_steps=pretrain_steps, cost_ratio=cost_ratio, charged_steps=charged)
    if s["reached_at"] is None:
        out["speedup"] = None
    else:
        out["speedup"] = s["target_step"] / (s["reached_at"] + charged) if s["reached_at"] + charged > 0 else math.inf
    return out


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- outputs


def plot(results: dict, path) -> bool:
    """loss.png: the three curves, the random twin's final loss, the clone's crossing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("loss.png skipped: matplotlib is not installed (pip install 'hyperclone[plot]')", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    style = dict(clone=("tab:red", "HyperClone (2x, from small)"), random=("tab:blue", "random init (2x)"),
                 small_continue=("tab:gray", "small model, kept training"))
    for name in RUNS:
        c = np.asarray(results[name], dtype=float)
        color, label = style[name]
        ax.plot(c[:, 0], c[:, 1], color=color, label=label, lw=2 if name == "clone" else 1.5)
    s = results["summary"]["clone_vs_random"]
    ax.axhline(s["target_loss"], color="tab:blue", ls=":", lw=1, label="random twin's final loss")
    # the twin starts near log(256); show the race, not its first steps
    near = [v for name in ("clone", "small_continue") for _, v in results[name]] + [s["target_loss"]]
    lo, hi = min(near), max(near)
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.6 * (hi - lo + 1e-3))
    if s["reached_at"] is not None and s["reached_at"] > 0:
        ax.axvline(s["reached_at"], color="tab:red", ls=":", lw=1)
        ax.set_title(f"clone reaches the random twin's final loss at step {s['reached_at']:.0f} "
                     f"({s['speedup']:.1f}x sooner)", fontsize=10)
    elif s["reached_at"] is not None:
        ax.set_title("the clone starts below the random twin's final loss", fontsize=10)
    else:
        ax.set_title("the clone did not reach the random twin's final loss", fontsize=10)
    ax.set_xlabel("training step (after cloning)")
    ax.set_ylabel("validation loss (nats / byte)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_outputs(results: dict, out) -> Path:
    """results.json and loss.png, written atomically into ``out``.  An existing folder
    is replaced only if it holds a previous results.json (never a user's folder)."""
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {k: v for k, v in results.items() if k != "curves"}
    with AtomicDir(out, force=True) as tmp:
        write_json(tmp / "results.json", _finite(doc))
        plot(results, tmp / "loss.png")
    return out


def check_out(out) -> Path:
    """Refuse, before any training, to replace a folder that is not a previous output."""
    out = Path(out)
    if out.exists() and not (out / "results.json").is_file():
        raise HypercloneError(f"--out {out} exists and is not a previous demo output (no results.json); "
                              "choose another folder")
    return out


def _finite(o):
    """JSON has no inf: an infinite speed-up is written as null with the reason kept in reached_at."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


# ---------------------------------------------------------------- CLI


def add_settings_args(p: argparse.ArgumentParser, base: Settings) -> None:
    """One flag per Settings field (used by the demo's hidden overrides and the benchmark)."""
    for name, value in asdict(base).items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=type(value), default=None, help=f"default {value!r}")


def settings_from(args, base: Settings) -> Settings:
    return replace(base, **{k: getattr(args, k) for k in asdict(base) if getattr(args, k, None) is not None})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hyperclone demo",
        description="Pretrain a small byte-level Llama, clone it 2x and race the clone against a random-init "
                    "twin and the small model kept training. No download needed.")
    p.add_argument("--backend", default="torch", help="only torch implements the demo")
    p.add_argument("--text", help="a UTF-8 text file instead of the embedded corpus")
    p.add_argument("--out", default="hyperclone-demo", help="folder for results.json and loss.png")
    p.add_argument("--quick", action="store_true", help="a <= 2 minute run (CPU)")
    p.add_argument("--preset", choices=sorted(PRESETS), help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="also print results.json to stdout")
    add_settings_args(p.add_argument_group("settings (the recipe; see docs/recipe.md)"), PRESETS["default"])
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.backend != "torch":
        print(f"hyperclone demo: backend {args.backend!r} has no demo; use --backend torch", file=sys.stderr)
        return 2
    base = PRESETS[args.preset or ("quick" if args.quick else "default")]
    st = settings_from(args, base)
    try:
        check_out(args.out)
        corpus = load_corpus(args.text)
        print(corpus.describe())
        results = compare(st, corpus)
        print()
        print(summarize(results))
        out = write_outputs(results, args.out)
    except (HypercloneError, CorpusError) as e:
        print(f"hyperclone demo: error: {e}", file=sys.stderr)
        return 2
    print(f"\nwrote {out / 'results.json'} and {out / 'loss.png'} ({results['summary']['seconds']:.0f} s)")
    if args.json:
        print(json.dumps(_finite({k: v for k, v in results.items() if k != "curves"})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
