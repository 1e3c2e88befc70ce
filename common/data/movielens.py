"""Reader for MovieLens (latest-small layout).

    ratings.csv   required: userId,movieId,rating,timestamp
    movies.csv    required: movieId,title,genres (title keeps its " (YYYY)"; genres pipe-separated)
    links.csv     optional: movieId,imdbId,tmdbId (tmdbId -> Item.raw_id, for poster downloads)
    posters/<movieId>.jpg|png  optional poster images

Sequences hold the ratings >= ``min_rating``. ``order="time"`` sorts them chronologically (the default: a
user's history then really precedes the target). ``order="rating_time"`` reproduces the MindSpore PMG order,
rating descending then timestamp descending, which is not chronological. Every rating of a catalogue movie
also becomes a text-less Review, so rating tasks see the low ratings too.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

from common.data._source import local_images, require_folder, text_lines
from common.data.corpus import Corpus, DataError, Item, Review, User

HOW_TO_GET = (
    "Download MovieLens latest-small (ml-latest-small.zip from https://grouplens.org/datasets/movielens/) and "
    "unpack ratings.csv, movies.csv and links.csv into that folder; posters go into posters/<movieId>.jpg|png."
)


def _rows(path: Path, columns: tuple[str, ...]):
    """Yield (line number, row dict) of a CSV with a header containing ``columns``.

    The line number is that of the row's last line (a quoted field may span lines).
    """
    reader = csv.DictReader(line for _, line in text_lines(path))
    try:
        absent = [c for c in columns if c not in (reader.fieldnames or [])]
        if absent:
            raise DataError(f"{path}:1: header lacks column(s) {absent}; found {reader.fieldnames}")
        for row in reader:
            if None in row or any(row[c] is None for c in columns):
                raise DataError(f"{path}:{reader.line_num}: expected columns {list(columns)}, got a malformed row")
            yield reader.line_num, row
    except csv.Error as e:  # e.g. an oversized field; DictReader.line_num lags behind on errors
        raise DataError(f"{path}:{reader.reader.line_num}: malformed CSV ({e})") from None


def _movies(root: Path, links: dict[str, str], posters: dict[str, str]) -> dict[str, Item]:
    items: dict[str, Item] = {}
    path = root / "movies.csv"
    for lineno, row in _rows(path, ("movieId", "title", "genres")):
        mid = row["movieId"].strip()
        if not mid.isdigit():
            raise DataError(f"{path}:{lineno}: movieId {mid!r} is not an integer")
        if mid in items:
            raise DataError(f"{path}:{lineno}: duplicate movieId {mid!r}")
        genres = [g for g in row["genres"].split("|") if g and g != "(no genres listed)"]
        items[mid] = Item(
            mid,
            title=row["title"].strip() or None,
            description=f"Genres: {', '.join(genres)}" if genres else None,
            categories=genres,
            image=posters.get(mid),
            raw_id=links.get(mid),
        )
    return items


def read_movielens(
    root: Path,
    min_rating: float = 4.0,
    order: Literal["time", "rating_time"] = "time",
    require_poster: bool = False,
    name: str = "movielens",
) -> Corpus:
    """Read MovieLens CSVs into a Corpus.

    Args:
        root: folder with ratings.csv and movies.csv (links.csv and posters/ optional).
        min_rating: ratings below this are not interactions (they stay in ``reviews``).
        order: "time" (chronological; default) or "rating_time" (MindSpore PMG: rating desc, timestamp desc).
        require_poster: keep only movies with a poster file (MindSpore PMG); needs posters/.
        name: data set name (prompt prefix, cache key).

    Raises:
        DataError: missing files (says what to download), malformed rows (file:line), ratings of unknown movies.
    """
    if order not in ("time", "rating_time"):
        raise ValueError(f"order must be 'time' or 'rating_time', got {order!r}")
    root = Path(root)
    require_folder(root, ["ratings.csv", "movies.csv"], HOW_TO_GET)
    missing: dict[str, str] = {}

    links: dict[str, str] = {}
    if (root / "links.csv").is_file():
        for _, row in _rows(root / "links.csv", ("movieId", "tmdbId")):
            if row["tmdbId"].strip():
                links[row["movieId"].strip()] = row["tmdbId"].strip()
    else:
        missing["links.csv"] = "TMDB ids (poster download)"
    posters = local_images(root / "posters")
    if not (root / "posters").is_dir():
        if require_poster:
            raise DataError(f"require_poster=True but {root / 'posters'} does not exist; {HOW_TO_GET}")
        missing["posters/"] = "movie posters (item images)"

    catalogue = _movies(root, links, posters)
    items = {mid: it for mid, it in catalogue.items() if it.image} if require_poster else catalogue

    path = root / "ratings.csv"
    reviews: list[Review] = []
    users: dict[str, User] = {}
    for lineno, row in _rows(path, ("userId", "movieId", "rating", "timestamp")):
        uid, mid = row["userId"].strip(), row["movieId"].strip()
        try:
            rating, ts = float(row["rating"]), int(row["timestamp"])
        except ValueError:
            raise DataError(
                f"{path}:{lineno}: rating/timestamp not numeric: {row['rating']!r}, {row['timestamp']!r}"
            ) from None
        if not uid or not mid:
            raise DataError(f"{path}:{lineno}: empty userId or movieId")
        if mid not in catalogue:
            raise DataError(f"{path}:{lineno}: movieId {mid!r} is not in movies.csv")
        if mid not in items:
            continue  # require_poster: a movie without poster is dropped on purpose
        users.setdefault(uid, User(uid))
        reviews.append(Review(uid, mid, rating=rating, timestamp=ts))

    kept: dict[str, list[Review]] = {uid: [] for uid in users}
    for r in reviews:
        if r.rating >= min_rating:
            kept[r.user_id].append(r)
    key = (lambda r: r.timestamp) if order == "time" else (lambda r: (-r.rating, -r.timestamp))
    sequences = {uid: [r.item_id for r in sorted(rs, key=key)] for uid, rs in kept.items()}

    corpus = Corpus(name, root, items, users, sequences, reviews, missing=missing)
    corpus.validate()
    return corpus
