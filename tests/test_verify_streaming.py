"""Streaming verification (weights read layer by layer, big matrices in row blocks)
gives the verdict and the numbers of the whole model in memory, on every family, and
never holds a matrix block past its budget."""

from __future__ import annotations

import numpy as np
import pytest

from hyperclone_core import io
from hyperclone_core.run import lazyweights, reference
from hyperclone_core.model import testing
from hyperclone_core.errors import CheckpointError
from hyperclone_core.expand.checkpoint import expand_checkpoint, verify_checkpoints
from hyperclone_core.model.families import family_for_config
from hyperclone_core.run.numpy_backend import backend as numpy_backend
from hyperclone_core.model.validate import read_model

TINY = 256  # bytes: every matrix of the tiny cases runs one or a few rows at a time


def whole(monkeypatch, src, dst, **kw):
    """Today's path: both models loaded whole."""
    with monkeypatch.context() as m:
        m.setattr(type(numpy_backend), "lazy_weights", False)
        return verify_checkpoints(src, dst, **kw)


def same_report(a, b, exact):
    for key in ("passed", "finite", "dtype", "tolerance", "tokens", "backend"):
        assert a[key] == b[key], key
    for key in ("max_abs_diff", "max_abs_logit", "relative"):
        if exact:
            assert a[key] == b[key], key
        else:  # equal to float64 rounding of the logits (a difference of near-equal logits keeps only that)
            scale = 1.0 if key == "relative" else b["max_abs_logit"]
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-13 * scale), key


@pytest.mark.parametrize("case", sorted(testing.CASES))
def test_streaming_matches_whole_model_verify(case, tmp_path, case_dir, monkeypatch):
    src = case_dir(case)
    expand_checkpoint(src, tmp_path / "clone", progress=False, verify=False)
    ref = whole(monkeypatch, src, tmp_path / "clone")
    same_report(verify_checkpoints(src, tmp_path / "clone"), ref, exact=True)  # no matrix past the default block
    monkeypatch.setattr(lazyweights, "BLOCK_BYTES", TINY)
    same_report(verify_checkpoints(src, tmp_path / "clone"), ref, exact=False)
    assert ref["passed"]


@pytest.mark.parametrize("case", ["llama", "llama_tied", "opt", "gpt_neox", "mixtral"])
def test_streaming_logits_equal_the_oracle(case, case_dir, monkeypatch):
    """Row blocks compute the same dot products: the logits equal the oracle's run on
    the whole weights in memory (to float64 rounding)."""
    folder = case_dir(case)
    ck = io.Checkpoint(folder)
    family, cfg = read_model(ck.config, "config.json")
    ck.validate(family, cfg)
    tokens = testing.random_tokens(cfg.vocab, 2, 9, 3)
    _, weights = io.load_weights(folder)
    want = reference.forward(family, cfg, weights, tokens, dtype=np.float64)
    monkeypatch.setattr(lazyweights, "BLOCK_BYTES", TINY)
    got = numpy_backend.forward(family, cfg, lazyweights.checkpoint_weights(ck, list(weights)), tokens)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    assert got.dtype == np.float64 and got.shape == want.shape


def test_a_matrix_is_never_read_past_its_block(tmp_path, case_dir, monkeypatch):
    """Residency: with a block of TINY bytes, no matrix is read whole and no block read
    holds more rows than fit the budget in float64 (one row when a row is bigger)."""
    reads = []
    rows = lazyweights.StoredTensor.rows
    read = lazyweights.StoredTensor.read

    def counted_rows(self, lo, hi):
        out = rows(self, lo, hi)
        reads.append(("rows", self.name, out.shape))
        return out

    def counted_read(self):
        out = read(self)
        reads.append(("read", self.name, out.shape))
        return out

    src = case_dir("llama_tied")
    expand_checkpoint(src, tmp_path / "clone", progress=False, verify=False)
    monkeypatch.setattr(lazyweights, "BLOCK_BYTES", TINY)
    monkeypatch.setattr(lazyweights.StoredTensor, "rows", counted_rows)
    monkeypatch.setattr(lazyweights.StoredTensor, "read", counted_read)
    assert verify_checkpoints(src, tmp_path / "clone")["passed"]
    assert {kind for kind, _, shape in reads if len(shape) == 2} == {"rows"}
    for kind, name, shape in reads:
        if kind == "rows":
            assert shape[0] == 1 or shape[0] * shape[1] * 8 <= TINY, (name, shape)
    assert any("embed_tokens" in name for _, name, _ in reads)  # the tied head read through blocks too


def test_depth_growth_and_bf16_clone_stream_like_the_whole_model(tmp_path, case_dir, monkeypatch):
    src = case_dir("llama")
    expand_checkpoint(src, tmp_path / "deep", layers="+2", dtype="bfloat16", progress=False, verify=False)
    ref = whole(monkeypatch, src, tmp_path / "deep")
    monkeypatch.setattr(lazyweights, "BLOCK_BYTES", TINY)
    got = verify_checkpoints(src, tmp_path / "deep")
    same_report(got, ref, exact=False)
    assert got["passed"] and got["dtype"] == "bfloat16"


def test_a_corrupted_clone_fails_with_the_same_numbers(tmp_path, case_dir, monkeypatch):
    src = case_dir("gpt_neox")
    expand_checkpoint(src, tmp_path / "clone", progress=False, verify=False)
    cfg, w = io.load_weights(tmp_path / "clone")
    name = "gpt_neox.layers.1.mlp.dense_4h_to_h.weight"
    w[name] = w[name] * np.float32(1.5)
    io.save_checkpoint(tmp_path / "bad", cfg, w)
    ref = whole(monkeypatch, src, tmp_path / "bad")
    monkeypatch.setattr(lazyweights, "BLOCK_BYTES", TINY)
    got = verify_checkpoints(src, tmp_path / "bad")
    same_report(got, ref, exact=False)
    assert not got["passed"] and got["relative"] > got["tolerance"]


def test_non_finite_weights_are_refused_by_name_while_streaming(tmp_path, case_dir, monkeypatch):
    src = case_dir("llama")
    cfg, w = io.load_weights(src)
    w["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    io.save_checkpoint(tmp_path / "nan", cfg, w)
    monkeypatch.setattr(lazyweights, "BLOCK_BYTES", TINY)
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.weight holds 1 NaN/Inf"):
        verify_checkpoints(src, tmp_path / "nan")


def test_a_missing_tensor_is_named_before_any_maths(tmp_path, case_dir):
    folder = case_dir("opt")
    ck = io.Checkpoint(folder)
    family = family_for_config(ck.config)
    _, cfg = read_model(ck.config, "config.json")
    weights = lazyweights.checkpoint_weights(ck, [n for n in ck.names() if "fc1" not in n])
    with pytest.raises(CheckpointError, match="fc1"):
        numpy_backend.forward(family, cfg, weights, testing.random_tokens(cfg.vocab, 1, 4, 0))
