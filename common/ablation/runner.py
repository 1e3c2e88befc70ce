"""Run the settings of a sweep: one ``fit`` + ``test`` per setting, each writing ``result.json``.

``run_setting`` runs one setting in this process (what ``ablate run-setting`` and a W&B agent execute; under
DDP every rank runs it and rank 0 writes the result). ``run_sweep`` runs a sweep's settings one after another,
each in its own process by default (memory is isolated and the peak-memory figure is per run), skipping
settings whose ``result.json`` says ``ok`` (resumable; ``force`` reruns).

Layout under ``output`` (default ``outputs/ablations``)::

    <group>/<setting>/result.json       setting, overrides, test metrics, trainable share, s/epoch, peak MB, status
    <group>/<setting>/command.txt       the equivalent `<program> fit` command line
    <group>/<setting>/log.txt           the run's output (when run by `ablate run`)
    <group>/<setting>/checkpoints/      its checkpoints
    <group>/<setting>/wandb/offline-run-*   its W&B run (offline: `wandb sync` uploads it)
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from common.ablation.spec import Setting, Sweep
from common.io import write_json, write_text

DEFAULT_OUTPUT = Path("outputs/ablations")
WANDB_LOGGER = "lightning.pytorch.loggers.WandbLogger"


def run_dir(sweep: Sweep, setting: Setting, output: Path = DEFAULT_OUTPUT) -> Path:
    """Folder of one setting's outputs."""
    return Path(output) / sweep.group / setting.name


def read_result(path: Path) -> dict[str, Any] | None:
    """A ``result.json``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def cli_value(value: Any) -> str:
    """A YAML/JSON value as jsonargparse reads it from the command line."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return json.dumps(value)


def override_args(overrides: dict[str, Any]) -> list[str]:
    """``{"model.net.n_image_tokens": 1}`` -> ``["--model.net.n_image_tokens=1"]``."""
    return [f"--{key}={cli_value(value)}" for key, value in overrides.items()]


def _base_trainer(sweep: Sweep) -> dict[str, Any]:
    config = yaml.safe_load(sweep.base.read_text()) or {}
    return config.get("trainer") or {}


def _callbacks(trainer_cfg: dict[str, Any], folder: Path) -> list[Any] | None:
    """The base config's callbacks with every ModelCheckpoint writing into this run's folder."""
    callbacks = trainer_cfg.get("callbacks")
    if callbacks is None:
        return None
    out = []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            cb = {**cb, "init_args": {**(cb.get("init_args") or {}), "dirpath": str(folder / "checkpoints")}}
        out.append(cb)
    return out


