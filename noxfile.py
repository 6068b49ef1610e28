"""Sessions: the whole suite, the core alone, one per backend, the conformance suite per backend, lint, bench, demo.

    nox -l                       # list the sessions
    nox -s tests                 # the whole suite with every extra CI installs, in one venv
    nox -s core                  # hyperclone_core with numpy only (no framework installed)
    nox -s torch jax mlx         # one backend's tests each
    nox -s conformance-numpy     # the conformance suite against one backend (numpy torch jax mlx listy)
    nox -t conformance           # the conformance suite against every backend
    nox -s families              # every model type's cases (not only the representative ones) on every backend
    nox -s demo -- --quick       # posargs are forwarded (to pytest, the benchmark, the demo)
"""

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]
TORCH = "torch>=2.4"  # CI pins torch==2.13.0, the CPU build the project's machines carry
CI_EXTRAS = ".[torch,jax,mlx,hf,dev,plot]"  # what .ci/run installs


@nox.session
def tests(session):
    """The whole project suite, with the extras CI installs (every backend, transformers, plots)."""
    session.install(TORCH)
    session.install("-e", CI_EXTRAS)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def core(session):
    """The core alone: proves hyperclone_core needs nothing but numpy (framework tests skip)."""
    session.install("-e", ".", "pytest", "hypothesis")
    session.run("python", "-m", "pytest", "tests", *session.posargs)


@nox.session
def torch(session):
    """The PyTorch backend's tests (training, expand_model, data, distributed)."""
    session.install(TORCH)
    session.install("-e", ".[torch,hf,dev]")
    session.run("python", "-m", "pytest", "tests", "-k", "torch or train or expand_model or data or distributed",
                *session.posargs)


@nox.session
def mlx(session):
    """The MLX backend's tests (Linux: MLX's CPU build; mlx-lm interop; torch-started runs resume on mlx)."""
    session.install(TORCH)
    session.install("-e", ".[mlx,torch,hf,dev]")
    session.run("python", "-m", "pytest", "tests", "-k", "mlx", *session.posargs)


@nox.session
def jax(session):
    """The JAX backend's tests (an 8-device CPU mesh in a child process; transformers loads what jax grows)."""
    session.install(TORCH)
    session.install("-e", ".[jax,torch,hf,dev]")
    session.run("python", "-m", "pytest", "tests", "-k", "jax", *session.posargs)


CONFORMANCE_EXTRAS = {"numpy": ".[dev]", "torch": ".[torch,dev]", "mlx": ".[mlx,dev]", "jax": ".[jax,dev]",
                      "listy": ".[dev]"}
"""Backends the conformance sessions run: the built-in four and listy, the third-party
example in examples/custom_backend."""


def _conformance(backend: str):
    def session_fn(session):
        if backend == "torch":
            session.install(TORCH)
        session.install(CONFORMANCE_EXTRAS[backend])
        if backend == "listy":
            session.install("./examples/custom_backend")
        session.chdir(session.create_tmp())  # run from the installed package, not the source tree
        session.run("python", "-m", "pytest", "--pyargs", "hyperclone_conformance", "--hyperclone-backend", backend,
                    *session.posargs)

    session_fn.__doc__ = f"The conformance suite against the {backend} backend, from the installed package."
    session_fn.__name__ = f"conformance_{backend}"
    return nox.session(name=f"conformance-{backend}", tags=["conformance"], default=False)(session_fn)


for _backend in CONFORMANCE_EXTRAS:
    _conformance(_backend)  # registered under its name by nox.session


@nox.session(default=False)
def families(session):
    """Every model type's conformance cases on numpy, torch, jax and mlx (CI runs the representative ones).

    The suite's type cases (forward against the oracle; width 2, and width 2 plus one layer,
    preserved) with --hyperclone-all-types; posargs go to pytest."""
    session.install(TORCH)
    session.install(".[torch,jax,mlx,dev]")
    session.chdir(session.create_tmp())
    for backend in ("numpy", "torch", "jax", "mlx"):
        session.run("python", "-m", "pytest", "--pyargs", "hyperclone_conformance", "--hyperclone-backend", backend,
                    "--hyperclone-all-types", "-k", "type_", "-q", "-p", "no:cacheprovider", *session.posargs)


@nox.session
def lint(session):
    """ruff over every Python folder (what CI checks)."""
    session.install("ruff")
    session.run("ruff", "check", "hyperclone_core", "backends", "conformance", "tests", "benchmarks", "examples")


@nox.session
def bench(session):
    """benchmarks/expand.py: expansion speed and peak memory (arguments forwarded)."""
    session.install(TORCH)
    session.install("-e", ".[torch,hf]")
    session.run("python", "benchmarks/expand.py", *session.posargs)


@nox.session
def demo(session):
    """hyperclone demo (arguments forwarded, e.g. nox -s demo -- --quick)."""
    session.install(TORCH)
    session.install("-e", ".[torch,plot]")
    session.run("hyperclone", "demo", *session.posargs)
