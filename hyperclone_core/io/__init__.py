"""Checkpoints in the Hugging Face layout, read and written with numpy alone.

One job per module:

- ``safetensors``: the format (header parsed and validated in full, tensors read
  one at a time, shards streamed, bfloat16 <-> storage conversion);
- ``checkpoint``: reading a checkpoint folder (config, index, shards, aux files),
  trusting nothing in it;
- ``hub``: a hub id (``ORG/NAME[@REVISION]``) to its snapshot folder through
  ``huggingface_hub`` (imported only then), wherever a checkpoint folder is read;
- ``paths``: source safety (files named by a checkpoint stay inside it and are
  regular files);
- ``atomic``: destination safety (``AtomicDir``: what may be replaced, atomic
  rename, fsync, recovery after a kill);
- ``runout``: a run's output folder (``RunDir``: train and demo own their --out by
  a mark, one run at a time by a lock, files replaced never written through, no
  output aliasing an input by file identity);
- ``dtypes``: the dtypes numpy lacks (bfloat16 kept as its bits);
- ``hf``: writing a whole checkpoint folder (``write_hf_folder``), and a backend's
  arrays to and from one through its converters (``save_arrays``, ``load_arrays``).

Never unpickles.
"""

from .dtypes import FLOAT_CODES
from .atomic import OUTPUT_MARK, TMP_MARK, AtomicDir, check_destination, clean_stale_tmp, is_hyperclone_output
from .checkpoint import AUX_FILES, BASE_PREFIXES, Checkpoint, copy_aux_files, load_weights, read_config
from .checkpoint import _ignorable as _ignorable  # io.py exported it; kept for callers
from .hf import load_arrays, save_arrays, save_checkpoint, write_hf_folder, write_json
from .safetensors import INDEX, SINGLE, SafetensorsFile, ShardedWriter, from_storage, to_storage, write_safetensors

__all__ = [
    "AUX_FILES", "AtomicDir", "BASE_PREFIXES", "Checkpoint", "FLOAT_CODES", "INDEX", "OUTPUT_MARK", "SINGLE",
    "SafetensorsFile", "ShardedWriter", "TMP_MARK", "check_destination", "clean_stale_tmp", "copy_aux_files",
    "from_storage", "is_hyperclone_output", "load_arrays", "load_weights", "read_config", "save_arrays",
    "save_checkpoint", "to_storage", "write_hf_folder", "write_json", "write_safetensors",
]
