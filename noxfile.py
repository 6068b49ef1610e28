"""Sessions: one per backend, the conformance suite per backend, lint, bench, demo.

    nox -s tests                 # everything CI runs, in one venv
    nox -s core                  # hyperclone_core with numpy only (no framework installed)
    nox -s conformance-numpy     # the conformance suite against one backend
    nox -s demo -- --quick       # posargs are forwarded
"""

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]
TORCH = "torch>=2.4"  # 2.13.0 CPU is what the project's machines carry


@nox.session
def tests(session):
    """The whole project suite (torch backend, transformers interop, conformance meta-tests)."""
    session.install(TORCH)
    session.install("-e", ".[torch,hf,dev,plot]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def core(session):
    """The core alone: proves hyperclone_core needs nothing but numpy (framework tests skip)."""
    session.install("-e", ".", "pytest", "hypothesis")
    session.run("python", "-m", "pytest", "tests", *session.posargs)


@nox.session
def torch(session):
    session.install(TORCH)
    session.install("-e", ".[torch,hf,dev]")
    session.run("python", "-m", "pytest", "tests", "-k", "torch or train or expand_model or data or distributed",
                *session.posargs)


@nox.session
def mlx(session):
    """The MLX backend's tests (mlx-lm interop builds its models with transformers; a
    torch-started run resumes on mlx).  On Linux this is MLX's CPU build."""
    session.install(TORCH)
    session.install("-e", ".[mlx,torch,hf,dev]")
    session.run("python", "-m", "pytest", "tests", "-k", "mlx", *session.posargs)


@nox.session
def jax(session):
    """The JAX backend's tests (an 8-device CPU mesh in a child process; transformers loads
    what jax grows; a torch-started run resumes on jax)."""
    session.install(TORCH)
    session.install("-e", ".[jax,torch,hf,dev]")
    session.run("python", "-m", "pytest", "tests", "-k", "jax", *session.posargs)


CONFORMANCE_EXTRAS = {"torch": ".[torch,dev]", "mlx": ".[mlx,dev]", "jax": ".[jax,dev]"}


@nox.session
@nox.parametrize("backend", ["numpy", "torch", "listy", "mlx", "jax"])
def conformance(session, backend):
    """`pytest --pyargs hyperclone_conformance --hyperclone-backend NAME` from the installed package
    (``listy`` is the third-party example in examples/custom_backend)."""
    if backend == "torch":
        session.install(TORCH)
    session.install(CONFORMANCE_EXTRAS.get(backend, ".[dev]"))
    if backend == "listy":
        session.install("./examples/custom_backend")
    session.chdir(session.create_tmp())  # run from the installed package, not the source tree
    session.run("python", "-m", "pytest", "--pyargs", "hyperclone_conformance", "--hyperclone-backend", backend,
                *session.posargs)


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", "hyperclone_core", "backends", "conformance", "tests", "benchmarks", "examples")


@nox.session
def bench(session):
    session.install(TORCH)
    session.install("-e", ".[torch,hf]")
    session.run("python", "benchmarks/expand.py", *session.posargs)


@nox.session
def demo(session):
    session.install(TORCH)
    session.install("-e", ".[torch,plot]")
    session.run("hyperclone", "demo", *session.posargs)
