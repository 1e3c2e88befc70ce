"""End to end on generated demo data: a short fit lowers the loss, a checkpoint reloads and resumes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from vip5.cli import main
from vip5.data import model_inputs, select_rows

pytestmark = pytest.mark.slow
DEBUG = Path(__file__).resolve().parents[2] / "configs/debug/vip5.yaml"


def _args(data_dir, out, *extra):
    """The debug overlay (no logger, a small tokenizer, few prompts) on ``data_dir``, run folder ``out``."""
    return ["--config", str(DEBUG), "--trainer.default_root_dir", str(out), "--data.init_args.data_dir", str(data_dir),
            *extra]


def _fit(data_dir, out, *extra):
    cli = main(["--config", str(_default()), *_args(data_dir, out, *extra)], run_cli=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


def _default():
    from vip5.cli import DEFAULT_CONFIG

    return DEFAULT_CONFIG


def test_fit_lowers_loss_and_checkpoint_resumes(demo_data, tmp_path):
    out = tmp_path / "run"
    cli = _fit(demo_data / "amazon", out, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
               "--trainer.limit_val_batches", "2", "--model.optimizer.lr", "0.003")
    model = cli.model
    dm = cli.datamodule
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        before = model._loss(batch).item()
    trainer = cli.trainer
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    # resume: a new CLI continues from the checkpoint (epoch counter and weights restored)
    cli2 = main(["--config", str(_default()), *_args(demo_data / "amazon", out, "--trainer.max_epochs", "4",
                                                     "--trainer.limit_train_batches", "15",
                                                     "--trainer.limit_val_batches", "2",
                                                     "--model.optimizer.lr", "0.003")],
                run_cli=False)
    cli2.trainer.fit(cli2.model, cli2.datamodule, ckpt_path=str(ckpt))
    assert cli2.trainer.current_epoch == 4
    assert cli2.trainer.global_step > trainer.global_step
    with torch.no_grad():
        after = cli2.model._loss(batch).item()
    assert after < before - 0.1, (before, after)


def test_test_table_and_predict_lines(demo_data, tmp_path):
    out = tmp_path / "eval"
    cli = _fit(demo_data / "amazon", out, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
               "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
               "--model.evaluation.top_k", "5")
    ckpt = str(out / "checkpoints" / "last.ckpt")
    cli.trainer.test(cli.model, cli.datamodule, ckpt_path=ckpt, verbose=False)
    results = json.loads((out / "checkpoints" / "test_results.json").read_text())
    assert results["meta"]["decoding"] == "trie" and results["meta"]["indexing"] == "atomic"
    table = results["results"]
    assert set(table) == {"A-3", "A-9", "B-5", "B-8", "C-3", "C-12"}
    assert table["A-3"]["invalid_rate"] == 0.0  # trie-constrained: every returned id exists
    for prompt in ("A-3", "B-5"):
        assert 0.0 <= table[prompt]["NDCG@10"] <= table[prompt]["HR@10"] <= 1.0
    assert {"BLEU-4", "rouge1", "rouge2", "rougeL"} <= set(table["C-3"])

    users = list(cli.datamodule.data.split.test)[:3]
    cli2 = main(["--config", str(_default()), *_args(demo_data / "amazon", out,
                                                     "--model.evaluation.predict_users", json.dumps(users),
                                                     "--model.evaluation.top_k", "5")], run_cli=False)
    cli2.trainer.predict(cli2.model, cli2.datamodule, ckpt_path=ckpt)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["user"] for r in rows] == users
    corpus = cli2.datamodule.data.corpus
    for r in rows:
        recs = r["recommendations"]
        assert len(recs) == 5 and len({x["item"] for x in recs}) == 5
        assert all(x["item"] in corpus.items and x["title"] == corpus.items[x["item"]].title for x in recs)


def test_batched_candidate_scores_equal_per_candidate_forward(demo_data, tmp_path):
    cli = _fit(demo_data / "amazon", tmp_path / "s", "--trainer.max_epochs", "1", "--trainer.limit_train_batches",
               "2", "--trainer.limit_val_batches", "0")
    module = cli.model.eval()
    builder = module.sample_builder
    batch = next(iter(builder.dataloaders("test", 3, 0)[builder.test_templates.index("B-5")]))
    scores = module.evaluator.candidate_scores(batch, max_positions=7)  # one row per decoder pass
    tok = builder.tokenizer
    with torch.no_grad():
        for r, s in enumerate(batch["samples"]):
            for j in (0, 5, len(s["candidates"]) - 1):
                ids = module.evaluator.item_tokens[s["candidates"][j]]
                labels = torch.tensor([ids])
                row = select_rows(batch, [r])
                out = module.model(**model_inputs(row), labels=labels)
                expected = -out.loss.item() * len(ids)  # token-mean CE -> summed log-likelihood
                assert abs(float(scores[r][j]) - expected) < 1e-3, (r, j)
    assert tok.pad_token_id == 0
    # A beam as wide as the candidate list keeps every candidate of these one-token ids (+ </s>), so the
    # candidate-constrained beam search (``direct_ranking: beam``, the faithful option) ranks them exactly as
    # their likelihoods do.
    ev = module.evaluator
    assert {len(ev.item_tokens[c]) for s in batch["samples"] for c in s["candidates"]} == {2}
    ev.config = dataclasses.replace(ev.config, direct_ranking="beam", num_beams=20)
    assert len(batch["samples"][0]["candidates"]) == 20
    beam_ranks = ev._direct(batch)
    assert beam_ranks == ev._likelihood_ranks(batch) and max(beam_ranks) >= 0


def test_training_on_some_families_validates_on_those_only(demo_data, tmp_path):
    cli = main(["--config", str(_default()), *_args(demo_data / "amazon", tmp_path, "--model.prompts.families",
                                                    "[sequential]")], run_cli=False)
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    builder = dm.sample_builder
    for split in ("train", "val"):
        ds = builder.dataset(split)
        assert {r.family for r in ds.recipes} == {"sequential"}, split
        assert ds[0]["source"] and ds[len(ds) - 1]["target"]


def test_validation_ranks_targets_among_candidates_and_selects_checkpoints(demo_data, tmp_path):
    cli = main(["--config", str(_default()), *_args(demo_data / "amazon", tmp_path, "--trainer.max_epochs", "1",
                                                    "--trainer.limit_train_batches", "2",
                                                    "--trainer.limit_val_batches", "2")], run_cli=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    module, builder = cli.model, cli.datamodule.sample_builder
    hr = cli.trainer.callback_metrics["val/hr@10"].item()
    assert 0.0 <= hr <= 1.0
    [by_hr] = [cb for cb in cli.trainer.checkpoint_callbacks if cb.monitor == "val/hr@10"]
    best = Path(by_hr.best_model_path)
    assert best.is_file() and best.name == f"epoch00-hr10_{hr:.4f}.ckpt"
    # the ranks are exact likelihood ranks: recompute one sample's by scoring its candidates one at a time
    batch = builder.collate([builder.dataset("val")[i] for i in range(8)])
    module.eval()
    ranks = module.evaluator.validation_ranks(batch)
    ranked = [s for s in batch["samples"] if s["task"] != "explanation"
              and builder.available[s["template"]].target_kind != "yes_no"]
    assert len(ranks) == len(ranked) > 0
    s = ranked[0]
    cands = s["candidates"] or builder.validation_candidates(s["user"], s["target_item"])
    row = batch["samples"].index(s)
    assert sorted(ranks) == [batch["samples"].index(x) for x in ranked]
    one = {k: (v[row : row + 1] if torch.is_tensor(v) else [v[row]]) for k, v in batch.items() if k != "samples"}
    scores = module.evaluator.candidate_scores({**one, "samples": [{**s, "candidates": cands}]})[0]
    target = cands.index(s["target_item"])
    assert ranks[row] == int((scores > scores[target]).sum() + (scores[:target] == scores[target]).sum())


def test_monitoring_val_hr_without_ranked_prompts_is_a_clear_error(demo_data, tmp_path):
    cli = main(["--config", str(_default()), *_args(demo_data / "amazon", tmp_path, "--trainer.max_epochs", "1",
                                                    "--trainer.limit_train_batches", "1", "--model.prompts.families",
                                                    "[explanation]")], run_cli=False)
    with pytest.raises(ValueError, match="monitor the loss instead"):
        cli.trainer.fit(cli.model, cli.datamodule)
