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


def is_overlay(path: str) -> bool:
    """A config in a ``debug`` folder (``configs/debug/*.yaml``) is an overlay: it changes a few settings of the
    config before it (by default the embedded one) rather than describing a whole run."""
    return Path(path).parent.name == "debug"


def with_default_config(args: list[str], default_config: Path) -> list[str]:
    """Insert ``--config <embedded default>`` after the subcommand when the user gave no config, or only overlays."""
    if not args or args[0] not in SUBCOMMANDS:
        return args
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--config", "-c")]
    configs += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    if any(not is_overlay(c) for c in configs):
        return args
    return [args[0], "--config", str(default_config), *args[1:]]


class FrameworkCLI(LightningCLI):
    """LightningCLI with one run directory, and the model's sample builder attached to the DataModule.

    ``trainer.default_root_dir`` is the run directory: a logger without its own ``save_dir`` logs there and a
    ``ModelCheckpoint`` without its own ``dirpath`` writes to ``<run directory>/checkpoints`` (a fixed folder, so
    ``--ckpt_path last`` finds the previous run's checkpoint). A config names its output folder once.
    """

    def before_instantiate_classes(self) -> None:  # noqa: D102
        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        root = config.trainer.get("default_root_dir")
        if root:
            derive_run_folders(config.trainer, str(root))

    def instantiate_classes(self) -> None:  # noqa: D102
        super().instantiate_classes()
        builder = getattr(self.model, "sample_builder", None)
        if builder is not None and isinstance(self.datamodule, RecDataModule):
            self.datamodule.connect(builder)
        # A module whose construction depends on the checkpoint (e.g. a tokenizer stored in it) builds its model
        # when Lightning hands it the loaded checkpoint instead of before.
        ckpt = self.config.get(self.subcommand, {}).get("ckpt_path") if self.subcommand else None
        if ckpt and hasattr(self.model, "checkpoint_hint"):
            self.model.checkpoint_hint = str(ckpt)


def derive_run_folders(trainer_config, root: str) -> None:
    """Fill in the logger's ``save_dir`` and each ``ModelCheckpoint``'s ``dirpath`` from the run directory, where
    the config leaves them unset (``None``, or a logger's default ``.``)."""
    loggers = trainer_config.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = logger.get("init_args") if hasattr(logger, "get") else None
        if args is not None and "save_dir" in args and args.save_dir in (None, "."):
            args.save_dir = root
    for callback in trainer_config.get("callbacks") or []:
        args = callback.get("init_args") if hasattr(callback, "get") else None
        if (args is not None and callback.get("class_path", "").endswith("ModelCheckpoint")
                and "dirpath" in args and args.dirpath is None):
            args.dirpath = str(Path(root) / "checkpoints")


def run(
    model_class,
    default_config: Path,
    args: list[str] | None = None,
    run: bool = True,
    cli_class: type[FrameworkCLI] = FrameworkCLI,
    **kwargs,
):
    """Build and (optionally) run the CLI; ``args=None`` reads ``sys.argv``. Returns the CLI object."""
    configure_environment()
    argv = list(sys.argv[1:] if args is None else args)
    if run:
        argv = with_default_config(argv, default_config)
    # we pass the (possibly completed) command line explicitly; LightningCLI would warn that sys.argv is set too
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return cli_class(
        model_class,
        RecDataModule,
        subclass_mode_data=True,
        args=argv,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"},
        **kwargs,
    )
