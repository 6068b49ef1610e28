"""The demo: a small model pretrained, cloned and raced against a random-init twin
and the small model kept training, on any backend that trains."""

from .cli import build_parser, check_out, main, settings_from, write_outputs
from .race import PRESERVATION_TOLERANCE, PRESETS, Settings, compare, llama_config
from .report import finite, summarize

__all__ = ["PRESERVATION_TOLERANCE", "PRESETS", "Settings", "build_parser", "check_out", "compare", "finite",
           "llama_config", "main", "settings_from", "summarize", "write_outputs"]
