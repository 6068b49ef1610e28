"""The one planning entry: growth options, as a user types them, -> a checked plan.

Every caller goes through ``plan_growth``: the CLI (``plan``, ``expand``), the
checkpoint expansion, and every backend's in-memory ``expand_model`` /
``expand_params``.  So one set of rules holds everywhere: sizes past
``validate.MAX_DIM`` / ``MAX_LAYERS`` are refused before anything is allocated,
the strategy is parsed once, and a strategy rule that matches no tensor of the
model (a typo such as ``mlp2=noisy:10``) is an error, never silently ignored.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ..errors import PlanError, UsageError
from ..model.spec import tensor_names
from ..model.validate import MAX_DIM, MAX_LAYERS, read_model
from .planner import Growth, Plan, plan
from .strategy import parse


def total_layers(layers: Any, current: int) -> Optional[int]:
    """``layers`` as a total depth: None (unchanged), an int, or ``"+K"`` / ``"N"``."""
    if isinstance(layers, str):
        text = layers.strip()
        try:
            layers = current + int(text[1:]) if text.startswith("+") else int(text)
        except ValueError:
            raise UsageError(f"--layers {layers!r}: give a total depth (e.g. 26) or +K") from None
    if layers is not None and not 1 <= layers <= MAX_LAYERS:
        raise UsageError(f"--layers: {layers} layers is outside [1, {MAX_LAYERS}]")
    return layers


def plan_growth(src_config: Mapping[str, Any], *, width: float = 2, ffn: Optional[float] = None,
                ffn_size: Optional[int] = None, heads: Optional[float] = None, kv_heads: Optional[float] = None,
                layers: Any = None, strategy: Any = None, seed: int = 0, inexact: bool = False,
                layout: str = "tile", untie: bool = False, dtype: Optional[str] = None,
                where: str = "config.json") -> Plan:
    """The checked plan that grows a model with HF config ``src_config``.

    ``width``/``ffn``/``heads``/``kv_heads`` are ratios (``ffn_size`` an absolute ffn
    size); ``layers`` the new total depth or ``"+K"``; ``strategy`` the strategy text
    (``None``: the library default, ``strategy.DEFAULT``) or a Strategy / Rules value;
    ``inexact`` allows strategies that cannot be exact; ``untie`` unties tied
    embeddings; ``where`` names the config in error messages."""
    family, cfg = read_model(dict(src_config), where)
    rules = parse(strategy)
    layers = total_layers(layers, cfg.layers)
    growth = Growth.of(cfg, width=width, ffn=ffn, ffn_size=ffn_size, heads=heads, kv_heads=kv_heads,
                       layers=layers, layout=layout)
    big = {d: n for d, n in growth.sizes.items() if d != "layers" and n > MAX_DIM}
    if big:
        raise UsageError(f"the growth asks for {', '.join(f'{d}={n}' for d, n in big.items())}, past the "
                         f"largest supported size {MAX_DIM}; choose smaller ratios")
    p = plan(family, src_config, growth, rules, seed=seed, allow_inexact=inexact, dtype=dtype, untie=untie)
    unused = rules.unmatched((n, role.kind) for n, (role, _, _) in tensor_names(family, p.decoder).items())
    if unused:
        raise PlanError(f"--strategy rule {', '.join(repr(k) for k in unused)} matches no tensor of this "
                        f"{family.name} model; keys are role kinds (mlp, attn, embed, lm_head, norm, ...) or name "
                        "globs (*.q_proj.*)")
    return p


__all__ = ["plan_growth", "total_layers"]
