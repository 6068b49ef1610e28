"""The backend-neutral data pipeline: token files, text, deterministic batches."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from hyperclone_core.train.data import BatchSampler, ByteTokenizer, DataError, fixed_batches, get_tokenizer, hold_out, load_tokens


def test_byte_tokenizer_round_trips_any_text():
    tok = ByteTokenizer()
    text = "HyperCloning — grows 2× wider; ñandú 🦤"
    ids = tok.encode(text)
    assert ids.max() < tok.vocab_size == 256
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_npy_and_bin_are_memory_mapped_and_equal(tmp_path):
    toks = np.random.default_rng(0).integers(0, 1000, 5000).astype(np.uint16)
    np.save(tmp_path / "t.npy", toks)
    toks.tofile(tmp_path / "t.bin")
    a = load_tokens(tmp_path / "t.npy", vocab=1000)
    b = load_tokens(tmp_path / "t.bin", dtype="uint16", vocab=1000)
    assert isinstance(a, np.memmap) and isinstance(b, np.memmap)
    assert np.array_equal(a, toks) and np.array_equal(b, toks)


def test_bin_needs_its_dtype_and_a_fitting_size(tmp_path):
    np.arange(7, dtype=np.uint16).tofile(tmp_path / "t.bin")
    with pytest.raises(DataError, match="no header; say its dtype"):
        load_tokens(tmp_path / "t.bin")
    with pytest.raises(DataError, match="14 bytes is not a multiple of 4 .uint32."):
        load_tokens(tmp_path / "t.bin", dtype="uint32")
    with pytest.raises(DataError, match="not a token dtype"):
        load_tokens(tmp_path / "t.bin", dtype="float32")


def test_ids_beyond_the_vocab_name_file_and_id(tmp_path):
    toks = np.arange(300, dtype=np.uint32)
    toks.tofile(tmp_path / "big.bin")
    with pytest.raises(DataError, match=r"big\.bin: holds token id 299 but the model's vocab has 256 ids"):
        load_tokens(tmp_path / "big.bin", dtype="uint32", vocab=256)
    # the message also points at a wrong --data-dtype, the usual cause
    np.full(10, 70000, dtype=np.uint32).tofile(tmp_path / "w.bin")
    with pytest.raises(DataError, match="wrong dtype"):
        load_tokens(tmp_path / "w.bin", dtype="uint32", vocab=50000)


def test_npy_of_floats_is_refused(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros(10, np.float32))
    with pytest.raises(DataError, match="float32 values; token files must hold integers"):
        load_tokens(tmp_path / "f.npy")


def test_text_becomes_bytes(tmp_path):
    (tmp_path / "a.txt").write_text("abc é")
    toks = load_tokens(tmp_path / "a.txt", vocab=256)
    assert toks.tolist() == list("abc é".encode())
    with pytest.raises(DataError, match="tokenizer has 256 ids but the model's vocab is 96"):
        load_tokens(tmp_path / "a.txt", vocab=96)


def test_tokenizer_json_when_tokenizers_is_installed(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers

    vocab = {"[UNK]": 0, "grow": 1, "the": 2, "model": 3}
    tk = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = get_tokenizer("auto", tmp_path)
    assert tok.vocab_size == 4
    assert tok.encode("grow the model now").tolist() == [1, 2, 3, 0]
    (tmp_path / "c.txt").write_text("the model")
    assert load_tokens(tmp_path / "c.txt", tokenizer=tok, vocab=4).tolist() == [2, 3]
    assert isinstance(get_tokenizer("auto", tmp_path / "nowhere"), ByteTokenizer)


def test_sampler_is_a_pure_function_of_seed_and_step():
    toks = np.arange(1000)
    s = BatchSampler(toks, 8, 16, seed=5)
    b = s.batch(3)
    assert b.shape == (8, 17) and b.dtype == np.int64
    assert np.array_equal(b, BatchSampler(toks, 8, 16, seed=5).batch(3))
    assert np.all(np.diff(b, axis=1) == 1)  # contiguous windows
    assert not np.array_equal(b, s.batch(4))
    assert not np.array_equal(b, BatchSampler(toks, 8, 16, seed=6).batch(3))


def test_rank_and_micro_slices_tile_the_global_batch():
    s = BatchSampler(np.arange(5000), 8, 10, seed=1)
    whole = s.batch(7)
    parts = [s.batch(7, rank=r, world=2, micro=m, n_micro=2) for r in range(2) for m in range(2)]
    assert np.array_equal(np.concatenate(parts), whole)
    with pytest.raises(DataError, match="multiple of 6"):
        s.batch(0, world=3, n_micro=2)


def test_too_little_data_and_splits():
    with pytest.raises(DataError, match="fewer than seq_len \\+ 1 = 17"):
        BatchSampler(np.arange(10), 2, 16)
    train, val = hold_out(np.arange(100), 0.1)
    assert len(train) == 90 and val.tolist() == list(range(90, 100))
    train, val = hold_out(np.arange(100), 0.01, min_val=17)
    assert len(val) == 17
    a = fixed_batches(np.arange(500), 3, 4, 8, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, fixed_batches(np.arange(500), 3, 4, 8, seed=0)))


def test_data_module_imports_numpy_only():
    code = ("import sys, hyperclone_core.train.data; "
            "bad = [m for m in ('torch', 'jax', 'mlx', 'tokenizers') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
