"""pytest plugin (entry point ``pytest11``): the options, the report header, the
known-failure file and the closing summary table of the conformance suite.

Loaded into every pytest run of an environment where hyperclone is installed, so
it imports nothing heavy at import time and does nothing unless the conformance
suite is selected (``--hyperclone-backend``, ``HYPERCLONE_TEST_BACKEND``) or its
tests ran.
"""

from __future__ import annotations

import os
import sys
import warnings

import pytest

ENV_VAR = "HYPERCLONE_TEST_BACKEND"
DEFAULT_BACKEND = "numpy"
ALL_TYPES_ENV = "HYPERCLONE_ALL_TYPES"
ALL_TYPES_MARK = "hyperclone_all_types"
"""Marks a case that runs only with ``--hyperclone-all-types`` (a model type outside the
representative set, ``_suite.REPRESENTATIVE``); deselected otherwise."""


def pytest_addoption(parser):
    group = parser.getgroup("hyperclone", "hyperclone conformance suite")
    group.addoption("--hyperclone-backend", default=None, metavar="NAME",
                    help=f"backend to test (an entry point of group hyperclone.backends); "
                         f"default: ${ENV_VAR} or {DEFAULT_BACKEND}")
    group.addoption("--hyperclone-device", default=None, metavar="DEVICE",
                    help="device passed to the backend's asarray (e.g. cuda); default: the backend's")
    group.addoption("--hyperclone-xfails", default=None, metavar="FILE",
                    help="known failures of this backend: one test id per line ('#' starts a comment)")
    group.addoption("--hyperclone-all-types", action="store_true", default=False,
                    help=f"run the cases of every model type the built-in families grow (default: a representative "
                         f"subset covering every decoder feature and role layout; also ${ALL_TYPES_ENV}=1)")


def pytest_configure(config):
    config.addinivalue_line("markers", "capability(name): needs the backend to declare this capability")
    config.addinivalue_line("markers", f"{ALL_TYPES_MARK}: runs only with --hyperclone-all-types")
    name = selected_backend(config, default=None)
    if name is None:
        return
    from hyperclone_core import HypercloneError
    from hyperclone_core.run.protocol import load_backend

    try:
        load_backend(name)
    except HypercloneError as exc:
        raise pytest.UsageError(f"--hyperclone-backend {name}: {exc}") from None


def selected_backend(config, default=DEFAULT_BACKEND):
    return config.getoption("hyperclone_backend", None) or os.environ.get(ENV_VAR) or default


def describe_backend(config, name) -> str:
    from hyperclone_core.run.protocol import load_backend

    b = load_backend(name)
    caps = ", ".join(sorted(getattr(b, "capabilities", ()))) or "none"
    device = config.getoption("hyperclone_device") or b.device_name()
    return f"hyperclone backend: {name} {b.version()}  device: {device}  capabilities: {caps}"


def pytest_report_header(config):
    name = selected_backend(config, default=None)
    return None if name is None else [describe_backend(config, name)]


# ---------------------------------------------------------------- known failures


def read_xfails(path) -> dict:
    """test id -> reason.  A line is ``ID`` or ``ID  # reason``; ids are the test's
    name with parameters (``test_function_preservation[llama-symmetric-width2]``),
    optionally prefixed by the module file (``test_preservation.py::``)."""
    out = {}
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as exc:
        raise pytest.UsageError(f"--hyperclone-xfails {path}: cannot read it ({exc.strerror})") from None
    for line in text.splitlines():
        tid, _, reason = line.partition("#")
        tid = tid.strip()
        if tid:
            out[tid] = reason.strip() or "known failure listed in " + os.path.basename(str(path))
    return out


def _ids(item) -> tuple:
    base = os.path.basename(str(item.path)) if getattr(item, "path", None) else ""
    return (item.name, f"{base}::{item.name}", item.nodeid)


def all_types(config) -> bool:
    """Whether every model type's cases run (``--hyperclone-all-types`` or ``HYPERCLONE_ALL_TYPES=1``)."""
    return bool(config.getoption("hyperclone_all_types", False)) or \
        os.environ.get(ALL_TYPES_ENV, "").strip().lower() not in ("", "0", "false", "no")


