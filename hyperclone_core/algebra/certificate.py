"""The certificate: what the planner proved, tensor by tensor, before any weight moves.

The rule every mixing must pass is ``certify_coefficients``; the plan-wide rules
(uniform norm growth, compensations, depth) are checked in ``plan.plan`` and recorded
here with it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CertificateError
from .growth import AxisMap


@dataclass(frozen=True)
class Certificate:
    """What was proven, tensor by tensor, and the plan-wide rules checked."""

    exact: bool
    checks: tuple  # (rule, subject, detail)
    inexact: tuple = ()  # reasons the plan is not exact (only with allow_inexact)
    max_coefficient_error: float = 0.0

    def summary(self) -> str:
        status = "EXACT" if self.exact else "INEXACT"
        lines = [f"certificate: {status}; {len(self.checks)} checks passed; "
                 f"max coefficient-sum error {self.max_coefficient_error:.1e}"]
        by_rule: dict = {}
        for rule, _, _ in self.checks:
            by_rule[rule] = by_rule.get(rule, 0) + 1
        lines += [f"  {rule}: {n}" for rule, n in sorted(by_rule.items())]
        lines += [f"  not exact: {r}" for r in self.inexact]
        return "\n".join(lines)


def certify_coefficients(name: str, axis_key: str, coeff: np.ndarray, imap: AxisMap, atol: float = 1e-6) -> float:
    """Rule ``coefficients``: for every output copy, the coefficients over the input
    copies of each old index sum to 1.  Returns the max error; raises if broken."""
    sums = np.zeros((coeff.shape[0], imap.old_size))
    np.add.at(sums.T, imap.src, coeff.T)
    err = float(np.abs(sums - 1.0).max()) if sums.size else 0.0
    if err > atol:
        row, old = np.unravel_index(np.abs(sums - 1.0).argmax(), sums.shape)
        raise CertificateError(
            f"rule 'coefficients' fails for tensor {name}, in-axis [{axis_key}]: the coefficients over "
            f"the copies of old index {old} sum to {sums[row, old]:.6g} for output copy {row}, not 1; "
            "the expanded tensor would not preserve the function (fix the mixing matrix, or use "
            "symmetric)"
        )
    return err


__all__ = ["Certificate", "certify_coefficients"]
