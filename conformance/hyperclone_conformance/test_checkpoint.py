"""Checkpoints round-trip through the backend bit for bit (``save_checkpoint`` /
``load_checkpoint``), in float32 and bfloat16, and what it writes is the Hugging
Face layout every other backend reads (checked with the core's reader)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hyperclone_conformance import _suite as S
from hyperclone_core.io import Checkpoint

pytestmark = pytest.mark.capability("expand")


@pytest.fixture
def checkpointing(backend):
    missing = [m for m in ("save_checkpoint", "load_checkpoint") if not callable(getattr(backend, m, None))]
    if missing:
        pytest.skip(f"backend {backend.name!r} has no {' / '.join(missing)} (the protocol's checkpoint methods)")
    return backend


def _bits(backend, x) -> bytes:
    a = np.ascontiguousarray(backend.to_numpy(x))
    return str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", ["llama", "llama_tied", "gpt_neox", "opt", "gemma2", "mixtral"])
def test_checkpoint_round_trip(checkpointing, device, tmp_path, case, dtype):
    b = checkpointing
    p = S.plan_or_skip(case, "noisy10", "width2")
    grown = S.expanded(b, device, case, "noisy10", "width2")
    weights = {k: b.cast(b.asarray(v, device), dtype) for k, v in grown.items()}
    folder = tmp_path / "ckpt"
    b.save_checkpoint(folder, dict(p.config), weights)
    cfg, loaded = b.load_checkpoint(folder)
    assert json.loads(json.dumps(cfg, sort_keys=True)) == json.loads(json.dumps(dict(p.config), sort_keys=True)), \
        f"{case}: config.json did not round-trip"
    assert sorted(loaded) == sorted(weights), (f"{case}: tensors {sorted(set(weights) ^ set(loaded))[:5]} "
                                              "were lost or added by the round trip")
    changed = [k for k in weights if _bits(b, weights[k]) != _bits(b, loaded[k])]
    assert not changed, f"{case} {dtype}: tensors not bit for bit after the round trip: {changed[:5]}"
    ck = Checkpoint(folder)
    for k in list(weights)[:8]:
        want = np.asarray(b.to_numpy(weights[k]), np.float32)
        assert np.array_equal(ck.read(k), want), f"{case} {dtype}: the core's reader sees {k} differently"
