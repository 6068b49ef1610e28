"""Reading a checkpoint folder in the Hugging Face layout, trusting nothing in it.

``config.json`` plus ``model.safetensors`` or shards with
``model.safetensors.index.json``.  Every file the folder names must be a regular
file inside it (see ``paths``); every shard's header is validated in full (see
``safetensors``); a tensor lives in exactly one shard; tensors are read one at a
time, and stored dtypes and shapes are checked against the roles the config
implies before any is used.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from . import hub
from .dtypes import FLOAT_CODES
from ..errors import CheckpointError, ConfigError
from ..model.structure import tied_away
from .paths import _show, inside, is_regular, open_regular, read_small
from .safetensors import INDEX, SINGLE, SafetensorsFile, from_storage

AUX_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json", "vocab.txt",
    "chat_template.jinja", "chat_template.json",
)
MAX_CONFIG_BYTES = 16 * 2**20
MAX_INDEX_BYTES = 256 * 2**20
BASE_PREFIXES = ("model", "gpt_neox", "transformer")
_IGNORABLE_SUFFIXES = ("rotary_emb.inv_freq", "attention.masked_bias", "attention.bias")


def _ignorable(name: str) -> bool:
    """Non-parameter buffers older releases saved (causal masks, rotary tables)."""
    return name.endswith(_IGNORABLE_SUFFIXES) and "query_key_value" not in name and ".dense." not in name


def _load_json(path, what: str, limit: int, error=CheckpointError):
    raw = read_small(path, what, limit)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply") from None


def read_config(folder) -> dict:
    """config.json of a checkpoint folder (or of a hub id's snapshot, see ``hub``)."""
    folder, _ = hub.resolve(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; pass a checkpoint folder holding config.json")
    path = folder / "config.json"
    if not os.path.lexists(path):
        raise ConfigError(f"{path}: missing; a Hugging Face checkpoint folder needs its config.json")
    inside(folder, "config.json", "config.json")
    try:
        cfg = _load_json(path, "config.json", MAX_CONFIG_BYTES, ConfigError)
    except CheckpointError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return cfg


class Checkpoint:
    """A checkpoint folder: config and tensors by name, read lazily.  ``folder`` may be
    a hub id (``ORG/NAME[@REVISION]``, see ``hub``): ``self.folder`` is then its
    snapshot in the cache and ``self.hub`` says which (None for a local folder)."""

    def __init__(self, folder):
        self.folder, self.hub = hub.resolve(folder)
        self.config = read_config(self.folder)
        self.files: dict = {}
        self.where: dict = {}
        index = self.folder / INDEX
        if os.path.lexists(index):
            weight_map = self._read_index(index)
        else:
            shards = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if not shards:
                bins = sorted(p.name for p in self.folder.glob("*.bin")) + sorted(p.name for p in self.folder.glob("*.pt"))
                hint = (f" (found {', '.join(bins)}: pickled weights are never loaded; convert them with "
                        "transformers' save_pretrained(safe_serialization=True))") if bins else ""
                raise CheckpointError(f"{self.folder}: no *.safetensors weights{hint}")
            weight_map = {}
            for fname in shards:
                for k in self._open(fname, "a shard").keys():
                    weight_map.setdefault(k, fname)
        self._one_source(weight_map, os.path.lexists(index))
        for fname in sorted(set(weight_map.values())):
            self._open(fname, f"{INDEX}'s weight_map")
        holders: dict = {}
        for fname, f in self.files.items():
            for k in f.keys():
                holders.setdefault(k, []).append(fname)
        twice = {k: v for k, v in holders.items() if len(v) > 1}
        if twice:
            k, v = next(iter(sorted(twice.items())))
            raise CheckpointError(f"{self.folder}: tensor {_show(k)} is stored in more than one shard ({', '.join(v)}); "
                                  "the checkpoint is inconsistent, re-save it")
        self.stored_as: dict = {}
        for name, fname in weight_map.items():
            if name not in self.files[fname].header:
                raise CheckpointError(f"{self.folder / fname}: the index lists tensor {_show(name)}, the shard lacks it")
            self.where[name] = self.files[fname]

    def _one_source(self, weight_map: dict, indexed: bool) -> None:
        """Refuse a folder whose weights a loader would read from other files than this
        reader: transformers loads a ``model.safetensors`` in preference to any index,
        so a single file beside an index (or beside other shards) naming other files is
        two checkpoints in one folder, and which one counts is a guess."""
        if not os.path.lexists(self.folder / SINGLE):
            return
        others = sorted(set(weight_map.values()) - {SINGLE})
        if others:
            where = f"{INDEX} names {', '.join(others[:3])}" if indexed else f"{', '.join(others[:3])} lie beside it"
            raise CheckpointError(
                f"{self.folder}: holds both {SINGLE} and another set of weights ({where}); transformers loads "
                f"{SINGLE}, hyperclone would read the others. Keep one: remove {SINGLE} or "
                f"{INDEX if indexed else 'the other shards'}")

    def _read_index(self, index: Path) -> dict:
        inside(self.folder, INDEX, "the index")
        doc = _load_json(index, "index", MAX_INDEX_BYTES)
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: invalid index (no weight_map of tensor names to shard files)")
        for k, v in weight_map.items():
            if not isinstance(v, str) or not k:
                raise CheckpointError(f"{index}: invalid weight_map entry for tensor {_show(k)}")
        return weight_map

    def _open(self, fname: str, what: str) -> SafetensorsFile:
        if fname not in self.files:
            path = inside(self.folder, fname, what)
            if not os.path.lexists(path):
                raise CheckpointError(f"{self.folder / INDEX} names shard {_show(fname)}, which is missing from "
                                      f"{self.folder}")
            self.files[fname] = SafetensorsFile(path)
        return self.files[fname]

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

    def code(self, name) -> str:
        return self.where[name].code(self.stored_as.get(name, name))

    def raw(self, name, mmap: bool = False) -> np.ndarray:
        return self.where[name].raw(self.stored_as.get(name, name), mmap)

    def read(self, name, dtype=np.float32, check_finite: bool = True) -> np.ndarray:
        """The tensor as ``dtype`` (bfloat16 widened exactly); non-finite values refused."""
        if name not in self.where:
            raise CheckpointError(f"{self.folder}: tensor {name} is missing")
        arr = from_storage(self.raw(name), self.code(name), dtype)
        if check_finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise CheckpointError(
                f"{self.folder}: tensor {name} holds {bad} NaN/Inf values; a model with non-finite "
                "weights cannot be cloned (restore a good checkpoint)"
            )
        return arr

    def read_rows(self, name, lo: int, hi: int, dtype=np.float32, check_finite: bool = True) -> np.ndarray:
        """Rows [lo, hi) of a tensor (dim 0), as ``read`` gives the whole (``dtype=None``:
        the stored bits); non-finite values refused."""
        if name not in self.where:
            raise CheckpointError(f"{self.folder}: tensor {name} is missing")
        raw = self.where[name].raw_rows(self.stored_as.get(name, name), lo, hi)
        arr = from_storage(raw, self.code(name), dtype) if dtype is not None else raw
        if check_finite and self.code(name) in FLOAT_CODES:
            bad = ((raw & 0x7F80) == 0x7F80) if self.code(name) == "BF16" else ~np.isfinite(raw)
            if bad.any():
                raise CheckpointError(
                    f"{self.folder}: tensor {name} holds {int(bad.sum())} NaN/Inf values in rows "
                    f"{lo}..{hi}; a model with non-finite weights cannot be cloned (restore a good checkpoint)")
        return arr

    def float_dtypes(self) -> set:
        """The float dtypes the parameters are stored in (what verification's bound follows)."""
        return {self.dtype(n) for n in self.where if self.code(n) in FLOAT_CODES and not _ignorable(n)}

    def validate(self, family, cfg, tie_ok: bool = True) -> None:
        """Refuse a checkpoint whose tensors disagree with its config (names, shapes,
        dtypes: every parameter is a float), naming them."""
        from ..model.spec import tensor_names

        expected = tensor_names(family, cfg)
        self.bind(expected)
        sizes = cfg.sizes()
        optional = {n for n, (r, _, _) in expected.items() if tied_away(r, cfg)}
        missing = [n for n in expected if n not in self.where and n not in optional]
        extra = [n for n in self.where if n not in expected and not _ignorable(n)]
        problems = []
        if missing:
            problems.append(f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if extra:
            problems.append(f"tensors the {family.name} config does not explain: "
                            f"{', '.join(_show(e) for e in extra[:8])}{' ...' if len(extra) > 8 else ''}")
        for n, (role, _, _) in expected.items():
            if n not in self.where:
                continue
            if self.shape(n) != role.shape(sizes):
                problems.append(f"tensor {n} has shape {list(self.shape(n))}, config.json implies "
                                f"{list(role.shape(sizes))}")
            if self.code(n) not in FLOAT_CODES:
                problems.append(f"tensor {n} ({role.kind}) is stored as {self.dtype(n)}; a parameter must be "
                                "float32, float16, bfloat16 or float64")
        if problems:
            raise CheckpointError(
                f"{self.folder}: weights and config.json disagree: " + "; ".join(problems[:6])
                + ". Is config.json from the same model as the weights?"
            )


def copy_aux_files(src, dst) -> list:
    """Copy tokenizer and generation files (never weights): each must be a regular file
    inside ``src``; the copy is a plain file even where the source was a symlink."""
    copied = []
    for name in AUX_FILES:
        p = Path(src) / name
        if not os.path.lexists(p):
            continue
        inside(src, name, name)
        with open_regular(p, name) as f, open(Path(dst) / name, "wb") as out:
            shutil.copyfileobj(f, out)
        copied.append(name)
    return copied


def load_weights(folder, dtype=np.float32) -> tuple:
    """(config, {name: array}) of a whole checkpoint: for small models and tests."""
    ck = Checkpoint(folder)
    return ck.config, {n: ck.read(n, dtype) for n in ck.names() if not _ignorable(n)}


__all__ = ["AUX_FILES", "BASE_PREFIXES", "Checkpoint", "copy_aux_files", "is_regular", "load_weights",
           "read_config"]
