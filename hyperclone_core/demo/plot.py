"""loss.png: the three curves, the random twin's final loss, the clone's crossing."""

from __future__ import annotations

import sys

import numpy as np

from .report import RUNS


def plot(results: dict, path) -> bool:
    """loss.png: the three curves, the random twin's final loss, the clone's crossing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("loss.png skipped: matplotlib is not installed (pip install 'hyperclone[plot]')", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    style = dict(clone=("tab:red", "HyperClone (2x, from small)"), random=("tab:blue", "random init (2x)"),
                 small_continue=("tab:gray", "small model, kept training"))
    for name in RUNS:
        c = np.asarray(results[name], dtype=float)
        color, label = style[name]
        ax.plot(c[:, 0], c[:, 1], color=color, label=label, lw=2 if name == "clone" else 1.5)
    s = results["summary"]["clone_vs_random"]
    ax.axhline(s["target_loss"], color="tab:blue", ls=":", lw=1, label="random twin's final loss")
    # the twin starts near log(256); show the race, not its first steps
    near = [v for name in ("clone", "small_continue") for _, v in results[name]] + [s["target_loss"]]
    lo, hi = min(near), max(near)
    ax.set_ylim(lo - 0.1 * (hi - lo + 1e-3), hi + 0.6 * (hi - lo + 1e-3))
    if s["reached_at"] is not None and s["reached_at"] > 0:
        ax.axvline(s["reached_at"], color="tab:red", ls=":", lw=1)
        ax.set_title(f"clone reaches the random twin's final loss at step {s['reached_at']:.0f} "
                     f"({s['speedup']:.1f}x sooner)", fontsize=10)
    elif s["reached_at"] is not None:
        ax.set_title("the clone starts below the random twin's final loss", fontsize=10)
    else:
        ax.set_title("the clone did not reach the random twin's final loss", fontsize=10)
    ax.set_xlabel("training step (after cloning)")
    ax.set_ylabel("validation loss (nats / byte)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


__all__ = ["plot"]
