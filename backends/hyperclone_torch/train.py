"""The torch trainer: continue training a (cloned) decoder, on one CPU or under torchrun.

One readable loop (nanoGPT's shape): AdamW (fused on CUDA), linear warmup + cosine
to a floor, gradient accumulation, clipping, bf16 autocast, evaluation on fixed
validation batches, atomic checkpoints in the Hugging Face layout that resume
bit for bit, metrics as JSONL, and the *symmetry monitor*: how far the copies a
HyperCloning plan made have diverged (the paper's Fig. 5).  Symmetric cloning
without noise stays at 1.0 forever, which is why the default strategy adds noise.

Accepts any ``nn.Module`` whose forward maps tokens [B, T] to logits [B, T, V]
(``hyperclone_torch.model.Decoder``) or to an output with ``.logits``
(``transformers`` models), exposing ``.config`` as a dict or a ``PretrainedConfig``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyperclone_core import data as hdata
from hyperclone_core.errors import CheckpointError, ConfigError, HypercloneError
from hyperclone_core.growth import copy_ids
from hyperclone_core.io import AtomicDir, SafetensorsFile, ShardedWriter, write_json

from . import distributed

TRAINER_DIR = "trainer"
STATE_FILE = "state.json"
OPT_FILE = "optimizer.safetensors"
FORMAT = "hyperclone.trainer/1"
CLONE_LR_RULES = ("", "none", "inverse_width")


class TrainError(HypercloneError):
    """Training cannot start or cannot go on; says what to change."""


class NonFiniteLoss(TrainError):
    """The loss became NaN/Inf; carries the step, the last good checkpoint and the
    result so far (``.result``)."""

    def __init__(self, msg: str, step: int, checkpoint: Optional[str], result: "TrainResult"):
        super().__init__(msg)
        self.step, self.checkpoint, self.result = step, checkpoint, result


@dataclass
class TrainConfig:
    """Everything a run depends on.  ``batch_size`` is the *global* number of
    sequences per optimizer step (split over ranks and accumulation micro-steps),
    so changing ``parallel``/``grad_accum`` does not change what is learned."""

    steps: int = 100
    batch_size: int = 8
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 4
    save_every: int = 0
    out_dir: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    compile: bool = False
    clone_lr: Union[str, Mapping[str, float]] = ""
    parallel: str = "none"
    resume: bool = False
    log_jsonl: Optional[str] = None
    progress: bool = False

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        problems = []
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        for name in ("warmup_steps", "eval_every", "save_every"):
            if int(getattr(self, name)) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if self.dtype not in ("float32", "bfloat16"):
            problems.append(f"dtype {self.dtype!r}: use float32 or bfloat16 (autocast)")
        if self.parallel not in distributed.MODES:
            problems.append(f"parallel {self.parallel!r}: use one of {', '.join(distributed.MODES)}")
        if isinstance(self.clone_lr, str) and self.clone_lr not in CLONE_LR_RULES:
            problems.append(f"clone_lr {self.clone_lr!r}: use 'inverse_width', '' (off) or a name -> multiplier map")
        if (self.resume or self.save_every) and not self.out_dir:
            problems.append("resume and save_every need out_dir (--out)")
        if problems:
            raise ConfigError("TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        if not isinstance(self.clone_lr, str):
            d["clone_lr"] = dict(self.clone_lr)
        return d


@dataclass
class TrainResult:
    history: list = field(default_factory=list)
    steps_done: int = 0
    checkpoint: Optional[str] = None
    stopped: str = ""

    @property
    def train_losses(self) -> list:
        return [h["train_loss"] for h in self.history if h.get("train_loss") is not None]

    @property
    def evals(self) -> list:
        return [h for h in self.history if h.get("val_loss") is not None]


# ---------------------------------------------------------------- the model, neutrally


def model_config(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise TrainError(f"{type(model).__name__} has no .config; train a hyperclone_torch Decoder or a "
                         "transformers model")
    if isinstance(cfg, Mapping):
        return dict(cfg)
    return cfg.to_dict()


def logits_of(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def lm_loss(engine: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of a (B, T+1) batch, in float32."""
    logits = logits_of(engine(batch[:, :-1]))
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def _decoder_of(cfg: Mapping[str, Any]):
    from hyperclone_core.families import family_for_config

    try:
        family = family_for_config(cfg)
        return family, family.read(cfg)
    except HypercloneError:
        return None, None


