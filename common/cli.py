"""Shared LightningCLI base for the ``vip5`` and ``pmg`` programs.

Every option is a typed constructor argument (jsonargparse), so ``--help`` and ``--print_config`` show
the whole configuration. With no ``--config`` the program's embedded default (offline demo data, small
from-config models) is used, through the same code paths as a real config.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from common.data.datamodule import RecDataModule


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def configure_environment() -> None:
    """Offline-by-default W&B; quiet tokenizers. Online logging happens when the user has logged in."""
    if "WANDB_MODE" not in os.environ and not _wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


SUBCOMMANDS = ("fit", "validate", "test", "predict")


def with_default_config(args: list[str], default_config: Path) -> list[str]:
    """Insert ``--config <embedded default>`` after the subcommand when the user gave no config."""
    if not args or args[0] not in SUBCOMMANDS:
        return args
    if any(a == "--config" or a.startswith("--config=") or a in ("-c",) for a in args):
        return args
    return [args[0], "--config", str(default_config), *args[1:]]


class FrameworkCLI(LightningCLI):
    """LightningCLI that attaches the model's sample builder to the DataModule (``datamodule.connect``)."""

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D102
        parser.add_argument(
            "--run_name", type=str | None, default=None, help="Name of the run (W&B name, output sub-folder)."
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning re-applies a checkpoint's hyperparameters over the whole model config. Keep that for the
        architecture, but let run-time settings (``model.<key>`` for each key in the module's ``RUNTIME_KEYS``,
        e.g. decoding or generation options) come from the user's config and command line."""
        sub = self.config.get("subcommand")
        keys = getattr(self._model_class, "RUNTIME_KEYS", ())
        kept = {k: self.config[sub]["model"].get(k) for k in keys} if sub else {}
        super()._parse_ckpt_path()
        for k, v in kept.items():
            self.config[sub]["model"][k] = v

    def instantiate_classes(self) -> None:  # noqa: D102
        super().instantiate_classes()
        builder = getattr(self.model, "sample_builder", None)
        if builder is not None and isinstance(self.datamodule, RecDataModule):
            self.datamodule.connect(builder)
        # Lightning sets trainer.ckpt_path only after setup; modules whose construction depends on the checkpoint
        # (e.g. a tokenizer stored in it) get the path up front.
        ckpt = self.config.get(self.subcommand, {}).get("ckpt_path") if self.subcommand else None
        if ckpt and hasattr(self.model, "checkpoint_hint"):
            self.model.checkpoint_hint = str(ckpt)


def run(model_class, default_config: Path, args: list[str] | None = None, run: bool = True, **kwargs):
    """Build and (optionally) run the CLI; ``args=None`` reads ``sys.argv``. Returns the CLI object."""
    configure_environment()
    argv = list(sys.argv[1:] if args is None else args)
    if run:
        argv = with_default_config(argv, default_config)
    # we pass the (possibly completed) command line explicitly; LightningCLI would warn that sys.argv is set too
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return FrameworkCLI(
        model_class,
        RecDataModule,
        subclass_mode_data=True,
        args=argv,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"},
        **kwargs,
    )
