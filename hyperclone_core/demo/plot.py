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
    h = results["summary"].get("headline") or {}
    ax.axhline(s["target_loss"], color="tab:blue", ls=":", lw=1, label="random twin's final loss")
    ax.set_yscale("log")  # the whole twin curve (it starts near log 256) and the race both stay readable
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%.1f"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.1f"))
    twin = np.asarray(results["random"], dtype=float)
    clone = np.asarray(results["clone"], dtype=float)
    if h.get("kind") == "steps_saved":
        saved = h["value"]
        ax.annotate("", xy=(saved, clone[0, 1]), xytext=(0, clone[0, 1]),
                    arrowprops=dict(arrowstyle="<->", color="tab:red", lw=1.2))
        ax.text(saved / 2, clone[0, 1] * 1.03, f"{'> ' if h.get('lower_bound') else ''}{saved:.0f} steps saved",
                color="tab:red", ha="center", fontsize=9)
        ax.set_title("the clone starts below where the random twin ends after all its "
                     f"{int(twin[-1, 0])} steps" if h.get("lower_bound") else
                     f"the clone starts where the random twin is after {saved:.0f} of its {int(twin[-1, 0])} steps",
                     fontsize=10)
    elif s["reached_at"] is not None and s["reached_at"] > 0:
        ax.axvline(s["reached_at"], color="tab:red", ls=":", lw=1)
        ax.annotate(f"{s['speedup']:.2f}x sooner", xy=(s["reached_at"], s["target_loss"]),
                    xytext=(s["reached_at"] * 0.55, s["target_loss"] * 1.12), color="tab:red", fontsize=9,
                    arrowprops=dict(arrowstyle="->", color="tab:red", lw=1))
        ax.set_title(f"clone reaches the random twin's final loss at step {s['reached_at']:.0f} "
                     f"({s['speedup']:.2f}x sooner)", fontsize=10)
    else:
        ax.set_title("the clone did not reach the random twin's final loss" +
                     (f" ({h['value']:.2f}x)" if h.get("value") is not None else ""), fontsize=10)
    ax.set_xlabel("training step (after cloning)")
    ax.set_ylabel("validation loss (nats / byte)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


__all__ = ["plot"]