def checkpoint_names(cfg: Mapping[str, Any], state: Mapping[str, Any]) -> list:
    """The tensors an HF checkpoint of this model holds, in state-dict order (tied LM
    heads and non-persistent buffers left out)."""
    from hyperclone_core.spec import tensor_names

    family, dec = _decoder_of(cfg)
    if family is None:
        return list(state)
    expected = {n for n, (role, _, _) in tensor_names(family, dec).items()
                if not (role.kind == "lm_head" and dec.tie_embeddings)}
    missing = sorted(expected - set(state))
    if missing:
        raise TrainError(f"the model lacks tensors its {family.name} config implies: {', '.join(missing[:6])}; "
                         "is .config the model's own config?")
    return [n for n in state if n in expected]


def fingerprint(cfg: Mapping[str, Any], shapes: Mapping[str, tuple], names: Sequence[str]) -> dict:
    return {"model_type": cfg.get("model_type"), "shapes": {n: list(shapes[n]) for n in names}}


# ---------------------------------------------------------------- schedule


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine to ``lr * min_lr_ratio`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps - 1, 1)
    t = min((step - cfg.warmup_steps) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * t))


# ---------------------------------------------------------------- clone-aware pieces


def _role_by_kind(plan) -> dict:
    from hyperclone_core.families import FAMILIES

    family = FAMILIES[plan.family]
    return {r.kind: r for r in family.roles_for(plan.decoder)}


def clone_lr_multipliers(plan, rule: str = "inverse_width") -> dict:
    """Per-tensor LR multipliers from a plan: ``inverse_width`` gives 1/r to a weight
    whose input axis grew r-fold (mu-P style: its cloned entries hold 1/r of the
    source's values, so a step of the source's size would be r times too large)."""
    if rule in ("", "none"):
        return {}
    if rule != "inverse_width":
        raise ConfigError(f"clone_lr rule {rule!r} is unknown; use inverse_width")
    roles = _role_by_kind(plan)
    out = {}
    for t in plan.tensors:
        role = roles.get(t.kind)
        if role is None:
            continue
        mult = 1.0
        for op in t.ops:
            if type(op).__name__ == "Take" and role.axes[op.axis].direction == "in":
                mult *= t.source_shape[op.axis] / t.shape[op.axis]
        if mult != 1.0:
            out[t.name] = mult
    return out


@dataclass(frozen=True)
class CopyPairs:
    """Along ``axis`` of tensor ``name``, slice ``b[k]`` is a copy of slice ``a[k]``."""

    name: str
    kind: str
    axis: int
    a: np.ndarray
    b: np.ndarray


def symmetry_pairs(plan) -> list:
    """For every grown axis of every tensor of the plan: which destination slices
    are copies of the same source slice (from its ``take`` maps)."""
    pairs = []
    for t in plan.tensors:
        for op in t.ops:
            kind = type(op).__name__
            if kind == "Reshape":
                break  # later axes no longer index the destination's
            if kind != "Take":
                continue
            src = np.asarray(plan.arrays[op.map])
            cid = copy_ids(src)
            if cid.max() < 1:
                continue
            first = np.full(int(src.max()) + 1, -1)
            first[src[cid == 0]] = np.flatnonzero(cid == 0)
            b = np.flatnonzero(cid > 0)
            pairs.append(CopyPairs(t.name, t.kind, op.axis, first[src[b]], b))
    return pairs


def symmetry(params: Mapping[str, torch.Tensor], pairs: Sequence[CopyPairs]) -> Optional[dict]:
    """Mean cosine similarity between copies: per tensor kind and overall.  Bitwise
    identical copies count as exactly 1.0 (symmetric cloning without noise)."""
    by_kind: dict = {}
    for p in pairs:
        if p.name not in params:
            continue
        w = distributed.full_tensor(params[p.name]).detach()
        a = w.index_select(p.axis, torch.as_tensor(p.a, device=w.device)).double().reshape(-1)
        b = w.index_select(p.axis, torch.as_tensor(p.b, device=w.device)).double().reshape(-1)
        if torch.equal(a, b):
            cos = 1.0
        else:
            cos = float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))
        by_kind.setdefault(p.kind, []).append(cos)
    if not by_kind:
        return None
    kinds = {k: float(np.mean(v)) for k, v in sorted(by_kind.items())}
    overall = float(np.mean([c for v in by_kind.values() for c in v]))
    return {"overall": overall, "by_kind": kinds}


# ---------------------------------------------------------------- checkpoints


def _checkpoint_dirs(out_dir) -> list:
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        if p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit() \
                and (p / TRAINER_DIR / STATE_FILE).is_file():
            found.append((int(p.name[11:]), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir) -> Optional[Path]:
    dirs = _checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


_CODES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.uint8: "U8", torch.int32: "I32", torch.int64: "I64"}


def _np(t: torch.Tensor) -> tuple:
    """(numpy array, safetensors dtype code) keeping the bits: bf16 widens exactly."""
    t = t.detach().cpu()
    if t.dtype not in _CODES:
        raise TrainError(f"cannot store a {t.dtype} tensor in a checkpoint")
    return (t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()), _CODES[t.dtype]


def _write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """One safetensors file at ``path`` (through the core's streaming writer)."""
    tmp = path.parent / f".{path.name}.parts"
    tmp.mkdir()
    arrays = {k: _np(v) for k, v in tensors.items()}
    w = ShardedWriter(tmp, [(k, a.shape, d) for k, (a, d) in arrays.items()], max_shard_bytes=1 << 62)
    for k, (a, _) in arrays.items():
        w.write(k, a)
    w.close()
    os.replace(tmp / "model.safetensors", path)
    tmp.rmdir()


def _read_tensors(path: Path) -> dict:
    f = SafetensorsFile(path)
    out = {}
    for k in f.keys():
        raw = f.raw(k)
        t = torch.from_numpy(np.ascontiguousarray(raw))
        if f.header[k]["dtype"] == "BF16":
            t = t.view(torch.bfloat16)
        out[k] = t
    return out


def save_training_checkpoint(folder: Path, model: nn.Module, optimizer, par, state: dict) -> None:
    """HF layout (config.json + model.safetensors) plus ``trainer/``: optimizer
    moments and RNG as safetensors, step/history/config as JSON.  Atomic."""
    cfg = model_config(model)
    shapes = distributed.global_shapes(model)
    names = checkpoint_names(cfg, shapes)
    full = distributed.full_model_state(model, par)
    opt = distributed.full_optimizer_state(model, optimizer, par)
    if par.main:
        tensors = {}
        for pname, st in opt["state"].items():
            for key, val in st.items():
                tensors[f"state/{pname}/{key}"] = torch.as_tensor(val)
        tensors["rng/cpu"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda{i}"] = s
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]]
        with AtomicDir(folder, force=True) as tmp:
            arrays = {n: _np(full[n]) for n in names}
            w = ShardedWriter(tmp, [(n, a.shape, d) for n, (a, d) in arrays.items()],
                              metadata={"hyperclone": "train"})
            for n, (a, _) in arrays.items():
                w.write(n, a)
            w.close()
            write_json(tmp / "config.json", cfg)
            (tmp / TRAINER_DIR).mkdir()
            _write_tensors(tmp / TRAINER_DIR / OPT_FILE, tensors)
            write_json(tmp / TRAINER_DIR / STATE_FILE, dict(
                state, format=FORMAT, model=fingerprint(cfg, shapes, names), param_groups=groups))
    par.barrier()


def load_training_checkpoint(folder: Path, model: nn.Module, optimizer, par) -> dict:
    """Restore weights, optimizer, RNG; returns the trainer state.  Refuses a
    checkpoint written by another model, naming the first difference."""
    try:
        state = json.loads((folder / TRAINER_DIR / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder / TRAINER_DIR / STATE_FILE}: unreadable ({exc}); resume from an "
                              "earlier checkpoint or start a new --out") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{folder}: not a hyperclone training checkpoint (format {state.get('format')!r})")
    cfg = model_config(model)
    shapes = distributed.global_shapes(model)
    names = checkpoint_names(cfg, shapes)
    mine = fingerprint(cfg, shapes, names)
    theirs = state["model"]
    if mine != theirs:
        diff = _first_difference(theirs, mine)
        raise CheckpointError(
            f"{folder} was written while training another model ({diff}); resume only the model it was "
            "trained from, or train into a new --out"
        )
    from hyperclone_core.io import Checkpoint

    ck = Checkpoint(folder)
    weights = {}
    for n in names:
        raw = ck.raw(n)
        t = torch.from_numpy(np.ascontiguousarray(raw))
        if ck.dtype(n) == "bfloat16":
            t = t.view(torch.bfloat16)
        weights[n] = t.to(par.device)
    distributed.load_full_model_state(model, weights, par)
    tensors = _read_tensors(folder / TRAINER_DIR / OPT_FILE)
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("state/"):
            pname, key = k[6:].rsplit("/", 1)
            opt_state.setdefault(pname, {})[key] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in state["param_groups"]]
    distributed.load_full_optimizer_state(model, optimizer, {"state": opt_state, "param_groups": groups}, par)
    torch.set_rng_state(tensors["rng/cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    return state


def _first_difference(a: dict, b: dict) -> str:
    if a.get("model_type") != b.get("model_type"):
        return f"model_type {a.get('model_type')!r} there, {b.get('model_type')!r} here"
    sa, sb = a.get("shapes", {}), b.get("shapes", {})
    for n in sa:
        if n not in sb:
            return f"tensor {n} exists there, not here"
        if sa[n] != sb[n]:
            return f"tensor {n} is {sa[n]} there, {sb[n]} here"
    extra = [n for n in sb if n not in sa]
    return f"tensor {extra[0]} exists here, not there" if extra else "different tensors"


# ---------------------------------------------------------------- the loop


def _as_tokens(data, vocab: int, what: str) -> np.ndarray:
    if isinstance(data, (str, Path)):
        return hdata.load_tokens(data, vocab=vocab)
    arr = np.asarray(data) if not isinstance(data, np.memmap) else data
    if arr.ndim != 1 or arr.dtype.kind not in "ui":
        raise TrainError(f"{what}: expected a 1-D integer token array, got {arr.dtype} of shape {arr.shape}")
    hdata.check_vocab(arr, vocab, what)
    return arr


def _param_groups(model: nn.Module, cfg: TrainConfig, plan) -> list:
    """Decay on matrices only; one group per (decay, LR multiplier)."""
    if isinstance(cfg.clone_lr, Mapping):
        mults = dict(cfg.clone_lr)
    elif cfg.clone_lr in ("", "none"):
        mults = {}
    else:
        if plan is None:
            raise ConfigError(f"clone_lr={cfg.clone_lr!r} needs the plan the model was cloned with (plan=...)")
        mults = clone_lr_multipliers(plan, cfg.clone_lr)
    groups: dict = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2
        key = (decay, float(mults.get(name, 1.0)))
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "weight_decay": cfg.weight_decay if d else 0.0, "lr_mult": m}
            for (d, m), ps in groups.items()]


class _Progress:
    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, rec: dict) -> None:
        if not self.enabled:
            return
        msg = {k: rec[k] for k in ("train_loss", "val_loss", "symmetry", "lr") if rec.get(k) is not None}
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in msg.items()}, refresh=False)
            self.bar.update(1)
        elif rec["step"] % 10 == 0 or rec.get("val_loss") is not None:
            print(f"step {rec['step']}: " + " ".join(f"{k} {v:.4g}" for k, v in msg.items()), file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train(model: nn.Module, config: TrainConfig, train_data, val_data=None, plan=None,
          callback: Optional[Callable[[dict], Optional[bool]]] = None) -> TrainResult:
    """Train ``model`` in place for ``config.steps`` optimizer steps.

    ``train_data``/``val_data``: 1-D token arrays (memory-maps welcome) or token/text
    file paths.  ``plan``: the HyperCloning plan the model came from (enables the
    symmetry monitor and clone-aware LRs).  ``callback(record)`` runs on every rank
    after each step; returning False stops the run (a checkpoint is written).
    Returns the history; the model holds the trained weights.
    """
    cfg = config
    par = distributed.setup(cfg.parallel, cfg.device)
    try:
        return _train(model, cfg, par, train_data, val_data, plan, callback)
    except torch.OutOfMemoryError as exc:
        per = cfg.batch_size // (par.world * cfg.grad_accum)
        raise TrainError(
            f"out of memory on {par.device} with micro-batches of {per} x {cfg.seq_len} tokens: lower "
            f"--batch-size (or raise --grad-accum to keep the global batch), lower --seq-len, use --dtype "
            f"bfloat16 or --parallel fsdp ({str(exc).splitlines()[0]})"
        ) from None
    finally:
        par.close()


def _train(model, cfg: TrainConfig, par, train_data, val_data, plan, callback) -> TrainResult:
    hf = model_config(model)
    family, dec = _decoder_of(hf)
    vocab = dec.vocab if dec is not None else int(hf.get("vocab_size"))
    positions = dec.positions if dec is not None else hf.get("max_position_embeddings")
    if positions and cfg.seq_len > positions:
        raise TrainError(f"--seq-len {cfg.seq_len} exceeds the model's {positions} positions "
                         f"(max_position_embeddings in config.json); use --seq-len {positions} or less")
    if cfg.batch_size % (par.world * cfg.grad_accum):
        raise TrainError(f"--batch-size {cfg.batch_size} (global) must be a multiple of {par.world} ranks x "
                         f"{cfg.grad_accum} accumulation steps")
    tokens = _as_tokens(train_data, vocab, "train data")
    sampler = hdata.BatchSampler(tokens, cfg.batch_size, cfg.seq_len, cfg.seed)
    val = None if val_data is None else _as_tokens(val_data, vocab, "validation data")
    val_batches = [] if val is None else hdata.fixed_batches(val, cfg.eval_batches, cfg.batch_size, cfg.seq_len,
                                                              cfg.seed, par.rank, par.world)
    torch.manual_seed(cfg.seed)
    device = par.device
    model.to(device)
    model.train()
    engine = par.wrap(model)  # before the optimizer: FSDP2 replaces parameters with DTensors
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg, plan), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
        fused=device.type == "cuda" or None,
    )
    step_fn = torch.compile(engine) if cfg.compile else engine
    pairs = symmetry_pairs(plan) if plan is not None else []

    def amp():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")

    result = TrainResult()
    start = 0
    out = Path(cfg.out_dir) if cfg.out_dir else None
    if out is not None and par.main:
        out.mkdir(parents=True, exist_ok=True)
    par.barrier()
    last_ckpt = latest_checkpoint(out) if out is not None else None
    if cfg.resume and last_ckpt is not None:
        state = load_training_checkpoint(last_ckpt, model, optimizer, par)
        start = int(state["step"])
        # a finished run's closing evaluation is redone at the start of its next step
        result.history = [h for h in state["history"] if h["step"] < start or h.get("train_loss") is not None]
        result.checkpoint = str(last_ckpt)
    elif last_ckpt is not None and not cfg.resume:
        raise TrainError(f"{out} already holds {last_ckpt.name}; pass --resume to continue it, or choose a new --out")
    log_path = Path(cfg.log_jsonl) if cfg.log_jsonl else (out / "metrics.jsonl" if out else None)
    if log_path is not None and par.main:
        log_path.write_text("".join(json.dumps(h) + "\n" for h in result.history))
    log = open(log_path, "a") if log_path is not None and par.main else None

    params = dict(model.named_parameters())
    tokens_per_step = cfg.batch_size * cfg.seq_len
    t0 = time.perf_counter() - (result.history[-1]["seconds"] if result.history else 0.0)
    bar = _Progress(cfg.steps, start, cfg.progress and par.main)

    def evaluate() -> tuple:
        sym = symmetry(params, pairs) if pairs else None
        if not val_batches:
            return None, sym
        model.eval()
        with torch.no_grad(), amp():
            losses = [float(lm_loss(step_fn, torch.from_numpy(b).to(device))) for b in val_batches]
        model.train()
        return par.mean(float(np.mean(losses))), sym

    def emit(rec: dict) -> None:
        result.history.append(rec)
        if log is not None:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    def checkpoint(step: int) -> None:
        folder = out / f"checkpoint-{step:07d}"
        save_training_checkpoint(folder, model, optimizer, par, dict(
            step=step, history=result.history, config=cfg.to_dict(), data=dict(seed=cfg.seed, position=step)))
        result.checkpoint = str(folder)

    try:
        step = start
        while step < cfg.steps:
            rec: dict = {"step": step}
            if val_batches or pairs:
                if cfg.eval_every and step % cfg.eval_every == 0:
                    rec["val_loss"], sym = evaluate()
                    if sym is not None:
                        rec["symmetry"], rec["symmetry_by_kind"] = sym["overall"], sym["by_kind"]
            lr = lr_at(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_mult"]
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                batch = torch.from_numpy(sampler.batch(step, par.rank, par.world, micro, cfg.grad_accum)).to(device)
                with par.no_sync(engine, micro == cfg.grad_accum - 1), amp():
                    loss = lm_loss(step_fn, batch)
                    (loss / cfg.grad_accum).backward()
                loss_sum += float(loss.detach())
            train_loss = par.mean(loss_sum / cfg.grad_accum)
            if not math.isfinite(train_loss):
                optimizer.zero_grad(set_to_none=True)
                result.stopped = f"non-finite loss ({train_loss}) at step {step}"
                where = (f"the last good checkpoint is {result.checkpoint}" if result.checkpoint
                         else "no checkpoint was written (use --save-every)")
                raise NonFiniteLoss(
                    f"training stopped: the loss is {train_loss} at step {step}; {where}. Lower --lr, raise "
                    "--warmup-steps or --grad-clip tighter, or check the data", step, result.checkpoint, result)
            gnorm = None
            if cfg.grad_clip > 0:
                gnorm = float(distributed.full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            rec.update(train_loss=train_loss, lr=lr, grad_norm=gnorm, tokens=(step + 1) * tokens_per_step,
                       seconds=round(time.perf_counter() - t0, 4))
            emit(rec)
            bar.update(rec)
            step += 1
            result.steps_done = step
            stop = callback is not None and callback(rec) is False
            if out is not None and (stop or (cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps)):
                checkpoint(step)
            if stop:
                result.stopped = f"stopped by the callback after step {step - 1}"
                return result
        result.steps_done = cfg.steps
        if val_batches or pairs:
            final = {"step": cfg.steps}
            final["val_loss"], sym = evaluate()
            if sym is not None:
                final["symmetry"], final["symmetry_by_kind"] = sym["overall"], sym["by_kind"]
            final["seconds"] = round(time.perf_counter() - t0, 4)
            if not result.history or result.history[-1].get("step") != cfg.steps:
                emit(final)
        if out is not None and result.checkpoint != str(out / f"checkpoint-{cfg.steps:07d}"):
            checkpoint(cfg.steps)
        return result
    finally:
        bar.close()
        if log is not None:
            log.close()


# ---------------------------------------------------------------- CLI


def load_model(folder, device: str = "cpu") -> nn.Module:
    """A checkpoint folder as a trainable module: the torch Decoder, or the
    ``transformers`` class when the Decoder is not available."""
    try:
        from .model import Decoder
    except ImportError:
        Decoder = None
    if Decoder is not None:
        return Decoder.from_pretrained(folder)
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise TrainError("loading a checkpoint needs hyperclone_torch.model or transformers") from None
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def plan_of(folder) -> Optional[Any]:
    """The plan a folder was expanded with: its ``plan.json`` (``hyperclone expand``
    writes it), else rebuilt from its ``hyperclone.json`` and the source's config
    (older folders; needs the source folder still in place).  None when the folder
    is not a clone, or the plan cannot be recovered (said as a warning: the
    symmetry monitor and clone-aware LRs then have nothing to work with)."""
    from hyperclone_core import Growth, Plan, family_for_config, plan
    from hyperclone_core.io import read_config

    folder = Path(folder)
    if (folder / "plan.json").is_file():
        return Plan.from_json((folder / "plan.json").read_text())
    report = folder / "hyperclone.json"
    if not report.is_file():
        return None
    rep = json.loads(report.read_text())
    try:
        src_cfg = read_config(rep["source"])
    except (HypercloneError, OSError, KeyError) as exc:
        warnings.warn(f"{folder}: no plan.json, and the plan cannot be rebuilt from hyperclone.json ({exc}); "
                      "training without the symmetry monitor (pass --plan to give one)", stacklevel=2)
        return None
    growth = dict(rep["growth"])
    layout = growth.pop("layout", "tile")
    return plan(family_for_config(src_cfg), src_cfg, Growth(growth, layout), rep["strategy"], rep["seed"],
                allow_inexact=not rep.get("exact", True))


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="hyperclone train", description="Continue training a checkpoint folder "
                                "(a clone from `hyperclone expand`, or any supported model).")
    p.add_argument("model_dir", help="checkpoint folder (config.json + *.safetensors)")
    p.add_argument("--data", required=True, help="training data: .bin (raw tokens), .npy, or a text file")
    p.add_argument("--val-data", help="validation data (default: the last --val-fraction of --data)")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--data-dtype", help="dtype of a .bin token file (uint16, uint32)")
    p.add_argument("--tokenizer", default="auto",
                   help="for text: 'auto' (the model's tokenizer.json if present, else bytes), 'bytes', or a path")
    p.add_argument("--out", required=True, help="folder for checkpoints and metrics.jsonl")
    p.add_argument("--plan", help="plan JSON (default: MODEL_DIR/plan.json, which hyperclone expand writes)")
    for f in fields(TrainConfig):
        if f.name in ("out_dir", "betas", "clone_lr", "resume", "compile", "progress", "log_jsonl"):
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)), default=getattr(d, f.name))
    p.add_argument("--betas", type=float, nargs=2, default=list(d.betas))
    p.add_argument("--clone-lr", default="", choices=["", "none", "inverse_width"],
                   help="per-tensor LR multipliers from the plan (inverse_width: 1/r for inputs grown r-fold)")
    p.add_argument("--log-jsonl", help="metrics file (default: OUT/metrics.jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in --out (starts fresh when there is none)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        kw = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
              if f.name not in ("out_dir", "progress") and hasattr(args, f.name)}
        cfg = TrainConfig(**kw, out_dir=args.out, progress=not args.no_progress)
        model = load_model(args.model_dir)
        vocab = int(model_config(model).get("vocab_size"))
        tok = hdata.get_tokenizer(args.tokenizer, args.model_dir)
        tokens = hdata.load_tokens(args.data, dtype=args.data_dtype, vocab=vocab, tokenizer=tok)
        if args.val_data:
            val = hdata.load_tokens(args.val_data, dtype=args.data_dtype, vocab=vocab, tokenizer=tok)
        elif args.val_fraction > 0:
            tokens, val = hdata.split(tokens, args.val_fraction, min_val=args.seq_len + 1)
        else:
            val = None
        if args.plan:
            from hyperclone_core import Plan

            plan = Plan.from_json(Path(args.plan).read_text())
        else:
            plan = plan_of(args.model_dir)
        result = train(model, cfg, tokens, val, plan=plan)
    except NonFiniteLoss as exc:
        print(f"hyperclone train: {exc}", file=sys.stderr)
        return 3
    except HypercloneError as exc:
        print(f"hyperclone train: error: {exc}", file=sys.stderr)
        return 2
    last = result.history[-1] if result.history else {}
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"steps": result.steps_done, "checkpoint": result.checkpoint,
                          "val_loss": last.get("val_loss"), "symmetry": last.get("symmetry")}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["NonFiniteLoss", "TrainConfig", "TrainError", "TrainResult", "clone_lr_multipliers", "latest_checkpoint",
           "load_model", "lm_loss", "lr_at", "main", "symmetry", "symmetry_pairs", "train"]
