"""The race: a run that starts small and grows, against a random twin and the small model kept training.

Three runs, on one compute axis (``compute.py``: training FLOPs, every step priced by
the model that took it), the same validation batches at every evaluation:

* ``clone``: the growing run.  A seed model trains at the peak LR without annealing,
  grows (``train.grow.grow_engine``: the parameters through the plan, AdamW's moments,
  step and per-tensor maps carried, so a symmetric clone would continue the seed's
  training exactly; the strategy's symmetry breakers then let the copies part) and
  keeps training; the last stage, after the last growth to the final size, decays
  the LR.  The seed stages are part of the run and of its compute;
* ``random``: a random-init model of the final size (the paper's baseline), trained
  for ``steps`` final-model steps: the budget every run gets;
* ``small_continue``: the growing run without its last growth: the model before it
  kept training (its own decay) until it has spent the same compute -- the control
  that says whether growing was worth it.

``--hidden/--layers/--heads/--ffn`` name the model before the last growth; the seed
(``seed_width`` times narrower, ``seed_layers`` deep) and the compute fractions where
the run grows (``grow_at``) are the recipe's.  Runs on any backend that trains; the
text is the embedded corpus or any file, tokens are UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np

from ..run.protocol import load_backend

from .corpus import Corpus
from ..errors import ConfigError, HypercloneError
from ..model.families import family_for_config
from ..algebra.options import plan_growth
from ..algebra.strategy import DEFAULT as DEFAULT_STRATEGY
from ..console.progress import Progress, say
from ..model.structure import init_weights
from ..train import TrainConfig, optimizer_for, train
from ..train.grow import MOMENTS, grow_engine
from . import compute, report
from .cache import Cache, pack_state, unpack_state

PRESERVATION_TOLERANCE = 1e-4  # float32; the conformance suite's bound


@dataclass(frozen=True)
class Settings:
    """Everything a race depends on; written into results.json."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 172
    width: int = 2
    strategy: str = DEFAULT_STRATEGY
    seq_len: int = 64
    batch_size: int = 16
    grow_at: str = "0.3,0.7"           # compute fractions of the budget where the run grows; the last: to the final size
    seed_width: int = 2                # the seed is this many times narrower than the model before the last growth
    seed_layers: int = 0               # the seed's depth (0: --layers); the first growth adds the rest
    moments: str = "carry"             # AdamW's moments across a growth: carry, asymmetric, reset (a fresh AdamW)
    rewarm_steps: int = 0              # after a growth the LR ramps up again over this many steps
    seed_lr: float = 3e-3              # the growing run's peak LR (the seed's; growths carry it per tensor)
    steps: int = 600                   # the budget: steps of the final-size model (the random twin's)
    lr: float = 2e-3                   # the random twin's peak LR
    clone_lr_scale: float = 1.0        # after the last growth the LR is seed_lr times this
    warmup_steps: int = 60
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 30               # in final-model steps (a cheaper model evaluates after more of its steps)
    eval_batches: int = 8
    seed: int = 0
    device: str = "auto"               # auto: a GPU when there is one
    dtype: str = "float32"             # TrainConfig.dtype: bfloat16 compute for GPUs
    threads: int = 0                   # intra-op CPU threads; 0 = automatic (train/threads.py: measured)

    def small_config(self, vocab: int = 256) -> dict:
        """The model before the last growth."""
        return llama_config(self.hidden, self.layers, self.heads, self.ffn, vocab, self.seq_len)


