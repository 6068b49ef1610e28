"""Dtypes numpy lacks: bfloat16 kept as its bits (uint16), converted exactly."""

from __future__ import annotations

import numpy as np

SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64,
}
NAMES = {k: ("bfloat16" if k == "BF16" else np.dtype(v).name) for k, v in SAFETENSORS_DTYPES.items() if k != "U16"}
NAMES["U16"] = "uint16"
CODES = {v: k for k, v in NAMES.items()}
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16"})


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch and jax do; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(x)
    out = rounded.astype(np.uint16)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def cast_numpy(x: np.ndarray, dtype: str) -> np.ndarray:
    """Cast a float array to ``dtype``; bfloat16 is rounded and kept as float32 values."""
    if dtype == "bfloat16":
        return bf16_to_f32(f32_to_bf16(x.astype(np.float32)))
    return x.astype(np.dtype(dtype))
