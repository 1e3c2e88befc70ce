"""Raw Amazon-2014 files -> the P5/VIP5 folder layout, as P5's preprocessing notebook built it.

Follows jeykigung/P5 ``preprocess/data_preprocess_amazon.ipynb`` step by step, with the
same random calls in the same order, so seed 2022 on the same input files should give P5's files (checked against
a transcription of the notebook's code on synthetic data; the released files were not available to compare):

1. reviews ``reviews_<Category>_5.json.gz`` -> per-user item lists sorted (stably) by ``unixReviewTime``;
2. iterative user/item 5-core filter;
3. user list shuffled (``random.shuffle``), users numbered 1..U in that order, items numbered by first appearance
   while walking each user's *full* sequence -- P5's id map, leak included (leak-free re-indexing is done
   later by ``common.data.indexing``);
4. ``negative_samples.txt``: 99 items per user, ``np.random.choice(all_items, 99, replace=False)`` rounds that
   reject the user's items;
5. explanations: one random Sentires (feature, adjective, sentence, score) tuple per review;
6. ``review_splits.pkl``: one random review per user and per item into train, train filled to 80 %, 10 % val,
   rest test (random, not temporal); ``exp_splits.pkl`` keeps the reviews that have an explanation.

Deliberate differences from the notebook (none changes a result on the released, already 5-core files):
- negatives never repeat an item: the notebook compared int draws with its list of *str* samples, so a second
  sampling round could add duplicates. The random calls are unchanged.
- a user whose items are all filtered away is dropped (the notebook kept such users with an empty line).
- reviews of users/items removed by the filter are left out (the notebook assumed there were none); split
  indices index the kept reviews in file order.
- ``meta.json.gz`` and ``item2img_dict.pkl`` (VIP5's additions, not built by the P5 notebook) are written too.
- meta lines are read with ``ast.literal_eval`` (the notebook used ``eval``) and the Sentires pickle with the
  readers' allow-list unpickler, so neither can run code; an undecodable or malformed line raises DataError
  naming the file and the line.

Every file is written into a temporary folder inside ``out`` and moved into place when all are complete; a
``_DONE`` marker (the report plus the settings) is written last, so an interrupted run is simply redone.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.data._source import load_pickle, parse_record, read_json, text_lines
from common.data.corpus import DataError
from common.io import atomic_open, write_bytes, write_json, write_text

log = logging.getLogger(__name__)

DONE = "_DONE"
_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


# -- reading --------------------------------------------------------------------------------------
def _records(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, record) of every non-empty line; bad bytes or records name the file and line."""
    for n, line in text_lines(path):
        if line.strip():
            yield n, parse_record(path, n, line)


def read_reviews(path: Path) -> list[dict]:
    """All review records of ``reviews_<Category>_5.json.gz`` in file order."""
    out = []
    for n, r in _records(path):
        for key in ("reviewerID", "asin", "unixReviewTime"):
            if key not in r:
                raise DataError(f"{path}:{n}: review has no {key!r}")
        out.append(r)
    if not out:
        raise DataError(f"{path}: no reviews")
    return out


def read_meta(path: Path, asins: set[str]) -> dict[str, dict]:
    """Meta rows of the given ASINs, in file order (a repeated ASIN keeps its first position, last row wins)."""
    out: dict[str, dict] = {}
    for n, line in text_lines(path):
        m = _ASIN.search(line)
        if not line.strip() or (m is not None and m.group(1) not in asins):
            continue  # skip parsing the (many) rows of items outside the 5-core
        row = parse_record(path, n, line)
        if row.get("asin") in asins:
            out[row["asin"]] = row
    return out


# -- sequences, k-core, id map (notebook cells 4-6) -------------------------------------------------
def user_sequences(reviews: list[dict]) -> dict[str, list[str]]:
    """User -> items sorted by review time (stable: ties keep file order); users in order of first review."""
    seq: dict[str, list[tuple[str, int]]] = {}
    for r in reviews:
        seq.setdefault(r["reviewerID"], []).append((r["asin"], int(r["unixReviewTime"])))
    return {u: [i for i, _ in sorted(it, key=lambda x: x[1])] for u, it in seq.items()}


