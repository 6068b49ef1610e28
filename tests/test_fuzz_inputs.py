"""Fuzzing config.json values and safetensors headers: every input ends in success or
a clean HypercloneError (the CLI: a classified exit code, one line), never another
exception, and never a partial destination."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperclone_core import io
from hyperclone_core.model import testing
from hyperclone_core.cli import main
from hyperclone_core.errors import HypercloneError

CLEAN_CODES = {0, 2, 3, 4, 5}
FUZZ = settings(max_examples=int(os.environ.get("HYPERCLONE_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=list(HealthCheck), derandomize="HYPERCLONE_FUZZ_EXAMPLES" not in os.environ)
"""60 examples per property in the suite (deterministic); HYPERCLONE_FUZZ_EXAMPLES=5000 for a long random run."""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cfg = testing.CASES["llama"]
    return io.save_checkpoint(tmp_path_factory.mktemp("fuzz") / "base", cfg, testing.random_weights(cfg))


def check_cli(src: Path, work: Path, capsys, *extra) -> int:
    dst = work / "dst"
    rc = main(["expand", str(src), str(dst), "--quiet", *extra])
    err = capsys.readouterr().err
    assert rc in CLEAN_CODES, err
    assert "Traceback" not in err
    assert not [p for p in work.iterdir() if io.TMP_MARK in p.name], "a temp folder was left"
    if rc == 0:
        ck = io.Checkpoint(dst)  # a complete, readable checkpoint
        assert (dst / "hyperclone.json").is_file() and ck.names()
    else:
        assert not dst.exists(), "a failed run left a destination"
        assert len([x for x in err.splitlines() if x.strip()]) == 1, err
    return rc


# ---------------------------------------------------------------- config.json

KEYS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters",
        "tie_word_embeddings", "hidden_act", "model_type", "sliding_window", "layer_types", "attention_bias",
        "mlp_bias", "rope_scaling", "partial_rotary_factor", "bos_token_id", "torch_dtype", "unknown_key"]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 32.0, 64.7, 1e-5, -1e-5, 1e308]),
    st.text(max_size=12), st.sampled_from(["llama", "gemma", "silu", "default", "full_attention", "bert"]),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["rope_theta", "rope_type", "x", "type"]),
                                                 inner, max_size=3)), max_leaves=6)
mutations = st.lists(st.tuples(st.sampled_from(KEYS), st.one_of(json_values, st.just("<drop>"))),
                     min_size=1, max_size=3)


@FUZZ
@given(mutations)
def test_fuzz_config_values(base, capsys, muts):
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        src = work / "src"
        shutil.copytree(base, src)
        cfg = json.loads((src / "config.json").read_text())
        for k, v in muts:
            if v == "<drop>":
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (src / "config.json").write_text(json.dumps(cfg))
        check_cli(src, work, capsys)
        try:  # the library raises only its own errors too
            io.Checkpoint(src)
            from hyperclone_core.model.validate import read_model
            read_model(cfg)
        except HypercloneError:
            pass


# ---------------------------------------------------------------- safetensors headers


def _split(path: Path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


CODES = ["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "X", 7, None]
ints = st.one_of(st.integers(-10, 10), st.integers(-2**65, 2**65), st.integers(0, 200_000))
entry_edit = st.one_of(
    st.tuples(st.just("dtype"), st.sampled_from(CODES)),
    st.tuples(st.just("shape"), st.one_of(st.lists(ints, max_size=4), json_scalars)),
    st.tuples(st.just("data_offsets"), st.one_of(st.lists(ints, min_size=0, max_size=3), json_scalars)),
    st.tuples(st.just("<delete entry>"), st.none()),
    st.tuples(st.just("<copy offsets of another>"), st.none()),
    st.tuples(st.just("<shift>"), st.integers(-64, 64)),
)
header_edits = st.lists(st.tuples(st.integers(0, 1000), entry_edit), min_size=1, max_size=3)
tail_edit = st.sampled_from(["none", "truncate", "append", "metadata", "length+1", "length-1", "length huge"])


@FUZZ
@given(header_edits, tail_edit)
def test_fuzz_safetensors_headers(base, capsys, edits, tail):
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        src = work / "src"
        shutil.copytree(base, src)
        f = src / "model.safetensors"
        header, blob = _split(f)
        names = sorted(k for k in header if k != "__metadata__")
        for i, (field, value) in edits:
            name = names[i % len(names)]
            if name not in header:
                continue
            if field == "<delete entry>":
                del header[name]
            elif field == "<copy offsets of another>":
                other = header.get(names[(i + 1) % len(names)], {}).get("data_offsets")
                header[name]["data_offsets"] = other
            elif field == "<shift>":
                off = header[name].get("data_offsets")
                if isinstance(off, list) and len(off) == 2 and all(isinstance(x, int) for x in off):
                    header[name]["data_offsets"] = [off[0] + value, off[1] + value]
            else:
                header[name][field] = value
        if tail == "metadata":
            header["__metadata__"] = {"format": ["pt"]}
        raw = json.dumps(header).encode()
        length = len(raw) + {"length+1": 1, "length-1": -1, "length huge": 2**40}.get(tail, 0)
        blob = blob[: len(blob) // 2] if tail == "truncate" else blob + (b"\0" * 8 if tail == "append" else b"")
        f.write_bytes(struct.pack("<Q", length) + raw + blob)
        try:
            sf = io.SafetensorsFile(f)
        except HypercloneError:
            sf = None
        if sf is not None:  # accepted: the tensors tile the data exactly and read back
            spans = sorted(tuple(sf.header[k]["data_offsets"]) for k in sf.keys())
            assert spans[0][0] == 0 and spans[-1][1] == sf.size - sf.start
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            for k in sf.keys():
                assert sf.raw(k).shape == sf.shape(k)
        check_cli(src, work, capsys)


@FUZZ
@given(st.binary(min_size=0, max_size=64), st.integers(0, 2**64 - 1))
def test_fuzz_raw_bytes_after_the_length(base, capsys, junk, length):
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        src = work / "src"
        shutil.copytree(base, src)
        (src / "model.safetensors").write_bytes(struct.pack("<Q", length) + junk)
        with pytest.raises(HypercloneError):
            io.SafetensorsFile(src / "model.safetensors")
        assert check_cli(src, work, capsys) == 3


def test_fuzz_found_values_still_work(base, tmp_path, capsys):
    """Values a fuzz run must keep accepting: integral floats, nulls the readers default."""
    src = tmp_path / "src"
    shutil.copytree(base, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(hidden_size=32.0, head_dim=None, sliding_window=None, rope_scaling=None)
    (src / "config.json").write_text(json.dumps(cfg))
    assert check_cli(src, tmp_path, capsys) == 0
    assert math.isclose(json.loads((tmp_path / "dst" / "config.json").read_text())["hidden_size"], 64)
    assert np.isfinite(json.loads((tmp_path / "dst" / "hyperclone.json").read_text())["verification"]["relative"])
