"""The learning-rate schedule of every training stage: linear warm-up, then cosine decay to zero.

Built from torch's own schedulers (``LinearLR`` then ``CosineAnnealingLR``, chained by
``SequentialLR``), stepped once per optimiser step (Lightning's ``interval: "step"``), so a
checkpoint stores and restores the scheduler's state like any other torch scheduler.

With ``T`` optimiser steps in all and ``W`` of them warm-up (``0 <= W < T``), the factor applied to the
base learning rate at optimiser step ``s`` (0-based) is

    (s + 1) / (W + 1)                                 for s < W
    (1 + cos(pi * (s - W) / (T - W))) / 2             for W <= s < T

so warm-up never starts at 0 (the first step already learns) and the last step is not at 0 either;
the scheduler reaches 0 only after the last step. These are the values of the hand-written
``LambdaLR`` this replaces (tests/test_schedule_ema.py checks them against NumPy).
"""
from __future__ import annotations

import warnings
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_steps(total_steps: int, warmup_epochs: float, max_epochs: int) -> int:
    """Optimiser steps of warm-up: the ``warmup_epochs / max_epochs`` share of ``total_steps``,
    at most ``total_steps - 1`` so that the cosine part has at least one step."""
    total = max(1, int(total_steps))
    return max(0, min(total - 1, int(total * warmup_epochs / max(1, max_epochs))))


def warmup_cosine(optimizer: Optimizer, total_steps: int, warmup: int) -> SequentialLR:
    """The scheduler described in the module docstring, for ``total_steps`` optimiser steps."""
    total = max(1, int(total_steps))
    if not 0 <= warmup < total:
        raise ValueError(f"warm-up of {warmup} steps needs 0 <= warm-up < total steps ({total})")
    # LinearLR's factor at step s is start + (1 - start) * s / W = (s + 1) / (W + 1). With W = 0 the
    # milestone is step 0 and the ramp never runs; it stays so that every checkpoint holds a state of
    # the same shape whatever optimizer.warmup_epochs was (a resume may change it).
    ramp = LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=max(1, warmup))
    cosine = CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=0.0)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def schedule_plan(scheduler: LRScheduler) -> tuple[int, int] | None:
    """``(total_steps, warmup)`` a :func:`warmup_cosine` scheduler was built (or restored) for;
    None for any other scheduler."""
    if isinstance(scheduler, SequentialLR):
        parts, milestones = scheduler._schedulers, scheduler._milestones
        if len(parts) == 2 and isinstance(parts[1], CosineAnnealingLR) and len(milestones) == 1:
            return int(milestones[0]) + int(parts[1].T_max), int(milestones[0])
    return None


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """A scheduler state read from a checkpoint, in the shape :func:`warmup_cosine`'s scheduler loads.

    Checkpoints written before this module hold a ``LambdaLR`` state, which ``SequentialLR`` cannot
    load. Its step count is kept and its plan is set to one no fit has (milestone -1), so that
    :func:`replan` rebuilds the schedule at that step when training starts."""
    if "_schedulers" in state:
        return state
    return {"last_epoch": int(state["last_epoch"]), "_milestones": [-1], "_last_lr": state.get("_last_lr"),
            "_schedulers": [{}, {}]}


def replan(scheduler: LRScheduler, optimizer: Optimizer, total_steps: int, warmup: int) -> LRScheduler:
    """``scheduler`` if it already follows the plan ``(total_steps, warmup)``; else a new
    :func:`warmup_cosine` scheduler advanced to the same step, which also sets the optimiser's
    learning rates to the new plan's value at that step.

    Why: a run resumed with more epochs restores the old scheduler, whose cosine would end at the
    old step count and then rise again (torch's cosine is periodic). Like the step-indexed
    schedule this replaces, the resumed run instead continues on the new plan from its step."""
    plan = (max(1, int(total_steps)), int(warmup))
    if schedule_plan(scheduler) == plan:
        return scheduler
    done = int(scheduler.last_epoch)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]  # the base rate, set by the first scheduler ever built
    fresh = warmup_cosine(optimizer, *plan)
    with warnings.catch_warnings():
        # fast-forwarding replays steps the optimiser already took, before its first step here
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        for _ in range(done):
            fresh.step()
    return fresh
