"""The race's cache: what a lever on the last stage does not change, kept on disk by a hash
of what it depends on (``race.compare(cache=)``; ``benchmarks/speedup.py --cache``,
``benchmarks/recipe_sweep.py``'s growth grids)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np

from ..train.config import TrainConfig
from ..train.engine import EngineState
from ..train.optim import ADJUSTMENTS, AdamW, decay_mask
from .report import finite


class Cache:
    """What a lever on the last stage does not change, kept on disk by a hash of what it
    depends on: the random twin's curve, the growing run up to its last growth (state
    and curve) and the small model's branch.  ``benchmarks/recipe_sweep.py`` shares one."""

    def __init__(self, root):
        self.root = Path(root)

    @staticmethod
    def key(**parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def get(self, kind: str, key: str) -> Optional[dict]:
        path = self.root / kind / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, kind: str, key: str, doc: dict, arrays: Optional[dict] = None) -> None:
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        if arrays is not None:
            np.savez(folder / f"{key}.npz", **arrays)
        tmp = folder / f"{key}.json.tmp"
        tmp.write_text(json.dumps(finite(doc), default=str))
        tmp.replace(folder / f"{key}.json")  # written last: a killed run leaves no entry

    def arrays(self, kind: str, key: str) -> dict:
        with np.load(self.root / kind / f"{key}.npz") as z:
            return {k: z[k] for k in z.files}


def pack_state(state: EngineState, opt: AdamW) -> tuple:
    arrays = {}
    for part in ("params", "exp_avg", "exp_avg_sq"):
        for n, a in getattr(state, part).items():
            arrays[f"{part}/{n}"] = np.asarray(a, np.float32)
    return arrays, dict(adam_step=int(state.adam_step), adamw=opt.adjustments())


def unpack_state(arrays: dict, doc: dict, config: TrainConfig) -> tuple:
    parts: dict = {"params": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for k, a in arrays.items():
        part, _, n = k.partition("/")
        parts[part][n] = a
    shapes = {n: a.shape for n, a in parts["params"].items()}
    opt = AdamW(betas=tuple(config.betas), eps=config.eps, weight_decay=config.weight_decay,
                grad_clip=config.grad_clip, decay=decay_mask(shapes),
                **{k: dict(doc["adamw"].get(k, {})) for k in ADJUSTMENTS})
    return EngineState(parts["params"], parts["exp_avg"], parts["exp_avg_sq"], int(doc["adam_step"])), opt


__all__ = ["Cache", "pack_state", "unpack_state"]
