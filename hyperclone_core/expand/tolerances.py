"""How far a clone's logits may drift from its source's before verification fails.

The bound is relative: max |logits' - logits| <= bound * max |logits|.  It follows
from the least precise float dtype either checkpoint stores, because storage
rounding is the only thing that separates an exact plan's clone from its source.
The conformance suite states the same bounds for backends (it keeps its own names).
"""

from __future__ import annotations

F32_RELATIVE = 1e-4
"""float32 / float64 weights (the bound docs/design.md states for function preservation)."""

BF16_RELATIVE = 5e-2
"""bfloat16 weights: 8 significant bits (step 3.9e-3), and a split coefficient such as
1/3 or a noisy copy is rounded on its own, so the copies no longer sum exactly to
the source; measured worst case 6e-3 (llama, width 3)."""

F16_RELATIVE = 1e-2
"""float16 weights: 11 significant bits (step 4.9e-4).  Measured worst case over the 14
test cases from a float16 source (width 2 and 3; symmetric, noisy:10, random_split):
1.3e-3, so the bound leaves the same ~8x margin as the bfloat16 one."""

BY_DTYPE = {"float64": F32_RELATIVE, "float32": F32_RELATIVE, "float16": F16_RELATIVE,
            "bfloat16": BF16_RELATIVE}
_ORDER = ("float64", "float32", "float16", "bfloat16")


def coarsest(dtypes) -> str:
    """The least precise float dtype among ``dtypes`` (float32 when none is a float)."""
    found = [d for d in _ORDER if d in set(dtypes)]
    return found[-1] if found else "float32"


def default_tolerance(dtypes) -> float:
    """The relative bound for checkpoints storing ``dtypes``."""
    return BY_DTYPE[coarsest(dtypes)]


__all__ = ["BF16_RELATIVE", "BY_DTYPE", "F16_RELATIVE", "F32_RELATIVE", "coarsest", "default_tolerance"]
