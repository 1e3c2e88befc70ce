"""Every YAML in configs/ (and each program's embedded default) parses and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.corpus import DataError
from common.data.datamodule import RecDataModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def _main_for(path: Path):
    if path.name.startswith("pmg"):
        from pmg.cli import main
    else:
        from vip5.cli import main
    return main


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"beauty.yaml", "sports.yaml", "toys.yaml", "clothing.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_instantiates(path, tmp_path):
    cli = _main_for(path)(["--config", str(path), "--trainer.logger", "false"], run_cli=False)
    assert isinstance(cli.datamodule, RecDataModule)
    assert cli.datamodule.sample_builder is cli.model.sample_builder  # the CLI connected the model side
    from lightning.pytorch.callbacks import Timer

    time_budget = any(isinstance(cb, Timer) and cb.time_remaining() for cb in cli.trainer.callbacks)
    assert cli.trainer.max_epochs >= 1 or time_budget  # an epoch count or a wall-clock budget ends training
    # real configs point at real data: a missing folder says what to download and where
    cli.datamodule.data_dir = tmp_path / "missing"
    with pytest.raises(DataError, match="(?i)download|prepare"):
        cli.datamodule.prepare_data()


def test_real_vip5_configs_match_paper_setup():
    from vip5.cli import main

    cli = main(["--config", str(ROOT / "configs/beauty.yaml"), "--trainer.logger", "false"], run_cli=False)
    hp = cli.model.hparams
    assert hp.backbone == "t5-small" and hp.backbone_config is None
    assert hp.n_image_tokens == 2 and cli.model.adapter_config.reduction_factor == 8
    assert hp.training_mode == "adapters" and hp.lr == 1e-3
    assert cli.datamodule.batch_size == 36 and cli.datamodule.image_encoder == "vitb32"
    assert cli.trainer.max_epochs == 20
    assert cli.trainer.precision == "bf16-mixed"
