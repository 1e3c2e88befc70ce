"""Bad input in every reader: a line that is not UTF-8 or is malformed, corrupt JSON and pickles.

Each case writes a small valid source, breaks one file, and checks the DataError names that file and the
1-based line (the file alone for pickles).
"""

from __future__ import annotations

import gzip
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

from common.data._source import load_pickle, read_json, text_lines
from common.data.amazon import read_amazon
from common.data.corpus import DataError
from common.data.images import amazon_image_urls
from common.data.indexing import ItemIndex
from common.data.movielens import read_movielens
from common.data.pog import read_pog
from common.data.prepare import prepare_amazon
from common.data.readers import read_corpus
from common.data.splits import candidate_negatives, leave_one_out

NOT_UTF8 = b"caf\xe9"  # Latin-1, the usual culprit


def _gz(lines: list[bytes]) -> bytes:
    return gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0)


def amazon(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "sequential_data.txt").write_text("1 1 2 3\n2 2 3 1\n")
    (root / "negative_samples.txt").write_text("1 4\n2 4\n")
    ids = {"1": "A1", "2": "A2", "3": "A3", "4": "A4"}
    maps = {"id2user": {"1": "U1", "2": "U2"}, "id2item": ids}
    (root / "datamaps.json").write_text(json.dumps(maps, indent=1))
    (root / "meta.json.gz").write_bytes(_gz([repr({"asin": a, "title": f"t{a}"}).encode() for a in ids.values()]))
    (root / "user_id2name.pkl").write_bytes(pickle.dumps({"1": "Ann"}))
    (root / "item2img_dict.pkl").write_bytes(pickle.dumps({"A1": "http://x/1.jpg"}))
    review = {"reviewerID": "U1", "asin": "A1", "explanation": "nice", "feature": "colour"}
    (root / "exp_splits.pkl").write_bytes(pickle.dumps({"train": [review], "val": [], "test": []}))
    return root


def pog(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "user_data.txt").write_text("u1,i1;i2,o1\nu2,i2;i3,o2\nu3,i3;i1,o1\n")
    (root / "item_data.txt").write_text("i1,c1,//a/1.jpg,Red dress\ni2,c1,//a/2.jpg,Hat\ni3,c2,,Shoe\n")
    return root


def movielens(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "movies.csv").write_text("movieId,title,genres\n1,A (1995),Drama\n2,B (1996),Comedy\n3,C (1997),Drama\n")
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,5.0,2\n1,3,4.0,3\n")
    (root / "links.csv").write_text("movieId,imdbId,tmdbId\n1,11,21\n2,12,22\n3,13,23\n")
    return root


SOURCES: dict[str, tuple[Callable[[Path], Path], Callable[[Path], object]]] = {
    "amazon": (amazon, read_amazon),
    "pog": (pog, read_pog),
    "movielens": (movielens, read_movielens),
}

# (source, file, broken content, line the error must name)
NOT_UTF8_CASES = [
    ("amazon", "sequential_data.txt", b"1 1 2 3\n2 2 3 1 " + NOT_UTF8 + b"\n", 2),
    ("amazon", "negative_samples.txt", b"1 4\n\n2 " + NOT_UTF8 + b"\n", 3),
    ("amazon", "meta.json.gz", _gz([b"{'asin': 'A1'}", b"{'asin': 'A2', 'title': '" + NOT_UTF8 + b"'}"]), 2),
    ("amazon", "datamaps.json", b'{\n "id2user": {"1": "U1"},\n "id2item": {"1": "' + NOT_UTF8 + b'"}\n}', 3),
    ("pog", "user_data.txt", b"u1,i1;i2,o1\nu2,i2;i3,o2\nu3," + NOT_UTF8 + b",o1\n", 3),
    ("pog", "item_data.txt", b"i1,c1,//a/1.jpg,Red\ni2,c1,//a/2.jpg," + NOT_UTF8 + b"\ni3,c2,,Shoe\n", 2),
    ("movielens", "ratings.csv", b"userId,movieId,rating,timestamp\n1,1,4.0,1\n1," + NOT_UTF8 + b",5.0,2\n", 3),
    ("movielens", "movies.csv", b"movieId,title,genres\n1,A,Drama\n2,B,Comedy\n3," + NOT_UTF8 + b",Drama\n", 4),
    ("movielens", "links.csv", NOT_UTF8 + b"movieId,imdbId,tmdbId\n1,11,21\n", 1),
]

