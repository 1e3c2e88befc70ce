"""The demo-data generator: deterministic, real file formats, planted signal, idempotent reruns."""

from __future__ import annotations

import ast
import csv
import gzip
import json
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.demo import COLOURS, generate_demo

SMALL = {"n_users": 40, "n_items": 30, "image_size": 32}
TINY = {"n_users": 6, "n_items": 20, "image_size": 8}  # for the rerun logic, where content does not matter
REVIEW_KEYS = {"reviewerID", "asin", "reviewerName", "helpful", "reviewText", "overall", "summary",
               "unixReviewTime", "reviewTime", "explanation", "feature"}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo_small")
    generate_demo(out, **SMALL)
    return out


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> Path:
    """Big enough for the statistics to be stable (about half a second)."""
    out = tmp_path_factory.mktemp("demo_medium")
    generate_demo(out, n_users=150, n_items=120, image_size=16)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _amazon_sequences(root: Path) -> dict[str, list[str]]:
    lines = (root / "amazon" / "sequential_data.txt").read_text().splitlines()
    return {p[0]: p[1:] for p in (line.split() for line in lines)}


# ------------------------------------------------------------------------------------------ determinism
def test_byte_identical_across_runs(small, tmp_path):
    again = generate_demo(tmp_path / "again", **SMALL)
    assert again == {d: tmp_path / "again" / d for d in ("amazon", "pog", "movielens")}
    a, b = _files(small), _files(tmp_path / "again")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    other = generate_demo(tmp_path / "seed1", seed=1, **SMALL)
    assert (other["amazon"] / "sequential_data.txt").read_bytes() != a["amazon/sequential_data.txt"]
    assert (other["pog"] / "user_data.txt").read_bytes() != a["pog/user_data.txt"]


# ------------------------------------------------------------------------------------------------ Amazon
def test_amazon_sequences_and_negatives(small):
    seqs = _amazon_sequences(small)
    n_items = SMALL["n_items"]
    assert list(seqs) == [str(u) for u in range(1, SMALL["n_users"] + 1)]  # lines in uid order
    for seq in seqs.values():
        assert len(seq) >= 5 and len(set(seq)) == len(seq)
        assert all(s.isdigit() and 1 <= int(s) <= n_items for s in seq)
    for line in (small / "amazon" / "negative_samples.txt").read_text().splitlines():
        uid, *negs = line.split()
        assert len(negs) == min(99, n_items - len(seqs[uid])) == len(set(negs))
        assert not set(negs) & set(seqs[uid])


def test_amazon_default_size_gives_99_negatives(medium):
    seqs = _amazon_sequences(medium)
    for line in (medium / "amazon" / "negative_samples.txt").read_text().splitlines():
        uid, *negs = line.split()
        assert len(negs) == len(set(negs)) == 99 and not set(negs) & set(seqs[uid])


