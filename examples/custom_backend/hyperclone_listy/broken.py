"""A subtly broken twin of listy, for the suite's own test (never register it for
real use).  Its ``take`` ignores the plan's index map and tiles the axis by its
new size (``j mod old``).  That is the right map for a plain dim (hidden, ffn,
even heads x head_dim), so most tensors come out right; it is wrong wherever the
map is composite: fused q|k|v and gate|up projections, OLMo's 3 x heads x
head_dim, and q heads when q_per_kv grows.  The suite must catch it and name the
family and the tensor."""

from __future__ import annotations

from . import ListyBackend


class BrokenListyBackend(ListyBackend):
    name = "listy_broken"

    def _index(self, x, index):
        n = len(index.data)
        old = max(index.data) + 1
        return [j % old for j in range(n)]


backend = BrokenListyBackend()