def filter_kcore(user_items: dict[str, list[str]], user_core: int = 5, item_core: int = 5) -> dict[str, list[str]]:
    """Iteratively drop users with < user_core and items with < item_core interactions (repeats count).

    The result is the unique maximal k-core, so it equals the notebook's loop; order is preserved.
    """
    user_items = {u: list(items) for u, items in user_items.items()}
    while True:
        item_count: dict[str, int] = defaultdict(int)
        for items in user_items.values():
            for i in items:
                item_count[i] += 1
        bad_users = [u for u, items in user_items.items() if len(items) < user_core]
        bad_items = {i for i, c in item_count.items() if c < item_core}
        if not bad_users and not bad_items:
            return user_items
        for u in bad_users:
            del user_items[u]
        if bad_items:
            user_items = {u: [i for i in items if i not in bad_items] for u, items in user_items.items()}


def id_map(user_items: dict[str, list[str]], rng: random.Random) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """P5's id map: shuffled users numbered 1..U; items numbered by first appearance along each full sequence."""
    users = list(user_items)
    rng.shuffle(users)
    user2id: dict[str, str] = {}
    item2id: dict[str, str] = {}
    sequences: dict[str, list[str]] = {}
    for user in users:
        user2id[user] = str(len(user2id) + 1)
        iids = []
        for item in user_items[user]:
            if item not in item2id:
                item2id[item] = str(len(item2id) + 1)
            iids.append(item2id[item])
        sequences[user2id[user]] = iids
    datamaps = {
        "user2id": user2id,
        "item2id": item2id,
        "id2user": {v: k for k, v in user2id.items()},
        "id2item": {v: k for k, v in item2id.items()},
    }
    return sequences, datamaps


def sample_negatives(
    sequences: dict[str, list[str]], n_items: int, n: int, rng: np.random.RandomState
) -> dict[str, list[str]]:
    """``n`` uniform negatives per user (notebook's sample_test_data, sample_type='random'), without repeats."""
    all_items = np.arange(1, n_items + 1)  # the notebook's item_count keys: 1..I in first-appearance order
    out: dict[str, list[str]] = {}
    for uid, seq in sequences.items():
        seen = {int(i) for i in seq}
        if n_items - len(seen) < n:
            raise DataError(
                f"user {uid} has only {n_items - len(seen)} items it never touched, fewer than n_negatives={n}; "
                "pass a smaller n_negatives"
            )
        picked: list[int] = []
        taken: set[int] = set()
        while len(picked) < n:
            for item in rng.choice(all_items, n, replace=False).tolist():
                if item not in seen and item not in taken:
                    picked.append(item)
                    taken.add(item)
        out[uid] = [str(i) for i in picked[:n]]
    return out


def item_attributes(meta: dict[str, dict], datamaps: dict) -> dict[str, list[int]]:
    """Brand and sub-categories as attribute ids (notebook's get_attribute_Amazon with attribute_core=0)."""
    attribute2id: dict[str, int] = {}
    attributeid2num: dict[int, int] = defaultdict(int)
    item2attributes: dict[str, list[int]] = {}
    for asin, info in meta.items():
        names = [info["brand"]] if "brand" in info else []
        names += [c for cates in info.get("categories") or [] for c in cates[1:]]  # top category dropped
        ids = item2attributes.setdefault(datamaps["item2id"][asin], [])
        for name in names:
            if name not in attribute2id:
                attribute2id[name] = len(attribute2id) + 1
            attributeid2num[attribute2id[name]] += 1
            ids.append(attribute2id[name])
    datamaps["attribute2id"] = attribute2id
    datamaps["id2attribute"] = {v: k for k, v in attribute2id.items()}
    datamaps["attributeid2num"] = dict(attributeid2num)
    return item2attributes


# -- explanations and the review split (notebook cells 9-28) ---------------------------------------
def _sentires_key(rec: dict) -> tuple[Any, Any]:
    return rec.get("user", rec.get("reviewerID")), rec.get("item", rec.get("asin"))


