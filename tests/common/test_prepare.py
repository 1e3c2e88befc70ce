"""Raw Amazon-2014 files -> P5 folder (common.data.prepare): P5's construction rules, determinism, atomic reruns."""

from __future__ import annotations

import ast
import gzip
import json
import pickle
import random
from collections import Counter
from pathlib import Path

import pytest

from common.data import prepare as prep
from common.data.corpus import DataError
from common.data.prepare import filter_kcore, prepare_amazon

FILES = [
    "sequential_data.txt",
    "negative_samples.txt",
    "datamaps.json",
    "item2attributes.json",
    "user_id2name.pkl",
    "meta.json.gz",
    "item2img_dict.pkl",
    "review_splits.pkl",
    "exp_splits.pkl",
]


def write_raw(folder: Path, n_users: int = 90, n_items: int = 40, seed: int = 0) -> dict[str, Path]:
    """A small raw Amazon category: reviews (JSON lines), meta (dict literals), Sentires pickle; not yet 5-core."""
    rng = random.Random(seed)
    reviews = []
    for u in range(n_users):
        for _ in range(rng.randint(3, 11)):
            it = rng.randint(0, n_items - 1)
            r = {
                "reviewerID": f"U{u:03d}",
                "asin": f"B{it:04d}",
                "helpful": [0, 0],
                "reviewText": f"review of {it} by {u}",
                "overall": float(rng.randint(1, 5)),
                "summary": "ok",
                "unixReviewTime": rng.randint(1000, 1060),  # ties on purpose: the sort must be stable
                "reviewTime": "01 1, 2014",
            }
            if u % 5:
                r["reviewerName"] = f"name-{u}"
            reviews.append(r)
    rng.shuffle(reviews)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / n for k, n in [("reviews", "reviews_X_5.json.gz"), ("meta", "meta_X.json.gz")]}
    with gzip.open(paths["reviews"], "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in reviews)
    with gzip.open(paths["meta"], "wt") as f:
        for it in range(n_items + 10):  # meta also lists items outside the 5-core
            row = {"asin": f"B{it:04d}", "title": f"Item {it}", "categories": [["Top", f"c{it % 3}"]]}
            if it % 6:
                row["imUrl"] = f"http://images.example/{it}.jpg"
            if it % 4:
                row["brand"] = f"brand{it % 5}"
            f.write(repr(row) + "\n")
    sentires = []
    for r in reviews:  # aligned with the review file, with P5's keys
        e = {"user": r["reviewerID"], "item": r["asin"], "rating": r["overall"], "text": r["reviewText"]}
        if rng.random() < 0.7:
            e["sentence"] = [(f"feat{j}", "good", f"sentence {j}: {r['reviewText']}", 1) for j in range(1, 4)]
        sentires.append(e)
    paths["sentires"] = folder / "reviews_X.pickle"
    paths["sentires"].write_bytes(pickle.dumps(sentires))
    paths["raw_reviews"] = reviews
    return paths


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    raw = write_raw(tmp_path_factory.mktemp("raw"))
    out = tmp_path_factory.mktemp("out") / "x"
    report = prepare_amazon(raw["reviews"], raw["meta"], out, sentires=raw["sentires"], n_negatives=15)
    return raw, out, report


def _lines(path: Path) -> dict[str, list[str]]:
    return {u: rest for u, *rest in (line.split() for line in path.read_text().splitlines())}


def _pickle(path: Path):
    with open(path, "rb") as f:
        return pickle.load(f)


def test_layout_and_p5_construction(prepared):
    raw, out, report = prepared
    assert all((out / f).is_file() for f in FILES) and (out / "_DONE").is_file()
    assert not list(out.glob(".prepare-*"))
    seqs = _lines(out / "sequential_data.txt")
    dm = json.loads((out / "datamaps.json").read_text())
    # users 1..U in file order; 5-core on both sides
    assert list(seqs) == [str(u) for u in range(1, len(seqs) + 1)]
    assert report["users"] == len(seqs) == len(dm["user2id"]) and report["items"] == len(dm["item2id"])
    assert min(len(s) for s in seqs.values()) >= 5
    assert min(Counter(i for s in seqs.values() for i in s).values()) >= 5
    assert report["interactions"] == sum(len(s) for s in seqs.values())
    # items numbered by first appearance along each user's full sequence (P5's id map, leak included)
    top = 0
    for s in seqs.values():
        for i in s:
            if int(i) > top:
                assert int(i) == top + 1
                top += 1
    assert top == report["items"]
    # sequences are the raw reviews sorted by time (stable), mapped through datamaps
    by_user: dict[str, list[dict]] = {}
    for r in raw["raw_reviews"]:
        by_user.setdefault(r["reviewerID"], []).append(r)
    for uid, s in seqs.items():
        mine = sorted(by_user[dm["id2user"][uid]], key=lambda r: r["unixReviewTime"])
        assert [dm["id2item"][i] for i in s] == [r["asin"] for r in mine if r["asin"] in dm["item2id"]]
    assert dm["user2id"] == {v: k for k, v in dm["id2user"].items()}
    assert {"attribute2id", "id2attribute", "attributeid2num"} <= set(dm)


def test_negatives_names_meta_images(prepared):
    raw, out, _ = prepared
    seqs = _lines(out / "sequential_data.txt")
    negs = _lines(out / "negative_samples.txt")
    dm = json.loads((out / "datamaps.json").read_text())
    assert list(negs) == list(seqs)
    for uid, n in negs.items():
        assert len(n) == 15 and len(set(n)) == 15 and not set(n) & set(seqs[uid])
        assert all(i in dm["id2item"] for i in n)
    names = _pickle(out / "user_id2name.pkl")
    assert set(names) == set(seqs)
    for uid, name in names.items():  # reviewerName, else the reviewerID
        raw_id = dm["id2user"][uid]
        assert name == (raw_id if int(raw_id[1:]) % 5 == 0 else f"name-{int(raw_id[1:])}")
    with gzip.open(out / "meta.json.gz", "rt") as f:
        rows = [ast.literal_eval(line) for line in f]
    assert {r["asin"] for r in rows} == set(dm["item2id"])
    img = _pickle(out / "item2img_dict.pkl")
    assert img == {r["asin"]: r["imUrl"] for r in rows if "imUrl" in r}


def test_review_and_explanation_splits(prepared):
    raw, out, report = prepared
    dm = json.loads((out / "datamaps.json").read_text())
    rs = _pickle(out / "review_splits.pkl")
    n = report["reviews"]
    idx = {k: rs[f"{k}_indices"] for k in ("train", "val", "test")}
    assert sorted(idx["train"] + idx["val"] + idx["test"]) == list(range(n))
    assert len(idx["train"]) == round(0.8 * n) and len(idx["val"]) == round(0.1 * n)
    train = rs["train"]
    assert {r["reviewerID"] for r in train} == set(dm["user2id"])  # one review per user and item in train
    assert {r["asin"] for r in train} == set(dm["item2id"])
    exp = _pickle(out / "exp_splits.pkl")
    for split in ("train", "val", "test"):
        assert exp[split] == [r for r in rs[split] if "explanation" in r]
        for r in exp[split]:
            j = int(r["feature"][len("feat") :])
            assert r["explanation"] == f"sentence {j}: {r['reviewText']}"
    assert report["reviews_with_explanation"] == sum(len(v) for k, v in exp.items())


def test_deterministic_seeded_and_rerun_is_noop(tmp_path, monkeypatch):
    raw = write_raw(tmp_path / "raw", n_users=50, n_items=25, seed=3)
    args = (raw["reviews"], raw["meta"])
    a = prepare_amazon(*args, tmp_path / "a", n_negatives=5)
    prepare_amazon(*args, tmp_path / "b", n_negatives=5)
    prepare_amazon(*args, tmp_path / "c", n_negatives=5, seed=7)
    for f in FILES[:-1]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert not (tmp_path / "a" / "exp_splits.pkl").exists()  # no Sentires input, no explanations
    seq = (tmp_path / "a" / "sequential_data.txt").read_text()
    assert seq != (tmp_path / "c" / "sequential_data.txt").read_text()  # the user shuffle follows the seed

    monkeypatch.setattr(prep, "read_reviews", lambda p: pytest.fail("a finished folder must not be rebuilt"))
    assert prepare_amazon(*args, tmp_path / "a", n_negatives=5) == a
    with pytest.raises(FileExistsError, match="overwrite=True"):
        prepare_amazon(*args, tmp_path / "a", n_negatives=6)
    monkeypatch.undo()
    assert prepare_amazon(*args, tmp_path / "a", n_negatives=6, overwrite=True)["users"] == a["users"]
    assert len((tmp_path / "a" / "negative_samples.txt").read_text().split("\n")[0].split()) == 7


def test_interrupted_run_leaves_no_output(tmp_path, monkeypatch):
    raw = write_raw(tmp_path / "raw", n_users=50, n_items=25, seed=4)
    out = tmp_path / "out"
    calls = []

    def crash(path, obj):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt

    real = prep._write_pickle
    monkeypatch.setattr(prep, "_write_pickle", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_amazon(raw["reviews"], raw["meta"], out, n_negatives=5)
    assert list(out.iterdir()) == []  # nothing half-written: files move in only once all are complete
    monkeypatch.setattr(prep, "_write_pickle", real)
    prepare_amazon(raw["reviews"], raw["meta"], out, n_negatives=5)
    assert (out / "_DONE").is_file() and (out / "review_splits.pkl").is_file()


def test_kcore_filter_is_iterative():
    # u5 (4 items) goes first; B then has 4 interactions and goes; u0..u3 are then left with 4 items and go.
    users = {f"u{n}": ["A", "B", "C", "D", "E"] for n in range(4)}
    users["u5"] = ["B", "A", "C", "D"]
    users.update({f"u{n}": ["A", "C", "D", "E", "F"] for n in (4, 6, 7, 8, 9, 10)})
    kept = filter_kcore(users, 5, 5)
    assert list(kept) == ["u4", "u6", "u7", "u8", "u9", "u10"]  # order kept
    assert all(s == ["A", "C", "D", "E", "F"] for s in kept.values())
    assert filter_kcore({"x": ["A"] * 4}, 5, 5) == {}


def test_errors_name_the_input(tmp_path):
    raw = write_raw(tmp_path / "raw", n_users=50, n_items=25, seed=5)
    bad = pickle.loads(raw["sentires"].read_bytes())
    bad[0]["user"] = "SOMEONE-ELSE"
    (tmp_path / "bad.pickle").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="bad.pickle"):
        prepare_amazon(raw["reviews"], raw["meta"], tmp_path / "o1", sentires=tmp_path / "bad.pickle", n_negatives=5)
    with pytest.raises(DataError, match="n_negatives"):
        prepare_amazon(raw["reviews"], raw["meta"], tmp_path / "o2", n_negatives=99)
    broken = tmp_path / "broken.json"
    broken.write_text('{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"broken.json:2"):
        prepare_amazon(broken, raw["meta"], tmp_path / "o3")


def test_amazon_reader_reads_the_prepared_folder(prepared):
    from common.data.readers import read_corpus

    _, out, report = prepared
    corpus = read_corpus("amazon", out)
    assert len(corpus.users) == report["users"] and len(corpus.items) == report["items"]
    assert corpus.has_titles and corpus.has_user_names
    corpus.validate()
