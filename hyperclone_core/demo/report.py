"""The race's numbers: when a curve reaches a loss, speed-ups, the forgetting dip,
and the printed table and summary."""

from __future__ import annotations

import math
from typing import Optional

RUNS = ("clone", "random", "small_continue")


def steps_to_reach(curve, target: float) -> Optional[float]:
    """First step where the val-loss curve is <= target, linearly interpolated
    between evaluations; None if it never gets there."""
    prev = None
    for step, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(step)
            s0, l0 = prev
            return s0 + (step - s0) * (l0 - target) / (l0 - loss)
        prev = (step, loss)
    return None


def speedup(curve, target_curve) -> dict:
    """How much sooner ``curve`` reaches ``target_curve``'s final loss."""
    final_step, target = target_curve[-1]
    reached = steps_to_reach(curve, target)
    out = dict(target_loss=target, target_step=final_step, reached_at=reached,
               ahead_at_start=reached is not None and reached <= 0)
    if reached is None:
        out["speedup"] = None
    elif reached <= 0:
        out["speedup"] = math.inf  # ahead before training: the inherited model alone beats the twin
    else:
        out["speedup"] = final_step / reached
    return out


def with_pretraining(curves: dict, pretrain_steps: int, cost_ratio: float) -> dict:
    """The speed-up when the source's pretraining is charged to the clone: a small-model
    step costs ``cost_ratio`` (parameter ratio, ~ FLOPs ratio) of a wide-model step."""
    s = speedup(curves["clone"], curves["random"])
    charged = pretrain_steps * cost_ratio
    out = dict(pretrain_steps=pretrain_steps, cost_ratio=cost_ratio, charged_steps=charged)
    if s["reached_at"] is None:
        out["speedup"] = None
    else:
        out["speedup"] = s["target_step"] / (s["reached_at"] + charged) if s["reached_at"] + charged > 0 else math.inf
    return out


def forgetting_dip(curve) -> dict:
    """How far the clone's val loss rose above where it started (0 if it never did)."""
    start = curve[0][1]
    peak_step, peak = max(curve, key=lambda p: p[1])
    return dict(start=start, peak=peak, peak_step=peak_step, dip=max(0.0, peak - start))


def fmt_speedup(s: dict) -> str:
    if s["speedup"] is None:
        return f"never reached {s['target_loss']:.4f} in {s['target_step']} steps (< 1x)"
    if math.isinf(s["speedup"]):
        return f"already below {s['target_loss']:.4f} at step 0 (before any training)"
    return (f"reached {s['target_loss']:.4f} at step {s['reached_at']:.0f} of {s['target_step']} "
            f"-> {s['speedup']:.2f}x")


def table(curves: dict) -> str:
    """The printed table: step and the val loss of every run."""
    steps = [s for s, _ in curves["clone"]]
    lines = [f"{'step':>6}  " + "  ".join(f"{r:>14}" for r in RUNS)]
    for k, step in enumerate(steps):
        lines.append(f"{step:>6}  " + "  ".join(f"{curves[r][k][1]:>14.4f}" for r in RUNS))
    return "\n".join(lines)


def summarize(results: dict) -> str:
    c = results["curves"]
    s = results["summary"]
    lines = [table(c), ""]
    lines.append(f"clone vs random twin:        {fmt_speedup(s['clone_vs_random'])}")
    lines.append(f"small-continue vs random:    {fmt_speedup(s['small_continue_vs_random'])}")
    lines.append(f"final val loss: clone {c['clone'][-1][1]:.4f}, random {c['random'][-1][1]:.4f}, "
                 f"small_continue {c['small_continue'][-1][1]:.4f} -> clone "
                 f"{'beats' if s['clone_beats_small'] else 'does NOT beat'} the small-model control")
    w = s["with_pretraining"]
    lines.append(f"counting the source's pretraining ({w['pretrain_steps']} small steps ~ "
                 f"{w['charged_steps']:.0f} wide steps): "
                 + ("clone never reached the twin" if w["speedup"] is None else f"{w['speedup']:.2f}x"))
    d = s["forgetting"]
    lines.append(f"forgetting dip: {d['dip']:.4f} (val loss {d['start']:.4f} at step 0, "
                 f"peak {d['peak']:.4f} at step {d['peak_step']})")
    sym = s.get("symmetry")
    lines.append("symmetry monitor (last): " + ("n/a" if sym is None else f"{sym:.4f}"))
    return "\n".join(lines)


def finite(o):
    """JSON has no inf: an infinite speed-up is written as null with the reason kept in reached_at."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


__all__ = ["RUNS", "finite", "fmt_speedup", "forgetting_dip", "speedup", "steps_to_reach", "summarize", "table",
           "with_pretraining"]
