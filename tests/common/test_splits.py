"""Leave-one-out, fixed negatives (file, sampled, cached) and the leak-free review split."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.corpus import Corpus, DataError, Item, Review, User
from common.data.splits import candidate_negatives, leave_one_out, review_splits


def make_corpus(sequences: dict[str, list[str]], n_items: int, reviews=(), **kw) -> Corpus:
    items = {str(i): Item(str(i)) for i in range(1, n_items + 1)}
    users = {u: User(u) for u in sequences}
    return Corpus("toy", Path("."), items, users, sequences, list(reviews), **kw)


def test_leave_one_out_values():
    c = make_corpus({"a": ["1", "2", "3", "4", "5"], "b": ["1", "2"], "c": ["3", "1", "3"], "d": ["2", "2", "2"]}, 5)
    s = leave_one_out(c)
    assert s.train == {"a": ["1", "2", "3"], "c": ["3"]}
    assert s.val == {"a": (["1", "2", "3"], "4"), "c": (["3"], "1")}
    assert s.test == {"a": (["1", "2", "3", "4"], "5"), "c": (["1"], "3")}  # the earlier '3' left c's history
    assert s.skipped_users == 2  # b too short, d has nothing but its target
    assert s.users == ["a", "c"]
    assert leave_one_out(c, min_length=5).skipped_users == 3


def test_history_never_contains_target():
    seqs = {"u1": ["1", "2", "1", "3", "2", "1"], "u2": ["4", "4", "5", "4", "5"], "u3": ["1", "2", "3", "2", "3"]}
    s = leave_one_out(make_corpus(seqs, 5))
    for part in (s.val, s.test):
        for hist, target in part.values():
            assert hist and target not in hist
    assert s.test["u1"] == (["2", "3", "2"], "1")


def test_negatives_from_source_file():
    c = make_corpus({"a": ["1", "2", "3"]}, 6, negatives={"a": ["4", "2", "5", "4", "6"]})
    s = leave_one_out(c)
    assert candidate_negatives(c, s, n=3) == {"a": ["4", "5", "6"]}  # user's own item and repeats skipped
    with pytest.raises(DataError, match="only 3 distinct negatives.*fewer than n=4"):
        candidate_negatives(c, s, n=4)
    c.negatives = {}
    with pytest.raises(DataError, match="no line for user 'a'"):
        candidate_negatives(c, s, n=3)


def test_negatives_sampled_once_saved_reloaded(tmp_path):
    seqs = {u: [str(i) for i in range(k, k + 4)] for k, u in enumerate("abcdefgh", 1)}
    c = make_corpus(seqs, 40)
    s = leave_one_out(c)
    negs = candidate_negatives(c, s, n=20, seed=7, cache_dir=tmp_path)
    path = tmp_path / "negative_samples_20_7.txt"
    assert path.is_file()
    assert set(negs) == set(seqs)
    for u, lst in negs.items():
        assert len(lst) == 20 and len(set(lst)) == 20
        assert not set(lst) & set(seqs[u]) and set(lst) <= set(c.items)
    # later calls read the file: a (valid) edit to it is what comes back
    lines = path.read_text().splitlines()
    uid, *first = lines[0].split()
    path.write_text("\n".join([f"{uid} {' '.join(reversed(first))}", *lines[1:]]) + "\n")
    reloaded = candidate_negatives(c, s, n=20, seed=7, cache_dir=tmp_path)
    assert reloaded[uid] == first[::-1] and reloaded == {**negs, uid: first[::-1]}
    # deterministic without a cache, and the seed matters
    assert candidate_negatives(c, s, n=20, seed=7) == negs
    assert candidate_negatives(c, s, n=20, seed=8) != negs
    lines = path.read_text().splitlines()
    lines[0] = lines[0].split()[0] + " " + " ".join(["1"] * 20)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="does not match"):
        candidate_negatives(c, s, n=20, seed=7, cache_dir=tmp_path)


def test_negatives_independent_of_other_users():
    seqs = {u: [str(i) for i in range(k, k + 4)] for k, u in enumerate("abcd", 1)}
    c1, c2 = make_corpus(seqs, 50), make_corpus({"b": seqs["b"]}, 50)
    n1 = candidate_negatives(c1, leave_one_out(c1), n=10)
    assert candidate_negatives(c2, leave_one_out(c2), n=10)["b"] == n1["b"]


def test_negatives_dense_user_and_small_catalogue():
    c = make_corpus({"a": [str(i) for i in range(1, 9)]}, 10)
    assert sorted(candidate_negatives(c, leave_one_out(c), n=2)["a"]) == ["10", "9"]
    with pytest.raises(DataError, match="all but 2 items, fewer than n=3"):
        candidate_negatives(c, leave_one_out(c), n=3)
    with pytest.raises(DataError, match="at least 100 items"):
        candidate_negatives(c, leave_one_out(c))


def _rev(u, i, exp="nice"):
    return Review(u, i, rating=5.0, explanation=exp)


def test_review_split_shipped_and_leak_free():
    seqs = {"a": ["1", "2", "3", "4"], "b": ["2", "3", "1"]}
    reviews = [_rev("a", "1"), _rev("a", "3"), _rev("a", "4"), _rev("b", "2"), _rev("b", "3", exp=None), _rev("b", "1")]
    c = make_corpus(seqs, 4, reviews, review_split={"train": [0, 1, 2, 3, 4], "val": [5], "test": []})
    s = leave_one_out(c)
    out = review_splits(c, s, leak_free=False)
    assert [(r.user_id, r.item_id) for r in out["train"]] == [("a", "1"), ("a", "3"), ("a", "4"), ("b", "2")]
    assert [(r.user_id, r.item_id) for r in out["val"]] == [("b", "1")] and out["test"] == []
    out = review_splits(c, s)  # a's val/test items 3, 4 and b's val item 3 leave train
    assert [(r.user_id, r.item_id) for r in out["train"]] == [("a", "1"), ("b", "2")]
    assert review_splits(c, None) == out  # the leave-one-out split is computed when not given


def test_review_split_p5_random():
    seqs = {str(u): [str(i) for i in range(1, 11)] for u in range(1, 11)}
    reviews = [_rev(u, i) for u in seqs for i in seqs[u]]
    c = make_corpus(seqs, 10, reviews)
    out = review_splits(c, leave_one_out(c), seed=3, leak_free=False)
    sizes = {k: len(v) for k, v in out.items()}
    assert sizes == {"train": 80, "val": 10, "test": 10}
    assert {r.user_id for r in out["train"]} == set(seqs) and {r.item_id for r in out["train"]} == set(c.items)
    ids = [id(r) for part in out.values() for r in part]
    assert len(set(ids)) == 100
    assert review_splits(c, None, seed=3, leak_free=False) == out
    assert review_splits(c, None, seed=4, leak_free=False) != out
    leak_free = review_splits(c, leave_one_out(c), seed=3)
    assert all(r.item_id not in ("9", "10") for r in leak_free["train"])
