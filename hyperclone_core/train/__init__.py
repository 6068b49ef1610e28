"""The trainer, once for every backend (Keras 3's split: the loop once, a step per framework).

One job per module:

- ``engine``: the engine protocol a backend implements, ``EngineState`` and ``check_state``;
- ``config``: ``TrainConfig``, validated where it enters, and the LR schedules;
- ``optim``: AdamW in closed form, with per-tensor LR / eps / decay multipliers and
  clip weights;
- ``clone``: the clone-LR rules (one registry) and the symmetry monitor;
- ``grow``: growth inside a run (the training state grown with the plan, a live
  engine grown, the growth option text);
- ``grow_saved``: ``hyperclone grow``, a saved run grown into a run folder;
- ``loop``: the loop (accumulation, clipping, evaluation, checkpoints, resume, growth
  events, the non-finite guard, metrics, progress);
- ``checkpoint``: the neutral checkpoint any engine resumes;
- ``threads``: the thread policy (the user's count, or the fastest measured);
- ``data``: token files, text, the deterministic batch sampler;
- ``plot``: ``OUT/loss.png``;
- ``cli``: ``hyperclone train``; ``worker``: one launched data-parallel worker.
"""

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
