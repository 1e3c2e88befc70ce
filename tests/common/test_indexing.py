"""Item indexing schemes, the id-leak they remove, save/load, and the model-free leak baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.corpus import Corpus, DataError, Item, User
from common.data.indexing import (
    INDEXINGS,
    ItemIndex,
    ItemIndexing,
    build_indexing,
    leak_rate,
    register_indexing,
)
from common.data.splits import leave_one_out
from vip5.baselines import next_unused_id_ranking  # the one implementation


def make_corpus(sequences: dict[str, list[str]], items: list[str] | None = None) -> Corpus:
    items = items or sorted({i for s in sequences.values() for i in s}, key=int)
    return Corpus("toy", Path("."), {i: Item(i) for i in items}, {u: User(u) for u in sequences}, sequences)


# P5-style numbering: items numbered by first appearance along each user's *full* sequence (the file ids
# below are exactly that), so a user whose last items are new to the walk gets test item = max(history) + 1.
# Each user's held-out items reappear in the next user's training part, as popular items do in real data.
P5_SEQS = {
    "u1": ["1", "2", "3", "4", "5"],
    "u2": ["5", "4", "6", "7", "8"],
    "u3": ["8", "7", "9", "10", "11"],
    "u4": ["11", "10", "12", "3", "2"],
    "u5": ["13", "14"],  # too short to split
}


def test_original_is_identity():
    c = make_corpus(P5_SEQS)
    idx = build_indexing("original", c)
    assert idx.to_id == {i: i for i in c.items} and idx.to_item == idx.to_id and idx.tokens is None


def test_sequential_numbering_hand_example():
    c = make_corpus(P5_SEQS)
    s = leave_one_out(c)
    idx = build_indexing("sequential", c, s)
    # training parts in user order: 1 2 3 | 5 4 6 | 8 7 9 | 11 10 12; every held-out item is already numbered
    # by then; items of skipped users and untouched items come last in corpus order: 13 14
    expected = ["1", "2", "3", "5", "4", "6", "8", "7", "9", "11", "10", "12", "13", "14"]
    assert idx.to_id == {item: str(n) for n, item in enumerate(expected, 1)}
    assert build_indexing("sequential", c, s, start=0).to_id["1"] == "0"
    assert build_indexing("sequential", c).to_id == idx.to_id  # split computed when not given


def test_sequential_indexing_removes_the_p5_leak():
    c = make_corpus(P5_SEQS)
    s = leave_one_out(c)
    p5 = build_indexing("original", c)  # the file ids are already P5-style here
    assert build_indexing("appearance", c, s).to_id == p5.to_id
    assert leak_rate(s, p5) == 0.75  # u1..u3: test item = max(history) + 1
    seq = build_indexing("sequential", c, s)
    assert leak_rate(s, seq) == 0.0
    # the model-free heuristic gets 3 of 4 test items at rank 1 on the P5 ids, none after re-indexing
    for idx, hits in ((p5, 3), (seq, 0)):
        n = 0
        for user, (hist, target) in s.test.items():
            top1 = next_unused_id_ranking({user: idx.ids(hist)}, 1, catalogue=list(idx.to_item))[user]
            n += top1 == [idx.to_id[target]]
        assert n == hits


def test_random_is_deterministic_with_equal_digits():
    c = make_corpus(P5_SEQS)
    a, b = build_indexing("random", c, seed=1), build_indexing("random", c, seed=1)
    assert a.to_id == b.to_id and build_indexing("random", c, seed=2).to_id != a.to_id
    assert sorted(map(int, a.to_id.values())) == list(range(1001, 1015))  # 14 items
    big = make_corpus({"u": ["1", "2", "3"]}, [str(i) for i in range(1, 9501)])
    ids = build_indexing("random", big).to_id.values()
    assert {len(i) for i in ids} == {5} and min(map(int, ids)) == 10001
    assert min(map(int, build_indexing("random", c, start=1).to_id.values())) == 1


def test_save_load_round_trip(tmp_path):
    idx = build_indexing("sequential", make_corpus(P5_SEQS))
    idx.save(tmp_path / "index.json")
    back = ItemIndex.load(tmp_path / "index.json")
    assert (back.name, back.to_id, back.to_item, back.tokens) == (idx.name, idx.to_id, idx.to_item, None)
    tok = ItemIndex("cid", {"a": "<c1><c2>", "b": "<c1><c3>"}, tokens={"<c1><c2>": ["<c1>", "<c2>"],
                                                                       "<c1><c3>": ["<c1>", "<c3>"]})
    tok.save(tmp_path / "tok.json")
    assert ItemIndex.load(tmp_path / "tok.json").tokens == tok.tokens
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(DataError, match="not an item index"):
        ItemIndex.load(tmp_path / "bad.json")


def test_uniqueness_and_registry():
    with pytest.raises(ValueError, match="share id '7'"):
        ItemIndex("x", {"a": "7", "b": "7"})
    valid = "valid names: .*atomic.*collaborative.*original.*random.*semantic.*sequential"
    with pytest.raises(ValueError, match=valid):
        build_indexing("semantic-nope", make_corpus(P5_SEQS))
    assert {"original", "appearance", "sequential", "random", "atomic", "collaborative", "semantic"} <= set(INDEXINGS)

    @register_indexing("_test_reversed")
    class Reversed(ItemIndexing):
        def fit(self, corpus, split=None, features=None):
            return ItemIndex(self.name, {i: f"r{i}" for i in corpus.items})

    try:
        assert build_indexing("_test_reversed", make_corpus(P5_SEQS)).to_id["3"] == "r3"
        with pytest.raises(ValueError, match="already registered"):
            register_indexing("_test_reversed")(Reversed)
    finally:
        INDEXINGS.pop("_test_reversed")


