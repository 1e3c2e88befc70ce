"""Runs a model's whole life under DDP as a user would, through its CLI: fit, test, predict, resume.

    python tests/distributed/ddp_run.py {vip5,pmg} DATA_DIR OUT [--devices 2]

Lightning's DDP launcher starts the other ranks by running this same script again, so every rank goes through the
same sequence of commands and each one writes what the tests compare (suffix ``.rank<r>``):

- ``fit.ckpt``: a copy of ``last.ckpt`` after ``fit``; ``fit.rank<r>.json``: global step, logged validation
  metrics and checkpoint files after ``fit``; ``weights.rank<r>.pt``: the trainable weights of that rank after ``fit``;
- ``<OUT>/checkpoints/``: the checkpoints (written once, by rank 0);
- the ``test`` and ``predict`` subcommands' own files (``test_results.json``, ``predictions.jsonl`` ...);
- ``resume.rank<r>.json``: the step and epoch ``fit --ckpt_path last`` starts from, and the step it ends at.

Kept small (tiny from-config models, few batches) so the suite can afford it on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[2]


def run_ddp(model: str, data_dir: Path, out: Path, devices: int = 2) -> Path:
    """``tests/distributed/ddp_run.py`` in a subprocess (Lightning starts the second rank), one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    command = [sys.executable, str(Path(__file__)), model, str(data_dir), str(out), "--devices", str(devices)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"DDP run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return out


class StartRecorder(L.Callback):
    """Records the global step and epoch a (resumed) fit starts from."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = {"global_step": trainer.global_step, "epoch": trainer.current_epoch}


def _ddp(devices: int) -> list[str]:
    return ["--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--trainer.strategy",
            "ddp" if devices > 1 else "auto"]


def _run_args(config: Path, data_dir: Path, out: Path) -> list[str]:
    """Run directory, quiet trainer and prepared data, shared by both models' settings."""
    return [
        "--config", str(config),
        "--trainer.default_root_dir", str(out),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--data.init_args.data_dir", str(data_dir),
        "--data.init_args.generate_demo", "false",
        "--data.init_args.n_negatives", "19",
    ]


def run_one_process(main, args: list[str], ckpt: Path):
    """Validate, test and predict in one process (``main``: a model's CLI entry) from ``ckpt``, the DDP run's
    weights: the reference the DDP results are compared with. Returns the CLI and the validation metrics."""
    cli = main([*args, "--trainer.devices", "1"], run_cli=False)
    val = cli.trainer.validate(cli.model, cli.datamodule, ckpt_path=str(ckpt), verbose=False)[0]
    cli.trainer.test(cli.model, cli.datamodule, ckpt_path=str(ckpt), verbose=False)
    cli.trainer.predict(cli.model, cli.datamodule, ckpt_path=str(ckpt))
    return cli, val


def read_json(path: Path):
    return json.loads(path.read_text())


def read_lines(path: Path) -> list:
    """The records of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def vip5_args(data_dir: Path, out: Path) -> list[str]:
    """The tiny VIP5 setting shared by the DDP run and the one-process runs it is compared with."""
    from vip5.cli import DEFAULT_CONFIG

    return [
        *_run_args(DEFAULT_CONFIG, data_dir, out),
        "--data.init_args.batch_size", "8",
        "--data.init_args.eval_batch_size", "4",
        "--model.net.backbone_config", json.dumps({"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4,
                                                   "num_layers": 1, "num_decoder_layers": 1, "dropout_rate": 0.1,
                                                   "feed_forward_proj": "relu", "tie_word_embeddings": True,
                                                   "decoder_start_token_id": 0, "pad_token_id": 0,
                                                   "eos_token_id": 1}),
        "--model.prompts.sequential_samples", "1",
        "--model.prompts.direct_samples", "1",
        "--model.tokenizer_vocab_size", "300",
        "--model.optimizer.init_args.lr", "0.01",
        "--model.evaluation.num_beams", "5",
        "--model.evaluation.top_k", "5",
        "--model.evaluation.max_explanation_length", "6",
    ]


def pmg_args(data_dir: Path, out: Path) -> list[str]:
    """The tiny PMG setting shared by the DDP run and the one-process runs it is compared with."""
    from pmg.cli import DEFAULT_CONFIG

    return [
        *_run_args(DEFAULT_CONFIG, data_dir, out),
        "--data.init_args.batch_size", "4",
        "--model.data.train_windows", "last",
        "--model.stable_diffusion", "null",  # random 16-pixel components: the comparison needs no trained model
        "--model.image_size", "16",
        "--model.generation.steps", "2",
        "--model.generation.grid", "[[1.0, 1.0], [2.0, 1.0]]",
        "--model.generation.predict_limit", "5",
    ]


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True))


def cli_main(model: str):
    """The CLI entry (``main``) of ``vip5`` or ``pmg``."""
    if model == "vip5":
        from vip5.cli import main
    else:
        from pmg.cli import main
    return main


def model_args(model: str, data_dir: Path, out: Path) -> list[str]:
    """The tiny setting of ``model`` (``vip5_args`` / ``pmg_args``)."""
    return vip5_args(data_dir, out) if model == "vip5" else pmg_args(data_dir, out)


#: the demo format each model's DDP tests read
DATA_FOLDER = {"vip5": "amazon", "pmg": "pog"}


def ddp_fixture(model: str, demo: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The ``ddp`` fixture of a model's tests: one DDP run (fit, test, predict, resume) on data prepared by
    nobody before it. Returns (data folder, run folder)."""
    data = demo / DATA_FOLDER[model]
    return data, run_ddp(model, data, tmp_path_factory.mktemp(f"{model}_ddp"))


def one_fixture(model: str, ddp: tuple[Path, Path], tmp_path_factory):
    """The ``one`` fixture: the same commands in one process on the DDP run's weights. Returns (CLI, validation
    metrics, run folder)."""
    data, out = ddp
    root = tmp_path_factory.mktemp(f"{model}_one")
    cli, val = run_one_process(cli_main(model), model_args(model, data, root), out / "fit.ckpt")
    return cli, val, root


def synchronised_fits(out: Path) -> list[dict]:
    """Assert that both ranks hold the same trainable weights after ``fit`` and ran the same 3 steps in a world of
    2; return each rank's ``fit.rank<r>.json``."""
    w0, w1 = (torch.load(out / f"weights.rank{r}.pt") for r in (0, 1))
    assert set(w0) == set(w1) and all(torch.equal(w0[k], w1[k]) for k in w0)
    fits = [read_json(out / f"fit.rank{r}.json") for r in (0, 1)]
    assert fits[0]["world_size"] == 2 and fits[0]["global_step"] == fits[1]["global_step"] == 3
    return fits


def check_resume(model: str, ddp: tuple[Path, Path], tmp_path: Path) -> None:
    """``fit --ckpt_path last`` under DDP continued from the saved step, and the DDP checkpoint resumes in one
    process at the same step and epoch."""
    data, out = ddp
    for r in (0, 1):
        assert read_json(out / f"resume.rank{r}.json") == {"global_step": 3, "epoch": 1, "end_step": 6}
    cli = cli_main(model)([*model_args(model, data, tmp_path), "--trainer.devices", "1", "--trainer.max_epochs",
                           "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"],
                          run_cli=False)
    recorder = StartRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(out / "fit.ckpt"))
    assert recorder.start == {"global_step": 3, "epoch": 1} and cli.trainer.global_step == 5


