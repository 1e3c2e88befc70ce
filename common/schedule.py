"""Learning-rate schedule that follows whichever limit ends training: the step count or the time budget.

A linear warm-up/decay schedule is usually sized by ``trainer.estimated_stepping_batches``. Under
``trainer.max_time`` with no ``max_epochs``, Lightning sizes that as 1,000 epochs: a 10 % warm-up then lasts
100 epochs, and a run that stops after a few epochs never leaves warm-up (its learning rate stays at a few
percent of the set value). Here progress is the larger of ``step / total_steps`` and ``elapsed / max_time``, so
the schedule ends where training ends, by steps or by time.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any, Literal

import torch

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


class BudgetLR(torch.optim.lr_scheduler.LambdaLR):
    """Warm-up, then the :func:`lr_factor` shape, over whichever limit ends training: steps or ``max_time``.

    The length of training is only known to the trainer, so a LightningModule calls :meth:`bind` with it right
    after building the scheduler (``common.schedule.configure_optimization`` does). Until then the factor is 1.

    Args:
        optimizer: the optimizer whose learning rates it scales.
        schedule: ``linear`` or ``cosine`` decay to 0 at the end of training, or ``constant`` after warm-up.
        warmup_ratio: warm-up as a share of the estimated steps (when ``warmup_steps`` is None).
        warmup_steps: warm-up length in optimiser steps; set it for ``trainer.max_time`` runs.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule = "linear",
        warmup_ratio: float = 0.1,
        warmup_steps: int | None = None,
    ) -> None:
        self.schedule, self.warmup_ratio, self.warmup_steps = schedule, warmup_ratio, warmup_steps
        self._factor: Callable[[int], float] = lambda step: 1.0
        super().__init__(optimizer, lambda step: self._factor(step))

    def bind(self, trainer) -> BudgetLR:
        """Size the schedule for ``trainer`` and set the learning rates of the current step."""
        self._factor = budget_schedule(trainer, self.schedule, self.warmup_ratio, self.warmup_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self._factor(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return self

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        # the factor is rebuilt by bind() from the trainer, not saved
        return {k: v for k, v in super().state_dict().items() if k != "_factor"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        factor = self._factor
        super().load_state_dict(state_dict)
        self._factor = factor


def call_spec(spec: Any, *args: Any) -> Any:
    """Call an injected optimizer or scheduler callable with ``args``.

    A ``{"class_path": ..., "init_args": {...}}`` dict is accepted too: the LightningModules state their default
    optimizer and scheduler that way, as data, so ``--help`` and ``--print_config`` show every default value (a
    ``functools.partial`` default cannot be written out); the CLI turns such a dict into a callable, a module built
    in Python keeps the dict.
    """
    if isinstance(spec, dict):
        module, _, name = spec["class_path"].rpartition(".")
        return getattr(importlib.import_module(module), name)(*args, **spec.get("init_args", {}))
    return spec(*args)


def configure_optimization(module, params: Any, optimizer: Any, scheduler: Any | None) -> Any:
    """The ``configure_optimizers`` result of a module with an injected optimizer and scheduler.

    The scheduler, when given, steps every optimiser step; a :class:`BudgetLR` is bound to ``module.trainer``.
    A parameter group with an ``lr_scale`` entry trains at that multiple of the optimizer's learning rate (the
    schedule then scales it like the others).
    """
    opt = call_spec(optimizer, params)
    for group in opt.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)
    if scheduler is None:
        return opt
    sched = call_spec(scheduler, opt)
    if isinstance(sched, BudgetLR):
        sched.bind(module.trainer)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
