"""hyperclone_torch: the PyTorch backend of hyperclone.

``expand_model`` grows a live ``transformers`` model (or a ``Decoder``) in memory;
``Decoder`` is the neutral decoder with checkpoint parameter names; ``backend`` is
the object registered under the entry point ``hyperclone.backends: torch``.
The trainer (``train``) is imported lazily.
"""

from __future__ import annotations

from .backend import TorchBackend, backend
from .interop import expand_model
from .model import Decoder

__all__ = ["Decoder", "TorchBackend", "backend", "expand_model", "train"]


def __getattr__(name):
    if name == "train":
        import importlib

        return importlib.import_module(".train", __name__)
    raise AttributeError(f"module 'hyperclone_torch' has no attribute {name!r}")