def run(model: str, data_dir: Path, out: Path, devices: int) -> None:
    main = cli_main(model)
    args = model_args(model, data_dir, out) + _ddp(devices)
    ckpt = str(out / "checkpoints" / "last.ckpt")

    cli = main([*args, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3"], run_cli=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    rank = cli.trainer.global_rank
    if rank == 0:  # the one-process comparisons load these weights (the resumed fit below replaces last.ckpt)
        shutil.copy(ckpt, out / "fit.ckpt")
    weights = cli.model.model.trainable_state_dict()
    torch.save({k: v.detach().cpu() for k, v in weights.items()}, out / f"weights.rank{rank}.pt")
    _dump(out / f"fit.rank{rank}.json", {
        "global_step": cli.trainer.global_step, "world_size": cli.trainer.world_size,
        "metrics": {k: float(v) for k, v in cli.trainer.callback_metrics.items()},
        "checkpoints": sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")),  # rank 0 has written them
    })

    main(["test", *args, "--ckpt_path", ckpt])  # the table is written by rank 0
    main(["predict", *args, "--ckpt_path", ckpt])  # predictions.jsonl, written by rank 0

    cli = main([*args, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "3"], run_cli=False)
    recorder = StartRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path="last")
    _dump(out / f"resume.rank{cli.trainer.global_rank}.json",
          {**recorder.start, "end_step": cli.trainer.global_step})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["vip5", "pmg"])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=2)
    a = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    torch.set_num_threads(1)
    run(a.model, a.data_dir, a.out, a.devices)
