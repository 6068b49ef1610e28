"""Checkpoint I/O (shards, bfloat16, aux files) and the plan / verify commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperclone_core import io
from hyperclone_core.model import testing
from hyperclone_core.cli import main
from hyperclone_core.io.dtypes import bf16_to_f32, f32_to_bf16
from hyperclone_core.expand.checkpoint import expand_checkpoint


def test_bf16_conversion_rounds_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e38, np.inf, -0.0], dtype=np.float32)
    back = bf16_to_f32(f32_to_bf16(x))
    assert back[0] == 1.0 and back[1] == 1.0  # tie to even
    assert back[2] == np.float32(1.015625)
    assert back[3] == -2.5 and np.isinf(back[5]) and np.signbit(back[6])
    assert np.isnan(bf16_to_f32(f32_to_bf16(np.array([np.nan], np.float32))))[0]


def test_sharded_round_trip_is_bit_exact(tmp_path):
    w = testing.random_weights(testing.CASES["qwen2"])
    io.save_checkpoint(tmp_path / "ck", testing.CASES["qwen2"], w, max_shard_bytes=10_000)
    index = json.loads((tmp_path / "ck" / io.INDEX).read_text())
    assert len(set(index["weight_map"].values())) > 3
    _, back = io.load_weights(tmp_path / "ck")
    assert back.keys() == w.keys() and all(np.array_equal(back[k], w[k]) for k in w)


def test_bf16_checkpoint_expands_to_bf16_and_stays_close(tmp_path, hf_logits):
    cfg = testing.CASES["llama"]
    io.save_checkpoint(tmp_path / "src", cfg, testing.random_weights(cfg), dtype="bfloat16")
    report = expand_checkpoint(tmp_path / "src", tmp_path / "dst", strategy="symmetric", progress=False)
    ck = io.Checkpoint(tmp_path / "dst")
    assert {ck.dtype(n) for n in ck.names()} == {"bfloat16"}
    # symmetric width 2 only halves weights: exact in bfloat16 too
    assert report["verification"]["relative"] < 1e-5
    tokens = testing.random_tokens(cfg["vocab_size"])
    a, b = hf_logits(tmp_path / "src", tokens), hf_logits(tmp_path / "dst", tokens)
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-2


def test_dtype_option_and_aux_files_and_report(tmp_path):
    cfg = testing.CASES["mistral"]
    io.save_checkpoint(tmp_path / "src", cfg, testing.random_weights(cfg),
                       extra_files={"tokenizer.json": "{}", "generation_config.json": "{}"})
    assert main(["expand", str(tmp_path / "src"), str(tmp_path / "dst"), "--dtype", "bfloat16", "--quiet",
                 "--seed", "5"]) == 0
    dst = tmp_path / "dst"
    assert (dst / "tokenizer.json").exists() and (dst / "generation_config.json").exists()
    report = json.loads((dst / "hyperclone.json").read_text())
    assert report["seed"] == 5 and report["strategy"] == "noisy:10" and report["exact"] is True
    assert report["verification"]["passed"] and report["verification"]["dtype"] == "bfloat16"
    assert report["certificate"]["checks"] and report["verification"]["max_abs_diff"] >= 0
    assert {io.Checkpoint(dst).dtype(n) for n in io.Checkpoint(dst).names()} == {"bfloat16"}


def test_plan_command_prints_and_serializes(tmp_path, capsys):
    cfg = testing.CASES["phi3"]
    io.save_checkpoint(tmp_path / "src", cfg, testing.random_weights(cfg))
    assert main(["plan", str(tmp_path / "src"), "--width", "2", "--ffn", "1.5"]) == 0
    text = capsys.readouterr().out  # the summary and the certificate; the programs on request
    assert "certificate: EXACT" in text and "take(axis=" not in text and len(text.splitlines()) < 40
    assert main(["plan", str(tmp_path / "src"), "--width", "2", "--ffn", "1.5", "--programs"]) == 0
    full = capsys.readouterr().out
    assert "certificate: EXACT" in full and "model.layers.0.mlp.gate_up_proj.weight" in full and "take(axis=" in full
    assert main(["plan", str(tmp_path / "src"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["config"]["hidden_size"] == 64 and doc["certificate"]["exact"]
    assert not (tmp_path / "dst").exists()


def test_verify_command_and_tolerance(tmp_path, capsys):
    cfg = testing.CASES["olmo"]
    io.save_checkpoint(tmp_path / "a", cfg, testing.random_weights(cfg, seed=1))
    io.save_checkpoint(tmp_path / "b", cfg, testing.random_weights(cfg, seed=2))
    assert main(["verify", str(tmp_path / "a"), str(tmp_path / "a"), "--tolerance", "0"]) == 0
    assert "relative 0.00e+00" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "a"), str(tmp_path / "b"), "--tolerance", "1e-3"]) == 5  # verification


def test_unknown_backend_is_named(tmp_path, capsys):
    cfg = testing.CASES["llama"]
    io.save_checkpoint(tmp_path / "src", cfg, testing.random_weights(cfg))
    rc = main(["expand", str(tmp_path / "src"), str(tmp_path / "dst"), "--backend", "nope", "--quiet"])
    assert rc == 2 and "backend 'nope' is not installed" in capsys.readouterr().err
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("case", ["opt_postln", "gemma2", "mixtral"])
def test_interleave_layout_is_exact_too(case, tmp_path, case_dir, hf_logits):
    report = expand_checkpoint(case_dir(case), tmp_path / "dst", layout="interleave", progress=False)
    assert report["verification"]["relative"] < 1e-5
    tokens = testing.random_tokens(testing.CASES[case]["vocab_size"])
    a, b = hf_logits(case_dir(case), tokens), hf_logits(tmp_path / "dst", tokens)
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-5


def test_checkpoints_saved_from_the_base_model_are_read(tmp_path, hf_logits):
    """Older OPT checkpoints name tensors decoder.* instead of model.decoder.*."""
    cfg = testing.CASES["opt"]
    w = testing.random_weights(cfg)
    io.save_checkpoint(tmp_path / "new", cfg, w)
    io.save_checkpoint(tmp_path / "old", cfg, {k.removeprefix("model."): v for k, v in w.items()})
    expand_checkpoint(tmp_path / "old", tmp_path / "dst", strategy="symmetric", progress=False)
    tokens = testing.random_tokens(cfg["vocab_size"])
    a, b = hf_logits(tmp_path / "new", tokens), hf_logits(tmp_path / "dst", tokens)
    assert np.abs(a - b).max() / np.abs(a).max() < 1e-5


def test_write_safetensors_single_file(tmp_path):
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64)}
    io.write_safetensors(tmp_path / "opt.safetensors", t)
    f = io.SafetensorsFile(tmp_path / "opt.safetensors")
    assert np.array_equal(f.raw("a"), t["a"]) and np.array_equal(f.raw("b"), t["b"]) and f.dtype("b") == "int64"
    assert [p.name for p in tmp_path.iterdir()] == ["opt.safetensors"]


def test_expand_writes_the_plan_beside_the_weights(tmp_path, case_dir):
    from hyperclone_core import Plan
    expand_checkpoint(case_dir("llama"), tmp_path / "dst", progress=False, verify=False)
    p = Plan.from_json((tmp_path / "dst" / "plan.json").read_text())
    assert p.config == io.read_config(tmp_path / "dst") and p.exact


def test_destination_parents_are_created(tmp_path, case_dir):
    dst = tmp_path / "runs" / "2x" / "wide"
    assert main(["expand", str(case_dir("llama")), str(dst), "--quiet"]) == 0
    assert (dst / "config.json").is_file() and (dst / "model.safetensors").is_file()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["wide"]  # no temp dir left beside it


def test_uncreatable_parent_is_named(tmp_path, case_dir, capsys):
    (tmp_path / "file").write_text("x")
    rc = main(["expand", str(case_dir("llama")), str(tmp_path / "file" / "wide"), "--quiet"])
    assert rc != 0 and "cannot create the destination's parent folder" in capsys.readouterr().err


def test_write_hf_folder_is_the_one_writer(tmp_path):
    """Per-tensor dtypes (bfloat16 rounded here only), extra files, aux files, a hook
    before the commit; paths outside the folder refused; the folder reloads exactly."""
    from hyperclone_core.io.dtypes import bf16_to_f32, f32_to_bf16
    from hyperclone_core.errors import CheckpointError

    cfg = testing.CASES["llama"]
    w = testing.random_weights(cfg)
    src = io.save_checkpoint(tmp_path / "src", cfg, w, extra_files={"tokenizer.json": '{"v": 1}'})
    name = "model.layers.0.mlp.up_proj.weight"
    tensors = {n: ((a, "bfloat16") if n == name else a) for n, a in w.items()}
    seen = []
    out = io.write_hf_folder(tmp_path / "out", cfg, tensors, extra_files={"trainer/state.json": "{}"},
                             aux_from=src, before_commit=lambda tmp: seen.append(sorted(p.name for p in tmp.iterdir())))
    ck = io.Checkpoint(out)
    assert ck.dtype(name) == "bfloat16" and ck.dtype("model.norm.weight") == "float32"
    assert np.array_equal(ck.read(name), bf16_to_f32(f32_to_bf16(w[name])))
    assert np.array_equal(ck.read("model.norm.weight"), w["model.norm.weight"])
    assert (out / "trainer" / "state.json").read_text() == "{}" and (out / "tokenizer.json").read_text() == '{"v": 1}'
    assert "config.json" in seen[0] and io.is_hyperclone_output(out)
    with pytest.raises(CheckpointError, match="outside"):
        io.write_hf_folder(tmp_path / "bad", cfg, w, extra_files={"../escape.txt": "x"})
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "bad").exists()
