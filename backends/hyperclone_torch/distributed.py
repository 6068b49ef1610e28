"""Data-parallel (DDP) and sharded (FSDP2) training under ``torchrun``.

Parallelism is applied to a model, not woven into it (torchtitan's split): the
trainer asks for a ``Parallel`` context, wraps the model with it, and uses its
collectives; with ``parallel="none"`` every call is the identity, so the training
loop has one code path.  State dicts are always *full* (gathered, HF names), so a
checkpoint written by any number of ranks loads in a single process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from hyperclone_core.errors import ConfigError

MODES = ("none", "ddp", "fsdp")


@dataclass
class Parallel:
    """Where this process sits: rank, world size, device, and how the model is wrapped."""

    mode: str = "none"
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.mode != "none":
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of a float over ranks (the global loss of a data-parallel step)."""
        if self.mode == "none":
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._coll_device())
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def _coll_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------ wrapping
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls: the model itself, a DDP wrapper, or the model
        with FSDP2 applied in place (each decoder layer, then the root)."""
        if self.mode == "none":
            return model
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DDP(model, device_ids=ids)
        from torch.distributed.fsdp import fully_shard

        for block in decoder_layers(model):
            fully_shard(block)
        fully_shard(model)
        return model

    def no_sync(self, engine: nn.Module, last_micro: bool):
        """Skip the gradient all-reduce on accumulation micro-steps but the last."""
        if self.mode == "ddp" and not last_micro:
            return engine.no_sync()
        if self.mode == "fsdp" and hasattr(engine, "set_requires_gradient_sync"):
            engine.set_requires_gradient_sync(last_micro)
        return contextlib.nullcontext()

    def close(self) -> None:
        """Every rank reaches here before any tears the group down: a rank that destroyed
        it while another still wrote its results aborted in gloo's threads (SIGABRT,
        "terminate called without an active exception", ~1 run in 4 here)."""
        if self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def decoder_layers(model: nn.Module) -> list:
    """The repeated blocks FSDP2 shards one by one: the elements of the outermost
    ``nn.ModuleList`` holding parameters (``model.layers``, ``gpt_neox.layers``; an
    MoE layer's expert list comes later in module order), found without knowing
    the family."""
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and all(any(True for _ in m.parameters()) for m in mod):
            return list(mod)
    return []


def setup(mode: str, device: str = "auto") -> Parallel:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR); nccl on CUDA, gloo on CPU."""
    if mode not in MODES:
        raise ConfigError(f"--parallel {mode!r} is unknown; use one of {', '.join(MODES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if mode == "none":
        return Parallel(device=torch.device(device))
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError(
            f"--parallel {mode} runs under torchrun (RANK/WORLD_SIZE are not set): launch with "
            f"`torchrun --nproc_per_node N -m hyperclone_core.cli train ... --backend torch`, or use --parallel none"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return Parallel(mode=mode, rank=rank, world=world, local_rank=local, device=dev, owns_group=owns)


# ---------------------------------------------------------------- full state dicts


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: nn.Module, par: Parallel) -> dict:
    """Every tensor of the model, gathered and unsharded, by its HF name, on the
    main rank's CPU (other ranks get ``{}``: no rank holds a second full copy on
    its accelerator)."""
    if par.mode == "none":
        return {k: v.detach() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return {k: v.detach() for k, v in get_model_state_dict(model, options=_options(cpu_offload=True)).items()}


def load_full_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], par: Parallel) -> None:
    """Load full tensors (every rank passes the same dict); FSDP2 keeps its shards."""
    if par.mode == "none":
        params = dict(model.named_parameters())
        params.update(dict(model.named_buffers()))
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, dict(state), options=_options(strict=False))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, par: Parallel) -> dict:
    """``{"state": {param name: {key: tensor}}, "param_groups": [...]}``, keyed by
    name; gathered to the main rank's CPU (``{}`` elsewhere) like the model."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=par.mode != "none"))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                              par: Parallel) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())


def global_shapes(model: nn.Module) -> dict:
    """Name -> full shape of every tensor, without gathering (DTensors know theirs)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP2-sharded) parameter; a collective under FSDP2."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def launch_command(world: int, module_args: Sequence[str]) -> tuple:
    """torchrun with ``world`` CPU/GPU workers on this host (gloo on CPU, nccl on CUDA)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
            "--master-addr", "127.0.0.1", "--master-port", str(port), *module_args]
    return argv, {"OMP_NUM_THREADS": "1"}, {"parallel": "ddp"}


__all__ = ["MODES", "Parallel", "decoder_layers", "full_model_state", "full_optimizer_state", "full_tensor", "global_shapes",
           "launch_command", "load_full_model_state", "load_full_optimizer_state", "setup"]
