"""Models named by their hub id (``ORG/NAME[@REVISION]``), read from a Hugging Face
cache the tests lay out as huggingface_hub writes it (``models--ORG--NAME/blobs``,
``snapshots/<commit>/`` of symlinks into the blobs, ``refs/<branch>``); never the network."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hyperclone_core import io
from hyperclone_core.cli import main
from hyperclone_core.errors import CheckpointError
from hyperclone_core.io import hub
from hyperclone_core.model import testing
from hyperclone_core.run.reference import forward

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import constants  # noqa: E402

REPO = "testorg/tiny-llama"
MAIN = "a" * 40
V1 = "b" * 40


def _snapshot(cache, repo: str, commit: str, folder, refs=("main",)) -> None:
    """``folder``'s files into ``cache`` as one snapshot of ``repo``, as huggingface_hub lays it out."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for f in sorted(os.listdir(folder)):
        data = (folder / f).read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / f)
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding REPO at MAIN (refs/main) and at V1 (refs/v1, other
    weights), offline; returns (cache folder, {commit: weights})."""
    cache = tmp_path / "hf-cache"
    cfg = testing.CASES["llama"]
    made = {}
    for commit, refs, seed in ((MAIN, ("main",), 1), (V1, ("v1",), 2)):
        w = testing.random_weights(cfg, seed=seed)
        io.save_checkpoint(tmp_path / f"made-{seed}", cfg, w)
        (tmp_path / f"made-{seed}" / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
        _snapshot(cache, REPO, commit, tmp_path / f"made-{seed}", refs)
        made[commit] = w
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache, made


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_parse():
    assert hub.parse("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", None)
    assert hub.parse("meta-llama/Llama-3.2-1B@v1.0") == ("meta-llama/Llama-3.2-1B", "v1.0")
    for not_an_id in ("/abs/path", "one", "a/b/c", "../x", "./x", "a/..", "org/name@"):
        assert hub.parse(not_an_id) is None, not_an_id


def test_expand_by_hub_id_records_it_in_the_card(cache, tmp_path):
    _, made = cache
    assert main(["expand", REPO, str(tmp_path / "wide"), "--quiet"]) == 0
    tokens = testing.random_tokens(96)
    wide_cfg, wide = io.load_weights(tmp_path / "wide")
    fam = io.Checkpoint(REPO)
    assert fam.hub.repo_id == REPO and fam.hub.commit == MAIN and fam.hub.revision is None
    from hyperclone_core import family_for_config

    f = family_for_config(wide_cfg)
    src_logits = forward(f, f.read(testing.CASES["llama"]), made[MAIN], tokens)
    assert _rel(forward(f, f.read(wide_cfg), wide, tokens), src_logits) < 1e-5
    card = (tmp_path / "wide" / "README.md").read_text()
    assert f"\nbase_model: {REPO}\n" in card and f"(commit {MAIN})" in card
    assert "license: apache-2.0" in card  # inherited from the cached card (a symlink into blobs)
    report = json.loads((tmp_path / "wide" / "hyperclone.json").read_text())
    assert report["source"] == REPO and report["source_hub"] == {"repo_id": REPO, "revision": None, "commit": MAIN}
    assert f'src = "{REPO}"' in (tmp_path / "wide" / "recipe.toml").read_text()  # the replay reads the id


def test_revision_picks_its_snapshot(cache, tmp_path):
    _, made = cache
    ck = io.Checkpoint(f"{REPO}@v1")
    assert ck.hub.commit == V1 and ck.hub.revision == "v1"
    np.testing.assert_array_equal(ck.read("model.embed_tokens.weight"), made[V1]["model.embed_tokens.weight"])
    assert io.Checkpoint(f"{REPO}@{MAIN}").hub.commit == MAIN  # a commit hash as the revision
    assert main(["expand", f"{REPO}@v1", str(tmp_path / "w1"), "--quiet"]) == 0
    card = (tmp_path / "w1" / "README.md").read_text()
    assert f"base_model: {REPO}\nbase_model_revision: v1\n" in card and "at revision v1" in card


def test_plan_verify_and_the_python_api_take_ids(cache, tmp_path, capsys):
    assert main(["plan", REPO, "--width", "2"]) == 0
    assert "hidden" in capsys.readouterr().out
    assert main(["expand", REPO, str(tmp_path / "wide"), "--quiet"]) == 0
    assert main(["verify", REPO, str(tmp_path / "wide")]) == 0
    assert io.read_config(REPO)["model_type"] == "llama"
    torch_backend = pytest.importorskip("hyperclone_torch")
    model = torch_backend.Decoder.from_pretrained(REPO)
    assert model.decoder.hidden == 32


def test_train_takes_an_id(cache, tmp_path, capsys):
    np.save(tmp_path / "t.npy", testing.random_tokens(96, batch=8, seq=32))
    assert main(["train", REPO, "--data", str(tmp_path / "t.npy"), "--out", str(tmp_path / "o"), "--steps", "2",
                 "--batch-size", "2", "--seq-len", "8", "--eval-every", "1", "--eval-batches", "1",
                 "--no-progress", "--json"]) == 0 or pytest.fail(capsys.readouterr().err)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2


def test_a_local_folder_wins_over_an_id(cache, tmp_path):
    cfg = testing.CASES["llama"]
    local = testing.random_weights(cfg, seed=9)
    io.save_checkpoint(tmp_path / REPO, cfg, local)  # ./testorg/tiny-llama, relative to the cwd
    ck = io.Checkpoint(REPO)
    assert ck.hub is None
    np.testing.assert_array_equal(ck.read("model.embed_tokens.weight"), local["model.embed_tokens.weight"])


def test_unknown_id_offline_is_exit_3_naming_it(cache, tmp_path):
    c, _ = cache
    env = dict(os.environ, HF_HUB_CACHE=str(c), HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "hyperclone_core.cli", "plan", "nobody/no-such-model@v2"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nobody/no-such-model@v2" in lines[0] and "HF_HUB_OFFLINE" in lines[0], r.stderr


def test_without_huggingface_hub_the_message_says_what_to_install(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match=r"pip install 'hyperclone\[hf\]'"):
        io.Checkpoint("someorg/somemodel")


def test_the_cache_layout_is_the_one_huggingface_hub_reads(cache):
    """huggingface_hub's own cache scanner sees the test's cache as it sees one it wrote:
    the repo, both snapshots, the refs pointing at them, no corrupted entry."""
    c, _ = cache
    info = huggingface_hub.scan_cache_dir(c)
    assert not info.warnings, info.warnings
    (repo,) = [r for r in info.repos if r.repo_id == REPO]
    assert repo.repo_type == "model"
    assert {r.commit_hash: set(r.refs) for r in repo.revisions} == {MAIN: {"main"}, V1: {"v1"}}
    assert {f.file_name for r in repo.revisions for f in r.files} >= {"config.json", "model.safetensors"}


def _offline_env(hf_home) -> dict:
    """Environment of a fresh process that knows the cache only through HF_HOME and is offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    return env


