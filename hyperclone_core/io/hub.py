"""Models named by their Hugging Face hub id: ``ORG/NAME[@REVISION]`` to a folder.

Wherever a checkpoint folder is accepted (``Checkpoint``, ``read_config``, and so
every command and backend that reads one), a name that is not a path here and looks
like a hub id resolves through ``huggingface_hub``: the local cache first (the
snapshot of the revision, ``main`` by default, when it holds a config and weights),
else a download with huggingface_hub's progress bars (its token from the environment:
``HF_TOKEN`` or a login), only the files hyperclone reads.  Offline
(``HF_HUB_OFFLINE=1``) an id the cache lacks is an input error naming it.  An existing
local folder always wins over an id.  ``huggingface_hub`` is imported only here and
only then (the ``hf`` extra): the core stays numpy-only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import CheckpointError

HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")
"""``ORG/NAME`` with an optional ``@REVISION`` (a branch, tag or commit)."""

FILES = ("config.json", "*.safetensors", "model.safetensors.index.json", "README.md", "generation_config.json",
         "tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "added_tokens.json", "chat_template.*")
"""What a download fetches: the config, the safetensors weights, the card and the files
copied beside a grown model (``checkpoint.AUX_FILES``); never pickled weights."""


@dataclass(frozen=True)
class HubSource:
    """Where a hub id resolved: ``repo_id``, the ``revision`` asked for (None: main),
    the snapshot's ``commit`` and its ``folder`` in the cache."""

    repo_id: str
    revision: Optional[str]
    commit: Optional[str]
    folder: Path

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse(source) -> Optional[tuple]:
    """(repo_id, revision or None) when ``source`` reads as a hub id, else None."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    m = HUB_ID.fullmatch(os.fspath(source))
    if m is None or ".." in m.group("repo") or m.group("repo").endswith((".", "-")):
        return None
    return m.group("repo"), m.group("revision")


def resolve(source) -> tuple:
    """(folder, HubSource or None) for a checkpoint argument: a path that exists here as
    given, else a hub id's snapshot folder, else the path (the caller's "no such
    folder" error names it)."""
    path = Path(source)
    if os.path.lexists(path):
        return path, None
    ref = parse(source)
    if ref is None:
        return path, None
    repo_id, revision = ref
    try:
        import huggingface_hub
        import huggingface_hub.errors
        from huggingface_hub import constants
    except ImportError:
        raise CheckpointError(
            f"{source}: no such checkpoint folder; to read it as a Hugging Face hub id install "
            "huggingface_hub (pip install 'hyperclone[hf]')"
        ) from None
    errors = huggingface_hub.errors
    shown = f"{repo_id}@{revision}" if revision else repo_id
    folder = _cached(huggingface_hub, repo_id, revision)
    if folder is None:
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(f"{shown}: no such checkpoint folder, and the Hugging Face cache has no complete "
                                  "snapshot of that model (HF_HUB_OFFLINE is set, so nothing was downloaded)")
        try:
            folder = Path(huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=list(FILES)))
        except errors.GatedRepoError:
            raise CheckpointError(f"{shown}: the model is gated; accept its terms on the Hub and set HF_TOKEN "
                                  "(or run `hf auth login`)") from None
        except errors.RevisionNotFoundError:
            raise CheckpointError(f"{shown}: the Hub has no revision {revision!r} of {repo_id}") from None
        except errors.RepositoryNotFoundError:
            raise CheckpointError(f"{shown}: no such checkpoint folder, and no such model on the Hugging Face Hub "
                                  "(or it is private: set HF_TOKEN)") from None
        except (errors.LocalEntryNotFoundError, errors.HfHubHTTPError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{shown}: could not download it from the Hugging Face Hub ({first})") from None
    return folder, HubSource(repo_id, revision, folder.name, folder)


def _cached(huggingface_hub, repo_id: str, revision: Optional[str]) -> Optional[Path]:
    """The cached snapshot of the revision when it holds a config and weights, else None."""
    try:
        folder = Path(huggingface_hub.snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (huggingface_hub.errors.LocalEntryNotFoundError, OSError, ValueError):
        return None
    if not (folder / "config.json").exists():
        return None
    index = folder / "model.safetensors.index.json"
    if index.exists() or any(folder.glob("*.safetensors")):
        return folder
    return None


__all__ = ["FILES", "HUB_ID", "HubSource", "parse", "resolve"]
