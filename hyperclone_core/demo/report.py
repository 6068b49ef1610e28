"""The race's numbers: when a curve reaches a loss, speed-ups, the forgetting dip,
and the printed table and summary.  Curves are ``[[x, val_loss], ...]``; the race's
x is compute in final-model steps (``compute.py``)."""

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
    """The race's one number, always defined, with what it means (every curve on the
    compute axis, the growing run's seed stages included):

    - the growing run reaches the twin's final loss after compute c: ``T / c``, the
      charged speed-up (x less compute, everything counted);
    - it never does: ``c' / T``, the twin's compute to the growing run's final loss
      over the budget (below 1: growing was slower)."""
    twin, grow = curves["random"], curves["clone"]
    T, target = twin[-1]
    final = grow[-1][1]
    reached = steps_to_reach(grow, target)
    if reached is not None and reached > 0:
        return dict(kind="speedup", value=T / reached, unit="x",
                    text=f"{T / reached:.2f}x less compute, everything counted: the growing run reached the random "
                         f"twin's final val loss {target:.4f} after {reached:.0f} final-model steps of compute, its "
                         f"seed stages included; the twin needed all {T:.0f}",
                    definition="twin's compute / the growing run's compute (seed stages included) to the twin's "
                               "final val loss")
    behind = steps_to_reach(twin, final)
    value = (behind if behind is not None else 0.0) / T
    return dict(kind="speedup", value=value, unit="x",
                text=f"{value:.2f}x (slower): the growing run never reached the twin's final val loss {target:.4f}; "
                     f"the twin reached the growing run's final {final:.4f} after {behind or 0:.0f} of its {T:.0f} "
                     "steps",
                definition="twin's compute to the growing run's final val loss / the budget")


def since_growth(curve, target_curve, growth_at: float) -> dict:
    """The uncharged speed-up: the twin's compute to its final loss over the growing
    run's compute *after its last growth* to the same loss."""
    s = speedup(curve, target_curve)
    out = dict(target_loss=s["target_loss"], target_step=s["target_step"], growth_at=growth_at,
               reached_at=s["reached_at"])
    if s["reached_at"] is None:
        out.update(speedup=None, reason=s["reason"])
    elif s["reached_at"] <= growth_at:
        out.update(speedup=None, reason=f"the model before the last growth already reached {s['target_loss']:.4f} "
                                        f"(at {s['reached_at']:.0f}, before growing at {growth_at:.0f})")
    else:
        out["speedup"] = s["target_step"] / (s["reached_at"] - growth_at)
    return out


def summarize_race(curves: dict, growth_at: float, symmetry: Optional[float] = None) -> dict:
    """The race's numbers, every curve on the compute axis: ``charged_speedup`` (the
    twin's compute to its final loss / the growing run's, seed stages included),
    ``speedup`` (uncharged: the growing run's compute counted from its last growth),
    ``margin_equal_compute`` (the small model kept training's final loss minus the
    growing run's, at the growing run's final compute)."""
    from .compute import loss_at

    grow, twin, small = curves["clone"], curves["random"], curves["small_continue"]
    charged = speedup(grow, twin)
    uncharged = since_growth(grow, twin, growth_at)
    at = loss_at(small, grow[-1][0])
    margin = (small[-1][1] if at is None else at) - grow[-1][1]
    after = [p for p in grow if p[0] >= growth_at - 1e-9]
    out = dict(charged_speedup=charged["speedup"], speedup=uncharged["speedup"], margin_equal_compute=margin,
               clone_vs_random=charged, uncharged=uncharged,
               small_continue_vs_random=speedup(small, twin), clone_beats_small=margin > 0,
               forgetting=forgetting_dip(after or grow), symmetry=symmetry, headline=headline(curves))
    why = [f"{k}: {s['reason']}" for k, s in (("charged_speedup", charged), ("speedup", uncharged))
           if s["speedup"] is None]
    if why:
        out["reason"] = "; ".join(why)
    return out


