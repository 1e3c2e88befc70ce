"""`vip5` under 2-process DDP (gloo, CPU) against one process: same tables, every user once, synchronised
weights, one set of checkpoints, resume at the same step. The data has 21 users and 21 test reviews, so each
test prompt splits unevenly across the ranks and Lightning's sampler pads one rank with a repeated sample."""

from __future__ import annotations

import pytest
import torch
from ddp_run import check_resume, ddp_fixture, one_fixture, read_json, read_lines, synchronised_fits

from common.data.features import ImageFeatures

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp(odd_demo, tmp_path_factory):
    return ddp_fixture("vip5", odd_demo, tmp_path_factory)


@pytest.fixture(scope="module")
def one(ddp, tmp_path_factory):
    return one_fixture("vip5", ddp, tmp_path_factory)


def test_gradients_are_synchronised_and_checkpoints_written_once(ddp):
    _, out = ddp
    fits = synchronised_fits(out)
    # every rank logged the same (global) validation metrics, so both agree on the checkpoint's name
    for key in ("val/loss", "val/hr@10"):
        assert fits[0]["metrics"][key] == fits[1]["metrics"][key]
    hr = fits[0]["metrics"]["val/hr@10"]
    names = fits[0]["checkpoints"]  # after fit, before the resumed fit adds its own
    assert f"epoch00-hr10_{hr:.4f}.ckpt" in names and "last.ckpt" in names
    assert len(names) == 2  # written once: no second copy (``-v1``) by another rank


def test_validation_metrics_are_global(ddp, one):
    _, out = ddp
    _, val, _ = one
    fit = read_json(out / "fit.rank0.json")["metrics"]
    assert fit["val/loss"] == pytest.approx(val["val/loss"], rel=1e-5)
    assert fit["val/hr@10"] == pytest.approx(val["val/hr@10"], abs=1e-6)


def test_test_table_equals_one_process(ddp, one):
    _, out = ddp
    cli, _, _ = one
    ddp_table = read_json(out / "checkpoints" / "test_results.json")["results"]
    one_table = cli.model.test_results
    assert set(ddp_table) == set(one_table) == {"A-3", "A-9", "B-5", "B-8", "C-3", "C-12"}
    n_users, n_reviews = len(cli.datamodule.data.split.test), len(cli.datamodule.data.reviews["test"])
    assert n_users % 2 == 1 and n_reviews % 2 == 1  # uneven shards: one rank gets a padded repeat
    for prompt, row in ddp_table.items():
        assert row["n"] == (n_reviews if prompt.startswith("C") else n_users), prompt  # each sample once
        assert row == pytest.approx(one_table[prompt], abs=1e-6), prompt
    # the explanations behind BLEU/ROUGE: the same texts, each review once, and real text (not all empty)
    texts = read_lines(out / "checkpoints" / "test_explanations.jsonl")
    one_texts = cli.model.evaluator.explanations
    assert [(t["generated"], t["reference"]) for t in texts] == one_texts["C-12"] + one_texts["C-3"]
    assert len(texts) == 2 * n_reviews and any(t["generated"] for t in texts)


def test_predictions_hold_every_user_once(ddp, one):
    _, out = ddp
    cli, _, root = one
    rows = read_lines(out / "predictions.jsonl")
    assert [r["user"] for r in rows] == list(cli.datamodule.data.split.test)
    assert rows == read_lines(root / "predictions.jsonl")
    assert not list(out.glob("predictions.rank*"))


def test_resume_under_ddp_and_from_a_ddp_checkpoint_into_one_process(ddp, tmp_path):
    _, out = ddp
    saved = torch.load(out / "fit.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    check_resume("vip5", ddp, tmp_path)


def test_features_and_caches_are_prepared_once(ddp):
    data, _ = ddp
    from common.data.features import ENCODERS
    from common.data.readers import read_corpus

    corpus = read_corpus("amazon", data)
    feats = ImageFeatures.load(data / "features", encoder=ENCODERS["demo-tiny"])
    assert sorted(feats.item_ids) == sorted(corpus.item_ids) and len(feats.item_ids) == len(set(feats.item_ids))
    assert not [p for p in data.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
