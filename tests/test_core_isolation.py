"""hyperclone_core must import numpy and the standard library only."""

import json
import subprocess
import sys

FRAMEWORKS = {"torch", "jax", "jaxlib", "mlx", "transformers", "safetensors", "flax", "optax", "tokenizers"}


def test_importing_every_core_module_loads_no_framework():
    code = (
        "import sys, json, pkgutil, importlib, hyperclone_core\n"
        "mods = [m.name for m in pkgutil.walk_packages(hyperclone_core.__path__, 'hyperclone_core.')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "print(json.dumps({'modules': mods, 'loaded': sorted({n.split('.')[0] for n in sys.modules})}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(res.stdout)
    assert "hyperclone_core.cli" in out["modules"] and "hyperclone_core.model.families.llama" in out["modules"]
    assert not FRAMEWORKS & set(out["loaded"]), FRAMEWORKS & set(out["loaded"])
