"""A backend writes only what its framework makes different: the plan primitives
have their defaults in the core (``hyperclone_core.run.arrayops.ArrayPrimitives``),
so no backend's ``backend.py`` re-binds module functions as static methods, and
every method of the ``expand`` protocol resolves on each backend object."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from hyperclone_core.run.arrayops import ArrayPrimitives
from hyperclone_core.run.protocol import ExpandBackend

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("hyperclone_torch", "hyperclone_jax", "hyperclone_mlx")
EXPAND = [n for n, v in vars(ExpandBackend).items() if callable(v) and not n.startswith("_")]


@pytest.mark.parametrize("pkg", BACKENDS)
def test_backend_py_binds_no_static_methods(pkg):
    text = (ROOT / "backends" / pkg / "backend.py").read_text()
    assert "staticmethod(" not in text, f"backends/{pkg}/backend.py re-binds functions as static methods"


@pytest.mark.parametrize("pkg", BACKENDS)
def test_launch_command_lives_in_distributed(pkg):
    text = (ROOT / "backends" / pkg / "distributed.py").read_text()
    assert "\ndef launch_command(" in text


@pytest.mark.parametrize("pkg", BACKENDS + ("numpy",))
def test_expand_methods_resolve(pkg):
    if pkg == "numpy":
        from hyperclone_core.run.numpy_backend import backend
    else:
        pytest.importorskip(pkg.split("_")[1] if pkg != "hyperclone_mlx" else "mlx.core")
        backend = importlib.import_module(pkg).backend
    assert isinstance(backend, ArrayPrimitives) and isinstance(backend, ExpandBackend)
    assert {"asarray", "to_numpy", "shape", "take", "scale", "zero_sum_noise", "mean_square", "add_scaled",
            "reshape", "cast"} <= set(EXPAND)
    for name in EXPAND + ["save_checkpoint", "load_checkpoint"]:
        method = getattr(backend, name)
        assert inspect.ismethod(method), f"{pkg}: {name} is not a method of the backend object"
        impl = next(k for k in type(backend).__mro__ if name in vars(k))
        assert impl is not ExpandBackend and not getattr(vars(impl)[name], "__isabstractmethod__", False), \
            f"{pkg}: {name} resolves to the protocol's stub"
        if name in ("asarray", "to_numpy"):
            assert impl is not ArrayPrimitives, f"{pkg}: {name} is the base's NotImplementedError"
