"""The plan primitives on torch tensors, on the tensor's own device.

Dtype-preserving: a bfloat16 weight stays bfloat16 (coefficients are cast to the
weight's dtype, noise is drawn in float32 and added in the weight's dtype).
Every op returns a new tensor; the caller's source is never written.
"""

from __future__ import annotations

import numpy as np
import torch

DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torch_dtype(name) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    key = str(name).replace("torch.", "")
    if key not in DTYPES:
        raise ValueError(f"dtype {name!r} is not supported; use one of {sorted(DTYPES)}")
    return DTYPES[key]


def asarray(a, device=None) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device) if device is not None else a
    arr = np.asarray(a)
    if arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    x = x.detach()
    if x.dtype == torch.bfloat16:
        x = x.float()
    return x.cpu().numpy()


def take(x: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    if index.device != x.device:
        index = index.to(x.device)
    return torch.index_select(x, axis, index)


def scale(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    return x * coeffs.to(device=x.device, dtype=x.dtype)


def zero_sum_noise(shape, axis: int, groups: torch.Tensor, seed: int, like: torch.Tensor) -> torch.Tensor:
    """Gaussian noise (float32, seeded torch.Generator on ``like``'s device),
    projected to sum 0 over the copies of each group along ``axis``."""
    device = like.device
    gen = torch.Generator(device=device).manual_seed(int(seed) % (2**63))
    noise = torch.randn(tuple(shape), generator=gen, device=device, dtype=torch.float32)
    groups = groups.to(device=device, dtype=torch.long)
    m = int(groups.max()) + 1
    sums_shape = list(shape)
    sums_shape[axis] = m
    sums = torch.zeros(sums_shape, dtype=noise.dtype, device=device).index_add_(axis, groups, noise)
    counts = torch.bincount(groups, minlength=m).to(noise.dtype)
    view = [1] * len(shape)
    view[axis] = m
    means = sums.div_(counts.view(view))
    return noise.sub_(torch.index_select(means, axis, groups))


def mean_square(x: torch.Tensor) -> float:
    """mean(x**2), accumulated in float64."""
    if x.numel() == 0:
        return 0.0
    return float(torch.linalg.vector_norm(x.detach(), dtype=torch.float64) ** 2 / x.numel())


def add_scaled(x: torch.Tensor, noise: torch.Tensor, factor: float) -> torch.Tensor:
    if noise.dtype == x.dtype:
        return noise.mul_(factor).add_(x)  # the noise buffer is ours: reuse it
    return (x.float() + noise * factor).to(x.dtype)


def reshape(x: torch.Tensor, shape) -> torch.Tensor:
    return x.reshape(tuple(shape))


def cast(x: torch.Tensor, dtype) -> torch.Tensor:
    return x.to(torch_dtype(dtype))


__all__ = ["asarray", "to_numpy", "take", "scale", "zero_sum_noise", "mean_square", "add_scaled",
           "reshape", "cast", "torch_dtype", "DTYPES"]