MALFORMED_CASES = [
    ("amazon", "sequential_data.txt", b"1 1 2 3\n2 2 x 1\n", 2, "non-integer id 'x'"),
    ("amazon", "negative_samples.txt", b"1 4\n2\n", 2, "expected 'uid neg1"),
    ("amazon", "meta.json.gz", _gz([b"{'asin': 'A1'}", b"", b"{'asin': 'A2', 'title': }"]), 3, "dict literal"),
    ("amazon", "meta.json.gz", _gz([b"{'asin': 'A1'}", b"['A2', 'a list']"]), 2, "expected one object per line"),
    ("amazon", "datamaps.json", b'{\n "id2user": {"1": "U1", "2": "U2"},\n "id2item": {"1": "A1",}\n}', 3, "JSON"),
    ("pog", "user_data.txt", b"u1,i1;i2,o1\nu2;i2,o2\n", 2, "expected 'user_id,item"),
    ("pog", "item_data.txt", b"i1,c1,//a/1.jpg,Red\ni2,c1\n", 2, "expected 'item_id,cate_id"),
    ("movielens", "ratings.csv", b"userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,5.0\n", 3, "malformed row"),
    ("movielens", "ratings.csv", b"userId,movieId,rating,timestamp\n1,1,4.0,1\n1,2,five,2\n", 3, "not numeric"),
    ("movielens", "movies.csv", b'movieId,title,genres\n1,A,Drama\n2,"B (1996),Comedy\n', 3, "malformed row"),
    ("movielens", "movies.csv", b'movieId,title,genres\n1,A,Drama\n2,"' + b"x" * 200_000 + b'",Comedy\n', 3,
     "malformed CSV (field larger than field limit"),
    ("movielens", "links.csv", b"movieId,imdbId,tmdbId\n1,11,21\n2\n", 3, "malformed row"),
]


def _break(tmp_path: Path, source: str, name: str, content: bytes) -> tuple[Path, Callable[[Path], object]]:
    write, read = SOURCES[source]
    root = write(tmp_path / source)
    (root / name).write_bytes(content)
    return root, read


