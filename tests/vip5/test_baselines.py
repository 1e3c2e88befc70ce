"""Model-free baselines on hand examples, scored through the shared ranking metrics."""

from __future__ import annotations

import random

import pytest

from vip5.baselines import evaluate_rankings, item_popularity, next_unused_id_ranking, popularity_ranking

TRAIN = {"u1": ["a", "b", "c"], "u2": ["b", "c"], "u3": ["c", "d"]}


def test_popularity_ranking():
    assert item_popularity(TRAIN) == {"c": 3, "b": 2, "a": 1, "d": 1}
    ranked = popularity_ranking(TRAIN, k=3, catalogue=["a", "b", "c", "d", "e"])
    assert ranked == {"u1": ["d", "e"], "u2": ["a", "d", "e"], "u3": ["b", "a", "e"]}  # ties: first seen
    assert popularity_ranking(TRAIN, k=2, exclude_history=False)["u1"] == ["c", "b"]
    direct = popularity_ranking(TRAIN, k=10, candidates={"u1": ["e", "a", "c"]})
    assert direct == {"u1": ["c", "a", "e"]}
    test_hist = {"u1": ["a", "b", "c", "d"]}
    assert popularity_ranking(TRAIN, k=1, histories=test_hist, catalogue=list("abcde")) == {"u1": ["e"]}
    metrics = evaluate_rankings(ranked, {"u1": "d", "u2": "b", "u3": "b"}, ks=(1, 5))
    assert metrics["hr@1"] == pytest.approx(2 / 3) and metrics["hr@5"] == pytest.approx(2 / 3)


def test_next_unused_order_and_candidates():
    ranked = next_unused_id_ranking({"u": ["5", "9", "3"]}, k=8)["u"]
    # max+1, max+2, last+1, last+2, then h+1 per history id (recent first, skipping repeats/history), then max+3..
    assert ranked == ["10", "11", "4", "6", "12", "13", "14", "15"]
    small = next_unused_id_ranking({"u": ["5", "9", "3"]}, k=8, catalogue=[str(i) for i in range(1, 11)])["u"]
    # 11 is outside the catalogue; once the guesses run out, the nearest remaining ids to the max (9) follow
    assert small == ["10", "4", "6", "8", "7", "2", "1"]
    direct = next_unused_id_ranking({"u": ["5", "9", "3"]}, k=3, candidates={"u": ["2", "40", "4", "10"]})
    assert direct == {"u": ["10", "4", "2"]}
    with pytest.raises(ValueError, match="integer item ids"):
        next_unused_id_ranking({"u": ["B00X"]}, k=1)


def _p5_numbering(sequences: list[list[str]]) -> list[list[str]]:
    """P5 preprocessing: items numbered 1, 2, ... by first appearance along each user's full sequence."""
    ids: dict[str, str] = {}
    out = []
    for seq in sequences:
        out.append([ids.setdefault(i, str(len(ids) + 1)) for i in seq])
    return out


def test_next_unused_exploits_p5_numbering_and_fails_on_shuffled_ids():
    rng = random.Random(0)
    items = [f"asin{i}" for i in range(400)]
    # each user mostly buys items nobody has bought before (the common case in sparse 5-core data)
    raw = [rng.sample(items[u * 8 : u * 8 + 8], 6) for u in range(50)]
    leaky = _p5_numbering(raw)
    hist = {f"u{u}": seq[:-1] for u, seq in enumerate(leaky)}
    target = {f"u{u}": seq[-1] for u, seq in enumerate(leaky)}
    catalogue = [str(i) for i in range(1, 301)]
    m = evaluate_rankings(next_unused_id_ranking(hist, k=10, catalogue=catalogue), target, ks=(1, 5, 10))
    assert m["hr@1"] == 1.0 and m["ndcg@10"] == 1.0
    # the same interactions under a random item numbering: the heuristic has nothing to exploit
    perm = list(range(1, 301))
    rng.shuffle(perm)
    relabel = {str(i + 1): str(p) for i, p in enumerate(perm)}
    hist2 = {u: [relabel[i] for i in s] for u, s in hist.items()}
    target2 = {u: relabel[i] for u, i in target.items()}
    m2 = evaluate_rankings(next_unused_id_ranking(hist2, k=10, catalogue=catalogue), target2, ks=(1, 5, 10))
    assert m2["hr@1"] <= 0.04 and m2["hr@10"] <= 0.2
    # direct prompts: ranking a candidate list (target + 19 random negatives)
    cands = {u: rng.sample([c for c in catalogue if c not in hist[u] and c != target[u]], 19) + [target[u]]
             for u in hist}
    md = evaluate_rankings(next_unused_id_ranking(hist, k=20, candidates=cands), target, ks=(1,))
    assert md["hr@1"] == 1.0
