"""Source safety: a checkpoint can only make hyperclone read regular files inside it,
and every byte of a safetensors header is checked before a tensor is read."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from hyperclone_core import io
from hyperclone_core.model import testing
from hyperclone_core.cli import main

SECRET = b"TOP-SECRET-password=hunter2\n" * 4


@pytest.fixture()
def src(tmp_path):
    cfg = testing.CASES["llama"]
    return io.save_checkpoint(tmp_path / "src", cfg, testing.random_weights(cfg), max_shard_bytes=20_000)


def expand_err(capsys, src, dst):
    rc = main(["expand", str(src), str(dst), "--quiet"])
    err = capsys.readouterr().err
    assert not dst.exists(), "a destination was written from a refused source"
    return rc, err


def no_leak(err):
    assert b"hunter2" not in err.encode() and "TOP-SECRET" not in err
    head = struct.unpack("<Q", SECRET[:8])[0]
    assert str(head) not in err, "the error echoes the file's first bytes"


def _index(src):
    return json.loads((src / io.INDEX).read_text())


def _point_index_at(src, target):
    doc = _index(src)
    first = next(iter(doc["weight_map"]))
    doc["weight_map"][first] = target
    (src / io.INDEX).write_text(json.dumps(doc))


def test_index_naming_a_file_outside_src_is_refused_without_leaking_it(src, tmp_path, capsys):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.safetensors").write_bytes(SECRET)
    _point_index_at(src, "../outside/x.safetensors")
    rc, err = expand_err(capsys, src, tmp_path / "dst")
    no_leak(err)
    assert rc == 3 and "outside the checkpoint folder" in err and "../outside/x.safetensors" in err


def test_index_naming_an_absolute_path_is_refused(src, tmp_path, capsys):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    _point_index_at(src, str(secret))
    rc, err = expand_err(capsys, src, tmp_path / "dst")
    no_leak(err)
    assert rc == 3 and "outside the checkpoint folder" in err


def test_shard_symlinked_outside_src_is_refused(src, tmp_path, capsys):
    shard = sorted(set(_index(src)["weight_map"].values()))[0]
    os.replace(src / shard, tmp_path / "elsewhere.safetensors")
    (src / shard).symlink_to(tmp_path / "elsewhere.safetensors")
    rc, err = expand_err(capsys, src, tmp_path / "dst")
    assert rc == 3 and "outside the checkpoint folder" in err and shard in err


def test_tokenizer_symlinked_to_a_secret_is_not_copied(src, tmp_path, capsys):
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (src / "tokenizer.json").symlink_to(tmp_path / "secret.txt")
    rc, err = expand_err(capsys, src, tmp_path / "dst")
    no_leak(err)
    assert rc == 3 and "tokenizer.json" in err and "outside the checkpoint folder" in err


def test_hf_cache_snapshot_symlinks_into_its_blobs_are_followed(tmp_path, capsys):
    """The Hugging Face cache keeps files in ../../blobs and links them from snapshots/REV."""
    cfg = testing.CASES["llama"]
    real = io.save_checkpoint(tmp_path / "real", cfg, testing.random_weights(cfg),
                              extra_files={"tokenizer.json": "{}"})
    repo = tmp_path / "hub" / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in real.iterdir():
        os.replace(f, blobs / f"sha-{f.name}")
        (snap / f.name).symlink_to(os.path.relpath(blobs / f"sha-{f.name}", snap))
    assert main(["expand", str(snap), str(tmp_path / "dst"), "--quiet"]) == 0, capsys.readouterr().err
    assert (tmp_path / "dst" / "tokenizer.json").read_text() == "{}"
    assert not (tmp_path / "dst" / "tokenizer.json").is_symlink()


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", io.INDEX])
def test_a_fifo_never_hangs(tmp_path, name):
    """In a child process with a timeout: on failure it would block for ever."""
    cfg = testing.CASES["llama"]
    src = io.save_checkpoint(tmp_path / "src", cfg, testing.random_weights(cfg))
    (src / name).unlink(missing_ok=True)
    os.mkfifo(src / name)
    proc = subprocess.run([sys.executable, "-m", "hyperclone_core.cli", "expand", str(src),
                           str(tmp_path / "dst"), "--quiet"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and name in proc.stderr and "not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "dst").exists()


# ---------------------------------------------------------------- safetensors headers


def _write_raw(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _rewrite_single(src, edit):
    """Re-write the single-file checkpoint with its header passed through ``edit``."""
    f = io.SafetensorsFile(src / "model.safetensors")
    header = dict(f.header)
    blob = (src / "model.safetensors").read_bytes()[f.start:]
    header, blob = edit(header, blob)
    _write_raw(src / "model.safetensors", header, blob)


@pytest.fixture()
def single(tmp_path):
    cfg = testing.CASES["llama"]
    return io.save_checkpoint(tmp_path / "src", cfg, testing.random_weights(cfg))


def _first(header):
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def test_negative_offsets_are_refused(single, tmp_path, capsys):
    def edit(h, blob):
        k = _first(h)[0]
        a, b = h[k]["data_offsets"]
        h[k]["data_offsets"] = [a - 8, b - 8]
        return h, blob
    _rewrite_single(single, edit)
    rc, err = expand_err(capsys, single, tmp_path / "dst")
    assert rc == 3 and "model.safetensors" in err and "offsets" in err


def test_overlapping_offsets_are_refused(single, tmp_path, capsys):
    def edit(h, blob):
        a, b = _first(h)[:2]
        if h[a]["shape"] == h[b]["shape"]:
            h[b]["data_offsets"] = list(h[a]["data_offsets"])
        else:  # shift b back by 4 bytes into a, growing its end to keep the size
            s, e = h[b]["data_offsets"]
            h[b]["data_offsets"] = [s - 4, e - 4]
        return h, blob
    _rewrite_single(single, edit)
    rc, err = expand_err(capsys, single, tmp_path / "dst")
    assert rc == 3 and "overlap" in err


def test_trailing_bytes_not_covered_by_tensors_are_refused(single, tmp_path, capsys):
    _rewrite_single(single, lambda h, blob: (h, blob + b"\0" * 64))
    rc, err = expand_err(capsys, single, tmp_path / "dst")
    assert rc == 3 and "not covered" in err


def test_a_norm_stored_as_int32_is_refused(single, tmp_path, capsys):
    def edit(h, blob):
        h["model.norm.weight"]["dtype"] = "I32"  # same byte count as F32
        return h, blob
    _rewrite_single(single, edit)
    rc, err = expand_err(capsys, single, tmp_path / "dst")
    assert rc == 3 and "model.norm.weight" in err and "int32" in err


def test_a_tensor_in_two_shards_is_refused(src, tmp_path, capsys):
    shards = sorted(set(_index(src)["weight_map"].values()))
    (src / io.INDEX).unlink()  # found by globbing the shards instead
    a = io.SafetensorsFile(src / shards[0])
    name = a.keys()[0]
    extra = {name: np.asarray(a.raw(name))}
    b = io.SafetensorsFile(src / shards[1])
    extra.update({k: np.asarray(b.raw(k)) for k in b.keys()})
    io.write_safetensors(src / shards[1], extra)
    rc, err = expand_err(capsys, src, tmp_path / "dst")
    assert rc == 3 and name in err and "more than one shard" in err


def test_duplicate_keys_in_a_header_are_refused(single, tmp_path, capsys):
    f = io.SafetensorsFile(single / "model.safetensors")
    blob = (single / "model.safetensors").read_bytes()[f.start:]
    k = _first(f.header)[0]
    raw = json.dumps(f.header)[:-1] + ", " + json.dumps(k) + ": " + json.dumps(f.header[k]) + "}"
    (single / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw.encode() + blob)
    rc, err = expand_err(capsys, single, tmp_path / "dst")
    assert rc == 3 and "twice" in err
