"""The family registry: model_type -> Family.

Built-in families are data in this package; a user adds one without touching it,
either at run time (``register_family(Family(...))``) or from an installed
distribution through the entry-point group ``hyperclone.families`` (an object that is
a ``Family``, a list of them, or a callable returning either; loaded the first time a
model type is not found, a broken one warns).  ``coverage`` says, for every causal-LM
model type transformers has, whether a family grows it or why it is refused.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from importlib import metadata
from typing import Any, Mapping

from ...errors import ConfigError
from ..spec import Family
from .coverage import COVERAGE


def _builtin_modules() -> list:
    """Every family module of this package, in name order: a module (not ``_private``,
    not ``coverage``) that defines ``FAMILIES`` (a tuple of Family) and ``TINY``
    (model_type -> a tiny HF config of that type, what the tests build it from)."""
    out = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("coverage",):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "FAMILIES"):
            out.append(module)
    return out


MODULES = _builtin_modules()
FAMILIES: dict = {}
_BY_MODEL_TYPE: dict = {}
for _module in MODULES:
    for _f in _module.FAMILIES:
        if _f.name in FAMILIES or any(mt in _BY_MODEL_TYPE for mt in _f.model_types):
            raise RuntimeError(f"built-in family {_f.name!r} ({_module.__name__}) clashes with another built-in family")
        FAMILIES[_f.name] = _f
        _BY_MODEL_TYPE.update({mt: _f for mt in _f.model_types})
BUILTIN = dict(FAMILIES)
"""The families this package defines (FAMILIES also holds registered ones)."""
TINY: dict = {mt: dict(cfg, model_type=mt) for m in MODULES for mt, cfg in getattr(m, "TINY", {}).items()}
"""model_type -> a tiny config of that type (from the module that grows it): what
``tests/test_family_types.py`` builds with transformers' own config class and grows."""
ENTRY_POINT_GROUP = "hyperclone.families"
_plugins_loaded = False


def register_family(family: Family, replace: bool = False) -> Family:
    """Make ``family`` grow its ``model_types`` (and every backend run it: they look
    families up here).  A model type another family already grows is refused unless
    ``replace``.  Returns the family, so a module can write
    ``mine = register_family(Family(...))``."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family takes a Family, not {type(family).__name__}")
    if not family.model_types:
        raise ValueError(f"family {family.name!r} names no model_types")
    clash = FAMILIES.get(family.name)
    taken = [mt for mt in family.model_types if _BY_MODEL_TYPE.get(mt, family) is not family]
    if not replace and ((clash is not None and clash is not family) or taken):
        what = f"model_type {taken[0]!r} is grown by family {_BY_MODEL_TYPE[taken[0]].name!r}" if taken else \
            f"a family named {family.name!r} exists"
        raise ValueError(f"cannot register family {family.name!r}: {what}; pass replace=True to override it")
    FAMILIES[family.name] = family
    for mt in family.model_types:
        _BY_MODEL_TYPE[mt] = family
    return family


def _entry_points() -> list:
    try:
        return list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except TypeError:  # pragma: no cover - Python < 3.10's mapping API
        return list(metadata.entry_points().get(ENTRY_POINT_GROUP, []))


def load_plugins() -> None:
    """Register the families installed distributions declare (once); a broken one warns."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in _entry_points():
        try:
            obj = ep.load()
            obj = obj() if callable(obj) and not isinstance(obj, Family) else obj
            for fam in (obj if isinstance(obj, (list, tuple)) else [obj]):
                register_family(fam)
        except Exception as exc:  # a broken plugin must not take the library down
            warnings.warn(f"family plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)


def get_family(model_type: str) -> Family:
    if model_type not in _BY_MODEL_TYPE:
        load_plugins()
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        row = COVERAGE.get(model_type)
        if row is not None and row.status == "refused":
            raise ConfigError(f"model_type {model_type!r} is not supported: {row.reason}; supported: "
                              f"{', '.join(sorted(_BY_MODEL_TYPE))} (docs/families.md lists every type)") from None
        raise ConfigError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(_BY_MODEL_TYPE))}"
        ) from None


def family_for_config(hf: Mapping[str, Any]) -> Family:
    if not isinstance(hf, Mapping) or "model_type" not in hf:
        raise ConfigError("config.json has no model_type; is it a Hugging Face causal LM config?")
    return get_family(hf["model_type"])


__all__ = ["BUILTIN", "MODULES", "TINY", "ENTRY_POINT_GROUP", "FAMILIES", "family_for_config", "get_family", "load_plugins",
           "register_family"]
