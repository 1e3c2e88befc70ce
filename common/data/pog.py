"""Reader for the raw POG (Alibaba iFashion) files.

    user_data.txt   required: ``user_id,item_id;item_id;...,outfit_id`` (click history, oldest first)
    item_data.txt   required: ``item_id,cate_id,pic_url,title`` (the title may itself contain commas)
    outfit_data.txt optional: ``outfit_id,item_id;...``; not read (the corpus has no outfit field)
    images/<item_id>.png|jpg  optional local images, preferred over pic_url

A user's sequence is the click history in file order with consecutive repeats collapsed. Only items that
some user clicked are kept in the catalogue (the raw item file lists millions of items).
"""

from __future__ import annotations

from pathlib import Path

from common.data._source import local_images, require_folder, text_lines
from common.data.corpus import Corpus, DataError, Item, User

USER_DATA = "user_data.txt"
ITEM_DATA = "item_data.txt"
HOW_TO_GET = (
    "Download the POG (Alibaba iFashion) data set (see https://github.com/wenyuer/POG) and put "
    f"{USER_DATA} and {ITEM_DATA} (outfit_data.txt optional) into that folder; item images go into "
    "images/<item_id>.png|jpg (otherwise the pic_url of item_data.txt is used)."
)


def normalise_url(url: str) -> str | None:
    """POG pic_urls often lack a scheme (``//img.alicdn.com/...``): prefix ``http:``."""
    url = url.strip()
    if not url:
        return None
    if "://" in url:
        return url
    return "http:" + url if url.startswith("//") else "http://" + url


def _read_users(path: Path, history_len: int | None) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Return (sequences, item id -> first line that names it)."""
    sequences: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for lineno, line in text_lines(path):
        line = line.strip()
        if not line:
            continue
        fields = line.split(",")
        if len(fields) != 3 or not fields[0]:
            raise DataError(f"{path}:{lineno}: expected 'user_id,item;item;...,outfit_id', got {line!r}")
        clicks = [i.strip() for i in fields[1].split(";")]
        seq = sequences.setdefault(fields[0], [])  # a user on several lines: histories are concatenated
        for iid in clicks:
            if iid and (not seq or seq[-1] != iid):
                seq.append(iid)
                first_line.setdefault(iid, lineno)
    if history_len is not None:
        sequences = {u: s[-history_len:] for u, s in sequences.items()}
    return sequences, first_line


def read_pog(root: Path, history_len: int | None = None, name: str = "pog") -> Corpus:
    """Read POG click logs and item info into a Corpus.

    Args:
        root: folder with user_data.txt and item_data.txt (and optionally images/).
        history_len: keep only each user's most recent ``history_len`` clicks (None = all).
        name: data set name (prompt prefix, cache key).

    Raises:
        DataError: missing folder/files (says what to download), a malformed line (file:line), or a click on
            an item absent from item_data.txt.
    """
    root = Path(root)
    require_folder(root, [USER_DATA, ITEM_DATA], HOW_TO_GET)
    if history_len is not None and history_len < 1:
        raise ValueError(f"history_len must be >= 1 or None, got {history_len}")
    sequences, first_line = _read_users(root / USER_DATA, history_len)
    clicked = {i for seq in sequences.values() for i in seq}
    local = local_images(root / "images")
    missing: dict[str, str] = {}
    if not (root / "images").is_dir():
        missing["images/"] = "local item images (remote pic_url references are used; fetch them for offline runs)"

    items: dict[str, Item] = {}
    path = root / ITEM_DATA
    for lineno, line in text_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split(",", 3)
        if len(fields) != 4 or not fields[0].strip():
            raise DataError(f"{path}:{lineno}: expected 'item_id,cate_id,pic_url,title', got {line!r}")
        iid, cate, url, title = (x.strip() for x in fields)
        if iid in items:
            raise DataError(f"{path}:{lineno}: duplicate item id {iid!r}")
        if iid not in clicked:
            continue
        items[iid] = Item(
            iid,
            title=title or None,
            categories=[cate] if cate else [],
            image=local.get(iid) or normalise_url(url),
        )
    unknown = sorted(clicked - set(items), key=first_line.__getitem__)
    if unknown:
        raise DataError(
            f"{root / USER_DATA}:{first_line[unknown[0]]}: item {unknown[0]!r} is not in {ITEM_DATA}"
            + (f" ({len(unknown) - 1} more unknown items)" if len(unknown) > 1 else "")
        )
    users = {uid: User(uid) for uid in sequences}
    corpus = Corpus(name, root, items, users, sequences, missing=missing)
    corpus.validate()
    return corpus
