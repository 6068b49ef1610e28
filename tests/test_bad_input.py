"""Every bad input gets a clear error, a non-zero exit, and no destination."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperclone_core import io
from hyperclone_core.model import testing
from hyperclone_core.cli import main


def run_cli(capsys, *args):
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def expect_error(capsys, tmp_path, args, *needles):
    dst = tmp_path / "dst"
    rc, err = run_cli(capsys, "expand", *args[:1], dst, "--quiet", *args[1:])
    assert rc != 0, f"expected failure for {args}"
    for n in needles:
        assert n in err, f"{n!r} not in error: {err}"
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if io.TMP_MARK in p.name], "a temp dir was left behind"
    return err


def _src(tmp_path, case="llama", mutate=None, cfg_mutate=None):
    cfg = dict(testing.CASES[case])
    w = testing.random_weights(cfg)
    if mutate:
        mutate(w)
    if cfg_mutate:
        cfg_mutate(cfg)
    return io.save_checkpoint(tmp_path / "src", cfg, w)


def test_missing_src(capsys, tmp_path):
    expect_error(capsys, tmp_path, [tmp_path / "nope"], "no such checkpoint folder")


def test_src_is_a_file(capsys, tmp_path):
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    expect_error(capsys, tmp_path, [f], "not a folder")


def test_no_config(capsys, tmp_path):
    src = _src(tmp_path)
    (src / "config.json").unlink()
    expect_error(capsys, tmp_path, [src], "config.json", "missing")


def test_invalid_config_json(capsys, tmp_path):
    src = _src(tmp_path)
    (src / "config.json").write_text("{not json")
    expect_error(capsys, tmp_path, [src], "invalid JSON", "line 1")


def test_unsupported_model_type_lists_supported(capsys, tmp_path):
    src = _src(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "bert"
    (src / "config.json").write_text(json.dumps(cfg))
    expect_error(capsys, tmp_path, [src], "'bert' is not supported", "llama", "gpt_neox", "mixtral")


def test_missing_tensor_is_named(capsys, tmp_path):
    src = _src(tmp_path, mutate=lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
    expect_error(capsys, tmp_path, [src], "missing tensors", "model.layers.1.mlp.up_proj.weight")


def test_extra_tensor_is_named(capsys, tmp_path):
    src = _src(tmp_path, mutate=lambda w: w.update({"model.layers.0.mystery.weight": np.zeros(3, np.float32)}))
    expect_error(capsys, tmp_path, [src], "does not explain", "model.layers.0.mystery.weight")


def test_misshaped_tensor_is_named(capsys, tmp_path):
    src = _src(tmp_path, cfg_mutate=lambda c: c.update(intermediate_size=40))
    expect_error(capsys, tmp_path, [src], "model.layers.0.mlp.up_proj.weight", "shape [48, 32]", "[40, 32]")


def test_truncated_safetensors(capsys, tmp_path):
    src = _src(tmp_path)
    f = src / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    expect_error(capsys, tmp_path, [src], "model.safetensors", "truncated or corrupt")


def test_corrupt_safetensors_header(capsys, tmp_path):
    src = _src(tmp_path)
    f = src / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:16] = b"\xff" * 8
    f.write_bytes(bytes(data))
    expect_error(capsys, tmp_path, [src], "model.safetensors", "corrupt")


def test_pickled_weights_are_not_loaded(capsys, tmp_path):
    src = _src(tmp_path)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")
    expect_error(capsys, tmp_path, [src], "pytorch_model.bin", "never loaded")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights(capsys, tmp_path, value):
    def poison(w):
        w["model.layers.1.self_attn.v_proj.weight"][3, 4] = value
    src = _src(tmp_path, mutate=poison)
    expect_error(capsys, tmp_path, [src], "model.layers.1.self_attn.v_proj.weight", "NaN/Inf")


def test_non_integer_width(capsys, tmp_path):
    expect_error(capsys, tmp_path, [_src(tmp_path), "--width", "1.5"], "rule 'uniform norm'", "hidden",
                 "integer")


def test_shrinking(capsys, tmp_path):
    src = _src(tmp_path)
    expect_error(capsys, tmp_path, [src, "--width", "0.5"], "shrink")
    expect_error(capsys, tmp_path, [src, "--layers", "1"], "cannot shrink layers from 2 to 1")


def test_head_dim_growth_under_rope(capsys, tmp_path):
    expect_error(capsys, tmp_path, [_src(tmp_path, "gpt_neox"), "--heads", "1"], "head_dim cannot grow under RoPE")


def test_diagonal_with_unequal_copy_counts(capsys, tmp_path):
    expect_error(capsys, tmp_path, [_src(tmp_path), "--strategy", "diagonal", "--ffn", "3"],
                 "diagonal needs equal copy counts", "mlp.gate_proj.weight")


def test_inexact_plan_needs_the_flag(capsys, tmp_path):
    src = _src(tmp_path, "opt_postln")
    expect_error(capsys, tmp_path, [src, "--layers", "+2"], "rule 'depth'", "--inexact")
    rc, _ = run_cli(capsys, "expand", src, tmp_path / "ok", "--layers", "+2", "--inexact", "--quiet")
    assert rc == 0
    report = json.loads((tmp_path / "ok" / "hyperclone.json").read_text())
    assert report["exact"] is False and report["certificate"]["inexact"]
    assert report["verification"]["relative"] > 1e-3  # the report states the deviation


def test_existing_destination_needs_force(capsys, tmp_path):
    src = _src(tmp_path)
    dst = tmp_path / "dst"
    assert run_cli(capsys, "expand", src, dst, "--quiet", "--seed", "1")[0] == 0
    rc, err = run_cli(capsys, "expand", src, dst, "--quiet")
    assert rc == 4 and "already exists" in err and "--force" in err
    assert json.loads((dst / "hyperclone.json").read_text())["seed"] == 1
    rc, _ = run_cli(capsys, "expand", src, dst, "--quiet", "--force", "--seed", "2")
    assert rc == 0 and json.loads((dst / "hyperclone.json").read_text())["seed"] == 2
    assert not [p for p in tmp_path.iterdir() if io.TMP_MARK in p.name]
