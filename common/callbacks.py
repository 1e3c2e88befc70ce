"""Lightning callbacks shared by ``vip5`` and ``pmg``.

``RunStats`` measures what an ablation table compares besides quality: trainable share, seconds per training
epoch and peak memory. Add it to any run with ``--trainer.callbacks+=common.callbacks.RunStats``; the
ablation runner (``common.ablation``) adds it to every setting.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def count_parameters(module: torch.nn.Module) -> dict[str, Any]:
    """``{"trainable", "total", "pct"}`` of a LightningModule.

    A module may define ``count_parameters()`` itself (PMG counts its frozen diffusion components, which are
    not submodules); otherwise every parameter of the module is counted once (shared tensors once, as
    ``parameters()`` de-duplicates).
    """
    own = getattr(module, "count_parameters", None)
    if callable(own):
        counts = own()
        if {"trainable", "total"} <= set(counts):
            return {"trainable": int(counts["trainable"]), "total": int(counts["total"]),
                    "pct": 100.0 * counts["trainable"] / max(counts["total"], 1)}
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return {"trainable": trainable, "total": total, "pct": 100.0 * trainable / max(total, 1)}


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA ``max_memory_allocated`` on a GPU, else the peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class RunStats(Callback):
    """Trainable share, seconds per training epoch and peak memory, logged and kept for result files.

    Logged to every logger: ``params/trainable``, ``params/total``, ``params/pct`` (hyperparameters, at fit or
    test start), ``time/epoch_seconds`` and ``memory/peak_mb`` after each training epoch (an epoch's time
    includes its validation pass; the sanity check is excluded), and ``time/test_seconds`` after testing.
    On a GPU the CUDA peak-allocation counter is reset when fitting starts; on CPU the peak RSS covers the
    whole process (the ablation runner starts one process per setting, so it is per run there).

    Args:
        output_file: optional JSON file written (rank 0) at the end of fitting and testing with :meth:`summary`.
    """

    def __init__(self, output_file: str | Path | None = None) -> None:
        self.output_file = Path(output_file) if output_file else None
        self.epoch_seconds: list[float] = []
        self.test_seconds: float | None = None
        self.params: dict[str, Any] = {}
        self.peak_mb = 0.0
        self.device = "cpu"
        self._t0 = 0.0

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        root = trainer.strategy.root_device
        self.device = str(root)
        if root.type == "cuda":
            torch.cuda.reset_peak_memory_stats(root)
        if not self.params:
            self.params = count_parameters(pl_module)
            for logger in trainer.loggers:
                logger.log_hyperparams({f"params/{k}": v for k, v in self.params.items()})

    def _update_peak(self, trainer: L.Trainer) -> float:
        self.peak_mb = max(self.peak_mb, peak_memory_mb(trainer.strategy.root_device))
        return self.peak_mb

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        seconds = time.perf_counter() - self._t0
        self.epoch_seconds.append(seconds)
        metrics = {"time/epoch_seconds": seconds, "memory/peak_mb": self._update_peak(trainer)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._update_peak(trainer)
        self._write(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if not self.params:  # a test-only run
            self._start(trainer, pl_module)
        self._t0 = time.perf_counter()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self.test_seconds = time.perf_counter() - self._t0
        metrics = {"time/test_seconds": self.test_seconds, "memory/peak_mb": self._update_peak(trainer)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._write(trainer)

    def summary(self) -> dict[str, Any]:
        """Everything measured so far, as plain JSON values."""
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else None
        return {
            "trainable_params": self.params.get("trainable"),
            "total_params": self.params.get("total"),
            "trainable_pct": self.params.get("pct"),
            "epochs": len(self.epoch_seconds),
            "epoch_seconds": mean,
            "epoch_seconds_all": list(self.epoch_seconds),
            "test_seconds": self.test_seconds,
            "peak_memory_mb": self.peak_mb or None,
            "device": self.device,
        }

    def _write(self, trainer: L.Trainer) -> None:
        if self.output_file is not None and trainer.is_global_zero:
            from common.io import write_json

            write_json(self.output_file, self.summary())
