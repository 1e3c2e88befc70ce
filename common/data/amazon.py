"""Reader for the P5/VIP5 Amazon folder layout (beauty, toys, sports, clothing).

Layout (as released with P5/VIP5), all in one folder:
    sequential_data.txt   required: ``uid iid1 ... iidn`` per line, oldest first
    datamaps.json         user2id / item2id / id2user / id2item (raw Amazon ids <-> file ids)
    user_id2name.pkl      uid -> reviewerName
    meta.json.gz          one Python dict literal per line (asin, title, description, categories, imUrl, ...)
    item2img_dict.pkl     ASIN -> image URL or path relative to the folder
    images/<ASIN>.png|jpg local item images (preferred over remote URLs)
    exp_splits.pkl        train/val/test -> review dicts with explanation and feature
    negative_samples.txt  ``uid neg1 ... neg99`` per line

Every optional file that is absent is recorded in ``Corpus.missing`` with what it disables; with
sequential_data.txt alone the corpus is complete for the sequential and direct tasks.
Pickles are read with an allow-list unpickler (plain containers, numbers, strings, numpy scalars/arrays)
and meta lines with ``ast.literal_eval``: neither can run code from the data files. A file that is present
but unreadable (bytes that are not UTF-8, a malformed line, bad JSON, a corrupt pickle) raises DataError
naming the file and, for text files, the line (``common.data._source``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from common.data._source import (
    is_url,
    load_pickle,
    local_images,
    parse_record,
    read_json,
    require_folder,
    text_lines,
)
from common.data.corpus import Corpus, DataError, Item, Review, User

SEQUENTIAL = "sequential_data.txt"
OPTIONAL_FILES = (
    "datamaps.json",
    "user_id2name.pkl",
    "meta.json.gz",
    "item2img_dict.pkl",
    "images/",
    "exp_splits.pkl",
    "negative_samples.txt",
)
# Folder name -> Amazon 2014 category name in the raw file names.
CATEGORIES = {
    "beauty": "Beauty",
    "toys": "Toys_and_Games",
    "sports": "Sports_and_Outdoors",
    "clothing": "Clothing_Shoes_and_Jewelry",
}


def _how_to_get(root: Path, name: str) -> str:
    cat = CATEGORIES.get(name.lower(), "<Category>")
    return (
        f"Download the P5/VIP5 preprocessed data (Google Drive link in the VIP5 README, "
        f"https://github.com/jeykigung/VIP5) and put the files of its {name!r} folder into {root}/, "
        f"or build them from the raw Amazon 2014 files with: vip5-data prepare-amazon "
        f"reviews_{cat}_5.json.gz meta_{cat}.json.gz {root}. "
        f"Expected files: {SEQUENTIAL} (required); {', '.join(OPTIONAL_FILES)} (optional)."
    )


def read_sequences(path: Path) -> dict[str, list[str]]:
    """Parse ``uid iid1 ... iidn`` lines; ids must be integers, each uid once, at least one item."""
    sequences: dict[str, list[str]] = {}
    for lineno, line in text_lines(path):
        toks = line.split()
        if not toks:
            continue
        if len(toks) < 2:
            raise DataError(f"{path}:{lineno}: expected 'uid iid1 ... iidn', got {line.strip()!r}")
        bad = next((t for t in toks if not t.isdigit()), None)
        if bad is not None:
            raise DataError(f"{path}:{lineno}: non-integer id {bad!r}")
        if toks[0] in sequences:
            raise DataError(f"{path}:{lineno}: duplicate user id {toks[0]!r}")
        sequences[toks[0]] = toks[1:]
    return sequences


def _read_datamaps(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Return (id2user, id2item): file id -> raw id."""
    maps = read_json(path)
    if not isinstance(maps, dict):
        raise DataError(f"{path}: expected a JSON object with user2id/item2id/id2user/id2item")

    def inverse(direct: str, inv: str) -> dict[str, str]:
        if isinstance(maps.get(direct), dict):
            return {str(k): str(v) for k, v in maps[direct].items()}
        if isinstance(maps.get(inv), dict):
            return {str(v): str(k) for k, v in maps[inv].items()}
        raise DataError(f"{path}: needs {direct!r} or {inv!r}")

    return inverse("id2user", "user2id"), inverse("id2item", "item2id")


def _flatten_categories(cats: Any) -> list[str]:
    out: list[str] = []
    for c in cats if isinstance(cats, list) else [cats]:
        for leaf in c if isinstance(c, list) else [c]:
            if isinstance(leaf, str) and leaf and leaf not in out:
                out.append(leaf)
    return out


