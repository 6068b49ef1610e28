"""The matrix, the bounds, and the helpers every conformance test shares.

Kept free of pytest so the plugin can read the bounds and the results store
without importing the tests.  Plans and the oracle's expansions are cached per
session: they do not depend on the backend under test.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

import numpy as np

from hyperclone_core import Growth, HypercloneError, family_for_config, plan
from hyperclone_core.run.interpreter import execute, run_program
from hyperclone_core.io.dtypes import cast_numpy
from hyperclone_core.algebra.planner import AddNoise, Plan, TensorPlan
from hyperclone_core.model.testing import CASES, random_tokens, random_weights
from hyperclone_core.expand.tolerances import BF16_RELATIVE, F32_RELATIVE

# ---------------------------------------------------------------- bounds

F32_BOUND = F32_RELATIVE
"""float32: max |logits' - logits| <= F32_BOUND * max |logits| (``hyperclone_core.expand.tolerances``:
the bound ``hyperclone verify`` applies too)."""

BF16_BOUND = BF16_RELATIVE
"""bfloat16 (weights stored in bfloat16, and computed in bfloat16 where the backend's
forward takes ``dtype``): max |logits' - logits| <= BF16_BOUND * max |logits|.  Why
so loose: bfloat16 keeps 8 significant bits (relative step 2**-8 = 3.9e-3); a split
coefficient 1/3 or a noisy copy is rounded on its own, so the copies no longer sum
exactly to the source, and a bfloat16 forward adds its own rounding to both models
in different orders.  Measured worst case: 6e-3 (llama, width 3, numpy and torch)."""

SNR_TOLERANCE_DB = 0.5
"""Noisy programs: the noise the backend added must give the plan's SNR within this."""

ZERO_SUM_RTOL = 1e-5
"""Noisy programs: |sum of the noise over the copies| <= ZERO_SUM_RTOL * max |tensor|."""

TOKENS = dict(batch=2, seq=8)
"""Every forward runs on 2 x 8 tokens: the families' features all show at this size."""

# ---------------------------------------------------------------- the matrix

STRATEGIES = {
    "symmetric": "symmetric",
    "noisy10": "noisy:10",
    "diagonal": "diagonal",
    "first_copy": "first_copy",
    "random_split1": "random_split:1",
}
"""Test id -> strategy string (ids avoid ':' so they read well in -k expressions)."""


def _width(r):
    return lambda cfg: Growth.of(cfg, width=r)


GROWTHS = {
    "width2": _width(2),
    "width3": _width(3),
    "ffn1.5": lambda cfg: Growth.of(cfg, width=2, ffn=1.5),
    "kv_heads": lambda cfg: Growth({"kv_heads": 2 * cfg.kv_heads}),
    "q_per_kv": lambda cfg: Growth({"q_per_kv": 2 * cfg.q_per_kv}),
    "depth+2": lambda cfg: Growth({"layers": cfg.layers + 2}),
}
"""Test id -> growth of a case's DecoderConfig.  ``ffn1.5`` is width 2 with the ffn
grown 1.5x (uneven: half the ffn units get one copy, half two); ``kv_heads`` and
``q_per_kv`` grow one attention dim alone; ``depth+2`` inserts two layers."""

BF16_SUBSET = [(c, s, "width2") for c in ("llama", "gpt_neox", "opt", "gemma2", "phi3")
               for s in ("symmetric", "noisy10")] + [("llama", "symmetric", "width3")]
"""Where bfloat16 is checked: one family per decoder feature group, both split kinds."""


def _forward_cases() -> dict:
    llama, mistral, gemma2 = CASES["llama"], CASES["mistral"], CASES["gemma2"]
    return {
        "llama_rope_base": dict(llama, rope_parameters={"rope_theta": 100.0, "rope_type": "default"}, rope_theta=100.0),
        "mistral_window": dict(mistral, sliding_window=3),
        "gemma2_scale": dict(gemma2, attn_logit_softcapping=None, final_logit_softcapping=None,
                             query_pre_attn_scalar=2, sliding_window=3),
        "gemma2_softcap": dict(gemma2, attn_logit_softcapping=1.0, final_logit_softcapping=2.0),
        "olmo_clip": dict(CASES["olmo"], clip_qkv=0.5),
        **{f"rope_{name}": _rope_case(llama, params) for name, params in ROPE_VARIANTS.items()},
        **TYPE_CASES,
    }


def _type_cases() -> dict:
    """``type_<model_type>``: the tiny config of every model type a built-in family grows
    (``families.TINY``), those of the types ``CASES`` has too (their tiny configs turn on the
    type's optional features; one runs by default only where it brings a feature no other
    case has, ``REPRESENTATIVE``)."""
    from hyperclone_core.model.families import TINY

    return {f"type_{mt}": dict(hf) for mt, hf in sorted(TINY.items())}


