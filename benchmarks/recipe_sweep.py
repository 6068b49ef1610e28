"""Recipe sweep: which recipe keeps the speed-up as the model grows.

Two kinds of grid, each printed as one table, every point's curves and summary written
as JSON as it goes:

* **growth grids** (``growth_*``): the race of ``hyperclone demo`` itself
  (``hyperclone_core.demo.compare``: a run that starts small and grows with its whole
  training state, against the random twin and the small model kept training, on one
  compute axis, every stage counted), one lever of the growth recipe per point --
  seed size, when to grow, number of stages, re-warm, symmetry breakers, moment
  handling (``reset`` is a fresh AdamW: the recipe before growth carried the state),
  LR scaling.  The race's cache keeps what a lever does not change (the twin, the
  stages before the last growth, the small model's branch);
* **restart grids** (the others): a finished, annealed source cloned and trained with a
  fresh optimizer, the recipe measured before growth inside a run; the pretrained
  source, the twin and the small model are cached, so a lever reruns only the clone::

    python benchmarks/recipe_sweep.py --grid growth_quick --out recipe-out
    python benchmarks/recipe_sweep.py --grid screen4x --out recipe-out
    python benchmarks/recipe_sweep.py --grid base4x --scale 16x --device cuda --threads 0

``--list`` shows the points and which of them are done. The numbers and the grids are
in docs/recipe.md.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

# The building blocks, imported in one place: repoint these when they move.
from hyperclone_core.demo.corpus import CorpusError
from hyperclone_core.demo.corpus import load as load_corpus
from hyperclone_core.errors import HypercloneError
from hyperclone_core.io import write_json
from hyperclone_core.demo import race
from hyperclone_core.demo.race import PRESERVATION_TOLERANCE, llama_config, random_weights
from hyperclone_core.demo.report import forgetting_dip, speedup, with_pretraining
from hyperclone_core.train import TrainConfig, clone_lr_multipliers
from hyperclone_core.train.clone import CLONE_LR_RULES as RULES
from hyperclone_torch import Decoder, expand_model, train


def fresh(hf_config: dict, seed: int) -> "Decoder":
    """A random-init model from the demo's own init (the core's stream), so a point
    at the demo's settings reproduces ``hyperclone demo`` bit for bit."""
    return Decoder.from_weights(hf_config, random_weights(hf_config, seed))


def preservation_error(small, clone, tokens) -> float:
    """max |logits_clone - logits_small| / max |logits_small| on real tokens (the torch modules, float32)."""
    import torch

    x = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    with torch.no_grad():
        a, b = small(x).float(), clone(x).float()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))

