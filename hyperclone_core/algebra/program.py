"""The plan's program format: the six ops a backend executes per tensor (Reshape, Take,
Scale, Offset, AddNoise, Cast), and the per-tensor program.  Pure data, printable and
JSON-serializable (``Plan.to_json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

@dataclass(frozen=True)
class Reshape:
    shape: tuple


@dataclass(frozen=True)
class Take:
    """Gather ``axis`` through the plan's index array ``map``."""

    axis: int
    map: str


@dataclass(frozen=True)
class Scale:
    """Multiply by the plan's array ``coeffs``, whose dims line up with ``axes``
    (``axes=()``: a scalar)."""

    axes: tuple
    coeffs: str


@dataclass(frozen=True)
class AddNoise:
    """Add Gaussian noise projected to sum 0 over the copies named by the plan's
    index array ``groups`` along ``axis`` (one group per old index), scaled so that
    mean(W**2) / mean(noise**2) = 10**(snr_db/10).  Drawn by the backend's RNG from
    ``seed``: noisy plans agree across backends in their invariants, not bits."""

    axis: int
    groups: str
    snr_db: float
    seed: int


@dataclass(frozen=True)
class Cast:
    dtype: str


@dataclass(frozen=True)
class Offset:
    """Add a constant: with ``Scale`` it moves a gain stored as ``1 + w`` (Gemma's norms)."""

    value: float


OPS = {"reshape": Reshape, "take": Take, "scale": Scale, "add_noise": AddNoise, "cast": Cast, "offset": Offset}
_OP_NAMES = {v: k for k, v in OPS.items()}


@dataclass(frozen=True)
class TensorPlan:
    name: str
    source: str
    kind: str
    source_shape: tuple
    shape: tuple
    ops: tuple
    strategy: str = ""
    notes: tuple = ()

    def describe(self) -> str:
        def fmt(op):
            body = ", ".join(f"{k}={v}" for k, v in asdict(op).items())
            return f"{_OP_NAMES[type(op)]}({body})"

        src = "" if self.source == self.name else f" <- {self.source}"
        head = f"{self.name}{src}  {list(self.source_shape)} -> {list(self.shape)}"
        if self.strategy:
            head += f"  [{self.strategy}]"
        lines = [head] + [f"    {fmt(op)}" for op in self.ops]
        lines += [f"    # {n}" for n in self.notes]
        return "\n".join(lines)


def op_to_dict(op) -> dict:
    return dict(op=_OP_NAMES[type(op)], **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(op).items()})


def op_from_dict(d: dict):
    d = dict(d)
    kind = OPS[d.pop("op")]
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


__all__ = ["AddNoise", "Cast", "OPS", "Offset", "Reshape", "Scale", "Take", "TensorPlan", "op_from_dict", "op_to_dict"]
