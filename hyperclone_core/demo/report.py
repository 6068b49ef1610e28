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
    """How much sooner ``curve`` reaches ``target_curve``'s final loss.  ``speedup`` is
    None when the ratio is not a finite number; ``reason`` then says why."""
    final_step, target = target_curve[-1]
    reached = steps_to_reach(curve, target)
    out = dict(target_loss=target, target_step=final_step, reached_at=reached,
               ahead_at_start=reached is not None and reached <= 0)
    if reached is None:
        out["speedup"] = None
        out["reason"] = f"never reached {target:.4f} within {final_step} steps (slower than the target run)"
    elif reached <= 0:
        out["speedup"] = None
        out["reason"] = f"already at or below {target:.4f} at step 0, before any training (unbounded at this budget)"
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
        out["reason"] = s["reason"]
    else:
        out["speedup"] = s["target_step"] / (max(s["reached_at"], 0.0) + charged) if \
            max(s["reached_at"], 0.0) + charged > 0 else None
        if out["speedup"] is None:
            out["reason"] = "no pretraining to charge and the clone was ahead at step 0"
    return out


def headline(curves: dict) -> dict:
    """The demo's one number, always defined, with what it means.

    - the clone reaches the twin's final loss at step r > 0: ``T / r`` (x fewer steps);
    - the clone starts at or below it: the steps the twin needed to reach the clone's
      *starting* loss (steps saved; a lower bound if the twin never got there);
    - the clone never reaches it: ``r' / T``, the twin's steps to the clone's final loss
      over the budget (below 1: cloning was slower)."""
    twin, clone = curves["random"], curves["clone"]
    T, target = twin[-1]
    start, final = clone[0][1], clone[-1][1]
    reached = steps_to_reach(clone, target)
    if reached is not None and reached > 0:
        return dict(kind="speedup", value=T / reached, unit="x",
                    text=f"{T / reached:.2f}x fewer steps: the clone reached the random twin's final val loss "
                         f"{target:.4f} at step {reached:.0f}; the twin needed all {T}",
                    definition="twin's steps / clone's steps to the twin's final val loss")
    if reached is not None:
        saved = steps_to_reach(twin, start)
        lower = saved is None
        saved = float(T) if lower else saved
        return dict(kind="steps_saved", value=saved, unit="steps", lower_bound=lower,
                    text=(f"{'more than ' if lower else ''}{saved:.0f} steps saved: the clone started (before any "
                          f"training) at val loss {start:.4f}, which the random twin "
                          + (f"did not reach in its {T} steps" if lower else f"needed {saved:.0f} of its {T} steps "
                             "to reach")),
                    definition="twin's steps to reach the clone's starting val loss")
    behind = steps_to_reach(twin, final)
    value = (behind if behind is not None else 0.0) / T
    return dict(kind="speedup", value=value, unit="x",
                text=f"{value:.2f}x (slower): the clone never reached the twin's final val loss {target:.4f}; the "
                     f"twin reached the clone's final {final:.4f} at step {behind or 0:.0f} of {T}",
                definition="twin's steps to the clone's final val loss / the budget")


def forgetting_dip(curve) -> dict:
    """How far the clone's val loss rose above where it started (0 if it never did)."""
    start = curve[0][1]
    peak_step, peak = max(curve, key=lambda p: p[1])
    return dict(start=start, peak=peak, peak_step=peak_step, dip=max(0.0, peak - start))


def fmt_speedup(s: dict) -> str:
    if s["reached_at"] is None:
        return f"never reached {s['target_loss']:.4f} in {s['target_step']} steps (< 1x)"
    if s["reached_at"] <= 0:
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
    h = s["headline"]
    w = s["with_pretraining"]
    lines.append(f"speed-up: {h['text']}")
    lines.append(f"  with the source's pretraining charged ({w['pretrain_steps']} small steps ~ "
                 f"{w['charged_steps']:.0f} wide steps): "
                 + (w.get("reason", "n/a") if w["speedup"] is None else f"{w['speedup']:.2f}x") + "")
    lines.append(f"clone vs random twin:        {fmt_speedup(s['clone_vs_random'])}")
    lines.append(f"small-continue vs random:    {fmt_speedup(s['small_continue_vs_random'])}")
    lines.append(f"final val loss: clone {c['clone'][-1][1]:.4f}, random {c['random'][-1][1]:.4f}, "
                 f"small_continue {c['small_continue'][-1][1]:.4f} -> clone "
                 f"{'beats' if s['clone_beats_small'] else 'does NOT beat'} the small-model control")
    margin = c["small_continue"][-1][1] - c["clone"][-1][1]
    lines.append(f"margin over the small model kept training: {margin:+.4f} nats (how much lower the clone ends than "
                 "the small model given the same steps; negative: growing did not pay at this budget)")
    d = s["forgetting"]
    lines.append(f"forgetting dip: {d['dip']:.4f} (val loss {d['start']:.4f} at step 0, peak {d['peak']:.4f} at step "
                 f"{d['peak_step']}; how far the clone's val loss rose above its start as the LR warmed up again, "
                 "losing part of what it inherited)")
    sym = s.get("symmetry")
    lines.append("symmetry monitor (last): " + ("n/a" if sym is None else f"{sym:.4f}") +
                 " (mean cosine similarity between the copies cloning made: 1.0 = still identical, the wide model is "
                 "no more than the small one; lower = the copies diverged and the added width is in use)")
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


__all__ = ["RUNS", "finite", "fmt_speedup", "forgetting_dip", "headline", "speedup", "steps_to_reach", "summarize",
           "table", "with_pretraining"]
