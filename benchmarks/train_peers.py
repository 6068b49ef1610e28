"""The trainer against its peers on CPU: same model shape, batch, sequence length,
thread count and optimizer settings (fp32, AdamW, clip 1.0):

* ``ours``: ``hyperclone train``'s path -- the core loop over the torch engine;
* ``transformers``: ``LlamaForCausalLM`` (SDPA attention) with a plain
  ``torch.optim.AdamW`` loop, the loop people write first;
* ``bare``: the same plain loop over the project's own ``Decoder``, no trainer -- the
  trainer's overhead is ``bare / ours - 1``.

Runs alternate (a, b, c, a, b, c, ...) so drift on a shared machine hits all three;
each figure is the median seconds per step over ``--repeats`` runs of ``--steps``
steps after warmup (a median of single steps: one slow burst on this VM moves a mean
of 8 steps by a few percent, the median barely)::

    python benchmarks/train_peers.py                   # ~3M and ~30M params, 1 thread
    python benchmarks/train_throughput.py --peers      # the same table
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

REPEATS = 5  # alternating runs per size; the median is over all their steps

SIZES = {  # name: hidden, layers, heads, ffn, vocab, seq, batch
    "3M": (256, 4, 4, 688, 256, 128, 8),
    "30M": (512, 8, 8, 1376, 8192, 128, 8),
}


def _config(size: str) -> dict:
    from hyperclone_core.demo.race import llama_config

    hidden, layers, heads, ffn, vocab, seq, _ = SIZES[size]
    return llama_config(hidden, layers, heads, ffn, vocab, max(seq, 256))


def _batches(size: str, n: int = 8) -> list:
    *_, vocab, seq, batch = SIZES[size]
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab, (batch, seq + 1)).astype(np.int64) for _ in range(n)]


def _plain_loop(model, batches, steps: int, logits_of) -> list:
    """Seconds of each step of the loop people write: forward, cross entropy, backward,
    clip, AdamW step (the same hyper-parameters as the trainer's)."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    model.train()

    def one(b):
        x = torch.from_numpy(b)
        logits = logits_of(model(x[:, :-1]))
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        loss.backward()
        float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for b in batches[:2]:
        one(b)
    times = []
    for k in range(steps):
        t0 = time.perf_counter()
        one(batches[k % len(batches)])
        times.append(time.perf_counter() - t0)
    return times


def time_transformers(size: str, steps: int) -> list:
    import torch
    import transformers

    cfg = _config(size)
    hf = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM._from_config(hf, attn_implementation="sdpa", torch_dtype=torch.float32)
    return _plain_loop(model, _batches(size), steps, lambda out: out.logits)


def time_bare(size: str, steps: int) -> list:
    from hyperclone_torch import Decoder

    return _plain_loop(Decoder.random(_config(size), seed=0), _batches(size), steps, lambda out: out)


def time_ours(size: str, steps: int, threads: int) -> list:
    from hyperclone_core.demo.race import random_weights
    from hyperclone_core.train import TrainConfig, optimizer_for, train
    from hyperclone_torch import backend

    cfg = _config(size)
    *_, vocab, seq, batch = SIZES[size]
    w = random_weights(cfg, seed=0)
    tc = TrainConfig(steps=steps + 2, batch_size=batch, seq_len=seq, lr=1e-4, warmup_steps=0, eval_every=0,
                     device="cpu", threads=threads, grad_clip=1.0, weight_decay=0.1)
    eng = backend.engine(cfg, w, tc, optimizer_for(tc, {n: a.shape for n, a in w.items()}))
    tokens = np.random.default_rng(0).integers(0, vocab, 400_000).astype(np.int64)
    res = train(eng, tc, tokens)
    hist = [h for h in res.history if h.get("train_loss") is not None]
    seconds = [h["seconds"] for h in hist]
    return [b - a for a, b in zip(seconds[1:], seconds[2:])]  # steps after the first two


def peers(sizes, steps: int, repeats: int, threads: int) -> list:
    import torch

    torch.set_num_threads(threads)
    rows = []
    for size in sizes:
        step_times = {"ours": [], "transformers": [], "bare": []}
        for _ in range(repeats):
            step_times["transformers"] += time_transformers(size, steps)
            step_times["bare"] += time_bare(size, steps)
            step_times["ours"] += time_ours(size, steps, threads)
            torch.set_num_threads(threads)
        t = {k: statistics.median(v) for k, v in step_times.items()}
        *_, seq, batch = SIZES[size]
        from hyperclone_torch import Decoder

        n = Decoder.from_config(_config(size)).num_parameters()
        tok = batch * seq
        rows.append(dict(size=size, params_m=round(n / 1e6, 1), threads=threads, batch=f"{batch}x{seq}",
                         ours=round(tok / t["ours"]), transformers=round(tok / t["transformers"]),
                         bare=round(tok / t["bare"]), vs_transformers=round(t["transformers"] / t["ours"], 3),
                         overhead_vs_bare=round(t["ours"] / t["bare"] - 1, 4)))
    return rows


def print_rows(rows: list) -> None:
    cols = ["size", "params_m", "threads", "batch", "ours", "transformers", "bare", "vs_transformers",
            "overhead_vs_bare"]
    print("tokens/s (CPU, fp32, AdamW + clip 1.0); vs_transformers = ours / transformers (>= 1: ours faster); "
          "overhead_vs_bare = trainer time / bare loop time - 1")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print_rows(peers(args.sizes.split(","), args.steps, args.repeats, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
