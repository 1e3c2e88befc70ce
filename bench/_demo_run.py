"""Shared by the VIP5 demo benches: train the embedded default on generated demo data, then test its best checkpoint.

Imported as ``from _demo_run import fit_and_test`` (the bench scripts run as ``python bench/<name>.py``, which puts
``bench/`` on the import path).
"""

from __future__ import annotations

import time
from pathlib import Path


def fit_and_test(data: Path, out: Path, args: list[str], ckpt: str = "best"):
    """``vip5 fit`` then ``vip5 test --ckpt_path <ckpt>`` in-process, no logger or progress bar.

    Args:
        data: the demo folder (``generate_demo`` output; ``data/amazon`` is used).
        out: run folder (checkpoints under ``out/checkpoints``).
        args: further CLI arguments (epochs, indexing, test templates ...).
        ckpt: ``best`` (the default config's checkpoint monitor: highest ``val/hr@10``) or ``last`` (the end of
            the fixed epoch budget).

    Returns:
        ``(module, fit_seconds)``; ``module.test_results`` holds the per-prompt metrics.
    """
    from vip5.cli import DEFAULT_CONFIG, main

    cli = main(["--config", str(DEFAULT_CONFIG), "--trainer.logger", "false", "--trainer.enable_progress_bar",
                "false", "--trainer.default_root_dir", str(out), "--data.init_args.data_dir", str(data / "amazon"),
                "--data.init_args.generate_demo", "false", *args], run_cli=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    fit_s = time.perf_counter() - start
    cli.trainer.test(cli.model, cli.datamodule, ckpt_path=ckpt, verbose=False)
    return cli.model, fit_s
