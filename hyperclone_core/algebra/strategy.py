"""Strategies: how the copies of a weight share the source weight, as composable values.

Mixing decides the coefficients C[copy_out, copy_in] on a tensor's ``in`` axes;
noise adds a perturbation that sums to zero over the input copies of every old
index.  Both keep the function exact; only noise breaks the copies' symmetry.

Why the default is ``noisy:10``: with noiseless symmetric cloning every copy gets
the same gradient, so the copies stay identical for ever (cosine similarity 1.0
through training) and the wide model never becomes more than the small one.
Zero-sum noise over the *input* copies keeps the function exact but makes the
copies' columns differ, so their gradients differ and the symmetry breaks.
``diagonal`` without noise has the same flaw as ``symmetric``.

String syntax (the CLI's ``--strategy``)::

    symmetric | diagonal | first_copy | random_split:ALPHA | noisy:SNR_DB
    MIXING+noise:SNR_DB                         e.g. diagonal+noise:10
    KEY=STRATEGY,KEY=STRATEGY,...               KEY: a role kind prefix (mlp, attn,
                                                lm_head, ...) or a name glob (*.q_proj.*)

Rules are tried in order; the first whose key matches a tensor wins; a tensor no
rule matches gets ``*=...`` if given, else the library default ``noisy:10``.

Everything is checked at parse time: a number after ``:`` is required where the
colon is written, noise must be a finite SNR above ``MIN_SNR_DB`` (noise
louder than the weights loses the clone's precision to cancellation), a key may
appear once, and (through ``Rules.unmatched``) a rule must match some tensor.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from ..errors import PlanError

MIN_SNR_DB = 0.0
"""The SNR must exceed this (exclusive): noise weaker than the weights it is added to.
Noise as loud or louder cancels in exact arithmetic only: in float32 the clone drifts
(-60 dB: 7e2 relative)."""
MAX_SNR_DB = 200.0
"""Beyond this the noise is below float64 resolution; larger values overflow 10**(dB/10)."""
MIN_ALPHA, MAX_ALPHA = 1e-3, 1e6


@dataclass(frozen=True)
class Mixing:
    """Coefficients C[copy_out, copy_in]; ``normalize`` divides each row by its sum
    over the copies an old index actually has (needed for uneven growth)."""

    name = "mixing"

    def table(self, k_out: int, k_in: int, rng: np.random.Generator) -> tuple:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Symmetric(Mixing):
    """C = 1/k: every output copy reads the mean of the input copies (the paper's default)."""

    name = "symmetric"

    def table(self, k_out, k_in, rng):
        return np.ones((k_out, k_in)), True


@dataclass(frozen=True)
class Diagonal(Mixing):
    """C = identity: output copy c reads only input copy c.  Needs equal copy counts;
    on a tensor whose output does not grow (LM head, router) it reduces to symmetric."""

    name = "diagonal"

    def table(self, k_out, k_in, rng):
        if k_out == 1:
            return np.ones((1, k_in)), True
        if k_in == 1:
            return np.ones((k_out, 1)), False
        if k_out != k_in:
            raise PlanError(
                f"diagonal needs equal copy counts in and out, got {k_out} output copies and "
                f"{k_in} input copies; grow both dims by the same factor or use symmetric"
            )
        return np.eye(k_out), False


@dataclass(frozen=True)
class FirstCopy(Mixing):
    """All weight on input copy 0 (the paper's "unidirectional")."""

    name = "first_copy"

    def table(self, k_out, k_in, rng):
        t = np.zeros((k_out, k_in))
        t[:, 0] = 1.0
        return t, False


@dataclass(frozen=True)
class RandomSplit(Mixing):
    """Each output copy's row drawn from a Dirichlet(alpha) over the input copies."""

    alpha: float = 1.0

    @property
    def name(self):  # type: ignore[override]
        return f"random_split:{self.alpha:g}"

    def __post_init__(self):
        if not (isinstance(self.alpha, (int, float)) and MIN_ALPHA <= self.alpha <= MAX_ALPHA):
            raise PlanError(f"strategy random_split:{self.alpha}: ALPHA must be a number in "
                            f"[{MIN_ALPHA:g}, {MAX_ALPHA:g}]")

    def table(self, k_out, k_in, rng):
        return rng.dirichlet(np.full(k_in, self.alpha), size=k_out), True


@dataclass(frozen=True)
class Explicit(Mixing):
    """A user-given C[copy_out, copy_in], used as is; the certificate checks it."""

    matrix: tuple = ()

    name = "explicit"

    def table(self, k_out, k_in, rng):
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (k_out, k_in):
            raise PlanError(f"explicit mixing matrix has shape {m.shape}, the tensor needs {(k_out, k_in)}")
        return m, False


@dataclass(frozen=True)
class Strategy:
    """A mixing and an optional zero-sum noise, in dB of signal-to-noise ratio."""

    mixing: Mixing = field(default_factory=Symmetric)
    noise_db: Optional[float] = None

    def __post_init__(self):
        n = self.noise_db
        if n is not None and not (isinstance(n, (int, float)) and not isinstance(n, bool)
                                  and MIN_SNR_DB < n <= MAX_SNR_DB):
            raise PlanError(
                f"strategy noise {n!r} dB: the signal-to-noise ratio must be a finite number of dB in "
                f"({MIN_SNR_DB:g}, {MAX_SNR_DB:g}] (positive: noise weaker than the weights; the paper uses 10); "
                "noise as loud as the weights destroys the clone's precision"
            )

    def __str__(self) -> str:
        if self.noise_db is None:
            return str(self.mixing)
        if isinstance(self.mixing, Symmetric):
            return f"noisy:{self.noise_db:g}"
        return f"{self.mixing}+noise:{self.noise_db:g}"

    @property
    def deterministic(self) -> bool:
        return self.noise_db is None and not isinstance(self.mixing, RandomSplit)


def symmetric() -> Strategy:
    return Strategy(Symmetric())


def diagonal() -> Strategy:
    return Strategy(Diagonal())


def first_copy() -> Strategy:
    return Strategy(FirstCopy())


def random_split(alpha: float = 1.0) -> Strategy:
    return Strategy(RandomSplit(alpha))


def noisy(snr_db: float = 10.0) -> Strategy:
    return Strategy(Symmetric(), snr_db)


DEFAULT = "noisy:10"


@dataclass(frozen=True)
class Rules:
    """Strategies per role kind or name pattern, tried in order, with a default."""

    rules: tuple = ()  # ((key, Strategy), ...)
    default: Strategy = field(default_factory=lambda: noisy(10.0))

    def for_tensor(self, name: str, kind: str) -> Strategy:
        for key, strat in self.rules:
            if _matches(key, name, kind):
                return strat
        return self.default

    def __str__(self) -> str:
        if not self.rules:
            return str(self.default)
        return ",".join([f"{k}={s}" for k, s in self.rules] + [f"*={self.default}"])

    def unmatched(self, tensors: Iterable) -> list:
        """The keys of rules no (name, role kind) in ``tensors`` matches: a typo, or a
        role the family does not have; either way the user's intent is not applied."""
        tensors = list(tensors)
        return [key for key, _ in self.rules if not any(_matches(key, n, k) for n, k in tensors)]


def _matches(key: str, name: str, kind: str) -> bool:
    if any(c in key for c in "*?[./"):
        return fnmatch.fnmatchcase(name, key)
    return kind == key or kind.startswith(key + ".")


_MIXINGS = {"symmetric": Symmetric, "diagonal": Diagonal, "first_copy": FirstCopy, "unidirectional": FirstCopy}


def _number(part: str, arg: str) -> float:
    try:
        x = float(arg)
    except ValueError:
        raise PlanError(f"strategy {part!r}: {arg!r} is not a number") from None
    if not math.isfinite(x):
        raise PlanError(f"strategy {part!r}: {arg!r} is not a finite number")
    return x


def _parse_one(text: str) -> Strategy:
    text = text.strip()
    if not text:
        raise PlanError("strategy: an empty strategy; use symmetric, diagonal, first_copy, random_split:ALPHA "
                        "or noisy:SNR_DB")
    mixing: Mixing = Symmetric()
    noise = None
    for i, part in enumerate(p.strip() for p in text.split("+")):
        word, colon, arg = part.partition(":")
        word, arg = word.strip(), arg.strip()
        if colon and not arg:
            raise PlanError(f"strategy {part!r}: a number must follow ':' (e.g. noisy:10)")
        if word in ("noisy", "noise") and (word == "noisy" or i > 0):
            if noise is not None:
                raise PlanError(f"strategy {text!r}: noise is given twice")
            noise = _number(part, arg) if colon else 10.0
        elif i > 0:
            raise PlanError(f"strategy {text!r}: after '+' only noise:SNR_DB may follow, got {part!r}")
        elif word in _MIXINGS:
            if colon:
                raise PlanError(f"strategy {part!r}: {word} takes no argument")
            mixing = _MIXINGS[word]()
        elif word == "random_split":
            mixing = RandomSplit(_number(part, arg) if colon else 1.0)
        else:
            raise PlanError(
                f"unknown strategy {part!r}; use symmetric, diagonal, first_copy, "
                "random_split:ALPHA or noisy:SNR_DB (combine as MIXING+noise:SNR_DB)"
            )
    return Strategy(mixing, noise)


def parse(spec) -> Rules:
    """Parse the string syntax (or pass a Strategy / Rules through)."""
    if isinstance(spec, Rules):
        return spec
    if isinstance(spec, Strategy):
        return Rules(default=spec)
    if spec is None:
        spec = DEFAULT
    if not isinstance(spec, str) or not spec.strip():
        raise PlanError(f"strategy must be a non-empty string, got {spec!r}")
    if "=" not in spec:
        return Rules(default=_parse_one(spec))
    rules, default, seen = [], None, set()
    for item in spec.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise PlanError(f"strategy rule {item!r} needs KEY=STRATEGY (e.g. mlp=noisy:10)")
        if key in seen:
            raise PlanError(f"strategy rule key {key!r} is given twice; give each key once")
        seen.add(key)
        if key == "*":
            default = _parse_one(value)
        else:
            rules.append((key, _parse_one(value)))
    return Rules(tuple(rules), default or _parse_one(DEFAULT))
