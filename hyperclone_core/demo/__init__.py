"""The demo: a run that starts small and grows, raced against a random-init twin and
the small model kept training on one compute budget, on any backend that trains.

One job per module:

- ``race``: the race itself (stages, growths, the three runs, the cache);
- ``compute``: the one compute axis (training FLOPs, everything counted);
- ``cache``: runs kept between races (the twin, the stages before the last growth);
- ``report``: the numbers (speed-ups, margin, dip) and their words;
- ``corpus``: the embedded text, or any UTF-8 file;
- ``plot``: ``loss.png``;
- ``cli``: ``hyperclone demo``.
"""

from .cli import build_parser, check_out, main, settings_from, write_outputs
from .race import PRESERVATION_TOLERANCE, PRESETS, Cache, Settings, compare, llama_config
from .report import finite, summarize

__all__ = ["Cache", "PRESERVATION_TOLERANCE", "PRESETS", "Settings", "build_parser", "check_out", "compare", "finite",
           "llama_config", "main", "settings_from", "summarize", "write_outputs"]
