"""What a training run depends on, validated where it enters, and the LR schedule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Mapping, Union

from ..errors import ConfigError, OptionError, UsageError
from .clone import check_clone_lr

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "wsd")
"""``cosine``: warmup, then cosine to the floor at the last step.  ``wsd``
(warmup-stable-decay): warmup, the peak held, then a decay to the floor over the last
``decay_steps`` (or ``decay_fraction`` of the run): a stage that ends un-annealed,
what growth inside a run wants."""
DECAY_SHAPES = ("linear", "cosine")

RESUMABLE = frozenset({
    "steps", "eval_every", "eval_batches", "save_every", "save_total_limit", "keep_best", "out_dir",
    "device", "compile", "parallel", "mesh", "threads", "resume", "allow_change", "log_jsonl", "progress",
})
"""Fields a resumed run may change freely: how long it runs (``steps``: the cosine
schedule then spans the new length), how often it evaluates and saves, and where
and how it runs.  Any other difference (batch size, sequence length, seed, LR and
schedule, optimizer, clone LRs, dtype, data) is refused on ``--resume`` unless
named in ``allow_change``: it would silently make a different run."""

_LIMITS = {
    "steps": (1, 10**9), "batch_size": (1, 10**7), "seq_len": (1, 10**7), "grad_accum": (1, 10**5),
    "warmup_steps": (0, 10**9), "eval_every": (0, 10**9), "eval_batches": (1, 10**5),
    "save_every": (0, 10**9), "save_total_limit": (0, 10**6), "seed": (0, 2**63 - 1), "threads": (0, 4096),
    "decay_steps": (0, 10**9), "rewarm_steps": (0, 10**9),
}


@dataclass
class TrainConfig:
    """Everything a run depends on.  ``batch_size`` is the *global* number of
    sequences per optimizer step (split over data-parallel ranks and accumulation
    micro-steps), so changing ``parallel``/``grad_accum`` does not change what is
    learned.  ``threads`` 0 = the backend's automatic policy."""

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
    save_total_limit: int = 0
    keep_best: bool = False
    out_dir: Union[str, None] = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    compile: bool = False
    clone_lr: Union[str, Mapping[str, float]] = ""
    clone_lr_scale: float = 1.0
    parallel: str = "none"
    mesh: str = ""
    threads: int = 0
    resume: bool = False
    allow_change: tuple = field(default_factory=tuple)
    log_jsonl: Union[str, None] = None
    progress: bool = False
    schedule: str = "cosine"
    decay_steps: int = 0
    decay_fraction: float = 0.2
    decay_shape: str = "linear"
    rewarm_steps: int = 0
    grow: tuple = field(default_factory=tuple)

    def __post_init__(self):
        problems = []
        for name, (lo, hi) in _LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) and not (isinstance(v, float) and v.is_integer()):
                problems.append(f"{name} must be an integer (got {v!r})")
                continue
            v = int(v)
            setattr(self, name, v)
            if not lo <= v <= hi:
                problems.append(f"{name} must be in [{lo}, {hi}] (got {v})")
        for name in ("lr", "min_lr_ratio", "weight_decay", "eps", "grad_clip", "clone_lr_scale", "decay_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                problems.append(f"{name} must be a finite number (got {v!r})")
                continue
            setattr(self, name, float(v))
        if not problems:
            if self.lr <= 0:
                problems.append(f"lr must be > 0 (got {self.lr})")
            if self.clone_lr_scale <= 0:
                problems.append(f"clone_lr_scale must be > 0 (got {self.clone_lr_scale})")
            if not 0.0 <= self.min_lr_ratio <= 1.0:
                problems.append(f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
            if self.weight_decay < 0 or self.eps <= 0 or self.grad_clip < 0:
                problems.append("weight_decay and grad_clip must be >= 0 and eps > 0 "
                                f"(got {self.weight_decay}, {self.grad_clip}, {self.eps})")
        try:
            betas = tuple(float(b) for b in self.betas)
            if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
                raise ValueError
            self.betas = betas
        except (TypeError, ValueError):
            problems.append(f"betas must be two numbers in [0, 1) (got {self.betas!r})")
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.decay_shape not in DECAY_SHAPES:
            problems.append(f"decay_shape {self.decay_shape!r}: use one of {', '.join(DECAY_SHAPES)}")
        if isinstance(self.decay_fraction, float) and not 0.0 <= self.decay_fraction <= 1.0:
            problems.append(f"decay_fraction must be in [0, 1] (got {self.decay_fraction})")
        try:
            self.grow = tuple(growth_text(g) for g in growth_schedule(self.grow, int(self.steps)))
        except (UsageError, TypeError, ValueError) as exc:
            problems.append(str(exc))
        if isinstance(self.clone_lr, str):
            try:
                check_clone_lr(self.clone_lr)
            except ConfigError as exc:
                problems.append(str(exc))
        elif not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in dict(self.clone_lr).values()):
            problems.append("clone_lr multipliers must be finite numbers > 0")
        self.allow_change = tuple(self.allow_change or ())
        unknown = [f for f in self.allow_change if f not in {f.name for f in fields(self)} | {"data"}]
        if unknown:
            problems.append(f"allow_change names unknown fields {unknown}")
        if (self.resume or self.save_every or self.save_total_limit) and not self.out_dir:
            problems.append("resume, save_every and save_total_limit need out_dir (--out)")
        if problems:
            raise OptionError("TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["allow_change"] = list(self.allow_change)
        d["grow"] = list(self.grow)
        if not isinstance(self.clone_lr, str):
            d["clone_lr"] = dict(self.clone_lr)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def changed_fields(self, saved: Mapping) -> list:
        """Fields whose value differs from a saved run's config and that may not change
        on resume (``RESUMABLE`` and ``allow_change`` excepted), as readable strings."""
        mine = self.to_dict()
        out = []
        for k, v in mine.items():
            if k in RESUMABLE or k in self.allow_change or k not in saved:
                continue
            if _norm(saved[k]) != _norm(v):
                out.append(f"{k} ({saved[k]!r} then, {v!r} now)")
        return out


def _norm(v):
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def peak_lr(cfg: TrainConfig) -> float:
    """The schedule's peak: ``lr`` times the clone's ``clone_lr_scale`` (1 by default)."""
    return cfg.lr * cfg.clone_lr_scale


def growth_schedule(grow, steps: int) -> list:
    """``[(step, options), ...]`` of a run's growth schedule (``TrainConfig.grow``:
    ``"STEP:OPTIONS"`` texts, ``train.grow.parse_growth``'s OPTIONS), steps strictly
    increasing, each before the run's last step."""
    from .grow import parse_growth

    if isinstance(grow, str):
        grow = (grow,)
    out = []
    for g in grow or ():
        if not isinstance(g, str):
            raise UsageError(f"--grow {g!r}: give STEP:OPTIONS, e.g. 200:width=2")
        at, colon, options = g.partition(":")
        if not colon:
            raise UsageError(f"--grow {g!r}: give STEP:OPTIONS, e.g. 200:width=2,layers=+2")
        from ..model.validate import integer

        step = integer(f"--grow {g!r}: step", at, 0, 10**9)
        if out and step <= out[-1][0]:
            raise UsageError(f"--grow {g!r}: growth steps must increase (after step {out[-1][0]})")
        if step >= steps:
            raise UsageError(f"--grow {g!r}: step {step} is not before the run's last step (--steps {steps})")
        out.append((step, parse_growth(options, f"--grow {at}:")))
    return out


def growth_text(entry) -> str:
    """The canonical ``"STEP:OPTIONS"`` text of one ``growth_schedule`` entry."""
    from .grow import format_growth_options

    return f"{entry[0]}:{format_growth_options(entry[1])}"


def _base_lr(step: int, cfg: TrainConfig) -> float:
    peak = peak_lr(cfg)
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    floor = peak * cfg.min_lr_ratio
    if cfg.schedule == "wsd":
        d = cfg.decay_steps or int(round(cfg.decay_fraction * cfg.steps))
        start = cfg.steps - d
        if d <= 0 or step < start:
            return peak
        t = min((step - start + 1) / d, 1.0)
        if cfg.decay_shape == "cosine":
            return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * t))
        return peak - (peak - floor) * t
    span = max(cfg.steps - cfg.warmup_steps - 1, 1)
    t = min((step - cfg.warmup_steps) / span, 1.0)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * t))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The LR of ``step`` over the whole run, across its growths (the step counter goes
    on): linear warmup to the peak LR, then ``cosine`` to ``peak * min_lr_ratio`` at the
    last step, or ``wsd``: the peak held, then a linear (``decay_shape``) or cosine decay
    to that floor over the last ``decay_steps`` (0: ``decay_fraction`` of the steps),
    reaching it at the last step.  ``rewarm_steps``: after each growth the schedule's LR
    ramps up again linearly over that many steps (1/R, 2/R, ... of it)."""
    lr = _base_lr(step, cfg)
    if cfg.rewarm_steps and cfg.grow:
        for at in _growth_steps(cfg.grow):
            if at <= step < at + cfg.rewarm_steps:
                return lr * (step - at + 1) / cfg.rewarm_steps
    return lr


def _growth_steps(grow) -> list:
    return [int(g.partition(":")[0]) for g in grow]


__all__ = ["DECAY_SHAPES", "DTYPES", "RESUMABLE", "SCHEDULES", "TrainConfig", "growth_schedule", "growth_text",
           "lr_at", "peak_lr"]
