"""Writing a whole Hugging Face checkpoint folder: the one home for it.

``write_hf_folder`` is what expand's tests, the trainer and a backend's
``save_checkpoint`` call: weights into shards (each tensor in its own dtype),
``config.json``, optional extra files and tokenizer files, all through
``AtomicDir`` (so the destination rules and the fsync-then-rename hold).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import numpy as np

from .atomic import AtomicDir
from .checkpoint import Checkpoint, copy_aux_files
from .paths import inside
from .safetensors import ShardedWriter


def write_json(path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _dtype_name(a) -> str:
    return str(np.asarray(a).dtype)


def write_hf_folder(folder, config: Mapping[str, Any], tensors: Mapping[str, Any], *,
                    dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2**30, force: bool = False,
                    metadata: Optional[dict] = None,
                    extra_files: Optional[Mapping[str, Union[str, bytes]]] = None,
                    aux_from=None, protect: Iterable = (),
                    before_commit: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``folder`` atomically.

    ``tensors`` maps names to numpy arrays, or to ``(array, dtype name)`` pairs to
    store each in its own dtype (a bfloat16 tensor given as float32 is rounded to
    bfloat16 bits here and only here); ``dtype`` casts them all.  ``extra_files``
    maps relative paths to text or bytes; ``aux_from`` copies a source folder's
    tokenizer files; ``before_commit(tmp)`` adds anything else (e.g. trainer state)
    before the folder is fsynced and renamed into place.
    """
    items = [(n, v if isinstance(v, tuple) else (v, None)) for n, v in tensors.items()]
    layout = [(n, np.shape(a), dtype or d or _dtype_name(a)) for n, (a, d) in items]
    with AtomicDir(folder, force=force, protect=protect) as tmp:
        w = ShardedWriter(tmp, layout, max_shard_bytes, metadata=metadata)
        for n, (a, _) in items:
            w.write(n, np.asarray(a))
        w.close()
        write_json(tmp / "config.json", dict(config))
        for rel, content in (extra_files or {}).items():
            path = inside(tmp, rel, "an extra file")
            os.makedirs(path.parent, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        if aux_from is not None:
            copy_aux_files(aux_from, tmp)
        if before_commit is not None:
            before_commit(tmp)
    return Path(folder)


def save_arrays(folder, config: Mapping[str, Any], arrays: Mapping[str, Any], to_numpy: Callable[[Any], np.ndarray],
                dtype_name: Callable[[Any], str], *, force: bool = False, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write a backend's arrays as a checkpoint: each stored in its own dtype
    (``dtype_name``), pulled to the host with ``to_numpy`` one tensor at a time as it
    is written (bfloat16 as its exact float32 widening, rounded back to the same
    bits here), so the host never holds the model.  numpy arrays pass as they are."""
    items = [(n, a, dtype_name(a)) for n, a in arrays.items()]
    layout = [(n, tuple(a.shape), d) for n, a, d in items]
    with AtomicDir(folder, force=force) as tmp:
        w = ShardedWriter(tmp, layout, max_shard_bytes)
        for n, a, _ in items:
            w.write(n, np.asarray(a) if isinstance(a, np.ndarray) else np.asarray(to_numpy(a)))
        w.close()
        write_json(tmp / "config.json", dict(config))
    return Path(folder)


def load_arrays(folder, from_stored: Callable[[np.ndarray, str], Any]) -> tuple:
    """(config, {name: from_stored(raw, dtype name)}) of a checkpoint folder, read with
    the core's reader; ``raw`` is the stored array (bfloat16 as its uint16 bits)."""
    ck = Checkpoint(folder)
    return ck.config, {n: from_stored(np.asarray(ck.raw(n)), ck.dtype(n)) for n in ck.names()}


def save_checkpoint(folder, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                    dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2**30, force: bool = False,
                    extra_files: Optional[Mapping[str, str]] = None) -> Path:
    """Write a whole checkpoint atomically (numpy arrays; ``dtype`` e.g. "bfloat16")."""
    return write_hf_folder(folder, config, tensors, dtype=dtype, max_shard_bytes=max_shard_bytes, force=force,
                           extra_files=extra_files)


__all__ = ["load_arrays", "save_arrays", "save_checkpoint", "write_hf_folder", "write_json"]
