"""One DataModule class per source serves both models: vip5 on MovieLens/POG, pmg on Amazon."""

from __future__ import annotations

import logging

import torch

from common.data.datamodule import AmazonDataModule, MovieLensDataModule, POGDataModule
from pmg.data import PMGDataConfig, PMGSampleBuilder
from vip5.data import PromptConfig, VIP5SampleBuilder


def _vip5_builder() -> VIP5SampleBuilder:
    cfg = PromptConfig(n_candidates=20, sequential_samples=1, direct_samples=1, max_history=5)
    return VIP5SampleBuilder(cfg, n_image_tokens=2, tokenizer=None, tokenizer_vocab_size=300)


def test_vip5_batches_from_movielens_and_pog(demo_data):
    for cls, folder in ((MovieLensDataModule, "movielens"), (POGDataModule, "pog")):
        dm = cls(demo_data / folder, image_encoder="demo-tiny", n_negatives=19, batch_size=4)
        dm.connect(_vip5_builder())
        dm.prepare_data()
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        assert batch["input_ids"].shape[0] == 4 and batch["labels"].shape[0] == 4
        assert batch["image_feats"].shape[-1] == 32  # demo-tiny CLIP features
        # every image slot in the prompt has a feature row
        n_slots = (batch["input_ids"] == dm.sample_builder.image_token_id).sum(1) // 2
        assert int(n_slots.max()) <= batch["image_feats"].shape[1]
        test_loaders = dm.test_dataloader()
        assert len(test_loaders) >= 4  # B-5, B-8 (+ C-* where reviews exist)


def test_pmg_batches_from_amazon(demo_data):
    dm = AmazonDataModule(demo_data / "amazon", image_encoder=None, n_negatives=19, batch_size=3)
    dm.connect(PMGSampleBuilder(PMGDataConfig(history_len=3), image_size=16))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (3, 3, 16, 16)
    assert batch["images"].min() >= -1 and batch["images"].max() <= 1
    assert all(batch["pref_keywords"]) and all(batch["target_keywords"])
    for s in batch["samples"]:  # a target is never part of its own history
        assert s["target"] not in s["history"] and 1 <= len(s["history"]) <= 3


def test_vip5_sequential_and_direct_work_with_only_sequential_data(demo_data, tmp_path, caplog):
    """Only sequential_data.txt: sequential/direct work, explanation and title templates are dropped."""
    import shutil

    root = tmp_path / "minimal"
    root.mkdir()
    shutil.copy(demo_data / "amazon" / "sequential_data.txt", root)
    dm = AmazonDataModule(root, image_encoder=None, n_negatives=19, batch_size=4)
    dm.connect(_vip5_builder())
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    builder = dm.sample_builder
    assert {t for fam in ("sequential", "direct") for t in [x.id for x in builder.train_templates[fam]]}
    assert "explanation" not in builder.train_templates or not builder.train_templates["explanation"]
    assert builder.test_templates == ["A-3", "A-9", "B-5", "B-8"]
    text = caplog.text
    assert "meta.json.gz" in text and "B-3" in text  # one warning names the file and the dropped templates
    assert "exp_splits.pkl" in text and "C-12" in text
    batch = next(iter(dm.train_dataloader()))
    assert torch.all(batch["image_feats"] == 0)  # no images: no image tokens
    assert not (batch["input_ids"] == builder.image_token_id).any()


def test_pmg_skips_and_counts_targets_without_image(demo_data, tmp_path, caplog):
    import shutil

    root = tmp_path / "pog"
    shutil.copytree(demo_data / "pog", root)
    dm = POGDataModule(root, image_encoder=None, n_negatives=19, batch_size=2)
    dm.connect(PMGSampleBuilder(PMGDataConfig(history_len=3), image_size=16))
    dm.setup("fit")
    full = {s["target"] for s in dm.sample_builder.samples["test"]}
    victim = sorted(full)[0]
    for f in (root / "images").glob(f"{victim}.*"):
        f.unlink()
    (root / "item_data.txt").write_text("".join(
        line if not line.startswith(f"{victim},") else f"{victim},0,,no picture\n"
        for line in (root / "item_data.txt").read_text().splitlines(keepends=True)))
    dm2 = POGDataModule(root, image_encoder=None, n_negatives=19, batch_size=2)
    dm2.connect(PMGSampleBuilder(PMGDataConfig(history_len=3), image_size=16))
    with caplog.at_level(logging.WARNING):
        dm2.setup("fit")
    assert victim not in {s["target"] for s in dm2.sample_builder.samples["test"]}
    assert "target without image" in caplog.text


def test_preparing_data_leaves_the_seeded_random_streams_alone(demo_data, tmp_path):
    import random
    import shutil

    import numpy as np

    data = tmp_path / "amazon"
    shutil.copytree(demo_data / "amazon", data, ignore=shutil.ignore_patterns("features", "cache"))
    dm = AmazonDataModule(data, image_encoder="demo-tiny", n_negatives=19)
    dm.connect(_vip5_builder())

    def draws():
        return torch.rand(3).tolist(), random.random(), float(np.random.rand())

    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    expected = draws()
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    dm.prepare_data()  # extracts features (a predict loop) and trains the tokenizer
    assert (data / "features").is_dir()
    assert draws() == expected


def test_vip5_newest_first_history_reverses_ids_and_their_images_together(demo_data):
    prompts = {}
    for order in ("oldest_first", "newest_first"):
        cfg = PromptConfig(n_candidates=20, max_history=5, history_order=order)
        dm = AmazonDataModule(demo_data / "amazon", image_encoder="demo-tiny", n_negatives=19, batch_size=4)
        dm.connect(VIP5SampleBuilder(cfg, n_image_tokens=2, tokenizer=None, tokenizer_vocab_size=300))
        dm.prepare_data()
        dm.setup("test")
        builder = dm.sample_builder
        ds = builder.dataset("test", "A-3")
        prompts[order] = [ds[i] for i in range(4)], builder
    def listed(source: str) -> list[str]:  # the id before each item's image tokens, in prompt order
        return [part.split()[0] for part in source.split("\n")[1].split(",")]

    builder = prompts["newest_first"][1]
    for old, new in zip(prompts["oldest_first"][0], prompts["newest_first"][0]):
        history, _ = builder.data.split.test[old["user"]]
        kept = history[-5:]
        assert old["history"] == new["history"] == kept  # the items themselves (and what is excluded) agree
        ids = [builder._id(i) for i in kept]
        assert listed(old["source"]) == ids and listed(new["source"]) == ids[::-1]
        assert old["images"] == kept and new["images"] == kept[::-1]  # image tokens follow their ids
    batch = builder.collate([new for new in prompts["newest_first"][0]])
    first = batch["samples"][0]["history"][-1]
    assert torch.equal(batch["image_feats"][0, 0], builder.features[builder.row[first]])
