"""The torch backend object: plan primitives, the decoder forward, a reference
training loop for the conformance suite, and checkpoints bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from hyperclone_core.io import AtomicDir, Checkpoint, ShardedWriter, write_json

from . import ops


def read_tensor(ck: Checkpoint, name: str) -> torch.Tensor:
    """One stored tensor as torch, in its stored dtype (bfloat16 bits viewed, not converted)."""
    raw = np.asarray(ck.raw(name))
    if ck.dtype(name) == "bfloat16":
        return torch.from_numpy(raw.copy()).view(torch.bfloat16)
    return torch.from_numpy(raw.copy())


def _storage(t: torch.Tensor) -> tuple:
    """(numpy array, dtype name) that ShardedWriter stores exactly: bfloat16 goes
    as its float32 widening, which the writer rounds back to the same bits."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().cpu().numpy(), "bfloat16"
    arr = t.cpu().numpy()
    return arr, str(arr.dtype)


class TorchBackend:
    name = "torch"
    # distributed: DDP and FSDP2 under torchrun (hyperclone train --parallel ddp|fsdp; proven on
    # gloo by tests/test_distributed.py); the conformance suite does not check it yet
    capabilities = frozenset({"expand", "forward", "train", "distributed"})

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
        return ops.asarray(a, device or self.device)

    to_numpy = staticmethod(ops.to_numpy)
    take = staticmethod(ops.take)
    take_axes = staticmethod(ops.take_axes)
    scale = staticmethod(ops.scale)
    scale_ = staticmethod(ops.scale_)
    zero_sum_noise = staticmethod(ops.zero_sum_noise)
    add_zero_sum_noise = staticmethod(ops.add_zero_sum_noise)
    mean_square = staticmethod(ops.mean_square)
    add_scaled = staticmethod(ops.add_scaled)
    reshape = staticmethod(ops.reshape)
    cast = staticmethod(ops.cast)

    @staticmethod
    def shape(x) -> tuple:
        return tuple(x.shape)

    # ---------------------------------------------------------------- model
    def _decoder(self, family, cfg, weights, dtype):
        from .model import Decoder

        model = Decoder(family, cfg)
        model.assign({n: torch.from_numpy(np.asarray(w)).to(self.device or "cpu", dtype)
                      for n, w in weights.items() if n in model.shapes})
        return model

    def forward(self, family, cfg, weights: Mapping[str, np.ndarray], tokens) -> np.ndarray:
        """Logits in float64 on the CPU (float32 elsewhere: MPS has no float64)."""
        dev = torch.device(self.device or "cpu")
        dtype = torch.float64 if dev.type == "cpu" else torch.float32
        model = self._decoder(family, cfg, weights, dtype)
        with torch.no_grad():
            out = model(torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=dev))
        return out.cpu().numpy()

    def train_steps(self, family, hf_config, weights, batches, lr: float) -> list:
        """Plain AdamW steps on the decoder (float32); one loss per batch."""
        cfg = family.read(hf_config)
        model = self._decoder(family, cfg, weights, torch.float32)
        for p in model.parameters():
            p.requires_grad_(True)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        losses = []
        for b in batches:
            b = torch.as_tensor(np.asarray(b), dtype=torch.long, device=self.device or "cpu")
            logits = model(b[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, folder, hf_config: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
                        force: bool = False, max_shard_bytes: int = 5 * 2**30) -> Path:
        """HF layout, atomically, each tensor in its own dtype (bfloat16 included)."""
        with AtomicDir(folder, force=force) as tmp:
            layout = [(n, tuple(t.shape), str(t.dtype).replace("torch.", "")) for n, t in weights.items()]
            w = ShardedWriter(tmp, layout, max_shard_bytes)
            for n, t in weights.items():
                w.write(n, _storage(t)[0])
            w.close()
            write_json(tmp / "config.json", dict(hf_config))
        return Path(folder)

    def load_checkpoint(self, folder) -> tuple:
        ck = Checkpoint(folder)
        dev = self.device
        return ck.config, {n: read_tensor(ck, n).to(dev) if dev else read_tensor(ck, n) for n in ck.names()}


backend = TorchBackend()

__all__ = ["TorchBackend", "backend", "read_tensor"]
