"""Checkpoints in the Hugging Face layout, read and written with numpy alone.

``config.json`` plus ``model.safetensors`` or shards with
``model.safetensors.index.json``.  Tensors are memory-mapped and read one at a
time; shards are written with their header first (sizes are known from the
plan), so a tensor goes to disk as soon as it is expanded.  Never unpickles.

Writes are atomic: everything goes into ``.<dst>.hyperclone-tmp-<pid>`` beside
the destination and is renamed into place only when complete; a temp dir left by
a killed process is recognised by its name and removed by the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from .dtypes import CODES, FLOAT_CODES, NAMES, SAFETENSORS_DTYPES, bf16_to_f32, f32_to_bf16
from .errors import CheckpointError, ConfigError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TMP_MARK = ".hyperclone-tmp-"
AUX_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json", "vocab.txt",
    "chat_template.jinja", "chat_template.json",
)


def read_config(folder) -> dict:
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; pass a checkpoint folder holding config.json")
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: missing; a Hugging Face checkpoint folder needs its config.json")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return cfg


class SafetensorsFile:
    """One safetensors file, memory-mapped; header validated against the file size."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: truncated (no safetensors header)")
                (n,) = struct.unpack("<Q", head)
                if n > size - 8 or n > 100_000_000:
                    raise CheckpointError(f"{self.path}: corrupt or truncated (header of {n} bytes in a {size}-byte file)")
                header = json.loads(f.read(n))
        except OSError as exc:
            raise CheckpointError(f"{self.path}: unreadable ({exc.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not JSON)") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self.start = 8 + n
        self.header = header
        data_len = size - self.start
        for name, info in header.items():
            try:
                code, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
                dt = SAFETENSORS_DTYPES[code]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {name}: invalid header entry {info!r}") from None
            if b > data_len or a > b or (b - a) != int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize:
                raise CheckpointError(
                    f"{self.path}: tensor {name} needs bytes {a}..{b} but the data holds {data_len}: "
                    "the file is truncated or corrupt; re-download or re-save it"
                )
        self._mmap = None

    def keys(self):
        return list(self.header)

    def shape(self, name) -> tuple:
        return tuple(self.header[name]["shape"])

    def dtype(self, name) -> str:
        code = self.header[name]["dtype"]
        return NAMES.get(code, code.lower())

    def raw(self, name, mmap: bool = False) -> np.ndarray:
        """The stored array (BF16 as uint16 bits).  By default read into fresh memory,
        so streaming a checkpoint keeps only the tensor at hand resident; ``mmap=True``
        returns a read-only memory-mapped view instead."""
        info = self.header[name]
        a, b = info["data_offsets"]
        dt = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        if mmap:
            if self._mmap is None:
                self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
            return self._mmap[self.start + a: self.start + b].view(dt).reshape(info["shape"])
        with open(self.path, "rb") as f:
            f.seek(self.start + a)
            out = np.fromfile(f, dtype=dt, count=(b - a) // dt.itemsize)
        if out.nbytes != b - a:
            raise CheckpointError(f"{self.path}: tensor {name} is truncated")
        return out.reshape(info["shape"])


class Checkpoint:
    """A checkpoint folder: config and tensors by name, read lazily."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.config = read_config(self.folder)
        self.files: dict = {}
        self.where: dict = {}
        index = self.folder / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise CheckpointError(f"{index}: invalid index (no weight_map)") from None
            for fname in sorted(set(weight_map.values())):
                if not (self.folder / fname).is_file():
                    raise CheckpointError(f"{index} names shard {fname}, which is missing from {self.folder}")
        else:
            shards = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if not shards:
                bins = sorted(p.name for p in self.folder.glob("*.bin")) + sorted(p.name for p in self.folder.glob("*.pt"))
                hint = (f" (found {', '.join(bins)}: pickled weights are never loaded; convert them with "
                        "transformers' save_pretrained(safe_serialization=True))") if bins else ""
                raise CheckpointError(f"{self.folder}: no *.safetensors weights{hint}")
            weight_map = {}
            for fname in shards:
                for k in SafetensorsFile(self.folder / fname).keys():
                    weight_map[k] = fname
        for fname in sorted(set(weight_map.values())):
            self.files[fname] = SafetensorsFile(self.folder / fname)
        self.stored_as: dict = {}
        for name, fname in weight_map.items():
            if name not in self.files[fname].header:
                raise CheckpointError(f"{self.folder / fname}: the index lists tensor {name}, the shard lacks it")
            self.where[name] = self.files[fname]

    def names(self) -> list:
        return list(self.where)

    def bind(self, expected) -> None:
        """Accept the names older releases wrote: a checkpoint saved from the base
        model (``decoder.layers.0...`` for ``model.decoder.layers.0...``) is read under
        the names the family expects."""
        for name in expected:
            if name in self.where:
                continue
            head, _, rest = name.partition(".")
            if head in BASE_PREFIXES and rest in self.where:
                self.where[name] = self.where.pop(rest)
                self.stored_as[name] = rest

    def __contains__(self, name) -> bool:
        return name in self.where

    def shape(self, name) -> tuple:
        return self.where[name].shape(self.stored_as.get(name, name))

    def dtype(self, name) -> str:
        return self.where[name].dtype(self.stored_as.get(name, name))

    def raw(self, name, mmap: bool = False) -> np.ndarray:
        return self.where[name].raw(self.stored_as.get(name, name), mmap)

    def read(self, name, dtype=np.float32, check_finite: bool = True) -> np.ndarray:
        """The tensor as ``dtype`` (bfloat16 widened exactly); non-finite values refused."""
        if name not in self.where:
            raise CheckpointError(f"{self.folder}: tensor {name} is missing")
        raw = self.raw(name)
        if self.dtype(name) == "bfloat16":
            raw = bf16_to_f32(raw)
        arr = raw.astype(dtype, copy=False) if dtype is not None else raw
        if check_finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise CheckpointError(
                f"{self.folder}: tensor {name} holds {bad} NaN/Inf values; a model with non-finite "
                "weights cannot be cloned (restore a good checkpoint)"
            )
        return arr

    def validate(self, family, cfg, tie_ok: bool = True) -> None:
        """Refuse a checkpoint whose tensors disagree with its config, naming them."""
        from .spec import tensor_names

        expected = tensor_names(family, cfg)
        self.bind(expected)
        sizes = cfg.sizes()
        optional = {n for n, (r, _, _) in expected.items() if r.kind == "lm_head" and cfg.tie_embeddings}
        missing = [n for n in expected if n not in self.where and n not in optional]
        extra = [n for n in self.where if n not in expected and not _ignorable(n)]
        problems = []
        if missing:
            problems.append(f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if extra:
            problems.append(f"tensors the {family.name} config does not explain: {', '.join(extra[:8])}"
                            f"{' ...' if len(extra) > 8 else ''}")
        for n, (role, _, _) in expected.items():
            if n in self.where and self.shape(n) != role.shape(sizes):
                problems.append(f"tensor {n} has shape {list(self.shape(n))}, config.json implies "
                                f"{list(role.shape(sizes))}")
        if problems:
            raise CheckpointError(
                f"{self.folder}: weights and config.json disagree: " + "; ".join(problems[:6])
                + ". Is config.json from the same model as the weights?"
            )


BASE_PREFIXES = ("model", "gpt_neox", "transformer")
_IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq", "attention.masked_bias", "attention.bias")


def _ignorable(name: str) -> bool:
    """Non-parameter buffers older releases saved (causal masks, rotary tables)."""
    return name.endswith(_IGNORABLE_SUFFIXES) and "query_key_value" not in name and ".dense." not in name


# ---------------------------------------------------------------- writing


def _header_bytes(entries: list, metadata: Optional[dict]) -> tuple:
    header: dict = {}
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    offset = 0
    for name, shape, code in entries:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(SAFETENSORS_DTYPES[code]).itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


def to_storage(arr: np.ndarray, code: str) -> np.ndarray:
    if code == "BF16":
        return f32_to_bf16(np.asarray(arr, dtype=np.float32))
    return np.ascontiguousarray(arr, dtype=SAFETENSORS_DTYPES[code])


class ShardedWriter:
    """Streams tensors into shards whose layout is fixed up front.

    ``layout`` is a list of (name, shape, dtype-name) in writing order; tensors
    must then be ``write``-n in that order.  Shards split at ``max_shard_bytes``.
    """

    def __init__(self, folder, layout: Iterable, max_shard_bytes: int = 5 * 2**30,
                 metadata: Optional[dict] = None):
        self.folder = Path(folder)
        entries = [(n, tuple(s), CODES.get(d, d.upper())) for n, s, d in layout]
        shards: list = [[]]
        size = 0
        for e in entries:
            n = int(np.prod(e[1], dtype=np.int64)) * np.dtype(SAFETENSORS_DTYPES[e[2]]).itemsize
            if shards[-1] and size + n > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(e)
            size += n
        total = len(shards)
        self.names = [SINGLE] if total == 1 else [
            f"model-{k + 1:05d}-of-{total:05d}.safetensors" for k in range(total)
        ]
        self.plan = [(fname, s) for fname, s in zip(self.names, shards)]
        self.metadata = dict(metadata or {}, format="pt")
        self.order = [e for _, s in self.plan for e in s]
        self._pos = 0
        self._shard = -1
        self._fh = None
        self.total_bytes = 0

    def _open_next(self):
        if self._fh:
            self._fh.close()
        self._shard += 1
        fname, entries = self.plan[self._shard]
        head, _ = _header_bytes(entries, self.metadata)
        self._fh = open(self.folder / fname, "wb")
        self._fh.write(head)
        self._left = len(entries)

    def write(self, name: str, arr: np.ndarray) -> None:
        exp_name, shape, code = self.order[self._pos]
        if name != exp_name or tuple(arr.shape) != shape:
            raise CheckpointError(f"writer expected {exp_name} {list(shape)}, got {name} {list(arr.shape)}")
        if self._fh is None or self._left == 0:
            self._open_next()
        data = to_storage(arr, code)
        self._fh.write(memoryview(data).cast("B") if data.size else b"")
        self.total_bytes += data.nbytes
        self._left -= 1
        self._pos += 1

    def close(self) -> None:
        if self._pos != len(self.order):
            missing = [n for n, _, _ in self.order[self._pos:]][:5]
            raise CheckpointError(f"writer closed before tensors {missing} were written")
        if self._fh:
            self._fh.close()
            self._fh = None
        if len(self.names) > 1:
            weight_map = {n: fname for fname, s in self.plan for n, _, _ in s}
            (self.folder / INDEX).write_text(json.dumps(
                {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}, indent=2))


def write_safetensors(path, tensors: Mapping[str, np.ndarray], dtype: Optional[str] = None,
                      metadata: Optional[dict] = None) -> Path:
    """One safetensors file (e.g. optimizer state), written to a temp name then renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    codes = [(n, a.shape, CODES.get(dtype or _dtype_name(a), (dtype or _dtype_name(a)).upper()))
             for n, a in tensors.items()]
    head, _ = _header_bytes(codes, dict(metadata or {}, format="pt"))
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            for (n, _, code) in codes:
                data = to_storage(tensors[n], code)
                f.write(memoryview(data).cast("B") if data.size else b"")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def save_checkpoint(folder, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                    dtype: Optional[str] = None, max_shard_bytes: int = 5 * 2**30, force: bool = False,
                    extra_files: Optional[Mapping[str, str]] = None) -> Path:
    """Write a whole checkpoint atomically (numpy arrays; ``dtype`` e.g. "bfloat16")."""
    with AtomicDir(folder, force=force) as tmp:
        layout = [(n, a.shape, dtype or _dtype_name(a)) for n, a in tensors.items()]
        w = ShardedWriter(tmp, layout, max_shard_bytes)
        for n, a in tensors.items():
            w.write(n, a)
        w.close()
        write_json(tmp / "config.json", config)
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
    return Path(folder)


def _dtype_name(a: np.ndarray) -> str:
    return str(np.asarray(a).dtype)


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


def copy_aux_files(src, dst) -> list:
    """Copy tokenizer and generation files (never weights)."""
    copied = []
    for name in AUX_FILES:
        p = Path(src) / name
        if p.is_file():
            shutil.copy2(p, Path(dst) / name)
            copied.append(name)
    return copied


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(dst) -> list:
    """Remove temp dirs of ``dst`` left by processes that no longer run."""
    dst = Path(dst)
    removed = []
    prefix = f".{dst.name}{TMP_MARK}"
    if not dst.parent.is_dir():
        return removed
    for p in dst.parent.iterdir():
        if p.name.startswith(prefix):
            pid = p.name[len(prefix):].split("-")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


class AtomicDir:
    """``with AtomicDir(dst) as tmp:`` write into ``tmp``; renamed to ``dst`` on success,
    removed on failure.  ``force`` replaces an existing ``dst`` (old one removed only
    after the new one is in place)."""

    def __init__(self, dst, force: bool = False):
        self.dst = Path(dst)
        self.force = force

    def __enter__(self) -> Path:
        if self.dst.exists() and not self.force:
            raise CheckpointError(f"{self.dst} already exists; pass --force to replace it")
        try:  # like mkdir -p: the temp dir lives beside dst, so its parent must exist
            self.dst.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"{self.dst.parent}: cannot create the destination's parent folder ({exc})") from exc
        clean_stale_tmp(self.dst)
        self.tmp = self.dst.parent / f".{self.dst.name}{TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}"
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.dst.exists():
            old = self.dst.parent / f".{self.dst.name}{TMP_MARK}{os.getpid()}-old"
            os.replace(self.dst, old)
        os.replace(self.tmp, self.dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def load_weights(folder, dtype=np.float32) -> tuple:
    """(config, {name: array}) of a whole checkpoint: for small models and tests."""
    ck = Checkpoint(folder)
    return ck.config, {n: ck.read(n, dtype) for n in ck.names() if not _ignorable(n)}


__all__ = [
    "AtomicDir", "Checkpoint", "SafetensorsFile", "ShardedWriter", "copy_aux_files", "load_weights",
    "read_config", "save_checkpoint", "write_json", "clean_stale_tmp", "write_safetensors", "FLOAT_CODES",
]
