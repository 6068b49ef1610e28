"""The house rules on imports, checked on the source: no import cycles inside
hyperclone_core or a backend package (function-level imports count: a cycle
hidden in a function is still a cycle), and a backend imports no other backend."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "hyperclone_core": ROOT / "hyperclone_core",
    "hyperclone_torch": ROOT / "backends" / "hyperclone_torch",
    "hyperclone_jax": ROOT / "backends" / "hyperclone_jax",
    "hyperclone_mlx": ROOT / "backends" / "hyperclone_mlx",
    "hyperclone_conformance": ROOT / "conformance" / "hyperclone_conformance",
}


def _module_name(pkg: str, root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [pkg, *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(mod: str, path: Path, is_pkg: bool) -> set:
    """Modules ``mod`` imports (absolute names), anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                prefix = ".".join(anchor + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.add(prefix)
            out.update(f"{prefix}.{a.name}" for a in node.names)
    return out


def graph(pkg: str) -> dict:
    root = PACKAGES[pkg]
    files = {_module_name(pkg, root, p): p for p in root.rglob("*.py")}
    edges = {}
    for mod, path in files.items():
        targets = set()
        for name in _imports(mod, path, path.name == "__init__.py"):
            # resolve to the longest known module prefix (``from .x import f`` -> module x)
            parts = name.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in files and cand != mod:
                    targets.add(cand)
                    break
        edges[mod] = {t for t in targets if not mod.startswith(t + ".")}  # a package's own __init__ runs first
    return edges


def cycles(edges: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_no_import_cycles(pkg):
    found = cycles(graph(pkg))
    assert not found, f"{pkg}: import cycles: {found}"


@pytest.mark.parametrize("pkg", ["hyperclone_torch", "hyperclone_jax", "hyperclone_mlx"])
def test_a_backend_imports_no_other_backend(pkg):
    others = {p for p in PACKAGES if p not in (pkg, "hyperclone_core")}
    for path in PACKAGES[pkg].rglob("*.py"):
        mod = _module_name(pkg, PACKAGES[pkg], path)
        bad = sorted(n for n in _imports(mod, path, path.name == "__init__.py") if n.split(".")[0] in others)
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: a backend imports only its framework and the core"


def test_the_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
