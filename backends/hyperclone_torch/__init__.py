"""hyperclone_torch: the PyTorch backend of hyperclone.

``expand_model`` grows a live ``transformers`` model (or a ``Decoder``) in memory;
``Decoder`` is the core's decoder as an ``nn.Module`` with checkpoint parameter
names; ``train`` trains a live module with the core trainer (``TorchEngine``);
``backend`` is the object registered under the entry point ``hyperclone.backends: torch``.
"""

from __future__ import annotations

from .backend import TorchBackend, backend
from .engine import TorchEngine, train
from .interop import expand_model
from .model import Decoder

__all__ = ["Decoder", "TorchBackend", "TorchEngine", "backend", "expand_model", "train"]