def _logger(sweep: Sweep, setting: Setting, folder: Path, trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """A WandbLogger in this run's folder, named after the setting, in the sweep's group, with its tags."""
    base = trainer_cfg.get("logger")
    base_args = base.get("init_args", {}) if isinstance(base, dict) and base.get("class_path") == WANDB_LOGGER else {}
    project = sweep.project or base_args.get("project") or sweep.program
    init_args = {**base_args, "project": project, "save_dir": str(folder), "name": setting.name,
                 "group": sweep.group}
    return {"class_path": WANDB_LOGGER, "init_args": init_args,
            "dict_kwargs": {"tags": sweep.tags_for(setting), "job_type": "ablation"}}


def build_args(sweep: Sweep, setting: Setting, output: Path = DEFAULT_OUTPUT, extra: Sequence[str] = (),
               wandb: bool = True) -> list[str]:
    """The program's command-line arguments (after ``fit``/``test``) for one setting.

    Order: base config, this run's folders and logger, the sweep's overrides, the setting's, then ``extra``
    (e.g. ``--trainer.devices 8``), so later ones win.
    """
    folder = run_dir(sweep, setting, output)
    trainer_cfg = _base_trainer(sweep)
    args = ["--config", str(sweep.base), f"--trainer.default_root_dir={folder}",
            "--trainer.enable_progress_bar=false"]
    callbacks = _callbacks(trainer_cfg, folder)
    if callbacks is not None:
        args.append(f"--trainer.callbacks={json.dumps(callbacks)}")
    logger = _logger(sweep, setting, folder, trainer_cfg) if wandb else False
    args.append(f"--trainer.logger={cli_value(logger)}")
    args += override_args(sweep.overrides_for(setting))
    return [*args, *extra]


def program_main(program: str) -> Callable[..., Any]:
    """``vip5.cli.main`` or ``pmg.cli.main``."""
    return importlib.import_module(f"{program}.cli").main


def flatten_metrics(results: Any) -> tuple[dict[str, float], dict[str, Any]]:
    """A test-results object -> (flat numeric metrics, meta).

    VIP5 gives ``{prompt: {metric: value}}`` (keys ``A-3/NDCG@5``); PMG gives ``{"meta": ..., "results":
    {metric: value}}`` (keys ``lpips_target``). Booleans and non-numbers are left out of the metrics.
    """
    meta: dict[str, Any] = {}
    if isinstance(results, dict) and isinstance(results.get("results"), dict):
        meta = dict(results.get("meta") or {})
        results = results["results"]
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = float(value)

    walk("", results or {})
    return flat, meta


def _finish_wandb(failed: bool = False) -> None:
    """Close the current W&B run (marked failed if the setting failed) so the next setting starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def _plain_config(cli: Any) -> dict[str, Any]:
    try:
        return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    except Exception:  # a config that does not serialise is still run; W&B then gets only the overrides
        return {}


def run_setting(sweep: Sweep, setting: Setting, output: Path = DEFAULT_OUTPUT, extra: Sequence[str] = (),
                force: bool = False, raise_errors: bool = False) -> dict[str, Any]:
    """Fit (unless ``setting.fit`` is False) and test one setting in this process; write its ``result.json``.

    Returns the result dict. A setting whose ``result.json`` already says ``ok`` is not rerun unless ``force``.
    Failures are recorded (``status: failed`` with the error) and re-raised only with ``raise_errors``.
    """
    from common.callbacks import RunStats

    folder = run_dir(sweep, setting, output)
    path = folder / "result.json"
    previous = read_result(path)
    if previous and previous.get("status") == "ok" and not force:
        return previous
    args = build_args(sweep, setting, output, extra)
    write_text(folder / "command.txt", shlex.join([sweep.program, "fit" if setting.fit else "test", *args]) + "\n")
    result: dict[str, Any] = {
        "sweep": str(sweep.path), "group": sweep.group, "program": sweep.program, "setting": setting.name,
        "description": setting.description, "tags": sweep.tags_for(setting),
        "overrides": sweep.overrides_for(setting), "extra_args": list(extra), "x": sweep.x_for(setting),
        "fit": setting.fit, "status": "running",
    }
    start = time.perf_counter()
    is_global_zero = True
    try:
        cli = program_main(sweep.program)(args, run_cli=False)
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        is_global_zero = trainer.is_global_zero  # exact under SLURM/torchrun; Lightning's launcher sets it in fit
        stats = RunStats()
        trainer.callbacks.append(stats)
        ablation = {k: result[k] for k in ("group", "setting", "tags", "overrides", "x")}
        for logger in trainer.loggers:
            logger.log_hyperparams({"ablation": ablation, "cli": _plain_config(cli)})
        ckpt = None
        if setting.fit:
            trainer.fit(model, data)
            callback = trainer.checkpoint_callback
            ckpt = "best" if callback is not None and callback.best_model_path else None
        trainer.test(model, data, ckpt_path=ckpt, verbose=False)
        is_global_zero = trainer.is_global_zero
        metrics, meta = flatten_metrics(getattr(model, "test_results", None))
        result.update(status="ok", metrics=metrics, test_meta=meta, **stats.summary())
        result["checkpoint"] = trainer.checkpoint_callback.best_model_path if ckpt else None
        if is_global_zero:
            result["wandb_run"] = next((str(Path(lg.experiment.dir).parent) for lg in trainer.loggers
                                        if type(lg).__name__ == "WandbLogger"), None)
    except (Exception, SystemExit) as e:  # SystemExit: the program's parser rejected the command line
        rejected = isinstance(e, SystemExit)
        result.update(status="failed", error=f"{sweep.program} rejected the command line (exit code {e.code}); "
                      "its message is in the run's output" if rejected else f"{type(e).__name__}: {e}")
        if not rejected:  # the parser has already printed why it rejected the arguments
            traceback.print_exc()
        if raise_errors:
            raise
    finally:
        if result["status"] == "running":  # interrupted (Ctrl-C): rerun next time
            result["status"] = "interrupted"
        _finish_wandb(failed=result["status"] != "ok")
        result["wall_seconds"] = time.perf_counter() - start
        if is_global_zero:
            write_json(path, result)
    return result


def _describe(result: dict[str, Any], metrics: Sequence[str]) -> str:
    if result.get("status") != "ok":
        return f"{result.get('status')}: {result.get('error', '')}".strip()
    shown = [m for m in metrics if m in result.get("metrics", {})][:3] or list(result.get("metrics", {}))[:3]
    parts = [f"{m} {result['metrics'][m]:.4f}" for m in shown]
    if result.get("epoch_seconds"):
        parts.append(f"{result['epoch_seconds']:.1f} s/epoch")
    if result.get("peak_memory_mb"):
        parts.append(f"peak {result['peak_memory_mb']:.0f} MB")
    return "ok: " + ", ".join(parts)


def _run_child(sweep: Sweep, setting: Setting, output: Path, extra: Sequence[str], force: bool,
               verbose: bool) -> dict[str, Any]:
    """``python -m common.ablation run-setting ...`` in a new process, its output in ``log.txt``."""
    folder = run_dir(sweep, setting, output)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "common.ablation", "run-setting", str(sweep.path), "--setting", setting.name,
           "--output", str(output), *(["--force"] if force else []), "--", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            log.write(line)
            if verbose:
                print(line, end="", flush=True)
        code = proc.wait()
    result = read_result(folder / "result.json")
    if result is None or (code != 0 and result.get("status") != "failed"):  # the process died
        result = {"group": sweep.group, "setting": setting.name, "program": sweep.program, "status": "failed",
                  "error": f"exit code {code}; see {folder / 'log.txt'}", "overrides": sweep.overrides_for(setting),
                  "tags": sweep.tags_for(setting), "x": sweep.x_for(setting), "fit": setting.fit,
                  "wall_seconds": time.perf_counter() - start}
        write_json(folder / "result.json", result)
    if result.get("status") != "ok" and not verbose:
        tail = (folder / "log.txt").read_text().splitlines()[-15:]
        print("\n".join("    | " + line for line in tail))
    return result


def run_sweep(sweep: Sweep, output: Path = DEFAULT_OUTPUT, extra: Sequence[str] = (), only: Sequence[str] = (),
              force: bool = False, isolate: bool = True, verbose: bool = False) -> list[dict[str, Any]]:
    """Run a sweep's settings sequentially (resumable) and return their results in setting order.

    Args:
        sweep: the parsed sweep file.
        output: root folder of all sweeps' outputs.
        extra: command-line arguments appended to every setting (they win over the sweep file).
        only: names of the settings to run; empty = all.
        force: rerun settings that already have an ``ok`` result.
        isolate: one process per setting (default); False runs them in this process (tests).
        verbose: stream each run's output (otherwise it goes to ``<setting>/log.txt`` only).
    """
    chosen = [sweep.setting(n) for n in only] if only else list(sweep.settings)
    results = []
    for i, setting in enumerate(chosen, 1):
        head = f"[{sweep.group} {i}/{len(chosen)}] {setting.name}"
        previous = read_result(run_dir(sweep, setting, output) / "result.json")
        if previous and previous.get("status") == "ok" and not force:
            print(f"{head}: done before, skipped (--force reruns)", flush=True)
            results.append(previous)
            continue
        shown = " ".join(override_args(setting.overrides)) or "(base settings)"
        print(f"{head}: {'fit + test' if setting.fit else 'test only'} {shown}", flush=True)
        if isolate:
            result = _run_child(sweep, setting, output, extra, force, verbose)
        else:
            result = run_setting(sweep, setting, output, extra, force=force)
        print(f"{head}: {_describe(result, sweep.report.metrics)} ({result.get('wall_seconds', 0):.0f} s)",
              flush=True)
        results.append(result)
    return results
