"""hyperclone_mlx: the MLX backend of hyperclone.

``backend`` is the object registered under the entry point ``hyperclone.backends:
mlx`` (plan primitives, the compiled decoder, the training engine, checkpoints);
``MlxEngine`` trains with the core trainer; ``expand_model`` grows a model
``mlx_lm.load`` returned into one of the same class (``interop``).
"""

from __future__ import annotations

from .backend import MlxBackend, backend
from .engine import MlxEngine
from .grow import clip_grad_norm
from .interop import expand_model

__all__ = ["MlxBackend", "MlxEngine", "backend", "clip_grad_norm", "expand_model"]
