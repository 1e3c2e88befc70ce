"""SASRec baseline: causal masking, padding, training on every position, exact ranks, the baselines CLI."""

from __future__ import annotations

import json

import pytest
import torch

from vip5.sasrec import SASRec, SASRecConfig, fit_sasrec, left_pad, sasrec_ranks

TINY = SASRecConfig(hidden=16, layers=1, heads=2, max_len=6, dropout=0.0, lr=5e-3, batch_size=8, max_epochs=60)


def test_left_pad_keeps_the_most_recent_items():
    assert left_pad([[1, 2, 3], [4]], max_len=2).tolist() == [[2, 3], [0, 4]]
    assert left_pad([[5, 6], []], max_len=4).tolist() == [[5, 6], [0, 0]]


def test_hidden_states_are_causal_and_ignore_padding():
    torch.manual_seed(0)
    model = SASRec(10, TINY).eval()
    seq = torch.tensor([[3, 4, 5, 6]])
    h = model(seq)
    changed = model(torch.tensor([[3, 4, 9, 6]]))
    assert torch.allclose(h[0, :2], changed[0, :2], atol=1e-6)  # a later item never reaches earlier positions
    assert not torch.allclose(h[0, 2:], changed[0, 2:])
    padded = model(torch.tensor([[0, 0, 3, 4, 5, 6]]))
    assert torch.allclose(padded[0, 2:], h[0], atol=1e-5)  # left padding changes nothing


def test_training_learns_a_deterministic_successor_and_ranks_exactly():
    # item i is always followed by i + 1: after training, the next item of any history ranks first
    train = {f"u{k}": list(range(1 + k % 6, 6 + k % 6)) for k in range(40)}  # items 1..10
    torch.manual_seed(0)
    model = SASRec(11, TINY)
    before = [p.detach().clone() for p in model.parameters()]
    stats = fit_sasrec(model, train, TINY, progress=False)
    assert stats.steps == TINY.max_epochs * 5 and stats.targets == TINY.max_epochs * 40 * 4
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every tensor trained
    ranks = sasrec_ranks(model, [[2, 3, 4], [5, 6], [7, 8, 9]], [5, 7, 10])
    assert ranks.tolist() == [0, 0, 0]


def test_ranks_count_better_items_and_skip_the_history():
    model = SASRec(4, SASRecConfig(hidden=4, layers=1, heads=1, max_len=3, dropout=0.0))
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3]])  # items 1..4

    model.item_logits = lambda hidden: scores.clone()  # fixed scores: the rank logic alone
    # target 3 (0.5): only item 2 (0.9) scores higher
    assert sasrec_ranks(model, [[1]], [3]).tolist() == [1]
    # item 2 is in the history and skipped: target 3 ranks first
    assert sasrec_ranks(model, [[2]], [3]).tolist() == [0]
    assert sasrec_ranks(model, [[2]], [3], exclude_history=False).tolist() == [1]
    # a target that is also in the history is never skipped
    assert sasrec_ranks(model, [[4, 3]], [4]).tolist() == [1]


def test_time_budget_stops_training():
    train = {f"u{k}": [1, 2, 3, 4] for k in range(16)}
    stats = fit_sasrec(SASRec(5, TINY), train, TINY, max_seconds=0.0, progress=False)
    assert stats.steps == 1 and 0 < stats.epochs <= 1


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="divide"):
        SASRec(5, SASRecConfig(hidden=10, heads=3))
    with pytest.raises(ValueError, match="max_len"):
        SASRec(5, TINY)(torch.ones(1, TINY.max_len + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="two items"):
        fit_sasrec(SASRec(5, TINY), {"u": [1]}, TINY, progress=False)


def test_baselines_cli_trains_sasrec_on_the_same_splits(demo_data, tmp_path, capsys):
    from vip5.baselines import main

    out = tmp_path / "sasrec.json"
    main(["--data_dir", str(demo_data / "amazon"), "--model", "sasrec", "--minutes", "null", "--users", "20",
          "--sasrec.max_epochs", "2", "--sasrec.hidden", "16", "--out", str(out)])
    result = json.loads(out.read_text())["sasrec"]
    assert result["n"] == 20 and result["epochs"] == 2
    assert 0.0 <= result["ndcg@10"] <= result["hr@10"] <= 1.0
    assert json.loads(capsys.readouterr().out)["sasrec"]["hr@10"] == result["hr@10"]
