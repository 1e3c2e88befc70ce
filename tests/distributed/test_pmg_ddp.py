"""`pmg` under 2-process DDP (gloo, CPU) against one process: same validation loss and LPIPS/SSIM table, every
sample once in the predictions, synchronised weights, one set of checkpoints, resume at the same step, keyword
cache written once. The data has 21 users, so every split shards unevenly across the ranks."""

from __future__ import annotations

import pytest
from ddp_run import check_resume, ddp_fixture, one_fixture, read_json, read_lines, synchronised_fits

from pmg.cache import JsonlStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ddp(odd_demo, tmp_path_factory):
    return ddp_fixture("pmg", odd_demo, tmp_path_factory)


@pytest.fixture(scope="module")
def one(ddp, tmp_path_factory):
    return one_fixture("pmg", ddp, tmp_path_factory)


def test_gradients_are_synchronised_and_checkpoints_written_once(ddp):
    _, out = ddp
    fits = synchronised_fits(out)
    loss = fits[0]["metrics"]["val/loss"]
    assert fits[1]["metrics"]["val/loss"] == loss
    names = fits[0]["checkpoints"]  # after fit, before the resumed fit adds its own
    assert f"epoch00-val_loss{loss:.4f}.ckpt" in names and "last.ckpt" in names
    assert len(names) == 2  # written once: no second copy (``-v1``) by another rank


def test_validation_loss_is_global(ddp, one):
    _, out = ddp
    _, val, _ = one
    assert read_json(out / "fit.rank0.json")["metrics"]["val/loss"] == pytest.approx(val["val/loss"], rel=1e-5)


def test_test_table_equals_one_process(ddp, one):
    _, out = ddp
    cli, _, _ = one
    ddp_table = read_json(out / "pmg_test_results.json")["results"]
    one_table = cli.model.test_results["results"]
    n = len(cli.datamodule.sample_builder.samples["test"])
    assert n % 2 == 1 and ddp_table["n_ssim_target"] == ddp_table["n_lpips_history"] == n  # each sample once
    assert set(ddp_table) == set(one_table)
    assert ddp_table == pytest.approx(one_table, rel=1e-4, abs=1e-6)


def test_predictions_hold_every_sample_once(ddp, one):
    _, out = ddp
    cli, _, root = one
    rows = read_lines(out / "predictions" / "predictions.jsonl")
    expected = [s["user"] for s in cli.datamodule.sample_builder.samples["test"][:5]]
    assert [r["user"] for r in rows] == expected  # predict_limit 5: ranks hold 3 and 2 samples
    assert len(list((out / "predictions" / "images").glob("*.png"))) == 5
    for mine, theirs in zip(rows, read_lines(root / "predictions" / "predictions.jsonl")):
        assert mine["chosen"] == theirs["chosen"] and mine["preference_keywords"] == theirs["preference_keywords"]
        for key, values in mine["scores"].items():  # d_p, d_t and z of every candidate
            assert values == pytest.approx(theirs["scores"][key], rel=1e-4, abs=1e-6), key


def test_resume_under_ddp_and_from_a_ddp_checkpoint_into_one_process(ddp, tmp_path):
    check_resume("pmg", ddp, tmp_path)


def test_keyword_and_text_caches_are_written_once(ddp, one):
    data, _ = ddp
    cli, _, _ = one
    builder = cli.datamodule.sample_builder
    for name in ("pmg_keywords.jsonl", "pmg_item_texts.jsonl"):
        store = JsonlStore(data / "cache" / name)
        lines = (data / "cache" / name).read_text().splitlines()
        assert store.duplicates == store.torn == store.corrupt == 0 and len(lines) == len(store), name
    samples = [s for split in builder.samples.values() for s in split]
    keys = {f"{s['user']}@{s['split']}:{s['target']}" for s in samples}
    assert set(builder.pref_keywords) == keys
