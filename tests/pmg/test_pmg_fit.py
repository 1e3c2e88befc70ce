"""`pmg fit / predict / test` end to end on generated demo data with the small from-config models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pmg.cli import DEFAULT_CONFIG, main

DEBUG = Path(__file__).resolve().parents[2] / "configs/debug/pmg.yaml"

pytestmark = pytest.mark.slow


def _cli(data_dir, out, *extra):
    """The debug overlay (no logger, 16-pixel images, 2 denoising steps) on ``data_dir``, run folder ``out``."""
    return main(["--config", str(DEFAULT_CONFIG), "--config", str(DEBUG), "--trainer.default_root_dir", str(out),
                 "--data.init_args.data_dir", str(data_dir), *extra], run_cli=False)


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pmg")
    cli = _cli(demo_data / "pog", out, "--trainer.max_epochs", "3", "--trainer.limit_val_batches", "3",
               "--model.optimizer.lr", "0.01", "--model.data.train_windows", "last")
    before = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]["val/loss"]
    start = {k: v.clone() for k, v in cli.model.model.soft.trainable_state_dict().items()}
    cli.trainer.fit(cli.model, cli.datamodule)
    after = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]["val/loss"]
    return cli, out, before, after, start


def test_fit_trains_only_soft_parts_and_lowers_loss(trained):
    cli, _, before, after, start = trained
    assert after < before, (before, after)
    end = cli.model.model.soft.trainable_state_dict()
    assert set(end) == set(start) and all(not torch.equal(start[k], end[k]) for k in start)
    frozen = [p for n, p in cli.model.named_parameters()
              if not n.startswith(("model.soft.soft_tokens", "model.soft.prefix", "model.soft.mapper"))]
    assert frozen and all(not p.requires_grad for p in frozen)


def test_parameter_counts_include_the_frozen_diffusion_model(trained):
    cli, *_ = trained
    counts = cli.model.model.count_parameters()
    soft = cli.model.model.soft.count_parameters()
    sd = cli.model.model.sd
    sd_total = sum(p.numel() for m in (sd.vae, sd.unet, sd.text_encoder) for p in m.parameters())
    assert counts["trainable"] == soft["trainable"] > 0
    assert counts["total"] == soft["trainable"] + soft["frozen"] + sd_total
    assert counts["pct"] == pytest.approx(100 * counts["trainable"] / counts["total"])
    assert set(counts["by_part"]) == {"soft_tokens", "prefix", "mapper"}


def test_checkpoint_holds_trainable_weights_and_resumes(trained, demo_data):
    cli, out, *_ = trained
    ckpt = out / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert set(state) == {f"model.soft.{k}" for k in cli.model.model.soft.trainable_state_dict()}
    cli2 = _cli(demo_data / "pog", out, "--trainer.max_epochs", "4", "--trainer.limit_val_batches", "1",
                "--model.data.train_windows", "last")
    cli2.trainer.fit(cli2.model, cli2.datamodule, ckpt_path=str(ckpt))
    assert cli2.trainer.current_epoch == 4 and cli2.trainer.global_step > cli.trainer.global_step


def test_predict_writes_images_sheets_and_json_lines(trained, demo_data):
    cli, out, *_ = trained
    pred_out = out / "pred"
    cli3 = _cli(demo_data / "pog", out, "--model.generation.predict_limit", "2",
                "--model.generation.output_dir", str(pred_out))
    cli3.trainer.predict(cli3.model, cli3.datamodule, ckpt_path=str(out / "checkpoints" / "last.ckpt"))
    rows = [json.loads(line) for line in (pred_out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert len(list((pred_out / "images").glob("*.png"))) == 2
    assert len(list((pred_out / "sheets").glob("*.png"))) == 2
    for row in rows:
        assert len(row["scores"]["z"]) == len(row["weights"]) == 4
        assert row["chosen"] == max(range(4), key=lambda k: row["scores"]["z"][k])
        assert row["preference_keywords"] and row["target_keywords"]


def test_test_writes_metric_table(trained, demo_data):
    cli, out, *_ = trained
    cli4 = _cli(demo_data / "pog", out, "--trainer.limit_test_batches", "1")
    cli4.trainer.test(cli4.model, cli4.datamodule, ckpt_path=str(out / "checkpoints" / "last.ckpt"))
    results = json.loads((out / "pmg_test_results.json").read_text())
    assert "random" in results["meta"]["lpips"].lower()  # offline: the output says the trunk is random
    r = results["results"]
    assert -1.0 <= r["ssim_target"] <= 1.0 and r["lpips_target"] >= 0.0
    assert r["n_ssim_history"] == r["n_ssim_target"] > 0
    # the offline default names the demo's attribute probe: the personalisation measures sit next to LPIPS/SSIM
    assert 0.0 <= r["target_acc"] <= 1.0 and 0.0 <= r["pref_acc"] <= 1.0
    assert results["meta"]["probe"]["truth"] == str(demo_data / "truth.json")
    assert not any("probe" in k for k in cli4.model.state_dict())  # evaluation only: never in checkpoints
    cli5 = _cli(demo_data / "pog", out, "--trainer.limit_test_batches", "1", "--model.evaluation.probe", "null")
    cli5.trainer.test(cli5.model, cli5.datamodule, ckpt_path=str(out / "checkpoints" / "last.ckpt"))
    r = json.loads((out / "pmg_test_results.json").read_text())["results"]
    assert "target_acc" not in r and "pref_acc" not in r and "lpips_target" in r  # no probe: not reported


def test_fit_without_soft_embedding_is_refused(demo_data, tmp_path):
    cli = _cli(demo_data / "pog", tmp_path, "--model.use_soft", "false")
    with pytest.raises(ValueError, match="nothing to train"):
        cli.trainer.fit(cli.model, cli.datamodule)


def test_cli_predict_takes_generation_settings_from_command_line(trained, demo_data):
    """`pmg predict --ckpt_path` keeps the trained architecture but uses the command line's generation options."""
    _, out, *_ = trained
    target = out / "cli_pred"
    # an overlay alone is applied on top of the embedded default
    main(["predict", "--config", str(DEBUG), "--trainer.default_root_dir", str(out),
          "--data.init_args.data_dir", str(demo_data / "pog"), "--model.generation.predict_limit", "1",
          "--model.generation.output_dir", str(target), "--model.generation.steps", "1",
          "--ckpt_path", str(out / "checkpoints" / "last.ckpt")])
    assert len(list((target / "sheets").glob("*.png"))) == 1


def test_predict_logs_sheets_and_table_to_offline_wandb(trained, demo_data, tmp_path):
    _, out, *_ = trained
    # the logger writes into the run directory, as do the predictions
    cli = main(["--config", str(DEFAULT_CONFIG), "--config", str(DEBUG),
                "--trainer.logger", "lightning.pytorch.loggers.WandbLogger", "--trainer.logger.project", "pmg-test",
                "--trainer.default_root_dir", str(tmp_path), "--data.init_args.data_dir", str(demo_data / "pog"),
                "--model.generation.predict_limit", "1", "--model.generation.steps", "1"], run_cli=False)
    cli.trainer.predict(cli.model, cli.datamodule, ckpt_path=str(out / "checkpoints" / "last.ckpt"))
    import wandb

    wandb.finish()
    assert len(list((tmp_path / "predictions" / "sheets").glob("*.png"))) == 1
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = list(runs[0].glob("files/media/images/**/*.png"))
    tables = list(runs[0].glob("files/media/table/**/*.table.json"))
    assert media and tables
