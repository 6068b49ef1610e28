"""The core's rooms: every room's docstring names each of its modules (one job per
module), and the rooms import each other only downwards: no cycle between rooms, so
the house keeps its floors (model at the bottom, cli.py on top)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from test_import_graph import cycles, graph

CORE = Path(__file__).resolve().parents[1] / "hyperclone_core"
ROOMS = ("model", "algebra", "run", "io", "console", "expand", "train", "demo")


@pytest.mark.parametrize("room", ROOMS)
def test_a_rooms_docstring_names_each_of_its_modules(room):
    doc = ast.get_docstring(ast.parse((CORE / room / "__init__.py").read_text())) or ""
    modules = sorted(p.stem for p in (CORE / room).glob("*.py") if p.stem != "__init__")
    modules += sorted(p.name for p in (CORE / room).iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    missing = [m for m in modules if f"``{m}``" not in doc]
    assert not missing, f"hyperclone_core/{room}/__init__.py does not say what {missing} do"


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else ".".join(parts[:2])


def test_rooms_import_each_other_only_downwards():
    edges: dict = {}
    for mod, targets in graph("hyperclone_core").items():
        a = _room(mod)
        for t in targets:
            b = _room(t)
            if a != b and b != "hyperclone_core":  # the package face re-exports; it is no room
                edges.setdefault(a, set()).add(b)
    assert not cycles(edges), f"rooms that import each other: {cycles(edges)}"
    assert "model" not in edges.get("errors", set())
    assert not edges.get("hyperclone_core.errors"), "errors.py imports nothing of the core"
    for low in ("model", "algebra"):
        assert not edges.get(low, set()) & {"run", "console", "expand", "train", "demo", "hyperclone_core.cli"}, \
            f"{low} imports a room above it: {sorted(edges[low])}"
