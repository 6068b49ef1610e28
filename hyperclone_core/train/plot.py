"""``OUT/loss.png`` of a training run, redrawn at each evaluation (train and val loss,
the symmetry monitor on a second axis when the model is a clone)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def plot_history(history: Sequence[dict], path) -> bool:
    """Write the curves atomically; False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    path = Path(path)
    train = [(h["step"], h["train_loss"]) for h in history if h.get("train_loss") is not None]
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    sym = [(h["step"], h["symmetry"]) for h in history if h.get("symmetry") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), color="tab:gray", lw=0.8, alpha=0.7, label="train loss")
    if val:
        ax.plot(*zip(*val), color="tab:red", lw=2, marker="o", ms=3, label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    if sym:
        ax2 = ax.twinx()
        ax2.plot(*zip(*sym), color="tab:purple", lw=1, ls="--", label="symmetry monitor")
        ax2.set_ylabel("symmetry (1.0 = copies identical)")
        ax2.legend(loc="upper center")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return True


__all__ = ["plot_history"]