def forgetting_dip(curve) -> dict:
    """How far the clone's val loss rose above where it started (0 if it never did)."""
    start = curve[0][1]
    peak_step, peak = max(curve, key=lambda p: p[1])
    return dict(start=start, peak=peak, peak_step=peak_step, dip=max(0.0, peak - start))


def fmt_speedup(s: dict) -> str:
    if s["reached_at"] is None:
        return f"never reached {s['target_loss']:.4f} in {s['target_step']:.0f} steps of compute (< 1x)"
    if s["reached_at"] <= 0:
        return f"already below {s['target_loss']:.4f} at step 0 (before any training)"
    return (f"reached {s['target_loss']:.4f} after {s['reached_at']:.0f} of {s['target_step']:.0f} final-model steps "
            f"of compute -> {s['speedup']:.2f}x")


def table(curves: dict) -> str:
    """The printed table: at each of the twin's evaluations (compute in final-model
    steps), every run's val loss there (linear between a run's own evaluations)."""
    from .compute import loss_at

    lines = [f"{'compute':>8}  " + "  ".join(f"{r:>14}" for r in RUNS)]
    for x, _ in curves["random"]:
        vals = [loss_at(curves[r], x) for r in RUNS]
        lines.append(f"{x:>8.0f}  " + "  ".join(f"{'':>14}" if v is None else f"{v:>14.4f}" for v in vals))
    return "\n".join(lines)


def stages_text(stages: list) -> str:
    return "; ".join(f"hidden {s['hidden']} x {s['layers']} layers, {s['steps']} steps "
                     f"[{s['start']:.0f}-{s['end']:.0f}]" for s in stages)


def summarize(results: dict) -> str:
    c = results["curves"]
    s = results["summary"]
    lines = ["val loss at equal compute (final-model steps: 6 x multiplied parameters x tokens, every stage priced "
             "by its model; clone = the growing run, seed stages included)", table(c), ""]
    h = s["headline"]
    lines.append(f"speed-up: {h['text']}")
    u = s["uncharged"]
    lines.append("  counted from the last growth only (uncharged): "
                 + (u["reason"] if u["speedup"] is None else f"{u['speedup']:.2f}x"))
    if results.get("stages"):
        lines.append(f"growing run: {stages_text(results['stages'])}")
    lines.append(f"clone vs random twin:        {fmt_speedup(s['clone_vs_random'])}")
    lines.append(f"small-continue vs random:    {fmt_speedup(s['small_continue_vs_random'])}")
    lines.append(f"final val loss: clone {c['clone'][-1][1]:.4f}, random {c['random'][-1][1]:.4f}, "
                 f"small_continue {c['small_continue'][-1][1]:.4f} -> clone "
                 f"{'beats' if s['clone_beats_small'] else 'does NOT beat'} the small-model control")
    lines.append(f"margin over the small model kept training: {s['margin_equal_compute']:+.4f} nats at equal compute "
                 "(how much lower the growing run ends than the model before its last growth trained on with the "
                 "same compute; negative: growing did not pay at this budget)")
    d = s["forgetting"]
    lines.append(f"forgetting dip: {d['dip']:.4f} (val loss {d['start']:.4f} at the last growth, peak {d['peak']:.4f} "
                 f"at {d['peak_step']:.0f}; how far the val loss rose above where the growth left it)")
    sym = s.get("symmetry")
    lines.append("symmetry monitor (last): " + ("n/a" if sym is None else f"{sym:.4f}") +
                 " (mean cosine similarity between the copies the last growth made: 1.0 = still identical, the wide "
                 "model is no more than the small one; lower = the copies diverged and the added width is in use)")
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


__all__ = ["RUNS", "finite", "fmt_speedup", "forgetting_dip", "headline", "since_growth", "speedup", "stages_text",
           "steps_to_reach", "summarize", "summarize_race", "table", "with_pretraining"]
