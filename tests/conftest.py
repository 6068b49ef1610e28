"""Shared fixtures: tiny checkpoints of every family, transformers logits."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hyperclone_core import io
from hyperclone_core.model import testing


@pytest.fixture(scope="session")
def case_dir(tmp_path_factory):
    """``case_dir(name)`` -> a checkpoint folder of testing.CASES[name] with random weights."""
    made: dict = {}
    root = tmp_path_factory.mktemp("cases")

    def get(name: str, seed: int = 1):
        key = (name, seed)
        if key not in made:
            folder = root / f"{name}-{seed}"
            io.save_checkpoint(folder, testing.CASES[name], testing.random_weights(testing.CASES[name], seed=seed))
            made[key] = folder
        return made[key]

    return get


@pytest.fixture(scope="session")
def hf_logits():
    """``hf_logits(folder, tokens)``: logits of a checkpoint as transformers loads it
    (float32, eager attention)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)

    def run(folder, tokens) -> np.ndarray:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        with torch.no_grad():
            return model(torch.from_numpy(np.asarray(tokens))).logits.float().numpy()

    return run