def test_a_fresh_process_grows_an_id_from_hf_home_offline(tmp_path):
    """What a user has: a model huggingface_hub cached under $HF_HOME/hub, HF_HUB_OFFLINE=1,
    nothing monkeypatched (the hub's settings are read from the environment at import):
    plan, expand, verify and train take the id, and the card names it as base_model."""
    hf_home = tmp_path / "hf-home"
    cfg = testing.CASES["llama"]
    io.save_checkpoint(tmp_path / "made", cfg, testing.random_weights(cfg, seed=3))
    _snapshot(hf_home / "hub", REPO, MAIN, tmp_path / "made")
    env, work = _offline_env(hf_home), tmp_path / "work"
    work.mkdir()
    np.save(work / "t.npy", testing.random_tokens(96, batch=8, seq=32))

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "hyperclone_core.cli", *args], capture_output=True, text=True,
                           env=env, cwd=work, timeout=300)
        assert r.returncode == 0, f"hyperclone {' '.join(args)}: exit {r.returncode}\n{r.stderr}"
        return r.stdout

    assert "hidden" in cli("plan", REPO, "--width", "2")
    cli("expand", REPO, "wide", "--width", "2", "--layers", "+1", "--quiet")
    cli("verify", REPO, "wide")
    card = (work / "wide" / "README.md").read_text()
    assert f"\nbase_model: {REPO}\n" in card and f"(commit {MAIN})" in card
    cli("train", REPO, "--data", "t.npy", "--out", "run", "--steps", "1", "--batch-size", "2", "--seq-len", "8",
        "--eval-every", "1", "--eval-batches", "1", "--no-progress")
    assert not (work / "testorg").exists(), "the id was read as a folder"