def attach_explanations(all_reviews: list[dict], kept: list[int], sentires: Path, rng: random.Random) -> int:
    """Add ``explanation``/``feature`` from one random Sentires tuple to each kept review; return how many got one.

    P5 read ``reviews_<Category>.pickle`` as a list aligned with the review file (keys ``user``/``item``,
    ``sentence`` = [(feature, adjective, sentence, score), ...]). A list of another length is matched by
    (user, item) instead; ``reviewerID``/``asin`` keys are accepted too. The pickle is read as plain data only
    (:func:`common.data._source.load_pickle`).
    """
    raw = load_pickle(sentires)
    if not isinstance(raw, list):
        raise DataError(f"{sentires}: expected a list of dicts (Sentires output), got {type(raw).__name__}")
    if len(raw) == len(all_reviews):
        lookup = None
        for n in kept:
            if _sentires_key(raw[n]) != (all_reviews[n]["reviewerID"], all_reviews[n]["asin"]):
                raise DataError(
                    f"{sentires}: entry #{n} is for {_sentires_key(raw[n])}, but review #{n} is "
                    f"{(all_reviews[n]['reviewerID'], all_reviews[n]['asin'])}; the pickle must follow the review file"
                )
    else:
        lookup = {}
        for rec in raw:
            lookup.setdefault(_sentires_key(rec), rec)
    count = 0
    for n in kept:
        rev = all_reviews[n]
        exp = raw[n] if lookup is None else lookup.get((rev["reviewerID"], rev["asin"]), {})
        sentences = exp.get("sentence")
        if sentences:
            chosen = sentences[rng.randint(0, len(sentences) - 1)]
            rev["explanation"] = chosen[2]
            rev["feature"] = chosen[0]
            count += 1
    return count


def split_reviews(reviews: list[dict], rng: random.Random) -> dict[str, list[int]]:
    """P5's 8:1:1 review split. Set operations mirror the notebook so the index order matches it exactly."""
    population = len(reviews)
    user_mention: dict[str, list[int]] = {}
    item_mention: dict[str, list[int]] = {}
    for i, r in enumerate(reviews):
        user_mention.setdefault(r["reviewerID"], []).append(i)
        item_mention.setdefault(r["asin"], []).append(i)
    train_indices: list[int] = []
    in_train: set[int] = set()
    for mention in (user_mention, item_mention):
        for cand in mention.values():
            pick = cand[rng.randint(0, len(cand) - 1)]
            if pick not in in_train:
                train_indices.append(pick)
                in_train.add(pick)
    remaining = list(set(range(population)).difference(set(train_indices)))
    n_fill = max(0, min(round(population * 0.8) - len(train_indices), len(remaining)))
    sub = rng.sample(range(len(remaining)), n_fill)
    final_train = list(set(np.array(remaining, dtype=np.int64)[sub]).union(set(train_indices)))
    val_test = list(set(range(population)).difference(set(final_train)))
    sub_sub = rng.sample(range(len(val_test)), min(round(population * 0.1), len(val_test)))
    val = list(np.array(val_test, dtype=np.int64)[sub_sub])
    test = list(set(val_test).difference(set(val)))
    return {"train": [int(i) for i in final_train], "val": [int(i) for i in val], "test": [int(i) for i in test]}


