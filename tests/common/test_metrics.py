"""Ranking and text metrics on hand-computed cases (RecBole style)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from common.metrics import RankingMetrics, hit_at_k, mrr, ndcg_at_k, rank_of_target

RANKS = torch.tensor([0, 1, 4, 5, -1])


def test_rank_of_target():
    ranks = rank_of_target([["a", "b", "c"], ["c", "a"], ["x"], []], ["b", "c", "y", "z"])
    assert ranks.tolist() == [1, 0, -1, -1] and ranks.dtype == torch.long
    with pytest.raises(ValueError):
        rank_of_target([["a"]], ["a", "b"])


def test_hit_ndcg_mrr_by_hand():
    assert hit_at_k(RANKS, 5).tolist() == [1, 1, 1, 0, 0]
    assert hit_at_k(RANKS, 1).tolist() == [1, 0, 0, 0, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(6), 0.0, 0.0]
    assert ndcg_at_k(RANKS, 5).tolist() == pytest.approx(expected)
    assert ndcg_at_k(RANKS, 10).tolist() == pytest.approx(expected[:3] + [1 / math.log2(7), 0.0])
    assert mrr(RANKS).tolist() == pytest.approx([1, 0.5, 0.2, 1 / 6, 0])
    assert mrr(RANKS, k=5).tolist() == pytest.approx([1, 0.5, 0.2, 0, 0])


def test_ranking_metrics_accumulates_over_batches():
    metric = RankingMetrics(ks=(1, 5))
    metric.update(RANKS[:2])
    metric.update(RANKS[2:])
    out = metric.compute()
    assert set(out) == {"hr@1", "ndcg@1", "hr@5", "ndcg@5", "mrr"}
    assert out["hr@1"].item() == pytest.approx(0.2)
    assert out["hr@5"].item() == pytest.approx(0.6)
    assert out["ndcg@5"].item() == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert out["mrr"].item() == pytest.approx((1 + 0.5 + 0.2 + 1 / 6) / 5)
    # the state is the list of ranks, reduced with "cat" across processes: merging two halves is exact
    half, other = RankingMetrics(ks=(1, 5)), RankingMetrics(ks=(1, 5))
    half.update(RANKS[:2])
    other.update(RANKS[2:])
    half.merge_state(other)
    assert {k: v.item() for k, v in half.compute().items()} == pytest.approx({k: v.item() for k, v in out.items()})
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(metric.compute()["hr@5"].item())
    with pytest.raises(ValueError):
        RankingMetrics(ks=(0,))


# ---------------------------------------------------------------------------------------------------- text
PRED, REF = "the cat sat on the mat", "the cat sat on a mat"


def _nmt_bleu(refs, preds, max_order=4):
    """tensorflow/nmt compute_bleu (no smoothing, brevity penalty), the function P5/VIP5 call, over sequences."""
    matches, possible = [0] * max_order, [0] * max_order
    ref_len = trans_len = 0
    for ref, pred in zip(refs, preds):
        ref_len, trans_len = ref_len + len(ref), trans_len + len(pred)
        for n in range(1, max_order + 1):
            r = Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
            p = Counter(tuple(pred[i : i + n]) for i in range(len(pred) - n + 1))
            matches[n - 1] += sum((r & p).values())
            possible[n - 1] += max(len(pred) - n + 1, 0)
    precisions = [m / p if p else 0.0 for m, p in zip(matches, possible)]
    if min(precisions) == 0:
        return 0.0
    ratio = trans_len / ref_len
    bp = 1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio)
    return 100 * bp * math.exp(sum(math.log(p) for p in precisions) / max_order)


def test_bleu4_word_and_char_level():
    text = pytest.importorskip("common.metrics.text")
    pytest.importorskip("sacrebleu")
    assert text.bleu4([PRED, "a b c d e"], [PRED, "a b c d e"]) == pytest.approx(100.0)
    assert text.bleu4(["w x y z q"], ["a b c d e"]) == 0.0
    # hand-computed: precisions 5/6, 3/5, 2/4, 1/3, equal lengths -> (1/12) ** 0.25
    assert text.bleu4([PRED], [REF]) == pytest.approx(100 * (1 / 12) ** 0.25)
    preds = [PRED, "great colour but too small", "it fits"]
    refs = [REF, "the colour is great", "fits well and looks good"]
    assert text.bleu4(preds, refs) == pytest.approx(_nmt_bleu([r.split() for r in refs], [p.split() for p in preds]))
    # VIP5 notebook parity: raw strings -> character n-grams, spaces included
    assert text.bleu4(preds, refs, level="char") == pytest.approx(_nmt_bleu(refs, preds))
    assert text.bleu4([PRED], [PRED], level="char") == pytest.approx(100.0)
    with pytest.raises(ValueError):
        text.bleu4([PRED], [REF, REF])


def test_rouge_by_hand():
    text = pytest.importorskip("common.metrics.text")
    pytest.importorskip("rouge_score")
    assert text.rouge([PRED], [PRED]) == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    assert text.rouge(["w x y"], ["a b c"]) == pytest.approx({"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})
    # unigrams 5 of 6 shared, bigrams 3 of 5, LCS "the cat sat on mat" = 5 of 6
    assert text.rouge([PRED], [REF]) == pytest.approx({"rouge1": 500 / 6, "rouge2": 60.0, "rougeL": 500 / 6})
    # mean over samples; default tokeniser lowercases, the whitespace option keeps case
    assert text.rouge(["The cat", PRED], ["the cat", PRED])["rouge1"] == pytest.approx(100.0)
    assert text.rouge(["The cat"], ["the cat"], whitespace=True)["rouge1"] == pytest.approx(50.0)
