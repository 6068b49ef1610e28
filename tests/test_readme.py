"""README.md runs as written: every fenced block, in order, in a temp folder holding the
names it uses (a tiny byte-level Llama as ``small``, a text file as ``corpus.txt``).

What is not executed is checked instead: the set-up commands (``./run demo``, ``./run
tests``) are the ones .ci/run runs, and the extras ``./run`` installs are pyproject's
(this environment is installed already); ``python -m pytest`` and ``nox`` lines would
run the suite inside itself.  The demo runs
with its seconds-long ``tiny`` preset appended (the README's durations are measured, not
tested)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hyperclone_core import io
from hyperclone_core.model import testing

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, re.M | re.S)
NOT_RUN = ("pip install", "python -m pytest", "nox ", "./run ")
DEMO_EXTRA = " --preset tiny --no-progress --threads 1"


def test_every_block_says_its_language():
    assert BLOCKS and all(lang in ("bash", "python", "toml", "text") for lang, _ in BLOCKS), \
        [lang for lang, _ in BLOCKS]


def setup_lines() -> list:
    return [re.sub(r"\s+#.*$", "", line) for lang, body in BLOCKS if lang == "bash" for line in body.splitlines()
            if line.startswith("./run ")]


def test_the_two_setup_commands_are_what_ci_runs():
    """The README sets up with two commands, one for the main job and one for the tests,
    and .ci/run runs exactly those (with the torch pin of these machines in the
    environment, which the README names too)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    lines = setup_lines()
    assert [line.split()[1] for line in lines] == ["demo", "tests"], lines
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert all(line in ci for line in lines), (lines, ci)
    pin = re.search(r'HYPERCLONE_TORCH="([^"]+)"', "\n".join(ci))
    assert pin and f'HYPERCLONE_TORCH="{pin.group(1)}"' in README
    script = (ROOT / "run").read_text()
    assert os.access(ROOT / "run", os.X_OK)
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for group in re.findall(r'-e "\.\[([\w,]+)\]"', script):
        assert set(group.split(",")) <= extras, group
    assert "-m pytest -q" in script and "--pyargs hyperclone_conformance" in script


def test_pip_lines_name_extras_pyproject_defines():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for _, body in BLOCKS:
        for group in re.findall(r'"\.\[([\w,]+)\]"', body):
            assert set(group.split(",")) <= extras, body


def runnable(body: str) -> str:
    out = []
    for line in body.splitlines():
        if line.startswith(NOT_RUN):
            continue
        line = re.sub(r"\s+#.*$", "", line)
        if line.startswith("hyperclone demo"):
            line += DEMO_EXTRA
        out.append(line)
    return "\n".join(out)


@pytest.fixture()
def folder(tmp_path):
    cfg = dict(testing.CASES["llama"], vocab_size=256, max_position_embeddings=256)
    io.save_checkpoint(tmp_path / "small", cfg, testing.random_weights(cfg, seed=0))
    (tmp_path / "small" / "README.md").write_text("# small: the base model's own card\n")
    (tmp_path / "corpus.txt").write_text("HyperCloning grows a small model into a wide one. " * 2000)
    return tmp_path


def test_readme_blocks_run_as_written(folder):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    prelude = f'set -euo pipefail\nhyperclone() {{ {shlex.quote(sys.executable)} -m hyperclone_core.cli "$@"; }}\n'
    ran = 0
    for lang, body in BLOCKS:
        if lang == "toml":
            first = body.splitlines()[0]
            assert re.fullmatch(r"# [\w.-]+\.toml", first), f"a TOML block starts with its file name: {first!r}"
            (folder / first[2:]).write_text(body)
        elif lang == "bash" and runnable(body).strip():
            r = subprocess.run(["bash", "-c", prelude + runnable(body)], cwd=folder, env=env, capture_output=True,
                               text=True, timeout=900)
            assert r.returncode == 0, f"{body}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
            ran += 1
        elif lang == "python":
            r = subprocess.run([sys.executable, "-c", body], cwd=folder, env=env, capture_output=True, text=True,
                               timeout=900)
            assert r.returncode == 0, f"{body}\n--- stderr\n{r.stderr[-3000:]}"
            ran += 1
    assert ran >= 5
    # what the blocks promise they made
    for name in ("README.md", "BASE_MODEL_README.md", "recipe.toml", "hyperclone.json", "plan.json"):
        assert (folder / "wide" / name).is_file(), name
    shards = sorted(p.name for p in (folder / "wide").glob("*.safetensors"))
    assert [(folder / "wide-again" / s).read_bytes() == (folder / "wide" / s).read_bytes() for s in shards] == \
        [True] * len(shards)  # the replayed recipe wrote the same bytes
    assert (folder / "runs" / "wide" / "checkpoint-0000200").is_dir()
    assert (folder / "runs" / "wide" / "recipe.toml").is_file()
    assert (folder / "hyperclone-demo" / "results.json").is_file()
    assert io.read_config(folder / "wide-recipe")["intermediate_size"] == 128