TYPE_CASES = _type_cases()


def _representative() -> tuple:
    """The type cases the suite runs by default: with the other cases, one exercising
    each structural feature any type has (``_coverage.features``: every flag value,
    attention/MoE shape and role-table layout), chosen greedily (``_coverage.representative``),
    after the type cases ``_coverage.SENSITIVE`` proves a flag's margin on (a backend must
    run the case whose margin is proven).  ``--hyperclone-all-types`` (or
    ``HYPERCLONE_ALL_TYPES=1``) runs every type."""
    from hyperclone_conformance._coverage import SENSITIVE, representative

    def read(hf):
        family = family_for_config(hf)
        return family, family.read(hf)

    pinned = sorted({case for _, case, _, _ in SENSITIVE if case in TYPE_CASES})
    always = {n: read(hf) for n, hf in list(CASES.items()) + list(_OTHER_FORWARD.items())}
    always.update({n: read(TYPE_CASES[n]) for n in pinned})
    rest = {n: read(hf) for n, hf in TYPE_CASES.items() if n not in pinned}
    return tuple(sorted(pinned + representative(always, rest)))


ROPE_VARIANTS = {
    "linear": dict(rope_type="linear", factor=4.0),
    "dynamic": dict(rope_type="dynamic", factor=4.0),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=4),
    "longrope": dict(rope_type="longrope", short_factor=[1.0, 1.5, 3.0, 8.0], long_factor=[1.0, 2.0, 4.0, 8.0],
                     original_max_position_embeddings=16),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16),
    "proportional": dict(rope_type="proportional", partial_rotary_factor=0.5, factor=2.0),
}
"""Every RoPE type but the default (``model.rope.ROPE_TYPES``), each set so it changes
the 8 positions the suite runs (``dynamic``'s and ``yarn``'s thresholds lie inside them)."""


def _rope_case(base: dict, params: dict) -> dict:
    hf = dict(base, rope_parameters=dict(params, rope_theta=10000.0))
    hf.pop("rope_theta", None)
    if params["rope_type"] == "dynamic":
        hf["max_position_embeddings"] = 4  # rescaled once the sequence passes it
    return hf


_OTHER_FORWARD = {k: v for k, v in _forward_cases().items() if k not in TYPE_CASES}
FORWARD_CASES = _forward_cases()
"""Forward-only cases (not in the expansion matrix): the decoder flags whose fast paths
the families' defaults never reach -- a RoPE base other than 10000, a sliding window
with no softcap (every layer, 3 of 8 keys), an attention scale other than
head_dim ** -0.5 with no softcap, softcaps strong enough that ignoring either fails
by over 100x the bound, a q/k/v clip that clips (OLMo's 8.0 never does here), and
every RoPE type (``ROPE_VARIANTS``); ``_coverage.SENSITIVE`` proves each margin."""

REPRESENTATIVE = _representative()
"""The type cases (``TYPE_CASES``) run by default; the others run with ``--hyperclone-all-types``."""

TYPE_GROWTHS = {
    "width2": GROWTHS["width2"],
    "width2_depth+1": lambda cfg: Growth.of(cfg, width=2, layers=cfg.layers + 1),
}
"""The growths each type case is expanded by (strategy ``noisy10``): width 2, and width 2
with one inserted layer (its noisy copy, and the layer pattern -- sliding/full, dense/MoE,
RoPE/NoPE -- extended) where the family's stack keeps zero-writer copies exact (not post-norm)."""


def type_growths() -> list:
    """(case, growth) for every type case and each growth valid for it."""
    out = []
    for case, hf in TYPE_CASES.items():
        family = family_for_config(hf)
        exact = family.depth_exact(family.read(hf))
        out += [(case, g) for g in TYPE_GROWTHS if exact or "depth" not in g]
    return out


@dataclass(frozen=True)
class Source:
    case: str
    hf_config: Mapping[str, Any]
    family: Any
    cfg: Any
    weights: Mapping[str, np.ndarray]
    tokens: np.ndarray


@functools.lru_cache(maxsize=None)
def source(case: str) -> Source:
    hf = dict(CASES[case] if case in CASES else FORWARD_CASES[case])
    family = family_for_config(hf)
    cfg = family.read(hf)
    seed = sorted(CASES).index(case) if case in CASES else len(CASES) + list(FORWARD_CASES).index(case)
    return Source(case, hf, family, cfg, random_weights(hf, seed=seed),
                  random_tokens(cfg.vocab, seed=seed, **TOKENS))


