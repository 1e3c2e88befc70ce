"""The real-data recipe (configs/sports_scratch.yaml) on a folder that holds only sequences, like the public
P5 files of Amazon Sports: a read-only data folder, a wall-clock budget, a tokenizer that keeps prompt words whole."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import pytest

from vip5.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def sequences_only(tmp_path):
    rng = random.Random(0)
    folder = tmp_path / "sports"
    folder.mkdir()
    lines = []
    for user in range(1, 121):
        start = rng.randrange(1, 280)
        lines.append(" ".join(str(i) for i in [user, *range(start, start + rng.randrange(4, 9))]))
    (folder / "sequential_data.txt").write_text("\n".join(lines) + "\n")
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)  # read-only, like a shared data set
    yield folder
    folder.chmod(stat.S_IRWXU)


@pytest.mark.slow
def test_recipe_trains_within_its_budget_on_a_read_only_sequences_folder(sequences_only, tmp_path):
    cli = main(["--config", str(ROOT / "configs/sports_scratch.yaml"), "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.max_time", '{"seconds": 8}',
                "--trainer.default_root_dir", str(tmp_path / "run"),
                "--trainer.callbacks.dirpath", str(tmp_path / "run/checkpoints"), "--trainer.precision", "32-true",
                "--data.init_args.data_dir", str(sequences_only), "--data.init_args.cache_dir", str(tmp_path / "cache"),
                "--data.init_args.batch_size", "16", "--model.net.backbone_config.d_model", "32",
                "--model.net.backbone_config.d_ff", "64", "--model.net.backbone_config.d_kv", "8",
                "--model.scheduler.warmup_steps", "2", "--model.evaluation.test_users", "25"], run_cli=False)
    trainer, module = cli.trainer, cli.model
    trainer.fit(module, cli.datamodule)
    assert trainer.global_step >= 1 and module.model.adapter_config is None  # from scratch: no adapters
    # the budget, not an epoch count, ended training; after the warm-up (2 steps) the rate is constant, the token
    # embeddings' 8x that of the other weights
    assert trainer.current_epoch < 1000
    groups = trainer.optimizers[0].param_groups
    base = trainer.optimizers[0].defaults["lr"]
    assert groups[0]["lr"] == pytest.approx(base) and groups[-1]["lr"] == pytest.approx(8 * base)
    # next-item prompts give the newest history items to the decoder, each one a training target
    sample = module.sample_builder.dataset("train")[0]
    assert sample["decoder_prefix"] and sample["target"].split()[:-1] == [
        module.sample_builder.data.index.to_id[i] for i in sample["decoder_prefix"]]
    # the tokenizer learnt the template words, not fragments of the thousands of item ids
    tok = module.sample_builder.tokenizer
    pieces = tok.tokenize("Given the following purchase history")
    assert pieces[-3:] == ["▁following", "▁purchase", "▁history"]
    assert [t for t in tok.tokenize("<item_12> , <item_250>") if "item" in t] == ["<item_12>", "<item_250>"]
    trainer.test(module, cli.datamodule, ckpt_path="last", verbose=False)
    row = module.test_results["A-3"]
    assert row["n"] == 25 and 0.0 <= row["NDCG@10"] <= row["HR@10"] <= 1.0
    assert not (sequences_only / "cache").exists()  # everything prepared went to cache_dir
    assert (tmp_path / "cache" / "negative_samples_99_2022.txt").is_file()