def type_params(cases) -> list:
    """pytest params for ``cases`` (case names, or tuples starting with one): a type case
    outside ``_suite.REPRESENTATIVE`` carries the all-types mark (deselected by default)."""
    from hyperclone_conformance import _suite

    extra = set(_suite.TYPE_CASES) - set(_suite.REPRESENTATIVE)
    out = []
    for c in cases:
        name = c[0] if isinstance(c, tuple) else c
        marks = [getattr(pytest.mark, ALL_TYPES_MARK)] if name in extra else []
        out.append(pytest.param(*(c if isinstance(c, tuple) else (c,)), marks=marks))
    return out


def pytest_collection_modifyitems(config, items):
    _xfails(config, items)
    if not all_types(config):
        dropped = [item for item in items if item.get_closest_marker(ALL_TYPES_MARK)]
        if dropped:
            keep = set(map(id, dropped))
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if id(item) not in keep]


def _xfails(config, items):
    path = config.getoption("hyperclone_xfails", None)
    if not path:
        return
    xfails = read_xfails(path)
    used = set()
    for item in items:
        for tid in _ids(item):
            if tid in xfails:
                used.add(tid)
                item.add_marker(pytest.mark.xfail(reason=xfails[tid], strict=False))
                break
    stale = sorted(set(xfails) - used)
    if stale:
        msg = (f"{len(stale)} id(s) in {path} match no collected test (fixed or renamed? remove them): "
               + ", ".join(stale[:10]) + (" ..." if len(stale) > 10 else ""))
        config.stash[_STALE] = msg
        warnings.warn(pytest.PytestWarning(msg), stacklevel=2)


_STALE = pytest.StashKey[str]()


# ---------------------------------------------------------------- summary


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    suite = sys.modules.get("hyperclone_conformance._suite")
    if suite is None or not suite.RESULTS:
        return
    tr = terminalreporter
    name = selected_backend(config)
    tr.section(f"hyperclone conformance: backend {name}")
    tr.write_line(describe_backend(config, name))  # again: -q hides the header
    for line in summary_lines(suite):
        tr.write_line(line)
    if _STALE in config.stash:
        tr.write_line("warning: " + config.stash[_STALE])


def _cell(r) -> str:
    if r is None:
        return "-"
    if r["status"] in ("pass", "FAIL"):
        return f"{r['abs']:.0e}/{r['rel']:.0e} {'ok' if r['status'] == 'pass' else 'FAIL'}"
    return r["status"]


def summary_lines(suite) -> list:
    """The table: per case x strategy, one cell per growth: max |logit diff| / that
    relative to max |logit|, and ok/FAIL; ``refused`` where the planner refuses."""
    results = suite.RESULTS
    lines = []
    for dtype, bound in (("float32", suite.F32_BOUND), ("bfloat16", suite.BF16_BOUND)):
        keys = [k for k in results if k[3] == dtype]
        if not keys:
            continue
        growths = [g for g in {**suite.GROWTHS, **getattr(suite, "TYPE_GROWTHS", {})} if any(k[2] == g for k in keys)]
        lines.append(f"function preservation, {dtype}: cell = max|dlogit| / relative to max|logit| "
                     f"(bound {bound:g}), per growth")
        order = list(suite.CASES) + list(getattr(suite, "FORWARD_CASES", ()))
        rows = sorted({(k[0], k[1]) for k in keys},
                      key=lambda r: (order.index(r[0]) if r[0] in order else len(order), r[0],
                                     list(suite.STRATEGIES).index(r[1])))
        width = max([11] + [len(case) for case, _ in rows])
        head = f"{'case':<{width}} {'strategy':<14}" + "".join(f" {g:<16}" for g in growths)
        lines += [head, "-" * len(head)]
        for case, strat in rows:
            cells = [_cell(results.get((case, strat, g, dtype))) for g in growths]
            lines.append(f"{case:<{width}} {strat:<14}" + "".join(f" {c:<16}" for c in cells))
        counts: dict = {}
        for k in keys:
            counts[results[k]["status"]] = counts.get(results[k]["status"], 0) + 1
        lines.append("  " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        for k in keys:
            r = results[k]
            if r["status"] == "FAIL":
                lines.append(f"  FAIL {'-'.join(k[:3])}: max|dlogit| {r['abs']:.3g} ({r['rel']:.3g} relative, "
                             f"bound {r['bound']:g}) {r['note']}")
        lines.append("")
    refusals = sorted({r["note"] for r in results.values() if r["status"] == "refused"})
    if refusals:
        lines.append("planner refusals (reasons):")
        lines += [f"  {n}" for n in refusals]
    return lines
