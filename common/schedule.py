"""Learning-rate schedule that follows whichever limit ends training: the step count or the time budget.

A linear warm-up/decay schedule is usually sized by ``trainer.estimated_stepping_batches``. Under
``trainer.max_time`` with no ``max_epochs``, Lightning sizes that as 1,000 epochs: a 10 % warm-up then lasts
100 epochs, and a run that stops after a few epochs never leaves warm-up (its learning rate stays at a few
percent of the set value). Here progress is the larger of ``step / total_steps`` and ``elapsed / max_time``, so
the schedule ends where training ends, by steps or by time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

Schedule = Literal["linear", "constant", "cosine"]


def lr_factor(step: int, warmup_steps: int, progress: float, schedule: Schedule) -> float:
    """Multiplier of the base learning rate.

    Args:
        step: optimiser steps taken.
        warmup_steps: linear warm-up from 0 over this many steps.
        progress: share of training done after warm-up, in [0, 1] (see :func:`budget_schedule`).
        schedule: ``linear`` (to 0 at the end), ``cosine`` (to 0 at the end) or ``constant`` after warm-up.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}; valid: linear, constant, cosine")


def budget_schedule(
    trainer,
    schedule: Schedule = "linear",
    warmup_ratio: float = 0.1,
    warmup_steps: int | None = None,
) -> Callable[[int], float]:
    """A ``LambdaLR`` function for a Lightning ``trainer`` whose end may come from ``max_time``.

    Args:
        trainer: the Lightning trainer (its step estimate and, when ``max_time`` is set, its Timer callback).
        schedule: shape after warm-up (:func:`lr_factor`).
        warmup_ratio: warm-up as a share of the estimated steps (only when ``warmup_steps`` is None and the
            estimate is finite).
        warmup_steps: warm-up length in steps; wins over ``warmup_ratio``. Under a time budget, set it: the
            step count the budget allows is not known in advance.
    """
    from lightning.pytorch.callbacks import Timer

    total = float(trainer.estimated_stepping_batches)
    timers = [cb for cb in trainer.callbacks if isinstance(cb, Timer) and cb.time_remaining() is not None]
    timer = timers[0] if timers else None
    if timer is not None and trainer.max_steps == -1 and trainer.max_epochs in (1000, -1):
        total = math.inf  # Lightning's 1,000-epoch default under max_time is no estimate: the budget decides
    if warmup_steps is None:
        warmup_steps = int(warmup_ratio * total) if math.isfinite(total) else 0
    decay_steps = max(1.0, total - warmup_steps)

    def factor(step: int) -> float:
        progress = (step - warmup_steps) / decay_steps if math.isfinite(total) else 0.0
        if timer is not None:
            elapsed = timer.time_elapsed("train")
            progress = max(progress, elapsed / max(elapsed + timer.time_remaining("train"), 1e-9))
        return lr_factor(step, warmup_steps, progress, schedule)

    return factor
