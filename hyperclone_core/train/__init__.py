"""The trainer, once for every backend: config and schedule, the optimizer's closed
form, clone-aware LRs and the symmetry monitor, the loop, the neutral checkpoint,
the thread policy (``threads.py``), and the engine protocol a backend implements
(``engine.py``)."""

from .checkpoint import data_fingerprint, model_fingerprint
from .clone import CopyPairs, clone_lr_multipliers, symmetry, symmetry_pairs
from .config import RESUMABLE, TrainConfig, lr_at
from .engine import Engine, EngineState, Launcher, StepResult, check_state
from .loop import NonFiniteLoss, TrainError, TrainResult, as_tokens, optimizer_for, train
from .optim import AdamW, adamw_step, clip_coefficient, decay_mask, global_norm
from .threads import fixed_threads

__all__ = [
    "AdamW", "CopyPairs", "Engine", "EngineState", "Launcher", "NonFiniteLoss", "RESUMABLE", "StepResult",
    "TrainConfig", "TrainError", "TrainResult", "adamw_step", "as_tokens", "check_state", "clip_coefficient",
    "clone_lr_multipliers", "data_fingerprint", "decay_mask", "fixed_threads", "global_norm", "lr_at",
    "model_fingerprint", "optimizer_for", "symmetry", "symmetry_pairs", "train",
]
