"""The GPU check: one command on a machine with one NVIDIA GPU and nothing else
prepared (``bash benchmarks/gpu_check.sh``, which installs what is missing).  Within
~8 minutes it prints, and writes under ``$OUT`` (default ./gpu-check):

1. expansion on the device: GB/s written by ``expand_model`` growing a ~1.2B-parameter
   bf16 Llama 2x (symmetric and noisy:10), against the card's device-to-device copy
   bandwidth measured in the same process (torch; jax when ``hyperclone_jax`` and a
   JAX GPU build are installed);
2. trainer tokens/s and MFU at ~350M and ~1B parameters, bf16, compiled
   (``benchmarks/train_throughput.py``);
3. the demo's race at a GPU preset (``benchmarks/speedup.py``): the clone's speed-up.

Every step has its own time limit; a step that fails or times out is reported as such
and the others still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = Path(os.environ.get("OUT") or "gpu-check")
LLAMA_1B = dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
                rope_parameters={"rope_theta": 500000.0, "rope_type": "default"})

EXPAND = r"""
import json, sys, time, torch
from hyperclone_torch import Decoder, expand_model
cfg = json.loads(sys.argv[1])
dev = torch.device("cuda")
model = Decoder.random(cfg, seed=0, dtype=torch.bfloat16, device=dev)
src_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
x = torch.empty(src_bytes // 2, dtype=torch.bfloat16, device=dev)
y = torch.empty_like(x)
for _ in range(3):
    y.copy_(x)
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(10):
    y.copy_(x)
torch.cuda.synchronize()
copy_gbs = 2 * x.numel() * 2 * 10 / (time.perf_counter() - t) / 1e9  # read + write
del x, y
rows = {"copy_gbps": copy_gbs, "source_gb": src_bytes / 1e9}
for strategy in ("symmetric", "noisy:10"):
    expand_model(model, width=2, strategy=strategy)  # warm-up: allocator, kernels
    torch.cuda.synchronize()
    t = time.perf_counter()
    grown = expand_model(model, width=2, strategy=strategy)
    torch.cuda.synchronize()
    s = time.perf_counter() - t
    dst = sum(p.numel() * p.element_size() for p in grown.parameters())
    rows[strategy] = {"seconds": s, "dest_gb": dst / 1e9, "gbps": (dst + src_bytes) / s / 1e9}
    del grown
    torch.cuda.empty_cache()
rows["device"] = torch.cuda.get_device_name()
print(json.dumps(rows))
"""


def step(name: str, argv: list, limit: int, env=None) -> dict:
    t = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=limit, env=dict(os.environ, **(env or {})))
        ok = p.returncode == 0
        out = p.stdout
        err = p.stderr[-2000:]
    except subprocess.TimeoutExpired as exc:
        ok, out, err = False, (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), \
            f"timed out after {limit} s"
    seconds = time.perf_counter() - t
    (OUT / f"{name}.log").write_text(out + "\n--- stderr ---\n" + err)
    print(f"[{name}] {'ok' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
    return {"ok": ok, "stdout": out, "stderr": err, "seconds": seconds}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    results: dict = {}
    r = step("expand_torch", [py, "-c", EXPAND, json.dumps(LLAMA_1B)], 150)
    if r["ok"]:
        results["expand_torch"] = json.loads(r["stdout"].strip().splitlines()[-1])
    for preset, limit in (("350m", 110), ("1b", 150)):
        r = step(f"train_{preset}", [py, str(HERE / "train_throughput.py"), "--preset", preset, "--device", "cuda",
                                     "--dtype", "bfloat16", "--compile", "--steps", "10", "--warmup", "3",
                                     "--json", str(OUT / f"train_{preset}.json")], limit)
        if r["ok"]:
            results[f"train_{preset}"] = json.loads((OUT / f"train_{preset}.json").read_text())[0]
    r = step("speedup", [py, str(HERE / "speedup.py"), "--hidden", "256", "--layers", "4", "--heads", "4",
                         "--ffn", "688", "--seq-len", "256", "--batch-size", "32",
                         "--steps", "600", "--eval-every", "50", "--device", "cuda", "--dtype", "bfloat16",
                         "--out", str(OUT / "speedup")], 150)
    if r["ok"]:
        doc = json.loads((OUT / "speedup" / "results.json").read_text())
        results["speedup"] = {"headline": doc["summary"]["headline"]["text"],
                              "charged": doc["summary"]["charged_speedup"],
                              "final": {k: doc[k][-1][1] for k in ("clone", "random", "small_continue")}}
    (OUT / "gpu_check.json").write_text(json.dumps(results, indent=1))
    lines = ["| check | result |", "|---|---|"]
    e = results.get("expand_torch")
    if e:
        lines.append(f"| device | {e['device']} |")
        lines.append(f"| copy bandwidth (read+write) | {e['copy_gbps']:.0f} GB/s |")
        for s in ("symmetric", "noisy:10"):
            lines.append(f"| expand 1.2B bf16 x2, {s} | {e[s]['seconds']:.2f} s, {e[s]['gbps']:.0f} GB/s "
                         f"({e[s]['gbps'] / e['copy_gbps']:.2f} of copy) |")
    for preset in ("350m", "1b"):
        t = results.get(f"train_{preset}")
        if t:
            lines.append(f"| train {preset} bf16 compile | {t['tokens_per_s']:.0f} tok/s, MFU {t['mfu']} |")
    if "speedup" in results:
        lines.append(f"| demo race, GPU preset | {results['speedup']['headline']}; charged "
                     f"{results['speedup']['charged']} |")
    table = "\n".join(lines)
    (OUT / "gpu_check.md").write_text(table + "\n")
    print(table)
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