PRESETS = {
    "default": Settings(),
    # one growth (the seed is the model before it): the fewest small steps, so it fits the old quick's time
    "quick": Settings(steps=200, grow_at="0.5", seed_width=1, eval_every=20, eval_batches=4),
    # a seconds-long smoke run of every code path (benchmarks/speedup.py --preset tiny)
    "tiny": Settings(hidden=32, heads=2, ffn=64, layers=1, seq_len=32, batch_size=8, steps=18, eval_every=6,
                     eval_batches=2),
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
                 clone_lr_scale: float = 1.0, warmup: Optional[int] = None, min_lr_ratio: Optional[float] = None,
                 eval_every: Optional[int] = None) -> TrainConfig:
    """A run's TrainConfig: warmup, then cosine to ``min_lr_ratio`` of the peak (1.0: the
    peak held, a stage that ends un-annealed)."""
    kw = dict(steps=steps, batch_size=st.batch_size, seq_len=st.seq_len, lr=lr,
              min_lr_ratio=st.min_lr_ratio if min_lr_ratio is None else min_lr_ratio,
              warmup_steps=st.warmup_steps if warmup is None else warmup, weight_decay=st.weight_decay,
              grad_clip=st.grad_clip, eval_every=st.eval_every if eval_every is None else eval_every,
              eval_batches=st.eval_batches, seed=seed, device=st.device, dtype=st.dtype, threads=st.threads,
              clone_lr_scale=clone_lr_scale)
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
    try:
        res = train(eng, config, train_tokens, val_tokens, plan=p, callback=_ticker(bar))
        return res, eng.params()
    finally:
        eng.close()


def _ticker(bar):
    def tick(rec):
        if bar is not None:
            bar.update(1, loss=rec.get("train_loss"), val=rec.get("val_loss"))
    return tick


# ---------------------------------------------------------------- the growth schedule


