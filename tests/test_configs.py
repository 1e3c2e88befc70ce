"""Every YAML in configs/ and each program's embedded default parses and instantiates through the real CLI parser;
models that a config builds from config (no download) are built."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.corpus import DataError
from common.data.datamodule import RecDataModule

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = [ROOT / "vip5/default.yaml", ROOT / "pmg/default.yaml"]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + EMBEDDED


def _program(path: Path) -> str:
    return "pmg" if path.name.startswith("pmg") or path.parent.name == "pmg" else "vip5"


def _cli(path: Path, *extra: str):
    from importlib import import_module

    main = import_module(f"{_program(path)}.cli").main
    return main(["--config", str(path), "--trainer.logger", "false", *extra], run_cli=False)


def _label(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", CONFIGS, ids=_label)
def test_config_instantiates_with_one_run_directory(path, tmp_path):
    cli = _cli(path)
    assert isinstance(cli.datamodule, RecDataModule)
    assert cli.datamodule.sample_builder is cli.model.sample_builder  # the CLI connected the model side
    from lightning.pytorch.callbacks import Timer

    time_budget = any(isinstance(cb, Timer) and cb.time_remaining() for cb in cli.trainer.callbacks)
    assert cli.trainer.max_epochs >= 1 or time_budget  # an epoch count or a wall-clock budget ends training
    # the output folder is named once: checkpoints go to <default_root_dir>/checkpoints
    root = Path(cli.trainer.default_root_dir).resolve()
    assert Path(cli.trainer.checkpoint_callback.dirpath) == root / "checkpoints"
    # linked values: a VIP5 candidate list is the target plus the data's fixed negatives; PMG's keyword extractor
    # counts what the sample settings ask for
    if _program(path) == "vip5":
        assert cli.model.prompt_config.n_candidates == cli.datamodule.n_negatives + 1
    else:
        keywords, data = cli.model.sample_builder.keywords, cli.model.data_config
        if keywords is not None:
            assert (keywords.n_preference, keywords.n_target) == (data.n_preference_keywords, data.n_target_keywords)
            assert keywords.prompts.name == data.scenario
    if path in EMBEDDED:
        return
    # real configs point at real data: a missing folder says what to download and where
    cli.datamodule.data_dir = tmp_path / "missing"
    with pytest.raises(DataError, match="(?i)download|prepare"):
        cli.datamodule.prepare_data()


def test_run_directory_places_logger_checkpoints_and_predictions(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    from pmg.cli import DEFAULT_CONFIG, main

    run = tmp_path / "run"
    cli = main(["--config", str(DEFAULT_CONFIG), "--trainer.default_root_dir", str(run)], run_cli=False)
    [logger] = cli.trainer.loggers
    assert isinstance(logger, WandbLogger) and Path(logger.save_dir) == run
    assert Path(cli.trainer.checkpoint_callback.dirpath) == run / "checkpoints"
    cli.model.trainer = cli.trainer
    assert cli.model.prediction_dir == run / "predictions"
    # a folder given explicitly still wins
    cli = main(["--config", str(DEFAULT_CONFIG), "--trainer.logger", "false", "--trainer.default_root_dir", str(run),
                "--trainer.callbacks.dirpath", str(tmp_path / "elsewhere")], run_cli=False)
    assert Path(cli.trainer.checkpoint_callback.dirpath) == tmp_path / "elsewhere"


def test_linked_values_cannot_be_set_twice():
    from vip5.cli import DEFAULT_CONFIG, main

    with pytest.raises(SystemExit):
        main(["--config", str(DEFAULT_CONFIG), "--model.prompts.n_candidates", "5"], run_cli=False)


def test_real_vip5_configs_match_paper_setup():
    cli = _cli(ROOT / "configs/beauty.yaml")
    net = cli.model.net_config
    assert net.backbone == "t5-small" and net.backbone_config is None
    assert net.n_image_tokens == 2 and cli.model.adapter_config.reduction_factor == 8
    assert net.training_mode == "adapters"
    assert cli.model.prompt_config.n_candidates == 100  # the paper's 99 negatives + target
    assert cli.datamodule.batch_size == 36 and cli.datamodule.image_encoder == "vitb32"
    assert cli.trainer.max_epochs == 20
    assert cli.trainer.precision == "bf16-mixed"


def test_from_config_real_recipe_builds_its_model():
    """configs/sports_scratch.yaml builds its backbone from config: the model is built from the parsed config (the
    tokenizer-dependent sizes given here), without adapters, every weight trainable."""
    from vip5.model import VIP5Model

    cli = _cli(ROOT / "configs/sports_scratch.yaml")
    model = VIP5Model(cli.model.net_config, vocab_size=1000, feature_dim=512, image_token_id=999)
    assert model.t5.config.d_model == 64 and model.adapter_config is None and model.item_tokens is None
    counts = model.count_parameters()
    assert counts["trainable"] == counts["total"] and counts["by_group"]["adapters"] == 0
    # causal targets over the newest 20 items, token embeddings at sqrt(d_model) times the learning rate
    assert cli.model.prompt_config.decoder_history == 20 and cli.model.hparams.embedding_lr_scale == 8


@pytest.mark.parametrize("program", ["vip5", "pmg"])
def test_embedded_default_builds_its_models_and_optimizer(program, demo_data):
    """The embedded defaults build everything from config: the model after the data side connects, and the
    default optimizer (AdamW with the config's learning rate) over the trainable parameters only."""
    import torch

    path = ROOT / f"{program}/default.yaml"
    folder = "amazon" if program == "vip5" else "pog"
    cli = _cli(path, "--data.init_args.data_dir", str(demo_data / folder), "--data.init_args.generate_demo",
               "false", "--data.init_args.n_negatives", "19")
    dm, module = cli.datamodule, cli.model
    dm.prepare_data()
    dm.setup("fit")
    module.configure_model()
    module.trainer = cli.trainer
    trainable = [p for p in module.model.parameters() if p.requires_grad]
    assert trainable
    opt = module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == 1e-3
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)
    if program == "vip5":
        assert module.model.t5.config.d_model == 128 and module.model.config.training_mode == "full"
    else:
        assert module.model.n_soft == 4 and module.model.sd.image_size == 32
        # the demo's trained text-to-image folder, read by the loader SD-1.5 goes through
        sd = module.model.sd
        assert sd.text_dim == 64 and tuple(sd.unet.config.block_out_channels) == (64, 128)
        assert module.model.soft.mapper.out_features == 64  # soft tokens land in its text-encoder space