def test_sharded_snapshot_grows_by_id(cache, tmp_path):
    """A sharded model (model.safetensors.index.json and its shards, each a symlink into
    the blobs) resolves and grows like a single-file one."""
    c, _ = cache
    cfg = testing.CASES["llama"]
    w = testing.random_weights(cfg, seed=5)
    io.save_checkpoint(tmp_path / "sharded", cfg, w, max_shard_bytes=20_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    _snapshot(c, "testorg/sharded", MAIN, tmp_path / "sharded")
    ck = io.Checkpoint("testorg/sharded")
    assert ck.hub.commit == MAIN
    np.testing.assert_array_equal(ck.read("lm_head.weight"), w["lm_head.weight"])
    assert main(["expand", "testorg/sharded", str(tmp_path / "wide"), "--quiet"]) == 0
    assert main(["verify", "testorg/sharded", str(tmp_path / "wide")]) == 0


def test_python_api_grows_an_id(cache, tmp_path):
    """expand_checkpoint and the backends' loaders take the id like a folder."""
    from hyperclone_core.expand.checkpoint import expand_checkpoint

    _, made = cache
    expand_checkpoint(f"{REPO}@v1", tmp_path / "wide", width=2, progress=False)
    report = json.loads((tmp_path / "wide" / "hyperclone.json").read_text())
    assert report["source_hub"] == {"repo_id": REPO, "revision": "v1", "commit": V1}
    jax_interop = pytest.importorskip("hyperclone_jax.interop")
    config, params = jax_interop.load_pretrained(REPO)
    assert config["hidden_size"] == 32
    np.testing.assert_array_equal(np.asarray(params["model.embed_tokens.weight"]), made[MAIN]["model.embed_tokens.weight"])


@pytest.mark.parametrize("command", ["expand", "verify", "train"])
def test_unknown_id_offline_is_exit_3_in_every_command(cache, tmp_path, capsys, command):
    args = {"expand": ["expand", "nobody/nothing", str(tmp_path / "w")],
            "verify": ["verify", REPO, "nobody/nothing"],
            "train": ["train", "nobody/nothing", "--data", "x.npy", "--out", str(tmp_path / "o")]}[command]
    assert main(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nobody/nothing" in err[0] and "HF_HUB_OFFLINE" in err[0], err
    assert not (tmp_path / "w").exists()


def test_a_snapshot_without_weights_is_not_taken_offline(cache, tmp_path):
    """A cached snapshot holding only config.json (an interrupted download) is not a model:
    offline, the id is an input error naming it, not a "no weights" failure mid-way."""
    c, _ = cache
    (tmp_path / "cfg-only").mkdir()
    (tmp_path / "cfg-only" / "config.json").write_text(json.dumps(testing.CASES["llama"]))
    _snapshot(c, "testorg/partial", MAIN, tmp_path / "cfg-only")
    with pytest.raises(CheckpointError, match="testorg/partial.*HF_HUB_OFFLINE"):
        io.Checkpoint("testorg/partial")