MHA_ONLY = frozenset(n for n, hf in CASES.items() if "num_key_value_heads" not in family_for_config(hf).config_keys)
"""Cases whose family has no grouped-query attention: kv_heads / q_per_kv growth is invalid."""


def expected_refusal(case: str, strategy: str, growth: str) -> bool:
    """The combinations the planner must refuse: diagonal cannot split uneven copies,
    a post-norm stack is not the identity with zeroed writers, and MHA-only families
    have no separate kv heads.  Any other refusal is a failure, not a skip."""
    if strategy == "diagonal" and growth == "ffn1.5":
        return True
    if "depth" in growth and source(case).cfg.placement == "post":
        return True
    return growth in ("kv_heads", "q_per_kv") and case in MHA_ONLY


class Refused(Exception):
    """The planner refused this combination; the message is its reason."""


@functools.lru_cache(maxsize=None)
def planned(case: str, strategy: str, growth: str, dtype: Optional[str] = None):
    """The plan (or the planner's refusal, as a ``Refused`` to raise)."""
    src = source(case)
    try:
        return plan(src.family, src.hf_config, {**GROWTHS, **TYPE_GROWTHS}[growth](src.cfg), STRATEGIES[strategy],
                    seed=7, dtype=dtype)
    except HypercloneError as exc:
        return Refused(f"{type(exc).__name__}: {exc}")


def get_plan(case: str, strategy: str, growth: str, dtype: Optional[str] = None) -> Plan:
    p = planned(case, strategy, growth, dtype)
    if isinstance(p, Refused):
        raise p
    return p


def source_weights(case: str, dtype: Optional[str] = None) -> dict:
    w = source(case).weights
    return {k: cast_numpy(v, dtype) for k, v in w.items()} if dtype else dict(w)


def oracle_tensor(p: Optional[Plan], tp: TensorPlan, weights: Mapping[str, np.ndarray], ops=None,
                  arrays: Optional[Mapping[str, np.ndarray]] = None) -> np.ndarray:
    from hyperclone_core.run.numpy_backend import backend as numpy_backend

    tp = tp if ops is None else replace(tp, ops=tuple(ops))
    return run_program(numpy_backend, tp, p.arrays if arrays is None else arrays, np.array(weights[tp.source], copy=True))


def run_shapes(shape: tuple, ops, arrays: Mapping[str, np.ndarray]) -> tuple:
    """The shape a program of Take/Reshape/Scale ops produces from ``shape``."""
    from hyperclone_core.algebra.planner import Reshape, Take

    shape = tuple(shape)
    for op in ops:
        if isinstance(op, Take):
            shape = shape[:op.axis] + (len(arrays[op.map]),) + shape[op.axis + 1:]
        elif isinstance(op, Reshape):
            shape = tuple(op.shape)
    return shape


def backend_expand(backend, p: Plan, weights: Mapping[str, np.ndarray], device=None) -> dict:
    """Execute every program of ``p`` with ``backend``; results as numpy, by name."""
    return execute(backend, p, weights, device)


def has_noise(tp: TensorPlan) -> bool:
    return any(isinstance(op, AddNoise) for op in tp.ops)


def split_at_noise(tp: TensorPlan) -> tuple:
    """(ops before the noise, the AddNoise op, ops after)."""
    k = next(i for i, op in enumerate(tp.ops) if isinstance(op, AddNoise))
    return tp.ops[:k], tp.ops[k], tp.ops[k + 1:]


def noise_invariants(name: str, noiseless: np.ndarray, noisy: np.ndarray, op: AddNoise,
                     groups: np.ndarray) -> list:
    """What any correct backend's noise satisfies: it sums to 0 over the copies of
    every old index along the noise axis, and gives the plan's SNR.  Returns the
    violations as readable strings (empty: all hold)."""
    noise = noisy.astype(np.float64) - noiseless.astype(np.float64)
    problems = []
    p_sig = float(np.mean(noiseless.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise ** 2))
    if p_sig > 0:
        if p_noise == 0:
            problems.append(f"tensor {name}: no noise was added (the plan asks for {op.snr_db:g} dB)")
            return problems
        snr = 10 * np.log10(p_sig / p_noise)
        if abs(snr - op.snr_db) > SNR_TOLERANCE_DB:
            problems.append(f"tensor {name}: noise gives SNR {snr:.2f} dB, the plan asks for {op.snr_db:g} dB "
                            f"(tolerance {SNR_TOLERANCE_DB} dB)")
    moved = np.moveaxis(noise, op.axis, -1)
    sums = np.zeros(moved.shape[:-1] + (int(groups.max()) + 1,))
    np.add.at(sums.T, groups, np.moveaxis(moved, -1, 0))
    scale = max(float(np.abs(noisy).max()), 1e-30)
    worst = float(np.abs(sums).max()) / scale
    if worst > ZERO_SUM_RTOL:
        problems.append(f"tensor {name}: the noise does not sum to 0 over the copies along axis {op.axis} "
                        f"(max |sum| = {worst:.2e} x max|W|, tolerance {ZERO_SUM_RTOL:g}); the expanded "
                        "model would not preserve the function")
    return problems


