"""The torch backend object: plan primitives (``ops.TorchArrays``), the decoder
forward, the training engine and its launcher; checkpoints bit for bit come with
the primitives (the core's ``ArrayPrimitives``)."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import torch

from . import ops


class TorchBackend(ops.TorchArrays):
    name = "torch"
    # distributed: DDP and FSDP2 under torchrun (hyperclone train --parallel ddp|fsdp)
    capabilities = frozenset({"expand", "forward", "train", "distributed"})
    parallel_modes = ("none", "ddp", "fsdp")  # hyperclone train --parallel (refused by name otherwise)

    def check_device(self, device: str) -> None:
        """Refuse a --device this torch cannot use, by name, before any work."""
        from hyperclone_core.errors import UsageError

        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise UsageError("not a torch device; use cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if not count:
                raise UsageError("this torch has no CUDA device (a CPU-only build, or no GPU visible); use --device "
                                 "cpu or auto")
            if dev.index is not None and dev.index >= count:
                raise UsageError(f"torch sees {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        elif dev.type == "mps":
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise UsageError("this torch has no MPS device; use --device cpu or auto")
        elif dev.type != "cpu":
            raise UsageError(f"torch device type {dev.type!r} is not one hyperclone trains on; use cpu, cuda or mps")
        elif dev.index not in (None, 0):
            raise UsageError("torch has one cpu device (cpu or cpu:0)")
    # A launched training worker that has finished leaves with os._exit: gloo's threads
    # outlive destroy_process_group (the group stays referenced), and about 1 exit in
    # 100 aborted in their teardown after the results were written and the group
    # destroyed (SIGABRT, "terminate called without an active exception", no Python
    # frame), so torchrun reported a failed run.
    worker_exits_hard = True

    def __init__(self, device: Optional[str] = None):
        self.device = device

    def version(self) -> str:
        return torch.__version__

    def device_name(self) -> str:
        dev = torch.device(self.device or "cpu")
        if dev.type == "cuda" and torch.cuda.is_available():
            return f"cuda ({torch.cuda.get_device_name(dev)})"
        return str(dev)

    # ---------------------------------------------------------------- primitives
    def asarray(self, a, device=None):
        return super().asarray(a, device or self.device)

    def from_stored(self, raw, dtype):
        t = super().from_stored(raw, dtype)
        return t.to(self.device) if self.device else t

    # ---------------------------------------------------------------- model
    def _decoder(self, family, cfg, weights, dtype):
        from .model import Decoder

        model = Decoder(family, cfg)
        model.assign({n: torch.from_numpy(np.asarray(w)).to(self.device or "cpu", dtype)
                      for n, w in weights.items() if n in model.shapes})
        return model

    def forward(self, family, cfg, weights: Mapping[str, np.ndarray], tokens, dtype: Optional[str] = None) -> np.ndarray:
        """Logits as numpy; computed in float64 on the CPU (float32 elsewhere: MPS has no
        float64) unless ``dtype`` ("float32", "bfloat16") says otherwise."""
        dev = torch.device(self.device or "cpu")
        tdt = ops.torch_dtype(dtype) if dtype else (torch.float64 if dev.type == "cpu" else torch.float32)
        model = self._decoder(family, cfg, weights, tdt)
        with torch.no_grad():
            out = model(torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=dev))
        return out.float().cpu().numpy() if out.dtype == torch.bfloat16 else out.cpu().numpy()

    # ---------------------------------------------------------------- training
    def engine(self, hf_config, weights, config, optimizer):
        """A ``TorchEngine`` over a Decoder holding (a float32 copy of) ``weights``."""
        from .engine import TorchEngine
        from .model import Decoder

        model = Decoder.from_weights(hf_config, weights, dtype=torch.float32)
        return TorchEngine(model, config, optimizer)

    def launch_command(self, world, module_args):
        from .distributed import launch_command

        return launch_command(world, module_args)


backend = TorchBackend()

__all__ = ["TorchBackend", "backend"]