_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def _read_meta(path: Path, asin2item: dict[str, Item]) -> None:
    """Fill title/description/categories (and imUrl as a last-resort image) of the items in ``asin2item``."""
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        m = _ASIN_RE.search(line)
        if m and m.group(1) not in asin2item:
            continue  # the raw meta file covers the whole category; skip rows we do not need unparsed
        row = parse_record(path, lineno, line)
        if "asin" not in row:
            raise DataError(f"{path}:{lineno}: expected a dict with an 'asin' key")
        item = asin2item.get(str(row["asin"]))
        if item is None:
            continue
        if isinstance(row.get("title"), str) and row["title"].strip():
            item.title = row["title"].strip()
        if isinstance(row.get("description"), str) and row["description"].strip():
            item.description = row["description"].strip()
        item.categories = _flatten_categories(row.get("categories", []))
        if item.image is None and isinstance(row.get("imUrl"), str) and row["imUrl"]:
            item.image = row["imUrl"]


def _review(path: Path, split: str, n: int, row: Any, user2id: dict[str, str], item2id: dict[str, str]) -> Review:
    where = f"{path}: {split}[{n}]"
    if not isinstance(row, dict) or "reviewerID" not in row or "asin" not in row:
        raise DataError(f"{where}: expected a review dict with 'reviewerID' and 'asin'")
    uid, iid = user2id.get(str(row["reviewerID"])), item2id.get(str(row["asin"]))
    if uid is None:
        raise DataError(f"{where}: unknown reviewer {row['reviewerID']!r} (not in datamaps.json)")
    if iid is None:
        raise DataError(f"{where}: unknown item {row['asin']!r} (not in datamaps.json)")

    def text(key: str) -> str | None:
        v = row.get(key)
        return v if isinstance(v, str) and v else None

    try:
        rating = float(row["overall"]) if row.get("overall") is not None else None
        ts = int(row["unixReviewTime"]) if row.get("unixReviewTime") is not None else None
    except (TypeError, ValueError):
        raise DataError(f"{where}: overall/unixReviewTime not numeric: {row.get('overall')!r}, "
                        f"{row.get('unixReviewTime')!r}") from None
    return Review(
        user_id=uid,
        item_id=iid,
        rating=rating,
        text=text("reviewText"),
        summary=text("summary"),
        explanation=text("explanation"),
        feature=text("feature"),
        timestamp=ts,
        user_name=text("reviewerName"),
    )


def _read_exp_splits(path: Path, user2id: dict[str, str], item2id: dict[str, str]):
    splits = load_pickle(path)
    if not isinstance(splits, dict) or not any(k in splits for k in ("train", "val", "test")):
        raise DataError(f"{path}: expected a dict with 'train', 'val' and 'test' lists of reviews")
    reviews: list[Review] = []
    index: dict[str, list[int]] = {}
    for split in ("train", "val", "test"):
        rows = splits.get(split, [])
        if not isinstance(rows, list):
            raise DataError(f"{path}: {split!r} is a {type(rows).__name__}, expected a list of review dicts")
        index[split] = []
        for n, row in enumerate(rows):
            index[split].append(len(reviews))
            reviews.append(_review(path, split, n, row, user2id, item2id))
    return reviews, index


def read_negatives(path: Path, users: dict, items: dict) -> dict[str, list[str]]:
    """Parse ``uid neg1 ... negk`` lines; unknown users or items raise DataError with the line number."""
    negatives: dict[str, list[str]] = {}
    for lineno, line in text_lines(path):
        toks = line.split()
        if not toks:
            continue
        if len(toks) < 2:
            raise DataError(f"{path}:{lineno}: expected 'uid neg1 ... negk', got {line.strip()!r}")
        uid, negs = toks[0], toks[1:]
        if uid not in users:
            raise DataError(f"{path}:{lineno}: unknown user {uid!r}")
        if uid in negatives:
            raise DataError(f"{path}:{lineno}: duplicate user id {uid!r}")
        bad = next((i for i in negs if i not in items), None)
        if bad is not None:
            raise DataError(f"{path}:{lineno}: unknown item {bad!r}")
        negatives[uid] = negs
    return negatives


def _item_order(ids: set[str]) -> list[str]:
    return sorted(ids, key=lambda i: (int(i), i)) if all(i.isdigit() for i in ids) else sorted(ids)


