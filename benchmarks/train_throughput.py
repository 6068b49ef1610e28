"""Training throughput of the torch decoder through the real trainer: tokens/s and
model FLOPs utilization (MFU), printed as a table.

    python benchmarks/train_throughput.py                         # CPU, tiny + small
    python benchmarks/train_throughput.py --preset 350m --device cuda --dtype bfloat16 --compile
    python benchmarks/train_throughput.py --backend mlx --preset tiny   # MLX's engine (compiled always)
    python benchmarks/train_throughput.py --backend jax                 # JAX's engine (jitted always)

FLOPs per token are the PaLM count, 6 N + 12 L d T (N: parameters outside the token
embedding; the attention term counts the full T x T score matrix, as PaLM and
nanoGPT do).  MFU divides achieved FLOP/s by the card's dense peak for the dtype
(bf16 tensor cores; fp32 without TF32); on CPU pass --peak-tflops to get one.
The first --warmup steps (compilation, allocator warm-up) are not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

PRESETS = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=344, vocab_size=256, seq_len=128, batch_size=8),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=688, vocab_size=256, seq_len=256, batch_size=8),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
                 intermediate_size=2816, vocab_size=32000, seq_len=2048, batch_size=8),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=5632, vocab_size=32000, seq_len=2048, batch_size=8),
}
# dense peak FLOP/s by (card name fragment) -> {dtype: peak}
PEAKS = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "L40S": {"bfloat16": 362e12, "float32": 91.6e12},
}


def llama_config(p: dict) -> dict:
    return dict(model_type="llama", hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
                num_hidden_layers=p["num_hidden_layers"], num_attention_heads=p["num_attention_heads"],
                num_key_value_heads=p["num_key_value_heads"], vocab_size=p["vocab_size"],
                max_position_embeddings=max(p["seq_len"], 2048), rms_norm_eps=1e-5,
                rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, tie_word_embeddings=False,
                hidden_act="silu")


def flops_per_token(model, cfg: dict, seq_len: int) -> float:
    n = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
    return 6.0 * n + 12.0 * cfg["num_hidden_layers"] * cfg["hidden_size"] * seq_len


def peak_flops(device: str, dtype: str, override: float) -> tuple:
    import torch

    if override:
        return override * 1e12, f"--peak-tflops {override:g}"
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, peaks in PEAKS.items():
            if key in name:
                return peaks[dtype], name
        return 0.0, name
    return 0.0, "cpu"


def measure(preset: str, args) -> dict:
    import torch

    from hyperclone_core.train import TrainConfig
    from hyperclone_torch import Decoder, train

    p = dict(PRESETS[preset])
    if args.batch_size:
        p["batch_size"] = args.batch_size
    if args.seq_len:
        p["seq_len"] = args.seq_len
    cfg = llama_config(p)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = Decoder.random(cfg, seed=0, device=device)
    tokens = np.random.default_rng(0).integers(0, cfg["vocab_size"], 2_000_000 if device != "cpu" else 200_000)
    tc = TrainConfig(steps=args.warmup + args.steps, batch_size=p["batch_size"], seq_len=p["seq_len"],
                     grad_accum=args.grad_accum, lr=1e-4, warmup_steps=0, eval_every=0, device=device,
                     dtype=args.dtype, compile=args.compile, grad_clip=1.0)
    res = train(model, tc, tokens.astype(np.int64))
    hist = [h for h in res.history if h.get("train_loss") is not None]
    t0, t1 = hist[args.warmup - 1]["seconds"], hist[-1]["seconds"]
    toks = (hist[-1]["tokens"] - hist[args.warmup - 1]["tokens"])
    tps = toks / (t1 - t0)
    fpt = flops_per_token(model, cfg, p["seq_len"])
    peak, where = peak_flops(device, args.dtype, args.peak_tflops)
    n_params = sum(t.numel() for t in model.parameters())
    row = dict(preset=preset, params_m=round(n_params / 1e6, 1), device=where, dtype=args.dtype,
               compile=args.compile, batch=f"{p['batch_size']}x{p['seq_len']}", tokens_per_s=round(tps, 1),
               tflops=round(tps * fpt / 1e12, 3), mfu=(round(tps * fpt / peak, 4) if peak else None))
    if device.startswith("cuda"):
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def measure_mlx(preset: str, args) -> dict:
    """The same run through the engine of ``args.backend``: MLX (Metal on Apple silicon,
    the CPU elsewhere) or JAX (its default device)."""
    from hyperclone_core.run.protocol import load_backend
    from hyperclone_core.demo.race import random_weights
    from hyperclone_core.train import TrainConfig, optimizer_for, train

    bk = load_backend(args.backend)
    p = dict(PRESETS[preset])
    p["batch_size"] = args.batch_size or p["batch_size"]
    p["seq_len"] = args.seq_len or p["seq_len"]
    cfg = llama_config(p)
    weights = random_weights(cfg, seed=0)
    tokens = np.random.default_rng(0).integers(0, cfg["vocab_size"], 200_000)
    tc = TrainConfig(steps=args.warmup + args.steps, batch_size=p["batch_size"], seq_len=p["seq_len"],
                     grad_accum=args.grad_accum, lr=1e-4, warmup_steps=0, eval_every=0, dtype=args.dtype, grad_clip=1.0)
    eng = bk.engine(cfg, weights, tc, optimizer_for(tc, {n: w.shape for n, w in weights.items()}))
    res = train(eng, tc, tokens.astype(np.int64))
    hist = [h for h in res.history if h.get("train_loss") is not None]
    t0, t1 = hist[args.warmup - 1]["seconds"], hist[-1]["seconds"]
    tps = (hist[-1]["tokens"] - hist[args.warmup - 1]["tokens"]) / (t1 - t0)
    n = sum(w.size for name, w in weights.items() if "embed_tokens" not in name)
    fpt = 6.0 * n + 12.0 * cfg["num_hidden_layers"] * cfg["hidden_size"] * p["seq_len"]
    peak = args.peak_tflops * 1e12
    return dict(preset=preset, params_m=round(sum(w.size for w in weights.values()) / 1e6, 1),
                device=bk.device_name(), dtype=args.dtype, compile=True, batch=f"{p['batch_size']}x{p['seq_len']}",
                tokens_per_s=round(tps, 1), tflops=round(tps * fpt / 1e12, 3),
                mfu=(round(tps * fpt / peak, 4) if peak else None))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", choices=sorted(PRESETS),
                    help="model size (repeatable; default: tiny and small)")
    ap.add_argument("--backend", default="torch", choices=["torch", "mlx", "jax"], help="whose engine trains")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 1)")
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--seq-len", type=int, default=0)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="peak of the device, for MFU on unknown cards")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--peers", action="store_true",
                    help="instead: the trainer vs transformers + a plain AdamW loop vs a bare loop (train_peers.py)")
    args = ap.parse_args(argv)
    if args.peers:
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
        import train_peers

        train_peers.print_rows(train_peers.peers(list(train_peers.SIZES), max(args.steps, 4), train_peers.REPEATS,
                                                    args.threads or 1))
        return 0
    if args.warmup < 1:
        ap.error("--warmup must be >= 1 (the first step is not timed)")
    if args.backend in ("mlx", "jax"):
        return print_rows([measure_mlx(p, args) for p in (args.preset or ["tiny", "small"])], args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype == "float32" and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
    return print_rows([measure(p, args) for p in (args.preset or ["tiny", "small"])], args)


def print_rows(rows: list, args) -> int:
    cols = ["preset", "params_m", "device", "dtype", "compile", "batch", "tokens_per_s", "tflops", "mfu"]
    if any("peak_mem_gib" in r for r in rows):
        cols.append("peak_mem_gib")
    widths = {c: max(len(c), *(len(str(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c)).ljust(widths[c]) for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    t = time.perf_counter()
    rc = main()
    print(f"({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    sys.exit(rc)