def compare_to_oracle(backend_out: Mapping[str, np.ndarray], p: Plan, weights: Mapping[str, np.ndarray]) -> list:
    """Problems (tensor-named strings) of a backend's expansion against the oracle:
    bit-for-bit for programs without noise, invariants for noisy ones."""
    problems = []
    for tp in p.tensors:
        got = backend_out[tp.name]
        if tuple(got.shape) != tuple(tp.shape):
            problems.append(f"tensor {tp.name}: shape {list(got.shape)}, the plan says {list(tp.shape)}")
            continue
        if not has_noise(tp):
            want = oracle_tensor(p, tp, weights)
            if not np.array_equal(got.astype(np.float32), want.astype(np.float32)):
                d = np.abs(got.astype(np.float64) - want)
                idx = np.unravel_index(int(d.argmax()), d.shape)
                problems.append(f"tensor {tp.name}: differs from the oracle at {[int(i) for i in idx]} (got {got[idx]:.6g}, "
                                f"want {want[idx]:.6g}; {int((d > 0).sum())} of {d.size} elements differ)")
            continue
        before, op, after = split_at_noise(tp)
        if after:  # e.g. a zeroed depth copy or a cast: compare the whole program loosely
            continue
        noiseless = oracle_tensor(p, tp, weights, before)
        problems += noise_invariants(tp.name, noiseless, got, op, p.arrays[op.groups])
    return problems


def logits_diff(a: np.ndarray, b: np.ndarray) -> tuple:
    """(max abs difference, that relative to max |a|)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a64.shape != b64.shape:
        return float("inf"), float("inf")
    d = float(np.abs(a64 - b64).max())
    return d, d / max(float(np.abs(a64).max()), 1e-30)


def forward(backend, family, cfg, weights, tokens, dtype: Optional[str] = None) -> np.ndarray:
    """The backend's logits; ``dtype`` is passed only to a forward that takes it."""
    if dtype is not None and accepts_dtype(backend):
        return np.asarray(backend.forward(family, cfg, weights, tokens, dtype=dtype))
    return np.asarray(backend.forward(family, cfg, weights, tokens))


def accepts_dtype(backend) -> bool:
    try:
        return "dtype" in inspect.signature(backend.forward).parameters
    except (TypeError, ValueError):
        return False


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, targets[..., None], -1).mean())


# ---------------------------------------------------------------- results for the summary

RESULTS: dict = {}
"""(case, strategy, growth, dtype) -> dict(status, abs, rel, bound, note); read by the plugin."""


def record(case, strategy, growth, dtype, status, abs_diff=None, rel=None, bound=None, note=""):
    RESULTS[(case, strategy, growth, dtype)] = dict(status=status, abs=abs_diff, rel=rel, bound=bound, note=note)


# ---------------------------------------------------------------- shared by the tests

_EXPANDED: dict = {}


def expanded(backend, device, case: str, strategy: str, growth: str, dtype: Optional[str] = None) -> dict:
    """The backend's expansion of a case (cached: the program and preservation tests share it)."""
    key = (backend.name, device, case, strategy, growth, dtype)
    if key not in _EXPANDED:
        _EXPANDED[key] = backend_expand(backend, get_plan(case, strategy, growth, dtype),
                                        source_weights(case, dtype), device)
    return _EXPANDED[key]


def plan_or_skip(case: str, strategy: str, growth: str, dtype: Optional[str] = None) -> Plan:
    """The plan; a refusal the suite expects skips with the planner's reason (and is
    shown in the summary), any other refusal fails: it would hide a real problem."""
    import pytest

    p = planned(case, strategy, growth, dtype)
    if not isinstance(p, Refused):
        return p
    if expected_refusal(case, strategy, growth):
        record(case, strategy, growth, dtype or "float32", "refused", note=str(p))
        pytest.skip(f"the planner refuses {case} {strategy} {growth}: {p}")
    pytest.fail(f"the planner refused {case} {strategy} {growth}, which the suite expects to be exact: {p}",
                pytrace=False)


def matrix() -> list:
    return [(c, s, g) for c in CASES for s in STRATEGIES for g in GROWTHS]