def growth_fractions(st: Settings) -> list:
    """``grow_at`` as increasing fractions in (0, 1)."""
    try:
        fr = [float(x) for x in str(st.grow_at).split(",") if x.strip()]
    except ValueError:
        fr = []
    if not fr or any(not 0.0 < f < 1.0 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
        raise ConfigError(f"grow_at {st.grow_at!r}: give increasing compute fractions in (0, 1), one per growth, "
                          "e.g. 0.1,0.3 (the seed grows at 10% of the budget, the last growth at 30%)")
    return fr


def growths(st: Settings, vocab: int) -> tuple:
    """(the seed's HF config, [growth options, ...]): the growths before the last split
    ``seed_width`` evenly (the first also adds the layers the seed lacks); the last is
    ``width``."""
    fr = growth_fractions(st)
    before = len(fr) - 1
    layers = st.seed_layers or st.layers
    if before == 0 and (st.seed_width != 1 or layers != st.layers):
        raise ConfigError(f"grow_at {st.grow_at!r} has one growth (the last), so the seed is the model before it: "
                          "seed_width must be 1 and seed_layers 0; give two fractions for a smaller seed")
    if not 1 <= layers <= st.layers:
        raise ConfigError(f"seed_layers {st.seed_layers}: must be in [1, --layers {st.layers}]")
    if before and st.seed_width == 1 and layers == st.layers:
        raise ConfigError(f"grow_at {st.grow_at!r} has {before} growth(s) before the last, and seed_width 1 with "
                          "seed_layers 0 leaves them nothing to grow; give seed_width > 1 or seed_layers, or one "
                          "fraction")
    each = round(st.seed_width ** (1.0 / before)) if before else 1
    if each ** before != st.seed_width or any(v % st.seed_width for v in (st.hidden, st.heads, st.ffn)):
        raise ConfigError(f"seed_width {st.seed_width} over {before} growth(s): hidden {st.hidden}, heads "
                          f"{st.heads} and ffn {st.ffn} must divide by it, in equal integer steps")
    sw = st.seed_width
    seed_cfg = llama_config(st.hidden // sw, layers, st.heads // sw, st.ffn // sw, vocab, st.seq_len)
    common = dict(strategy=st.strategy, moments=st.moments)
    out = []
    for k in range(before):
        g = dict(width=float(each), **common)
        if k == 0 and layers < st.layers:
            g["layers"] = f"+{st.layers - layers}"
        out.append(g)
    out.append(dict(width=float(st.width), **common))
    return seed_cfg, out


def configs_along(seed_cfg: dict, options: list, seed: int) -> list:
    """The HF config of every stage's model, seed first."""
    from ..train.grow import plan_for

    cfgs = [seed_cfg]
    for g in options:
        cfgs.append(dict(plan_for(cfgs[-1], g, seed).config))
    return cfgs


def stage_tokens(tokens: np.ndarray, k: int, n: int) -> np.ndarray:
    """Stage ``k``'s training text: the text turned by k/n of its length, so each stage
    (whose step counter starts again) reads other windows, while every run keeps the
    same validation batches."""
    return tokens if k == 0 else np.roll(tokens, -(k * len(tokens)) // n)


LAST_STAGE_ONLY = ("width", "clone_lr_scale", "min_lr_ratio", "lr")
"""Settings the growing run's stages before its last growth do not depend on."""


# ---------------------------------------------------------------- the race


def compare(st: Settings, corpus: Optional[Corpus], backend: str = "torch", log: Callable[[str], None] = say,
            train_tokens: Optional[np.ndarray] = None, val_tokens: Optional[np.ndarray] = None,
            vocab: Optional[int] = None, progress: bool = False, cache: Optional[Cache] = None) -> dict:
    """Train the growing run, the small model kept training and the random twin on one
    compute budget; return the curves on the compute axis, the stages and the summary.
    ``progress``: one bar over the whole race on stderr; ``cache``: reuse what another
    race with the same inputs trained (sweeps)."""
    bk = load_backend(backend)
    if "train" not in getattr(bk, "capabilities", ()):
        raise ConfigError(f"backend {backend!r} does not train (capabilities: {', '.join(sorted(bk.capabilities))}); "
                          "use --backend torch, jax or mlx")
    if st.moments not in MOMENTS:
        raise ConfigError(f"moments {st.moments!r}: use one of {', '.join(MOMENTS)}")
    train_tokens = np.frombuffer(corpus.train, dtype=np.uint8) if train_tokens is None else train_tokens
    val_tokens = np.frombuffer(corpus.val, dtype=np.uint8) if val_tokens is None else val_tokens
    if vocab is None:
        vocab = 256 if train_tokens.dtype == np.uint8 else int(max(train_tokens.max(), val_tokens.max())) + 1
    t0 = time.perf_counter()
    data_id = hashlib.sha256(np.ascontiguousarray(train_tokens).tobytes() + b"|"
                             + np.ascontiguousarray(val_tokens).tobytes()).hexdigest()[:20]

    # the schedule on the compute axis (final-model steps)
    fr = growth_fractions(st)
    seed_cfg, options = growths(st, vocab)
    cfgs = configs_along(seed_cfg, options, st.seed)
    hf_twin = dict(plan_growth(st.small_config(vocab), width=st.width, strategy=st.strategy, seed=st.seed,
                               where="the race's model before its last growth").config)
    n_final = compute.matmul_params(hf_twin)
    costs = [compute.matmul_params(c) / n_final for c in cfgs]
    budget = float(st.steps)
    bounds = [0.0, *fr, 1.0]
    steps, starts, spent = [], [], 0.0
    for k, cost in enumerate(costs):
        starts.append(spent)
        n = max(1, round(((bounds[k + 1] * budget) - spent) / cost))
        steps.append(n)
        spent += n * cost
    last = len(costs) - 1
    small_steps = max(1, round((budget - starts[last]) / costs[last - 1]))
    evals = [max(1, round(st.eval_every / c)) for c in costs]
    seed_run = st.seed + 3
    tok = [stage_tokens(train_tokens, k, len(costs)) for k in range(len(costs))]
    params_of = [sum(int(np.prod(s)) for s in _shapes(c).values()) for c in cfgs]

    bar = Progress(sum(steps) + small_steps + st.steps, "demo", "step", enabled=progress)
    log("growing run: " + " -> ".join(f"hidden {c['hidden_size']} x {c['num_hidden_layers']} layers "
                                      f"({p:,} parameters, {n} steps)" for c, p, n in zip(cfgs, params_of, steps))
        + f"; grows at {', '.join(f'{f:g}' for f in fr)} of the budget ({st.steps} final-model steps)")

    def stage_config(k: int) -> TrainConfig:
        if k == 0:
            return train_config(st, steps[0], st.seed_lr, seed_run, min_lr_ratio=1.0, eval_every=evals[0])
        if k < last:
            return train_config(st, steps[k], st.seed_lr, seed_run, warmup=st.rewarm_steps, min_lr_ratio=1.0,
                                eval_every=evals[k])
        return train_config(st, steps[k], st.seed_lr, seed_run, warmup=st.rewarm_steps, eval_every=evals[k],
                            clone_lr_scale=st.clone_lr_scale)

    used = {}  # the AdamW the newest grown engine runs with

    def build(hf, params, config, opt):
        if st.moments == "reset":  # a fresh AdamW, no per-tensor maps: how a finished checkpoint was always grown
            opt = optimizer_for(config, {n: np.shape(a) for n, a in params.items()})
        used["opt"] = opt
        return bk.engine(hf, params, config, opt)

    rows = max(1, min(4, len(val_tokens) // st.seq_len))
    probe = np.asarray(val_tokens[: rows * st.seq_len], dtype=np.int64).reshape(rows, -1)
    stages, curves_grow, seconds, errs = [], [], {}, []

    def record(k, res, hf):
        c = curve(res)
        stages.append(dict(stage=k, hidden=hf["hidden_size"], layers=hf["num_hidden_layers"], parameters=params_of[k],
                           matmul_parameters=compute.matmul_params(hf), cost=costs[k], steps=steps[k],
                           start=starts[k], end=starts[k] + steps[k] * costs[k], eval_every=evals[k],
                           seconds=seconds_of(res), curve=c))
        if last_symmetry(res) is not None:
            stages[-1]["symmetry"] = last_symmetry(res)
        if curves_grow and c and curves_grow[-1][0] >= starts[k] - 1e-9:
            curves_grow.pop()  # the stage's first evaluation replaces the previous stage's last (same function)
        curves_grow.extend(compute.on_axis(c, starts[k], costs[k]))

    # ---- the growing run up to its last growth (cached for sweeps)
    prefix_key = Cache.key(v=1, run="prefix", backend=backend, data=data_id,
                           settings={k: v for k, v in asdict(st).items() if k not in LAST_STAGE_ONLY})
    doc = cache.get("prefix", prefix_key) if cache is not None else None
    cfg_pre = stage_config(last - 1) if last > 0 else None
    if doc is not None:
        log("growing run up to its last growth: from the cache")
        stages.extend(doc["stages"])
        curves_grow.extend(doc["curve"])
        errs.extend(doc["errors"])
        branch, opt = unpack_state(cache.arrays("prefix", prefix_key), doc, cfg_pre)
        bar.update(sum(steps[:last]))
    else:
        k, hf = 0, cfgs[0]
        tc = stage_config(0)
        opt = optimizer_for(tc, _shapes(hf))
        eng = bk.engine(hf, random_weights(hf, st.seed), tc, opt)
        plan = None
        try:
            while True:
                bar.set_label(f"demo: grow stage {k}")
                log(f"  stage {k}: hidden {hf['hidden_size']}, {steps[k]} steps at peak lr {st.seed_lr:g}")
                res = train(eng, tc, tok[k], val_tokens, plan=plan, callback=_ticker(bar), optimizer=opt)
                record(k, res, hf)
                if k + 1 == last:
                    break
                before = eng.params()
                g = grow_engine(eng, build, options[k], stage_config(k + 1), opt, seed=st.seed + k,
                                where="the race's seed")
                eng, plan, hf, opt, k = g.engine, g.plan, g.hf_config, used["opt"], k + 1
                errs.append(preservation_error(bk, cfgs[k - 1], before, plan, eng.params(), probe))
                tc = stage_config(k)
            branch = eng.export_state()
        finally:
            eng.close()
        if cache is not None:
            arrays, meta = pack_state(branch, opt)
            cache.put("prefix", prefix_key, dict(meta, stages=stages, curve=curves_grow, errors=errs), arrays)
    prefix_curve = list(curves_grow)
    hf_pre = cfgs[last - 1]

    # ---- the last growth and the last stage
    tc = stage_config(last)
    eng = bk.engine(hf_pre, branch.params, tc, opt)
    eng.import_state(branch)
    before = eng.params()
    g = grow_engine(eng, build, options[-1], tc, opt, seed=st.seed + last,
                    where="the race's model before its last growth")
    errs.append(preservation_error(bk, hf_pre, before, g.plan, g.engine.params(), probe))
    err = max(errs) if errs else 0.0
    if not err <= PRESERVATION_TOLERANCE:
        g.engine.close()
        raise HypercloneError(
            f"a growth changed the model's logits by {err:.2e} (relative), above {PRESERVATION_TOLERANCE:g}: "
            f"strategy {st.strategy!r} did not preserve the function; run the conformance suite for this backend "
            f"(pytest --pyargs hyperclone_conformance --hyperclone-backend {backend})")
    log(f"grown {len(options)} time(s) to hidden {g.hf_config['hidden_size']} ({params_of[last]:,} parameters), "
        f"strategy {st.strategy}, moments {st.moments}; verified preservation error {err:.2e}")
    bar.set_label("demo: grow last stage")
    log(f"  stage {last}: {steps[last]} steps, peak lr {st.seed_lr * st.clone_lr_scale:g} (per-tensor maps carried)")
    try:
        res = train(g.engine, tc, tok[last], val_tokens, plan=g.plan, callback=_ticker(bar), optimizer=used["opt"])
    finally:
        g.engine.close()
    record(last, res, g.hf_config)
    symmetry = last_symmetry(res)
    seconds["clone"] = sum(s["seconds"] for s in stages)

    # ---- the small model kept training: the same run without its last growth
    small_tc = train_config(st, small_steps, st.seed_lr, seed_run, warmup=0, eval_every=evals[last - 1])
    small_key = Cache.key(v=1, run="small", prefix=prefix_key, min_lr_ratio=st.min_lr_ratio)
    doc = cache.get("small", small_key) if cache is not None else None
    if doc is None:
        bar.set_label("demo: train small_continue")
        log(f"training small_continue: the model before the last growth, {small_steps} more steps")
        eng = bk.engine(hf_pre, branch.params, small_tc, opt)
        eng.import_state(branch)
        try:
            res = train(eng, small_tc, tok[last], val_tokens, callback=_ticker(bar), optimizer=opt)
        finally:
            eng.close()
        doc = dict(curve=curve(res), seconds=seconds_of(res))
        if cache is not None:
            cache.put("small", small_key, doc)
    else:
        bar.update(small_steps)
    small_curve = prefix_curve[:-1] + compute.on_axis(doc["curve"], starts[last], costs[last - 1])
    seconds["small_continue"] = doc["seconds"]

    # ---- the random twin
    twin_tc = train_config(st, st.steps, st.lr, seed_run)
    twin_key = Cache.key(v=1, run="random", backend=backend, data=data_id, hf=hf_twin, config=twin_tc.to_dict(),
                         init=st.seed + 2)
    doc = cache.get("random", twin_key) if cache is not None else None
    if doc is None:
        bar.set_label("demo: train random")
        log(f"training random: {st.steps} steps, peak lr {st.lr:g}")
        res, _ = run(bk, hf_twin, random_weights(hf_twin, st.seed + 2), twin_tc, train_tokens, val_tokens, bar=bar)
        doc = dict(curve=curve(res), seconds=seconds_of(res))
        if cache is not None:
            cache.put("random", twin_key, doc)
    else:
        bar.update(st.steps)
    seconds["random"] = doc["seconds"]
    bar.close()

    curves = dict(clone=curves_grow, random=[[float(s), v] for s, v in doc["curve"]], small_continue=small_curve)
    for name in report.RUNS:
        log(f"  {name}: final val loss {curves[name][-1][1]:.4f}")
    summary = report.summarize_race(curves, growth_at=starts[last], symmetry=symmetry)
    summary.update(preservation_error=err, run_seconds=seconds, seconds=time.perf_counter() - t0,
                   compute=dict(unit="final-model steps", flops_per_unit=compute.step_flops(hf_twin, st.batch_size
                                                                                              * st.seq_len),
                                rule="6 x multiplied parameters x tokens (embedding lookup and norms left out)",
                                budget=budget, growths=starts[1:], small_steps=small_steps))
    return dict(clone=curves["clone"], random=curves["random"], small_continue=curves["small_continue"],
                stages=stages, curves=curves, summary=summary, settings=asdict(st), backend=backend,
                corpus=corpus.to_dict() if corpus is not None else None)


def _shapes(hf: dict) -> dict:
    from ..model.structure import slots

    fam = family_for_config(hf)
    return {n: tuple(s.shape) for n, s in slots(fam, fam.read(hf)).items()}


__all__ = ["Cache", "PRESERVATION_TOLERANCE", "PRESETS", "Settings", "compare", "growths", "llama_config",
           "train_config"]