CACHE_VERSION = 2  # 2: initial weights from the core's init stream (the demo's), not torch's generator
REPO = Path(__file__).resolve().parents[1]
CORPORA = {"embedded": None, "shakespeare": str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt")}
CLONE_LR_RULES = ("", *RULES)


@dataclass(frozen=True)
class Point:
    """One comparison. The first block mirrors the demo's ``Settings`` (same meaning,
    same defaults as the demo had before issue 15); the rest are the recipe's levers."""

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
    clone_lr_scale: float = 0.5
    clone_lr: str = ""                  # a CLONE_LR_RULES rule, turned into a per-tensor map
    warmup_steps: int = 60
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 30
    eval_batches: int = 8
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    # levers the demo does not have (-1: same as the race's)
    clone_warmup_steps: int = -1
    clone_min_lr_ratio: float = -1.0
    pretrain_warmup_steps: int = -1
    grow_layers: int = 0                # the clone's depth; 0: the source's
    small_matched: bool = False         # also train the small model on the clone's schedule (a fairer control)

    @classmethod
    def from_settings(cls, st, **extra) -> "Point":
        """The point that reproduces ``compare(st)`` (the demo's Settings) exactly."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in asdict(st).items() if k in names}, **extra)

    def with_(self, **kw) -> "Point":
        return replace(self, **kw)

    def diff(self, base: "Point") -> dict:
        return {k: v for k, v in asdict(self).items() if getattr(base, k) != v}


SCALES = {
    "demo": Point(),
    "4x": Point(hidden=128, layers=4, ffn=344, seq_len=128, steps=800),
    # for a GPU: 16x the demo's parameters again (about 13M -> 50M); not measured on CPU
    "16x": Point(hidden=256, layers=8, heads=8, ffn=688, seq_len=256, batch_size=32, pretrain_steps=2000,
                 steps=1600, eval_every=50),
    "tiny": Point(hidden=32, heads=2, ffn=64, layers=2, seq_len=32, batch_size=8, pretrain_steps=30, steps=18,
                  eval_every=6, eval_batches=2),
}
SCALE_FIELDS = ("hidden", "layers", "heads", "ffn", "seq_len", "batch_size", "pretrain_steps", "steps", "eval_every",
                "eval_batches")

# ---------------------------------------------------------------- cache keys

RACE = ("steps", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "grad_clip", "batch_size", "seq_len",
        "eval_every", "eval_batches", "seed", "device", "dtype", "threads")
SOURCE = ("hidden", "layers", "heads", "ffn", "seq_len", "batch_size", "pretrain_steps", "pretrain_lr",
          "pretrain_warmup_steps", "min_lr_ratio", "weight_decay", "grad_clip", "eval_every", "eval_batches", "seed",
          "device", "dtype", "threads")


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def pick(p: Point, names) -> dict:
    d = {k: getattr(p, k) for k in names}
    if "pretrain_warmup_steps" in d and d["pretrain_warmup_steps"] < 0:
        d["pretrain_warmup_steps"] = p.warmup_steps
    return d


def source_key(p: Point, corpus_id: str) -> str:
    return digest(dict(v=CACHE_VERSION, run="source", corpus=corpus_id, **pick(p, SOURCE)))


def twin_key(p: Point, corpus_id: str, wide_config: dict) -> str:
    # a source loaded from the cache carries torch_dtype in its config; the twin is the same
    config = {k: v for k, v in wide_config.items() if k not in ("torch_dtype", "dtype")}
    return digest(dict(v=CACHE_VERSION, run="random", corpus=corpus_id, config=config, **pick(p, RACE)))


def small_key(p: Point, corpus_id: str, schedule: dict) -> str:
    return digest(dict(v=CACHE_VERSION, run="small_continue", source=source_key(p, corpus_id), **schedule))


def point_key(p: Point, corpus_id: str) -> str:
    """Fields at Point's defaults are left out, so a new lever (a new field whose default
    keeps the old behaviour) does not invalidate the points already measured."""
    return digest(dict(v=CACHE_VERSION, run="point", corpus=corpus_id, **p.diff(Point())))


class Cache:
    """Curves as JSON, sources as an HF folder (config.json + model.safetensors) whose
    JSON is written last, so a run killed mid-write leaves no entry."""

    def __init__(self, root):
        self.root = Path(root)

    def _json(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.json"

    def get(self, kind: str, key: str) -> Optional[dict]:
        path = self._json(kind, key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, kind: str, key: str, doc: dict) -> None:
        path = self._json(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        write_json(tmp, doc)
        os.replace(tmp, path)

    def get_source(self, key: str, device: str):
        doc = self.get("source", key)
        if doc is None:
            return None, None
        return Decoder.from_pretrained(self.root / "source" / key).to(device), doc

    def put_source(self, key: str, model, doc: dict) -> None:
        model.save_pretrained(self.root / "source" / key, force=True)
        self.put("source", key, doc)


# ---------------------------------------------------------------- one point


def corpus_tokens(name: str):
    corpus = load_corpus(CORPORA.get(name, name))
    return corpus, np.frombuffer(corpus.train, dtype=np.uint8), np.frombuffer(corpus.val, dtype=np.uint8)


def train_config(p: Point, steps: int, lr: float, seed: int, warmup: int, min_lr_ratio: float, clone_lr=""):
    return TrainConfig(steps=steps, batch_size=p.batch_size, seq_len=p.seq_len, lr=lr, min_lr_ratio=min_lr_ratio,
                       warmup_steps=warmup, weight_decay=p.weight_decay, grad_clip=p.grad_clip,
                       eval_every=p.eval_every, eval_batches=p.eval_batches, seed=seed, device=p.device,
                       dtype=p.dtype, clone_lr=clone_lr)


def clone_schedule(p: Point) -> dict:
    return dict(steps=p.steps, lr=p.lr * p.clone_lr_scale,
                warmup=p.warmup_steps if p.clone_warmup_steps < 0 else p.clone_warmup_steps,
                min_lr_ratio=p.min_lr_ratio if p.clone_min_lr_ratio < 0 else p.clone_min_lr_ratio)


def race_schedule(p: Point) -> dict:
    return dict(steps=p.steps, lr=p.lr, warmup=p.warmup_steps, min_lr_ratio=p.min_lr_ratio)


def clone_lr_map(plan, rule: str) -> dict:
    """Per-tensor LR multipliers (an explicit map for TrainConfig.clone_lr) from a rule of
    the trainer's registry (``hyperclone_core.train.clone.CLONE_LR_RULES``)."""
    if rule not in CLONE_LR_RULES:
        raise HypercloneError(f"clone_lr {rule!r}: use one of {', '.join(repr(r) for r in CLONE_LR_RULES)}")
    return clone_lr_multipliers(plan, rule)