@pytest.mark.parametrize("source, name, content, line", NOT_UTF8_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_line_that_is_not_utf8_names_file_and_line(tmp_path, source, name, content, line):
    root, read = _break(tmp_path, source, name, content)
    with pytest.raises(DataError) as e:
        read(root)
    assert str(e.value).startswith(f"{root / name}:{line}: not valid UTF-8 (byte 0xe9")


@pytest.mark.parametrize(
    "source, name, content, line, what", MALFORMED_CASES, ids=lambda v: v if isinstance(v, str) else ""
)
def test_malformed_line_names_file_and_line(tmp_path, source, name, content, line, what):
    root, read = _break(tmp_path, source, name, content)
    with pytest.raises(DataError) as e:
        read(root)
    assert str(e.value).startswith(f"{root / name}:{line}: ") and what in str(e.value)


@pytest.mark.parametrize("name", ["user_id2name.pkl", "exp_splits.pkl", "item2img_dict.pkl"])
@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_corrupt_pickle_names_the_file(tmp_path, name, damage):
    root = amazon(tmp_path / "amazon")
    good = (root / name).read_bytes()
    (root / name).write_bytes(b"\x80\x05garbage\xff\x00" * 3 if damage == "random" else good[: len(good) // 2])
    with pytest.raises(DataError) as e:
        read_amazon(root)
    assert str(e.value).startswith(f"{root / name}: cannot read pickle")


def test_valid_sources_still_read(tmp_path):
    """The fixtures above are valid as written: the failures come from the broken file alone."""
    for source, (write, _) in SOURCES.items():
        corpus = read_corpus(source, write(tmp_path / source))
        assert len(corpus.users) >= 1 and len(corpus.items) == 3 + (source == "amazon")


def test_text_lines_helper(tmp_path):
    crlf = tmp_path / "a.txt"
    crlf.write_bytes(b"\xef\xbb\xbfx y\r\n\r\nz")
    assert list(text_lines(crlf)) == [(1, "x y\n"), (2, "\n"), (3, "z")]  # BOM dropped, CRLF -> LF
    gz = tmp_path / "plain-name.txt"
    gz.write_bytes(_gz([b"one", b"two"]))  # gzip told by its first bytes, not by the name
    assert list(text_lines(gz)) == [(1, "one\n"), (2, "two\n")]
    cut = tmp_path / "cut.gz"
    cut.write_bytes(_gz([b"a" * 10] * 3)[:-12])
    with pytest.raises(DataError, match=rf"{cut}:\d+: damaged gzip data"):
        list(text_lines(cut))


def test_json_and_pickle_helpers(tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(b'\xef\xbb\xbf{"a":\n [1, 2]}')
    assert read_json(p) == {"a": [1, 2]}
    p.write_bytes(b'{"a":\n [1,\n 2\n}')
    with pytest.raises(DataError, match=rf"^{p}:4: not valid JSON"):
        read_json(p)
    p.write_bytes(b'{"a":\n "' + NOT_UTF8 + b'"}')
    with pytest.raises(DataError, match=rf"^{p}:2: not valid UTF-8 \(byte 0xe9 at column 6\)"):
        read_json(p)
    q = tmp_path / "x.pkl"
    q.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{q}: cannot read pickle \(EOFError"):
        load_pickle(q)


# -- prepare-amazon (raw Amazon-2014 files) -----------------------------------------------------------------
def _raw(folder: Path) -> tuple[Path, Path]:
    """6 users x 6 items, each user reviewing all items but one: the 5-core keeps everything."""
    folder.mkdir()
    reviews = [
        json.dumps({"reviewerID": f"U{u}", "asin": f"B{i}", "unixReviewTime": 10 * u + i}).encode()
        for u in range(6)
        for i in range(6)
        if i != u
    ]
    meta = [repr({"asin": f"B{i}", "title": f"Item {i}"}).encode() for i in range(6)]
    (folder / "reviews.json.gz").write_bytes(_gz(reviews))
    (folder / "meta.json.gz").write_bytes(_gz(meta))
    return folder / "reviews.json.gz", folder / "meta.json.gz"


def _prepare(reviews: Path, meta: Path, out: Path, **kw):
    return prepare_amazon(reviews, meta, out, n_negatives=1, **kw)


def test_prepare_reports_bad_raw_lines(tmp_path):
    reviews, meta = _raw(tmp_path / "raw")
    _prepare(reviews, meta, tmp_path / "ok")  # valid as written
    good_reviews, good_meta = gzip.decompress(reviews.read_bytes()), gzip.decompress(meta.read_bytes())

    def lines(data: bytes, n: int, new: bytes) -> bytes:
        rows = data.splitlines()
        rows[n - 1] = new
        return _gz(rows)

    cases = [
        (reviews, lines(good_reviews, 7, b'{"reviewerID": "U1", "asin": "' + NOT_UTF8 + b'"}'), 7, "not valid UTF-8"),
        (reviews, lines(good_reviews, 4, b'{"reviewerID": "U0", "asin": "B3", '), 4, "not a JSON object"),
        (reviews, lines(good_reviews, 2, b'{"reviewerID": "U0", "asin": "B1"}'), 2, "no 'unixReviewTime'"),
        (meta, lines(good_meta, 3, b"{'asin': 'B2', 'title': '" + NOT_UTF8 + b"'}"), 3, "not valid UTF-8"),
        (meta, lines(good_meta, 5, b"{'asin': 'B4', 'title': }"), 5, "not a JSON object or Python dict literal"),
    ]
    for n, (path, content, line, what) in enumerate(cases):
        path.write_bytes(content)
        with pytest.raises(DataError) as e:
            _prepare(reviews, meta, tmp_path / f"out{n}")
        assert str(e.value).startswith(f"{path}:{line}: ") and what in str(e.value), (n, str(e.value))
        reviews.write_bytes(_gz(good_reviews.splitlines()))
        meta.write_bytes(_gz(good_meta.splitlines()))

    sentires = tmp_path / "raw" / "reviews.pickle"
    sentires.write_bytes(pickle.dumps([{"user": "U0", "item": "B0"}])[:-3])
    with pytest.raises(DataError, match=rf"^{sentires}: cannot read pickle"):
        _prepare(reviews, meta, tmp_path / "out-s", sentires=sentires)
    done = tmp_path / "ok" / "_DONE"
    done.write_text('{"report": {},\n "settings": oops}\n')
    with pytest.raises(DataError, match=rf"^{done}:2: not valid JSON"):
        _prepare(reviews, meta, tmp_path / "ok")


# -- files the framework reads back: negative cache, item index cache, image URLs -----------------------------
def test_cache_and_side_files_name_file_and_line(tmp_path):
    corpus = read_movielens(movielens(tmp_path / "ml"))
    cache = tmp_path / "cache"
    cache.mkdir()
    bad = cache / "negative_samples_1_7.txt"
    bad.write_bytes(b"1 " + NOT_UTF8 + b"\n")
    with pytest.raises(DataError, match=rf"^{bad}:1: not valid UTF-8.*delete the file"):
        candidate_negatives(corpus, leave_one_out(corpus), n=1, seed=7, cache_dir=cache)

    index = tmp_path / "item_ids.json"
    index.write_bytes(b'{"name": "x",\n "to_id": {"1": "' + NOT_UTF8 + b'"}}')
    with pytest.raises(DataError, match=rf"^{index}:2: not valid UTF-8"):
        ItemIndex.load(index)

    root = amazon(tmp_path / "amazon")
    (root / "item2img_dict.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=rf"^{root / 'item2img_dict.pkl'}: cannot read pickle"):
        amazon_image_urls(root)
    (root / "item2img_dict.pkl").unlink()
    (root / "meta.json.gz").write_bytes(_gz([b"{'asin': 'A1', 'imUrl': 'http://x/1.jpg'}", NOT_UTF8]))
    with pytest.raises(DataError, match=rf"^{root / 'meta.json.gz'}:2: not valid UTF-8"):
        amazon_image_urls(root)