def test_amazon_maps_meta_and_pickles(small):
    root = small / "amazon"
    dm = json.loads((root / "datamaps.json").read_text())
    assert {"user2id", "item2id", "id2user", "id2item"} <= dm.keys()
    assert sorted(dm["id2item"], key=int) == [str(i) for i in range(1, SMALL["n_items"] + 1)]
    assert {v: k for k, v in dm["item2id"].items()} == dm["id2item"]
    assert {v: k for k, v in dm["user2id"].items()} == dm["id2user"]
    assert all(re.fullmatch(r"B00[0-9A-Z]{7}", a) for a in dm["item2id"])
    assert all(re.fullmatch(r"A[0-9A-Z]{12,13}", r) for r in dm["user2id"])

    raw = (root / "meta.json.gz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0: reproducible bytes
    rows = [ast.literal_eval(line) for line in gzip.decompress(raw).decode().splitlines()]
    assert {r["asin"] for r in rows} == set(dm["item2id"])
    for r in rows:
        assert {"asin", "title", "description", "categories", "brand", "imUrl"} <= r.keys()
        assert isinstance(r["categories"], list) and isinstance(r["categories"][0], list)
        assert r["imUrl"] == f"images/{r['asin']}.png" and (root / r["imUrl"]).is_file()

    img = pickle.loads((root / "item2img_dict.pkl").read_bytes())
    assert img == {a: f"images/{a}.png" for a in dm["item2id"]}
    names = pickle.loads((root / "user_id2name.pkl").read_bytes())
    assert set(names) == set(dm["id2user"]) and all(isinstance(n, str) and n for n in names.values())


def test_amazon_review_splits(small):
    root = small / "amazon"
    exp = pickle.loads((root / "exp_splits.pkl").read_bytes())
    rev = pickle.loads((root / "review_splits.pkl").read_bytes())
    assert set(exp) == set(rev) == {"train", "val", "test"}
    n = sum(len(v) for v in rev.values())
    assert n == sum(len(s) for s in _amazon_sequences(small).values())  # one review per interaction
    assert 0.75 <= len(rev["train"]) / n <= 0.85 and abs(len(rev["val"]) - len(rev["test"])) <= 2
    dm = json.loads((root / "datamaps.json").read_text())
    assert {r["reviewerID"] for r in rev["train"]} == set(dm["user2id"])  # every user has a train review
    for r in (r for split in exp.values() for r in split):
        assert set(r) == REVIEW_KEYS
        assert isinstance(r["overall"], float) and 1.0 <= r["overall"] <= 5.0
        assert isinstance(r["unixReviewTime"], int) and r["helpful"] == [0, 0]
        assert r["asin"] in dm["item2id"] and r["feature"] in r["explanation"]
        assert re.fullmatch(r"\d\d \d{1,2}, \d{4}", r["reviewTime"])


# --------------------------------------------------------------------------------------------------- POG
def test_pog_files(small):
    root = small / "pog"
    items = {}
    for line in (root / "item_data.txt").read_text().splitlines():
        item_id, cate_id, pic_url, title = line.split(",")
        assert item_id.isdigit() and len(item_id) >= 9 and cate_id.isdigit() and title
        assert pic_url == f"//img.example.invalid/{item_id}.png" and (root / "images" / f"{item_id}.png").is_file()
        items[item_id] = cate_id
    assert len(items) == SMALL["n_items"]
    outfits = {}
    for line in (root / "outfit_data.txt").read_text().splitlines():
        outfit_id, members = line.split(",")
        members = members.split(";")
        assert 3 <= len(members) <= 4 and set(members) <= items.keys()
        assert len({items[m] for m in members}) == len(members)  # one item per category
        outfits[outfit_id] = members
    lines = (root / "user_data.txt").read_text().splitlines()
    assert len(lines) == SMALL["n_users"]
    for line in lines:
        user_id, clicks, outfit_id = line.split(",")
        assert len(clicks.split(";")) >= 5 and set(clicks.split(";")) <= items.keys() and outfit_id in outfits


# --------------------------------------------------------------------------------------------- MovieLens
def test_movielens_files(small):
    root = small / "movielens"
    with open(root / "movies.csv", newline="") as f:
        movies = list(csv.DictReader(f))
    assert list(movies[0]) == ["movieId", "title", "genres"]
    assert all(re.fullmatch(r".+ \(\d{4}\)", m["title"]) and m["genres"] for m in movies)
    assert any("," in m["title"] for m in movies) and '"' in (root / "movies.csv").read_text()  # quoted titles
    ids = {m["movieId"] for m in movies}
    assert all((root / "posters" / f"{i}.png").is_file() for i in ids)
    with open(root / "ratings.csv", newline="") as f:
        ratings = list(csv.DictReader(f))
    assert list(ratings[0]) == ["userId", "movieId", "rating", "timestamp"]
    assert {r["movieId"] for r in ratings} <= ids
    assert all(float(r["rating"]) * 2 == int(float(r["rating"]) * 2) and 0.5 <= float(r["rating"]) <= 5
               for r in ratings)
    keys = [(int(r["userId"]), int(r["movieId"])) for r in ratings]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    with open(root / "links.csv", newline="") as f:
        links = list(csv.DictReader(f))
    assert list(links[0]) == ["movieId", "imdbId", "tmdbId"] and {r["movieId"] for r in links} == ids
    with open(root / "tags.csv", newline="") as f:
        tags = list(csv.DictReader(f))
    assert list(tags[0]) == ["userId", "movieId", "tag", "timestamp"] and {t["movieId"] for t in tags} <= ids


# ------------------------------------------------------------------------------------------------ images
def test_images_are_pngs_whose_colour_is_the_attribute(small):
    truth = json.loads((small / "truth.json").read_text())
    palette = {c: np.array(rgb) for c, rgb in COLOURS.items()}
    means = {}
    for domain, folder in (("amazon", "images"), ("pog", "images"), ("movielens", "posters")):
        for iid, a in truth[domain]["items"].items():
            path = small / domain / folder / f"{a.get('asin', iid)}.png"
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            img = Image.open(path)
            assert img.size == (SMALL["image_size"],) * 2 and img.mode == "RGB"
            px = np.asarray(img, dtype=int).reshape(-1, 3)
            near = {c: np.mean(np.abs(px - rgb).max(axis=1) <= 24) for c, rgb in palette.items()}
            assert near[a["colour"]] > 0.04, (domain, iid, a, near)
            assert max(v for c, v in near.items() if c != a["colour"]) < 0.02, (domain, iid, a, near)
            if a["pattern"] == "plain":
                means.setdefault(a["colour"], []).append(px[np.abs(px - palette[a["colour"]]).max(1) <= 24].mean(0))
    centres = {c: np.mean(v, axis=0) for c, v in means.items()}
    assert len(centres) == len(COLOURS)
    for c1 in centres:  # distinct colour attributes give clearly distinct pixels
        for c2 in centres:
            if c1 < c2:
                assert np.abs(centres[c1] - centres[c2]).max() > 40


# ------------------------------------------------------------------------------------------ planted signal
def _signal(seqs: dict[str, list[str]], items: dict, users: dict) -> dict[str, float]:
    n_colours = len(COLOURS)
    colour_match = np.mean([np.mean([items[i]["colour"] == users[u]["colour"] for i in s]) for u, s in seqs.items()])
    last = [s[-1] for s in seqs.values()]
    counts = Counter(i for s in seqs.values() for i in s[:-1])
    top = {i for i, _ in counts.most_common(max(1, len(items) // 10))}
    hit_pop, hit_taste = [], []
    for u, s in seqs.items():
        seen, t = set(s[:-1]), users[u]
        cand = [i for i in items if i not in seen]
        pop_rank = sorted(cand, key=lambda i: -counts[i])[:10]
        taste = {i: 2 * (items[i]["colour"] == t["colour"]) + (items[i]["shape"] == t["shape"]) + counts[i] / 1e4
                 for i in cand}
        hit_pop.append(s[-1] in pop_rank)
        hit_taste.append(s[-1] in sorted(cand, key=lambda i: -taste[i])[:10])
    return {"colour_over_chance": colour_match * n_colours, "top10pct_cover": np.mean([i in top for i in last]),
            "hr_pop": np.mean(hit_pop), "hr_taste": np.mean(hit_taste)}


def test_planted_taste_beats_popularity(medium):
    truth = json.loads((medium / "truth.json").read_text())
    seqs = _amazon_sequences(medium)
    pog = {}
    for line in (medium / "pog" / "user_data.txt").read_text().splitlines():
        user_id, clicks, _ = line.split(",")
        pog[user_id] = clicks.split(";")
    for name, s in (("amazon", seqs), ("pog", pog)):
        sig = _signal(s, truth[name]["items"], truth[name]["users"])
        assert sig["colour_over_chance"] > 2.0, (name, sig)  # taste colour far above the 1/6 chance
        assert sig["top10pct_cover"] < 0.4, (name, sig)  # popularity alone is not enough
        assert sig["hr_taste"] > 1.5 * sig["hr_pop"], (name, sig)  # a model that knows taste wins clearly


def test_ids_do_not_leak_and_reviews_follow_taste(medium):
    truth = json.loads((medium / "truth.json").read_text())
    seqs = _amazon_sequences(medium)
    # P5's first-appearance numbering makes the next item often max(history)+1; not here.
    leak = np.mean([int(s[-1]) == max(int(i) for i in s[:-1]) + 1 for s in seqs.values()])
    assert leak < 0.05
    items, users = truth["amazon"]["items"], truth["amazon"]["users"]
    asin2id = {a["asin"]: i for i, a in items.items()}
    raw2uid = {u["raw_id"]: uid for uid, u in users.items()}
    rev = pickle.loads((medium / "amazon" / "review_splits.pkl").read_bytes())
    match, other = [], []
    for r in (r for split in rev.values() for r in split):
        iid, uid = asin2id[r["asin"]], raw2uid[r["reviewerID"]]
        (match if items[iid]["colour"] == users[uid]["colour"] else other).append(r["overall"])
        assert items[iid]["colour"] in r["reviewText"]  # review text names the item's colour
    assert np.mean(match) > np.mean(other) + 1.0


def test_movielens_min_rating_keeps_taste(medium):
    truth = json.loads((medium / "truth.json").read_text())
    items, users = truth["movielens"]["items"], truth["movielens"]["users"]
    with open(medium / "movielens" / "ratings.csv", newline="") as f:
        ratings = list(csv.DictReader(f))
    liked = [r for r in ratings if float(r["rating"]) >= 4]
    rest = [r for r in ratings if float(r["rating"]) < 4]

    def match(rs):
        return np.mean([items[r["movieId"]]["colour"] == users[r["userId"]]["colour"] for r in rs])

    assert match(liked) > 0.6 and match(rest) < 0.3
    per_user = Counter(r["userId"] for r in liked)
    assert sum(n >= 5 for n in per_user.values()) >= 0.9 * len(users)


def test_pog_outfits_follow_taste(medium):
    truth = json.loads((medium / "truth.json").read_text())
    items, users = truth["pog"]["items"], truth["pog"]["users"]
    outfits = dict(line.split(",") for line in (medium / "pog" / "outfit_data.txt").read_text().splitlines())
    frac = []
    for line in (medium / "pog" / "user_data.txt").read_text().splitlines():
        user_id, _, outfit_id = line.split(",")
        frac.append(np.mean([items[i]["colour"] == users[user_id]["colour"] for i in outfits[outfit_id].split(";")]))
    assert np.mean(frac) > 2.0 / len(COLOURS)


# -------------------------------------------------------------------------------------------- reruns
def test_rerun_is_a_noop_and_guards_other_folders(small, tmp_path):
    stamps = {p: p.stat().st_mtime_ns for p in small.rglob("*") if p.is_file()}
    assert generate_demo(small, **SMALL)["amazon"] == small / "amazon"
    assert {p: p.stat().st_mtime_ns for p in small.rglob("*") if p.is_file()} == stamps

    out = tmp_path / "demo"
    generate_demo(out, **TINY)
    with pytest.raises(FileExistsError, match="other arguments"):
        generate_demo(out, seed=3, **TINY)
    generate_demo(out, seed=3, overwrite=True, **TINY)
    assert json.loads((out / "_DONE").read_text())["seed"] == 3

    foreign = tmp_path / "foreign"
    (foreign / "amazon").mkdir(parents=True)
    (foreign / "amazon" / "sequential_data.txt").write_text("1 2 3 4 5 6\n")
    with pytest.raises(FileExistsError, match="not written by"):
        generate_demo(foreign, **TINY)
    assert (foreign / "amazon" / "sequential_data.txt").read_text() == "1 2 3 4 5 6\n"


def test_interrupted_run_is_cleaned_and_rewritten(tmp_path):
    out = tmp_path / "demo"
    generate_demo(out, **TINY)
    reference = _files(out)
    (out / "_DONE").unlink()  # as if killed before the end
    (out / ".demo_in_progress").write_text("{}")
    (out / "amazon" / "stale.txt").write_text("left over")
    (out / "pog" / "item_data.txt").write_text("half a file")
    generate_demo(out, **TINY)
    assert not (out / "amazon" / "stale.txt").exists() and not (out / ".demo_in_progress").exists()
    assert _files(out) == reference


def test_rejects_sizes_too_small(tmp_path):
    with pytest.raises(ValueError, match="n_items"):
        generate_demo(tmp_path, n_items=5)
