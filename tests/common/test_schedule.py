"""The learning-rate schedule ends where training ends: by steps or by the trainer's time budget."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from common.schedule import budget_schedule, lr_factor


def test_lr_factor_shapes():
    assert lr_factor(5, 10, 0.0, "linear") == 0.5  # warm-up
    assert lr_factor(10, 10, 0.25, "linear") == 0.75
    assert lr_factor(10, 10, 0.5, "cosine") == pytest.approx(0.5)
    assert lr_factor(10, 10, 0.9, "constant") == 1.0
    assert lr_factor(10, 0, 1.7, "linear") == 0.0  # clipped at the end
    with pytest.raises(ValueError, match="valid"):
        lr_factor(10, 0, 0.5, "step")


class FakeTimer:
    """Stands in for Lightning's Timer callback (the class is patched below)."""

    def __init__(self, elapsed: float, duration: float) -> None:
        self.elapsed, self.duration = elapsed, duration

    def time_elapsed(self, stage="train"):
        return self.elapsed

    def time_remaining(self, stage="train"):
        return self.duration - self.elapsed


def _trainer(estimated, max_epochs, callbacks=()):
    return SimpleNamespace(estimated_stepping_batches=estimated, max_epochs=max_epochs, max_steps=-1,
                           callbacks=list(callbacks))


def test_step_schedule_matches_linear_warmup_decay():
    factor = budget_schedule(_trainer(100, 10), "linear", warmup_ratio=0.1)
    assert [factor(s) for s in (0, 5, 10, 55, 100)] == [0.0, 0.5, 1.0, 0.5, 0.0]


def test_time_budget_drives_the_decay(monkeypatch):
    import lightning.pytorch.callbacks as callbacks

    monkeypatch.setattr(callbacks, "Timer", FakeTimer)
    timer = FakeTimer(elapsed=0.0, duration=600.0)
    # max_time without max_epochs: Lightning's 1,000-epoch estimate is ignored, only the clock counts
    factor = budget_schedule(_trainer(1000 * 500, 1000, [timer]), "linear", warmup_steps=20)
    assert factor(10) == 0.5
    assert factor(20) == 1.0
    timer.elapsed = 150.0
    assert factor(400) == pytest.approx(0.75)  # a quarter of the budget used
    timer.elapsed = 600.0
    assert factor(900) == 0.0
    # with an epoch limit too, whichever ends training first sets the progress
    factor = budget_schedule(_trainer(1000, 5, [timer]), "linear", warmup_steps=0)
    timer.elapsed = 60.0
    assert factor(500) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.9)
    assert math.isclose(budget_schedule(_trainer(1000, 5), "constant", warmup_steps=0)(999), 1.0)
