"""Fixtures of the conformance suite: the backend under test, its device, and the
capability gate (a test marked ``capability("train")`` is skipped, with that
reason, on a backend that does not declare ``train``)."""

from __future__ import annotations

import pytest

from hyperclone_conformance.plugin import selected_backend


@pytest.fixture(scope="session")
def backend(pytestconfig):
    from hyperclone_core.run.protocol import load_backend

    return load_backend(selected_backend(pytestconfig))


@pytest.fixture(scope="session")
def device(pytestconfig):
    return pytestconfig.getoption("hyperclone_device", None)


@pytest.fixture(autouse=True)
def _capability_gate(request, backend):
    for mark in request.node.iter_markers("capability"):
        for cap in mark.args:
            if cap not in getattr(backend, "capabilities", ()):
                pytest.skip(f"backend {backend.name!r} does not declare the {cap!r} capability")