def read_amazon(root: Path, name: str | None = None) -> Corpus:
    """Read a P5/VIP5 Amazon folder into a Corpus.

    Args:
        root: the folder holding sequential_data.txt and the optional files.
        name: data set name (prompt prefix, cache key); defaults to the folder name.

    Raises:
        DataError: missing folder or sequential_data.txt (the message says what to download and where),
            a malformed line (file and line number), or an unknown user/item in reviews or negatives.
    """
    root = Path(root)
    name = name or root.name
    require_folder(root, [SEQUENTIAL], _how_to_get(root, name))
    sequences = read_sequences(root / SEQUENTIAL)
    missing: dict[str, str] = {}

    id2user: dict[str, str] = {}
    id2item: dict[str, str] = {}
    if (root / "datamaps.json").is_file():
        id2user, id2item = _read_datamaps(root / "datamaps.json")
    else:
        missing["datamaps.json"] = "raw Amazon ids (ASINs), so item metadata, images and explanations cannot be mapped"

    item_ids = {i for seq in sequences.values() for i in seq} | set(id2item)
    items = {iid: Item(iid, raw_id=id2item.get(iid)) for iid in _item_order(item_ids)}
    users = {uid: User(uid, raw_id=id2user.get(uid)) for uid in sequences}
    # Metadata and images are keyed by ASIN; without datamaps the file id is the only key we have.
    key2item = {(it.raw_id or it.item_id): it for it in items.values()}

    if (root / "user_id2name.pkl").is_file():
        names = load_pickle(root / "user_id2name.pkl")
        if not isinstance(names, dict):
            raise DataError(f"{root / 'user_id2name.pkl'}: expected a dict uid -> name")
        for uid, user_name in names.items():
            if str(uid) in users and isinstance(user_name, str) and user_name:
                users[str(uid)].name = user_name
    else:
        missing["user_id2name.pkl"] = "user names"

    if not (root / "meta.json.gz").is_file():
        missing["meta.json.gz"] = "item titles, descriptions and categories"
    elif not id2item:
        missing["meta.json.gz"] = "item titles, descriptions and categories (present, but datamaps.json is missing)"
    else:
        _read_meta(root / "meta.json.gz", key2item)

    _attach_images(root, key2item, missing)

    reviews: list[Review] = []
    review_split = None
    if not (root / "exp_splits.pkl").is_file():
        missing["exp_splits.pkl"] = "explanations (explanation generation tasks)"
    elif not id2item:
        missing["exp_splits.pkl"] = "explanations (present, but datamaps.json is missing to map its ids)"
    else:
        user2id = {raw: uid for uid, raw in id2user.items()}
        item2id = {raw: iid for iid, raw in id2item.items()}
        reviews, review_split = _read_exp_splits(root / "exp_splits.pkl", user2id, item2id)
        if "user_id2name.pkl" in missing:  # P5 built user_id2name from these reviews: last name seen wins
            for r in reviews:
                if r.user_name:
                    users[r.user_id].name = r.user_name

    negatives = None
    if (root / "negative_samples.txt").is_file():
        negatives = read_negatives(root / "negative_samples.txt", users, items)
    else:
        missing["negative_samples.txt"] = "fixed candidate negatives from the source (sampled with a seed instead)"

    corpus = Corpus(name, root, items, users, sequences, reviews, review_split, negatives, missing)
    corpus.validate()
    return corpus


def _attach_images(root: Path, key2item: dict[str, Item], missing: dict[str, str]) -> None:
    """Images: a local images/<ASIN> file beats a remote URL; item2img_dict beats the meta imUrl."""
    local = local_images(root / "images")
    if not (root / "images").is_dir():
        missing["images/"] = "local item images (remote URLs are kept where known)"
    refs: dict[str, str] = {}
    if (root / "item2img_dict.pkl").is_file():
        raw = load_pickle(root / "item2img_dict.pkl")
        if not isinstance(raw, dict):
            raise DataError(f"{root / 'item2img_dict.pkl'}: expected a dict ASIN -> image URL or path")
        refs = {str(k): str(v) for k, v in raw.items() if v}
    else:
        missing["item2img_dict.pkl"] = "image references" + (" (images/ folder used instead)" if local else "")
    for key, item in key2item.items():
        ref = refs.get(key)
        if ref is not None and not is_url(ref) and (Path(ref).is_absolute() or (root / ref).exists()):
            item.image = ref
        elif key in local:
            item.image = local[key]
        elif ref is not None:
            item.image = ref  # remote URL (or a dangling path, kept so the error names it later)
