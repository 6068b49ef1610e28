"""loss.png: the three curves on the compute axis, the twin's final loss, the crossing."""

from __future__ import annotations

import sys

import numpy as np

from .report import RUNS


def plot(results: dict, path) -> bool:
    """loss.png: the three curves on the compute axis, the twin's final loss, the crossing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("loss.png skipped: matplotlib is not installed (pip install 'hyperclone[plot]')", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    style = dict(clone=("tab:red", "growing run (seed stages included)"), random=("tab:blue", "random init (final size)"),
                 small_continue=("tab:gray", "model before the last growth, kept training"))
    for name in RUNS:
        c = np.asarray(results[name], dtype=float)
        color, label = style[name]
        ax.plot(c[:, 0], c[:, 1], color=color, label=label, lw=2 if name == "clone" else 1.5)
    summary = results["summary"]
    s = summary["clone_vs_random"]
    ax.axhline(s["target_loss"], color="tab:blue", ls=":", lw=1, label="random twin's final loss")
    for x in (summary.get("compute") or {}).get("growths", ()):
        ax.axvline(x, color="tab:red", ls="--", lw=0.8, alpha=0.5)
    ax.set_yscale("log")  # the whole twin curve (it starts near log 256) and the race both stay readable
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%.1f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.1f"))
    if s["reached_at"] is not None and s["reached_at"] > 0:
        ax.axvline(s["reached_at"], color="tab:red", ls=":", lw=1)
        ax.annotate(f"{s['speedup']:.2f}x less compute", xy=(s["reached_at"], s["target_loss"]),
                    xytext=(s["reached_at"] * 0.55, s["target_loss"] * 1.12), color="tab:red", fontsize=9,
                    arrowprops=dict(arrowstyle="->", color="tab:red", lw=1))
        ax.set_title(f"the growing run reaches the random twin's final loss with {s['speedup']:.2f}x less compute "
                     "(everything counted)", fontsize=9)
    else:
        ax.set_title("the growing run did not reach the random twin's final loss", fontsize=10)
    ax.set_xlabel("training compute (final-model steps; dashed: growths)")
    ax.set_ylabel("validation loss (nats / byte)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


__all__ = ["plot"]