def curve_of(result) -> list:
    return [[int(h["step"]), float(h["val_loss"])] for h in result.history if h.get("val_loss") is not None]


def last_symmetry(result) -> tuple:
    recs = [h for h in result.history if h.get("symmetry") is not None]
    return (float(recs[-1]["symmetry"]), recs[-1].get("symmetry_by_kind")) if recs else (None, None)


def _timed_train(model, cfg, tr, va, plan=None):
    t = time.perf_counter()
    res = train(model, cfg, tr, va, plan=plan)
    return res, time.perf_counter() - t


def run_point(p: Point, corpus_name: str, cache: Cache, log: Callable[[str], None] = print) -> dict:
    """Pretrain (or load) the source, clone it, and train (or load) the three runs."""
    import torch

    if p.threads:
        torch.set_num_threads(p.threads)
    corpus, tr, va = corpus_tokens(corpus_name)
    cid = corpus.sha256
    skey = source_key(p, cid)
    small, sdoc = cache.get_source(skey, p.device)
    if small is None:
        small = fresh(llama_config(p.hidden, p.layers, p.heads, p.ffn, 256, p.seq_len), p.seed).to(p.device)
        pw = pick(p, SOURCE)["pretrain_warmup_steps"]
        log(f"  pretraining the source ({p.pretrain_steps} steps)")
        res, sec = _timed_train(small, train_config(p, p.pretrain_steps, p.pretrain_lr, p.seed + 1, pw,
                                                    p.min_lr_ratio), tr, va)
        sdoc = dict(curve=curve_of(res), seconds=sec)
        cache.put_source(skey, small, sdoc)

    clone, plan = expand_model(small, width=p.width, layers=p.grow_layers or None, strategy=p.strategy, seed=p.seed,
                               return_plan=True)
    rows = max(1, min(4, len(va) // p.seq_len))
    err = preservation_error(small, clone, np.asarray(va[: rows * p.seq_len], dtype=np.int64).reshape(rows, -1))
    if not err <= PRESERVATION_TOLERANCE:
        raise HypercloneError(f"strategy {p.strategy!r}: the clone's logits differ from the source's by {err:.2e}")

    runs, seconds = {}, {"pretrain": sdoc["seconds"]}
    tkey = twin_key(p, cid, dict(clone.config))
    for name, kind, key, build in (
        ("random", "random", tkey,
         lambda: (fresh(clone.config, p.seed + 2).to(p.device), race_schedule(p))),
        ("small_continue", "small", small_key(p, cid, race_schedule(p)),
         lambda: (copy.deepcopy(small), race_schedule(p))),
        ("small_matched", "small", small_key(p, cid, clone_schedule(p)) if p.small_matched else None,
         lambda: (copy.deepcopy(small), clone_schedule(p))),
    ):
        if key is None:
            continue
        doc = cache.get(kind, key)
        if doc is None:
            model, sch = build()
            log(f"  training {name} ({sch['steps']} steps, peak lr {sch['lr']:g}, warmup {sch['warmup']})")
            res, sec = _timed_train(model, train_config(p, sch["steps"], sch["lr"], p.seed + 3, sch["warmup"],
                                                        sch["min_lr_ratio"]), tr, va)
            doc = dict(curve=curve_of(res), seconds=sec)
            cache.put(kind, key, doc)
        runs[name], seconds[name] = doc["curve"], doc["seconds"]

    sch = clone_schedule(p)
    mults = clone_lr_map(plan, p.clone_lr)
    log(f"  training clone ({sch['steps']} steps, peak lr {sch['lr']:g}, warmup {sch['warmup']}, "
        f"strategy {p.strategy}" + (f", clone_lr {p.clone_lr}" if p.clone_lr else "") + ")")
    res, seconds["clone"] = _timed_train(clone, train_config(p, sch["steps"], sch["lr"], p.seed + 3, sch["warmup"],
                                                              sch["min_lr_ratio"], mults), tr, va, plan)
    runs["clone"] = curve_of(res)
    sym, sym_kind = last_symmetry(res)
    sym_curve = [[int(h["step"]), float(h["symmetry"])] for h in res.history if h.get("symmetry") is not None]
    n_small, n_clone = (sum(t.numel() for t in m.parameters()) for m in (small, clone))
    return dict(corpus=corpus.to_dict(), settings=asdict(p), curves=runs, seconds=seconds,
                summary=summarize(runs, p.pretrain_steps, n_small / n_clone, sym, sym_kind, err),
                params=dict(small=n_small, clone=n_clone), clone_lr_map=mults, symmetry_curve=sym_curve,
                keys=dict(source=skey, random=tkey))


def summarize(runs: dict, pretrain_steps: int, cost_ratio: float, sym, sym_kind, err) -> dict:
    """The demo's summary numbers (same definitions) plus the margin over the small model."""
    out = dict(
        clone_vs_random=speedup(runs["clone"], runs["random"]),
        small_continue_vs_random=speedup(runs["small_continue"], runs["random"]),
        with_pretraining=with_pretraining(runs, pretrain_steps, cost_ratio),
        forgetting=forgetting_dip(runs["clone"]),
        symmetry=sym, symmetry_by_kind=sym_kind, preservation_error=err,
        final={k: c[-1][1] for k, c in runs.items()},
        margin=runs["small_continue"][-1][1] - runs["clone"][-1][1],
    )
    if "small_matched" in runs:
        out["margin_matched"] = runs["small_matched"][-1][1] - runs["clone"][-1][1]
    return out


# ---------------------------------------------------------------- the table


def fmt_x(s: dict) -> str:
    """A speed-up as docs/recipe.md prints it, with the step the twin's final loss was
    reached (JSON holds no inf: ahead_at_start says it)."""
    if s.get("ahead_at_start") or (s["speedup"] is not None and math.isinf(s["speedup"])):
        return "ahead at step 0"
    if s["speedup"] is None:
        return "never"
    return f"{s['speedup']:.2f}x" + (f" @{s['reached_at']:.0f}" if s.get("reached_at") else "")


def finite(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


COLUMNS = ("run", "corpus", "seed", "clone", "random", "small_continue", "clone vs twin", "small vs twin",
           "clone, pretraining charged", "dip", "symmetry", "clone - small")


def row(name: str, corpus: str, r: dict) -> list:
    s, f = r["summary"], r["summary"]["final"]
    margin = f"{s['margin']:+.4f}"
    if "margin_matched" in s:
        margin += f" (matched {s['margin_matched']:+.4f})"
    return [name, corpus, str(r["settings"]["seed"]), f"{f['clone']:.4f}", f"{f['random']:.4f}",
            f"{f['small_continue']:.4f}", fmt_x(s["clone_vs_random"]), fmt_x(s["small_continue_vs_random"]),
            fmt_x(s["with_pretraining"]),
            f"{s['forgetting']['dip']:.3f}", "n/a" if s["symmetry"] is None else f"{s['symmetry']:.3f}", margin]


def markdown(rows: list) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def curves_table(r: dict) -> str:
    names = [n for n in ("clone", "random", "small_continue", "small_matched") if n in r["curves"]]
    c = r["curves"]
    lines = [f"{'step':>6}  " + "  ".join(f"{n:>14}" for n in names)]
    for k, (step, _) in enumerate(c["clone"]):
        lines.append(f"{step:>6}  " + "  ".join(f"{c[n][k][1]:>14.4f}" for n in names))
    return "\n".join(lines)


# ---------------------------------------------------------------- the grids

# A lever is a function of the scale's base point -> overrides, so a grid reruns at any --scale.
LEVERS: dict = {
    "base": lambda b: {},                                                   # the demo's recipe before issue 15
    "w0_src_end": lambda b: dict(clone_warmup_steps=0, clone_lr_scale=b.pretrain_lr * b.min_lr_ratio / b.lr),
    "w0_x0.5": lambda b: dict(clone_warmup_steps=0),
    "lr_x1": lambda b: dict(clone_lr_scale=1.0),
    "noisy3": lambda b: dict(strategy="noisy:3"),
    "iw_x1": lambda b: dict(clone_lr="inverse_width", clone_lr_scale=1.0),
    "source_x2": lambda b: dict(pretrain_steps=2 * b.pretrain_steps),
    "depth": lambda b: dict(layers=b.layers // 2, grow_layers=b.layers),
    "random_split": lambda b: dict(strategy="random_split:1+noise:10"),
    "w0_x0.25": lambda b: dict(clone_warmup_steps=0, clone_lr_scale=0.25),
    "lr_x0.25": lambda b: dict(clone_lr_scale=0.25),
    "sqrt_iw_x1": lambda b: dict(clone_lr="sqrt_inverse_width", clone_lr_scale=1.0),
    "noisy5": lambda b: dict(strategy="noisy:5"),
    "diagonal": lambda b: dict(strategy="diagonal+noise:10"),
    "w20_x0.25": lambda b: dict(clone_warmup_steps=20, clone_lr_scale=0.25),
    # round 2: stronger noise, and noise with the schedule levers
    "noisy0": lambda b: dict(strategy="noisy:0"),
    "noisy-3": lambda b: dict(strategy="noisy:-3"),
    "noisy3_x1": lambda b: dict(strategy="noisy:3", clone_lr_scale=1.0),
    "noisy0_w20_x0.25": lambda b: dict(strategy="noisy:0", clone_warmup_steps=20, clone_lr_scale=0.25),
    "noisy0_w0_src_end": lambda b: dict(strategy="noisy:0", **LEVERS["w0_src_end"](b)),
    # round 3: random_split (the best of the screen) with more noise or sharper splits; the low-LR
    # schedule without the fresh-Adam bump
    "rs_n3": lambda b: dict(strategy="random_split:1+noise:3"),
    "rs0.3_n10": lambda b: dict(strategy="random_split:0.3+noise:10"),
    "rs_n0": lambda b: dict(strategy="random_split:1+noise:0"),
    "w20_src_end": lambda b: dict(clone_warmup_steps=20, clone_lr_scale=b.pretrain_lr * b.min_lr_ratio / b.lr),
    # round 4: a long warmup, so the clone's LR rises slowly from where the source ended (the dip
    # is the re-warm), to the demo's peak later; alone and with random_split's symmetry breaking
    "w200": lambda b: dict(clone_warmup_steps=b.steps // 4),
    "w200_rs": lambda b: dict(clone_warmup_steps=b.steps // 4, strategy="random_split:1+noise:10"),
    # round 5: the fastest lever that keeps the margin near 0 (w0_x0.25) with random_split's margin
    "w0_x0.25_rs": lambda b: dict(clone_warmup_steps=0, clone_lr_scale=0.25, strategy="random_split:1+noise:10"),
}

GRIDS: dict = {
    # name: (default scale, [(lever, corpus, seed), ...])
    "screen4x": ("4x", [(lever, "shakespeare", 0) for lever in list(LEVERS)[:15]]),
    "round2_4x": ("4x", [(lever, "shakespeare", 0) for lever in list(LEVERS)[15:20]]),
    "round3_4x": ("4x", [(lever, "shakespeare", 0) for lever in list(LEVERS)[20:24]]),
    "round4_4x": ("4x", [(lever, "shakespeare", 0) for lever in list(LEVERS)[24:26]]),
    "round5_4x": ("4x", [(lever, "shakespeare", 0) for lever in list(LEVERS)[26:27]]),
    "confirm_rs4x": ("4x", [("w0_x0.25_rs", "shakespeare", 1), ("w0_x0.25_rs", "embedded", 0)]),
    "base4x": ("4x", [("base", c, s) for c in CORPORA for s in (0, 1)]),
    "tiny": ("tiny", [("base", "embedded", 0), ("lr_x1", "embedded", 0), ("depth", "embedded", 0)]),
}


def grid_points(grid: str, scale: Optional[str] = None, sets: Optional[dict] = None) -> list:
    """[(label, corpus, Point)] for a named grid, at its scale or ``scale``, with ``sets`` applied to every point."""
    if grid not in GRIDS:
        raise HypercloneError(f"grid {grid!r} is unknown; use one of {', '.join(GRIDS)}")
    default_scale, items = GRIDS[grid]
    base = SCALES[scale or default_scale].with_(**(sets or {}))
    out = []
    for lever, corpus, seed in items:
        p = base.with_(**LEVERS[lever](base)).with_(seed=seed)
        out.append((lever, corpus, p))
    return out


# ---------------------------------------------------------------- growth grids (the demo's race)

GROWTH_SCALES = {  # sizes, budgets and the base recipe each lever changes
    # quick and demo: the default recipe with its growths at 20% and 50% (the grid was measured on
    # that base; the default's 30% and 70% is the lever "later")
    "quick": replace(race.PRESETS["default"], steps=200, eval_every=20, eval_batches=4, grow_at="0.2,0.5"),
    "demo": replace(race.PRESETS["default"], grow_at="0.2,0.5"),
    "4x": replace(race.PRESETS["default"], hidden=128, layers=4, ffn=344, seq_len=128, steps=800),
    "tiny": race.PRESETS["tiny"],
}

# A growth lever: (what it changes, a function of the scale's base Settings -> overrides).
GROWTH_LEVERS: dict = {
    "base": ("the grid's base (quick, demo: growths at 20%, 50%; 4x: the default)", lambda b: {}),
    "reset": ("moments reset: a fresh AdamW re-warmed to half the twin's LR (the recipe before growth carried "
              "the state)", lambda b: dict(moments="reset", rewarm_steps=b.warmup_steps,
                                           clone_lr_scale=0.5 * b.lr / b.seed_lr)),
    "asymmetric": ("asymmetric moments (one copy keeps them, the others restart)",
                   lambda b: dict(moments="asymmetric")),
    "random_split": ("random split + noise 10 dB", lambda b: dict(strategy="random_split:1+noise:10")),
    "noisy3": ("noise SNR 3 dB", lambda b: dict(strategy="noisy:3")),
    "later": ("growths at 30%, 70% (the default)", lambda b: dict(grow_at="0.3,0.7")),
    "early": ("growths at 5%, 15%", lambda b: dict(grow_at="0.05,0.15")),
    "one_growth": ("one growth at 30%: the seed is the model before the last growth",
                   lambda b: dict(grow_at="0.3", seed_width=1)),
    "rewarm": ("re-warm over 10% of the budget's steps after each growth",
               lambda b: dict(rewarm_steps=max(1, b.steps // 10))),
    "lr_x0.5": ("LR after the last growth x0.5", lambda b: dict(clone_lr_scale=0.5)),
    "three_stages": ("seed 4x narrower, growths at 5%, 15%, 30%",
                     lambda b: dict(grow_at="0.05,0.15,0.3", seed_width=4)),
    "symmetric": ("no symmetry breaker (strategy symmetric)", lambda b: dict(strategy="symmetric")),
    "lr_x2": ("LR after the last growth x2", lambda b: dict(clone_lr_scale=2.0)),
    "mid": ("growths at 10%, 30%", lambda b: dict(grow_at="0.1,0.3")),
    "shallow_seed": ("seed half as deep (its first growth adds the layers)",
                     lambda b: dict(seed_layers=max(1, b.layers // 2))),
    "seed_lr_2e-3": ("peak LR 2e-3 (the twin's) instead of 3e-3", lambda b: dict(seed_lr=2e-3)),
    "reset_hot": ("moments reset, no re-warm, the run's LR", lambda b: dict(moments="reset")),
    # round 2: the breakers that gave the smaller model its width (noisy3, random_split) with the timing
    # that left the least margin (later) and with each other
    "later_noisy3": ("growths at 30%, 70%, noise SNR 3 dB", lambda b: dict(grow_at="0.3,0.7", strategy="noisy:3")),
    "later_rs": ("growths at 30%, 70%, random split + noise 10 dB",
                 lambda b: dict(grow_at="0.3,0.7", strategy="random_split:1+noise:10")),
    "noisy3_asym": ("noise SNR 3 dB, asymmetric moments", lambda b: dict(strategy="noisy:3", moments="asymmetric")),
    "noisy3_x2": ("noise SNR 3 dB, LR after the last growth x2",
                  lambda b: dict(strategy="noisy:3", clone_lr_scale=2.0)),
    # at 4x (the default's growths are at 30%, 70%): the last growth moved toward the end of the budget,
    # where the margin can only shrink toward zero or turn positive
    "last_85": ("growths at 30%, 85%", lambda b: dict(grow_at="0.3,0.85")),
    "last_95": ("growths at 30%, 95%", lambda b: dict(grow_at="0.3,0.95")),
}

GROWTH_GRIDS: dict = {
    # name: (scale, [(lever, corpus, seed), ...])
    "growth_quick": ("quick", [(lever, "embedded", 0) for lever in GROWTH_LEVERS]),
    "growth_demo": ("demo", [(lever, "embedded", 0) for lever in ("base", "reset", "later", "random_split")]),
    "growth_tiny": ("tiny", [("base", "embedded", 0), ("reset", "embedded", 0), ("one_growth", "embedded", 0)]),
    # 4x: the moonshot's race (its base is the default recipe) and the levers that could move its margin
    "growth_4x": ("4x", [(lever, "shakespeare", 0) for lever in (
        "base", "lr_x0.5", "lr_x2", "last_85", "last_95", "one_growth", "noisy3", "random_split", "reset")]),
}

GROWTH_COLUMNS = ("lever", "what changes", "corpus", "seed", "growing run", "twin", "small kept training",
                  "charged", "uncharged", "margin at equal compute", "dip", "symmetry")


def growth_settings(grid: str, scale: Optional[str] = None, sets: Optional[dict] = None) -> list:
    """[(lever, corpus, Settings)] of a growth grid."""
    default_scale, items = GROWTH_GRIDS[grid]
    base = replace(GROWTH_SCALES[scale or default_scale], **{"threads": 1, "device": "cpu", **(sets or {})})
    return [(lever, corpus, replace(base, **GROWTH_LEVERS[lever][1](base), seed=seed)) for lever, corpus, seed in items]


def run_growth_point(st, corpus_name: str, cache: "race.Cache", log: Callable[[str], None] = print) -> dict:
    """One race of the demo (``compare``), its runs shared through ``cache``."""
    corpus = load_corpus(CORPORA.get(corpus_name, corpus_name))
    res = race.compare(st, corpus, log=lambda m: log("  " + m.strip()), cache=cache)
    return {k: v for k, v in res.items() if k != "curves"}


def growth_row(lever: str, corpus: str, r: dict) -> list:
    s = r["summary"]
    final = {k: r[k][-1][1] for k in ("clone", "random", "small_continue")}

    def x(v, part):
        return fmt_x(part) if v is not None or part.get("reached_at") is None else part.get("reason", "n/a")[:40]

    return [lever, GROWTH_LEVERS.get(lever, ("",))[0], corpus, str(r["settings"]["seed"]), f"{final['clone']:.4f}",
            f"{final['random']:.4f}", f"{final['small_continue']:.4f}", x(s["charged_speedup"], s["clone_vs_random"]),
            "before growing" if s["speedup"] is None and s["uncharged"].get("reached_at") is not None
            else x(s["speedup"], s["uncharged"]), f"{s['margin_equal_compute']:+.4f}", f"{s['forgetting']['dip']:.3f}",
            "n/a" if s["symmetry"] is None else f"{s['symmetry']:.3f}"]


def growth_markdown(rows: list) -> str:
    lines = ["| " + " | ".join(GROWTH_COLUMNS) + " |", "|" + "---|" * len(GROWTH_COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main_growth(args, sets: dict, points: list, out: Path, log) -> int:
    only = set(args.only.split(",")) if args.only else None
    corpora = set(args.corpus.split(",")) if args.corpus else None
    points = [pt for pt in points if (only is None or pt[0] in only) and (corpora is None or pt[1] in corpora)]
    cache = race.Cache(Path(args.cache or out / "cache") / "race")
    folder = out / (args.grid + (f"-{args.scale}" if args.scale else ""))
    folder.mkdir(parents=True, exist_ok=True)
    rows, docs = [], []
    for lever, corpus, st in points:
        label = f"{lever} {corpus} seed {st.seed}"
        try:
            cid = load_corpus(CORPORA.get(corpus, corpus)).sha256
        except CorpusError as e:
            print(f"recipe_sweep: error: {e}", file=sys.stderr)
            return 2
        pkey = digest(dict(v=1, run="growth_point", corpus=cid, settings=asdict(st)))
        doc = cache.get("points", pkey)
        if args.list:
            print(f"{label}: {GROWTH_LEVERS[lever][0]} -> " + ("done" if doc else "to run"))
            continue
        if doc is None:
            log(f"{label}: {GROWTH_LEVERS[lever][0]}")
            t0 = time.perf_counter()
            try:
                doc = run_growth_point(st, corpus, cache, log)
            except (HypercloneError, CorpusError) as e:
                log(f"{label}: error: {e}")
                continue
            doc.update(lever=lever, corpus_name=corpus, wall_seconds=time.perf_counter() - t0, command=" ".join(
                ["python benchmarks/recipe_sweep.py", "--grid", args.grid]
                + (["--scale", args.scale] if args.scale else []) + [f"--set {k}={v}" for k, v in sets.items()]
                + ["--only", lever, "--corpus", corpus]))
            doc = finite(doc)
            cache.put("points", pkey, doc)
            log(f"{label}: done in {doc['wall_seconds']:.0f} s | " + " | ".join(growth_row(lever, corpus, doc)))
        write_json(folder / f"{lever}__{corpus}__seed{st.seed}.json", doc)
        rows.append(growth_row(lever, corpus, doc))
        docs.append(doc)
    if args.list:
        return 0
    text = growth_markdown(rows)
    (folder / "table.md").write_text(text + "\n")
    write_json(folder / "results.json", dict(grid=args.grid, scale=args.scale or GROWTH_GRIDS[args.grid][0],
                                             points=docs))
    print()
    print(text)
    return 0


# ---------------------------------------------------------------- CLI


def parse_sets(items, growth: bool = False) -> dict:
    """``--set key=value``: a Point field (a demo Settings field on a growth grid), typed
    as the field's default."""
    types = {f.name: type(f.default) for f in fields(race.Settings if growth else Point)}
    out = {}
    for item in items or ():
        k, eq, v = item.partition("=")
        if not eq or k not in types:
            raise HypercloneError(f"--set {item!r}: use FIELD=VALUE with FIELD one of {', '.join(types)}")
        out[k] = (v.lower() in ("1", "true", "yes")) if types[k] is bool else types[k](v)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", required=True, help=f"one of {', '.join([*GROWTH_GRIDS, *GRIDS])}")
    p.add_argument("--scale", choices=sorted(set(SCALES) | set(GROWTH_SCALES)),
                   help="run the grid at another scale's sizes and budgets")
    p.add_argument("--out", default="recipe-sweep-out", help="folder for results (per point JSON, table, log)")
    p.add_argument("--cache", help="cache folder (default OUT/cache); share it between grids")
    p.add_argument("--only", help="comma-separated levers of the grid to run")
    p.add_argument("--corpus", help="comma-separated corpora of the grid to run (embedded, shakespeare)")
    p.add_argument("--shakespeare", default=CORPORA["shakespeare"], help="path of tinyshakespeare.txt")
    p.add_argument("--device", help="cpu or cuda (default: the point's, cpu)")
    p.add_argument("--threads", type=int, help="torch threads (0: leave torch's default); default 1")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a setting on every point")
    p.add_argument("--list", action="store_true", help="print the points and what is cached; train nothing")
    p.add_argument("--curves", action="store_true", help="also print every point's per-step val losses")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    CORPORA["shakespeare"] = args.shakespeare
    growth = args.grid in GROWTH_GRIDS
    try:
        sets = parse_sets(args.set, growth)
        for k in ("device", "threads"):
            if getattr(args, k) is not None:
                sets[k] = getattr(args, k)
        if growth and args.scale is not None and args.scale not in GROWTH_SCALES:
            raise HypercloneError(f"--scale {args.scale}: a growth grid runs at {', '.join(GROWTH_SCALES)}")
        points = growth_settings(args.grid, args.scale, sets) if growth else grid_points(args.grid, args.scale, sets)
        if growth:
            from hyperclone_core.demo.cli import check_settings

            for _, _, st in points:
                check_settings(st)
    except HypercloneError as e:
        print(f"recipe_sweep: error: {e}", file=sys.stderr)
        return 2
    only = set(args.only.split(",")) if args.only else None
    corpora = set(args.corpus.split(",")) if args.corpus else None
    points = [pt for pt in points if (only is None or pt[0] in only) and (corpora is None or pt[1] in corpora)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logfile = open(out / "sweep.log", "a")

    def log(msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    if growth:
        return main_growth(args, sets, points, out, log)
    cache = Cache(args.cache or out / "cache")
    folder = out / (args.grid + (f"-{args.scale}" if args.scale else ""))
    folder.mkdir(parents=True, exist_ok=True)

    base = SCALES[args.scale or GRIDS[args.grid][0]]
    rows, docs = [], []
    for lever, corpus, p in points:
        label = f"{lever} {corpus} seed {p.seed}"
        try:
            cid = corpus_tokens(corpus)[0].sha256
        except CorpusError as e:
            print(f"recipe_sweep: error: {e}", file=sys.stderr)
            return 2
        pkey = point_key(p, cid)
        doc = cache.get("points", pkey)
        if args.list:
            print(f"{label}: {p.diff(base) or 'base'} -> " + ("done" if doc else "to run"))
            continue
        if doc is None:
            log(f"{label}: {p.diff(base) or 'the base recipe'}")
            t0 = time.perf_counter()
            try:
                doc = run_point(p, corpus, cache, log)
            except (HypercloneError, CorpusError) as e:
                log(f"{label}: error: {e}")
                continue
            doc.update(lever=lever, corpus_name=corpus, command=" ".join(
                ["python benchmarks/recipe_sweep.py", "--grid", args.grid]
                + (["--scale", args.scale] if args.scale else []) + [f"--set {k}={v}" for k, v in sets.items()]
                + ["--only", lever, "--corpus", corpus]), wall_seconds=time.perf_counter() - t0)
            doc = finite(doc)
            cache.put("points", pkey, doc)
            log(f"{label}: done in {doc['wall_seconds']:.0f} s | " + " | ".join(row(lever, corpus, doc)))
        write_json(folder / f"{lever}__{corpus}__seed{p.seed}.json", doc)
        rows.append(row(lever, corpus, doc))
        docs.append(doc)
        if args.curves:
            print(f"\n{label}\n{curves_table(doc)}\n")
    if args.list:
        return 0
    text = markdown(rows)
    (folder / "table.md").write_text(text + "\n")
    write_json(folder / "results.json", dict(grid=args.grid, scale=args.scale or GRIDS[args.grid][0], points=docs))
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
