"""hyperclone_torch: the PyTorch backend of hyperclone.

``expand_model`` grows a live ``transformers`` model (or a ``Decoder``) in memory,
and with ``optimizer=`` its ``torch.optim.AdamW`` state too (``clip_grad_norm_``
clips the grown run on the source-equivalent norm);
``Decoder`` is the core's decoder as an ``nn.Module`` with checkpoint parameter
names; ``train`` trains a live module with the core trainer (``TorchEngine``);
``backend`` is the object registered under the entry point ``hyperclone.backends: torch``.
"""

from __future__ import annotations

from .backend import TorchBackend, backend
from .engine import TorchEngine, train
from .grow import clip_grad_norm_
from .interop import expand_model
from .model import Decoder

__all__ = ["Decoder", "TorchBackend", "TorchEngine", "backend", "clip_grad_norm_", "expand_model", "train"]