# -- writing ------------------------------------------------------------------------------------------
def _write_pickle(path: Path, obj: Any) -> None:
    write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _write_meta(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:  # mtime=0: byte-identical reruns
            for row in rows:
                gz.write((repr(row) + "\n").encode("utf-8"))


def _settings(reviews: Path, meta: Path, sentires: Path | None, **kw: Any) -> dict:
    names = {"reviews": Path(reviews).name, "meta": Path(meta).name, "sentires": sentires and Path(sentires).name}
    return {**names, **kw}


def prepare_amazon(
    reviews: Path,
    meta: Path,
    out: Path,
    seed: int = 2022,
    sentires: Path | None = None,
    n_negatives: int = 99,
    overwrite: bool = False,
    user_core: int = 5,
    item_core: int = 5,
) -> dict:
    """Build a P5-layout folder from raw Amazon-2014 files.

    Args:
        reviews: ``reviews_<Category>_5.json.gz`` (one JSON object per line; gzip optional).
        meta: ``meta_<Category>.json.gz`` (one Python dict literal per line; parsed with ``ast.literal_eval``).
        out: output folder; gets sequential_data.txt, negative_samples.txt, datamaps.json, item2attributes.json,
            user_id2name.pkl, meta.json.gz, item2img_dict.pkl, review_splits.pkl and, with ``sentires``,
            exp_splits.pkl.
        seed: seeds ``random`` (user shuffle, explanation choice, review split) and numpy (negatives), as P5.
        sentires: optional Sentires ``reviews_<Category>.pickle`` (the PETER/P5 explanation tuples).
        n_negatives: negatives per user in negative_samples.txt.
        overwrite: rebuild a finished folder (otherwise a finished folder is returned as is).
        user_core: minimum interactions per user.
        item_core: minimum interactions per item.

    Returns:
        A report: users, items, interactions, reviews, reviews_with_explanation, split sizes, items without
        meta or image URL. It is also stored in ``out/_DONE``.

    Raises:
        DataError: unreadable input, a Sentires pickle that does not follow the reviews, too few items for
            ``n_negatives``, or nothing left after the k-core filter.
        FileExistsError: ``out`` was finished with other settings and ``overwrite`` is False.
    """
    reviews, meta, out = Path(reviews), Path(meta), Path(out)
    sentires = Path(sentires) if sentires is not None else None
    settings = _settings(
        reviews, meta, sentires, seed=seed, n_negatives=n_negatives, user_core=user_core, item_core=item_core
    )
    done = out / DONE
    if done.exists() and not overwrite:
        finished = read_json(done)
        if finished.get("settings") != settings:
            raise FileExistsError(
                f"{out} was prepared with {finished.get('settings')}, not {settings}; pass overwrite=True to rebuild"
            )
        log.info("%s is already prepared (%s); nothing to do", out, done)
        return finished["report"]
    for path in (reviews, meta) + ((sentires,) if sentires else ()):
        if not path.is_file():
            raise DataError(f"{path} does not exist")
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be >= 1, got {n_negatives}")

    py_rng = random.Random(seed)  # same stream as the notebook's random.seed(2022)
    np_rng = np.random.RandomState(seed)  # same stream as np.random.seed(2022)

    all_reviews = read_reviews(reviews)
    user_items = filter_kcore(user_sequences(all_reviews), user_core, item_core)
    if not user_items:
        raise DataError(f"{reviews}: no user is left after the {user_core}/{item_core}-core filter")
    sequences, datamaps = id_map(user_items, py_rng)
    n_items = len(datamaps["item2id"])
    negatives = sample_negatives(sequences, n_items, n_negatives, np_rng)

    meta_rows = read_meta(meta, set(datamaps["item2id"]))
    item2attributes = item_attributes(meta_rows, datamaps)
    item2img = {a: r["imUrl"] for a, r in meta_rows.items() if r.get("imUrl")}

    kept = [
        n
        for n, r in enumerate(all_reviews)
        if r["reviewerID"] in datamaps["user2id"] and r["asin"] in datamaps["item2id"]
    ]
    n_exp = attach_explanations(all_reviews, kept, sentires, py_rng) if sentires else 0
    review_data = [all_reviews[n] for n in kept]
    user_id2name = {
        datamaps["user2id"][r["reviewerID"]]: r["reviewerName"] if "reviewerName" in r else r["reviewerID"]
        for r in review_data  # last review seen wins, as in the notebook
    }
    idx = split_reviews(review_data, py_rng)
    review_splits = {k: [review_data[i] for i in v] for k, v in idx.items()}
    review_splits.update({f"{k}_indices": v for k, v in idx.items()})
    exp_splits = {k: [review_data[i] for i in v if "explanation" in review_data[i]] for k, v in idx.items()}

    report = {
        "users": len(sequences),
        "items": n_items,
        "interactions": sum(len(s) for s in sequences.values()),
        "reviews": len(review_data),
        "reviews_with_explanation": n_exp,
        "review_split": {k: len(v) for k, v in idx.items()},
        "exp_split": {k: len(v) for k, v in exp_splits.items()} if sentires else None,
        "items_without_meta": n_items - len(meta_rows),
        "items_without_image_url": n_items - len(item2img),
    }

    out.mkdir(parents=True, exist_ok=True)
    if done.exists():
        done.unlink()  # overwrite: the folder is unfinished from here on
    for stale in out.glob(".prepare-*"):
        shutil.rmtree(stale, ignore_errors=True)  # temp folders of interrupted runs
    tmp = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    try:
        write_text(tmp / "sequential_data.txt", "".join(f"{u} {' '.join(s)}\n" for u, s in sequences.items()))
        write_text(tmp / "negative_samples.txt", "".join(f"{u} {' '.join(s)}\n" for u, s in negatives.items()))
        write_text(tmp / "datamaps.json", json.dumps(datamaps))
        write_text(tmp / "item2attributes.json", json.dumps(item2attributes))
        _write_pickle(tmp / "user_id2name.pkl", user_id2name)
        _write_meta(tmp / "meta.json.gz", list(meta_rows.values()))
        _write_pickle(tmp / "item2img_dict.pkl", item2img)
        _write_pickle(tmp / "review_splits.pkl", review_splits)
        if sentires:
            _write_pickle(tmp / "exp_splits.pkl", exp_splits)
        elif (out / "exp_splits.pkl").exists():
            (out / "exp_splits.pkl").unlink()  # stale from an earlier run with explanations
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(done, {"report": report, "settings": settings})
    log.info("prepared %s: %s", out, report)
    return report
