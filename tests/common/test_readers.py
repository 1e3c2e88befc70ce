"""Readers on hand-made files: Amazon/P5 folder, POG logs, MovieLens CSVs, and every bad-input case."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import pytest

from common.data.amazon import read_amazon
from common.data.corpus import DataError
from common.data.movielens import read_movielens
from common.data.pog import normalise_url, read_pog
from common.data.readers import READERS, read_corpus

ASINS = {"1": "A1", "2": "A2", "3": "A3", "4": "A4"}
USERS = {"1": "U1", "2": "U2"}


def write_amazon(root: Path, full: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sequential_data.txt").write_text("1 1 2 3\n2 2 3 4 1\n")
    if not full:
        return root
    (root / "datamaps.json").write_text(
        json.dumps(
            {
                "user2id": {v: k for k, v in USERS.items()},
                "item2id": {v: k for k, v in ASINS.items()},
                "id2user": USERS,
                "id2item": ASINS,
            }
        )
    )
    (root / "user_id2name.pkl").write_bytes(pickle.dumps({"1": "Ann"}))
    meta = [
        {"asin": "A1", "title": "Red soap", "categories": [["Beauty", "Bath"], ["Beauty", "Soap"]], "imUrl": "http://x/1.jpg"},
        {"asin": "A2", "title": "Blue cream", "description": "Soft."},
        {"asin": "ZZ", "title": "not in the catalogue"},
        {"asin": "A4", "title": "Mask", "imUrl": "http://x/4.jpg"},
    ]
    with gzip.open(root / "meta.json.gz", "wt") as f:
        f.write("\n".join(repr(m) for m in meta) + "\n")  # Python literals, as in P5
    (root / "images").mkdir()
    (root / "images" / "A2.png").write_bytes(b"png")
    (root / "images" / "A3.jpg").write_bytes(b"jpg")
    (root / "item2img_dict.pkl").write_bytes(pickle.dumps({"A1": "images/A1.png", "A2": "http://remote/2.png"}))
    (root / "images" / "A1.png").write_bytes(b"png")
    review = {"reviewerID": "U1", "asin": "A1", "reviewerName": "Ann", "overall": 5.0, "reviewText": "great",
              "summary": "ok", "unixReviewTime": 100, "explanation": "the colour is great", "feature": "colour"}
    splits = {"train": [review], "val": [dict(review, asin="A2", explanation="")], "test": [dict(review, asin="A3")]}
    (root / "exp_splits.pkl").write_bytes(pickle.dumps(splits))
    (root / "negative_samples.txt").write_text("1 4\n")
    return root


def test_amazon_full_folder(tmp_path):
    root = write_amazon(tmp_path / "beauty")
    c = read_amazon(root)
    assert c.name == "beauty"
    assert c.sequences == {"1": ["1", "2", "3"], "2": ["2", "3", "4", "1"]}
    assert list(c.items) == ["1", "2", "3", "4"]
    assert c.items["1"].raw_id == "A1" and c.users["2"].raw_id == "U2"
    assert c.items["1"].title == "Red soap" and c.items["2"].description == "Soft."
    assert c.items["1"].categories == ["Beauty", "Bath", "Soap"]
    assert c.items["3"].title is None  # no meta row
    # images: dict local path; remote URL loses to a local file; no dict entry -> images/; else meta imUrl
    assert c.items["1"].image == "images/A1.png"
    assert c.items["2"].image == "images/A2.png"
    assert c.items["3"].image == "images/A3.jpg"
    assert c.items["4"].image == "http://x/4.jpg"
    assert c.image_path("1") == str(root / "images" / "A1.png")
    assert c.users["1"].name == "Ann" and c.users["2"].name is None
    assert [r.item_id for r in c.reviews] == ["1", "2", "3"]
    assert c.review_split == {"train": [0], "val": [1], "test": [2]}
    r = c.reviews[0]
    assert (r.user_id, r.rating, r.feature, r.timestamp) == ("1", 5.0, "colour", 100)
    assert r.explanation == "the colour is great" and r.user_name == "Ann"
    assert c.reviews[1].explanation is None
    assert c.negatives == {"1": ["4"]}
    assert c.missing == {}


def test_amazon_sequential_only_is_complete(tmp_path):
    c = read_amazon(write_amazon(tmp_path / "toys", full=False), name="Toys")
    assert c.name == "Toys"
    assert list(c.items) == ["1", "2", "3", "4"] and list(c.users) == ["1", "2"]
    assert c.reviews == [] and c.review_split is None and c.negatives is None
    assert set(c.missing) == {"datamaps.json", "user_id2name.pkl", "meta.json.gz", "item2img_dict.pkl", "images/",
                              "exp_splits.pkl", "negative_samples.txt"}
    assert "user names" in c.missing["user_id2name.pkl"] and "explanations" in c.missing["exp_splits.pkl"]
    assert "titles" in c.missing["meta.json.gz"]
    assert not c.has_titles and not c.has_images and not c.has_user_names


def test_amazon_exp_splits_without_datamaps_is_recorded(tmp_path):
    root = write_amazon(tmp_path / "b")
    (root / "datamaps.json").unlink()
    (root / "negative_samples.txt").unlink()
    c = read_amazon(root)
    assert "datamaps.json" in c.missing["exp_splits.pkl"] and c.reviews == []
    assert "datamaps.json" in c.missing["meta.json.gz"] and not c.has_titles


def test_amazon_user_names_fall_back_to_reviews(tmp_path):
    root = write_amazon(tmp_path / "b")
    (root / "user_id2name.pkl").unlink()
    (root / "negative_samples.txt").unlink()
    c = read_amazon(root)
    assert "user_id2name.pkl" in c.missing and c.users["1"].name == "Ann"


def test_amazon_missing_folder_says_what_to_download(tmp_path):
    with pytest.raises(DataError) as e:
        read_amazon(tmp_path / "sports")
    msg = str(e.value)
    assert str(tmp_path / "sports") in msg and "Google Drive" in msg and "VIP5" in msg
    assert "prepare-amazon" in msg and "reviews_Sports_and_Outdoors_5.json.gz" in msg
    assert "sequential_data.txt" in msg and "exp_splits.pkl" in msg
    (tmp_path / "sports").mkdir()
    with pytest.raises(DataError, match="missing sequential_data.txt"):
        read_amazon(tmp_path / "sports")


@pytest.mark.parametrize(
    "content, line, what",
    [
        ("1 1 2\n2 2 x\n", 2, "non-integer"),
        ("1 1 2\n\n3\n", 3, "expected"),
        ("1 1 2\n1 3 4\n", 2, "duplicate"),
    ],
)
def test_amazon_malformed_sequence_line(tmp_path, content, line, what):
    (tmp_path / "sequential_data.txt").write_text(content)
    with pytest.raises(DataError, match=rf"sequential_data\.txt:{line}: .*{what}"):
        read_amazon(tmp_path)


def test_amazon_unknown_item_in_negatives(tmp_path):
    root = write_amazon(tmp_path / "b")
    (root / "negative_samples.txt").write_text("1 4\n2 99\n")
    with pytest.raises(DataError, match=r"negative_samples\.txt:2: unknown item '99'"):
        read_amazon(root)
    (root / "negative_samples.txt").write_text("7 4\n")
    with pytest.raises(DataError, match=r"negative_samples\.txt:1: unknown user '7'"):
        read_amazon(root)


def test_amazon_unknown_item_in_exp_splits(tmp_path):
    root = write_amazon(tmp_path / "b")
    (root / "negative_samples.txt").unlink()
    splits = {"train": [], "val": [], "test": [{"reviewerID": "U1", "asin": "NOPE", "explanation": "x"}]}
    (root / "exp_splits.pkl").write_bytes(pickle.dumps(splits))
    with pytest.raises(DataError, match=r"exp_splits\.pkl: test\[0\]: unknown item 'NOPE'"):
        read_amazon(root)


def test_amazon_malformed_meta_line(tmp_path):
    root = write_amazon(tmp_path / "b")
    with gzip.open(root / "meta.json.gz", "wt") as f:
        f.write("{'asin': 'A1', 'title': 'ok'}\n{'asin': 'A2', 'title': __import__('os')}\n")
    with pytest.raises(DataError, match=r"meta\.json\.gz:2"):
        read_amazon(root)


def test_amazon_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    root = write_amazon(tmp_path / "b")
    (root / "user_id2name.pkl").write_bytes(pickle.dumps({"1": Evil()}))
    with pytest.raises(DataError, match="refusing to unpickle builtins.print"):
        read_amazon(root)


def write_pog(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "user_data.txt").write_text("u1,i1;i1;i2;i1,o1\nu2,i3;i2,o2\n")
    (root / "item_data.txt").write_text(
        "i1,c1,//img.alicdn.com/a.jpg,Red dress, long\n"
        "i2,c2,https://img.example/b.png,Hat\n"
        "i3,c1,,Shoe\n"
        "i9,c3,//never.clicked/x.jpg,Unused\n"
    )
    (root / "images").mkdir()
    (root / "images" / "i3.png").write_bytes(b"png")
    return root


def test_pog(tmp_path):
    c = read_pog(write_pog(tmp_path / "pog"))
    assert c.sequences == {"u1": ["i1", "i2", "i1"], "u2": ["i3", "i2"]}  # consecutive repeat collapsed
    assert list(c.items) == ["i1", "i2", "i3"]  # catalogue order of item_data.txt, clicked items only
    assert c.items["i1"].title == "Red dress, long" and c.items["i1"].categories == ["c1"]
    assert c.items["i1"].image == "http://img.alicdn.com/a.jpg"  # scheme-less URL
    assert c.items["i2"].image == "https://img.example/b.png"
    assert c.items["i3"].image == "images/i3.png"  # local file
    assert c.missing == {}
    assert read_pog(tmp_path / "pog", history_len=2).sequences == {"u1": ["i2", "i1"], "u2": ["i3", "i2"]}


def test_pog_normalise_url():
    assert normalise_url("//a/b.jpg") == "http://a/b.jpg"
    assert normalise_url("a.com/b.jpg") == "http://a.com/b.jpg"
    assert normalise_url("https://a/b.jpg") == "https://a/b.jpg"
    assert normalise_url(" ") is None


def test_pog_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="POG"):
        read_pog(tmp_path / "nowhere")
    root = write_pog(tmp_path / "pog")
    (root / "user_data.txt").write_text("u1,i1,o1\nu2;i2\n")
    with pytest.raises(DataError, match=r"user_data\.txt:2:"):
        read_pog(root)
    (root / "user_data.txt").write_text("u1,i1,o1\nu2,i2;i7,o2\n")
    with pytest.raises(DataError, match=r"user_data\.txt:2: item 'i7' is not in item_data\.txt"):
        read_pog(root)
    (root / "user_data.txt").write_text("u1,i1,o1\n")
    (root / "item_data.txt").write_text("i1,c1,//a.jpg,T\ni2,c1\n")
    with pytest.raises(DataError, match=r"item_data\.txt:2:"):
        read_pog(root)
    (root / "images" / "i3.png").unlink()
    (root / "images").rmdir()
    (root / "item_data.txt").write_text("i1,c1,//a.jpg,T\n")
    assert "images/" in read_pog(root).missing


def write_movielens(root: Path, posters: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation\n"
        '2,"Movie, The (2001)",Drama\n'
        "3,Odd (2003),(no genres listed)\n"
        "4,Later (2010),Comedy\n"
    )
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,300\n"
        "1,2,5.0,100\n"
        "1,3,4.5,200\n"
        "1,4,2.0,50\n"
        "2,4,5.0,10\n"
        "2,1,5.0,20\n"
    )
    (root / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n2,1,\n")
    if posters:
        (root / "posters").mkdir()
        for mid in ("1", "2", "4"):
            (root / "posters" / f"{mid}.jpg").write_bytes(b"jpg")
    return root


def test_movielens_time_order(tmp_path):
    c = read_movielens(write_movielens(tmp_path / "ml"))
    assert c.sequences == {"1": ["2", "3", "1"], "2": ["4", "1"]}  # ratings >= 4, chronological
    assert c.items["2"].title == "Movie, The (2001)"
    assert c.items["1"].categories == ["Adventure", "Animation"]
    assert c.items["1"].description == "Genres: Adventure, Animation"
    assert c.items["3"].categories == [] and c.items["3"].description is None
    assert c.items["1"].raw_id == "862" and c.items["2"].raw_id is None
    assert c.items["1"].image == "posters/1.jpg" and c.items["3"].image is None
    assert len(c.reviews) == 6 and {r.rating for r in c.reviews if r.item_id == "4" and r.user_id == "1"} == {2.0}
    assert all(r.text is None and r.timestamp is not None for r in c.reviews)
    assert c.missing == {}


def test_movielens_rating_time_order_and_options(tmp_path):
    root = write_movielens(tmp_path / "ml")
    c = read_movielens(root, order="rating_time")
    # MindSpore order: rating desc, then timestamp desc
    assert c.sequences == {"1": ["2", "3", "1"], "2": ["1", "4"]}
    c = read_movielens(root, min_rating=4.5, order="rating_time")
    assert c.sequences["1"] == ["2", "3"]
    c = read_movielens(root, require_poster=True)
    assert "3" not in c.items and c.sequences["1"] == ["2", "1"]
    with pytest.raises(ValueError, match="order"):
        read_movielens(root, order="random")


def test_movielens_missing_and_bad_inputs(tmp_path):
    root = write_movielens(tmp_path / "ml", posters=False)
    (root / "links.csv").unlink()
    c = read_movielens(root)
    assert set(c.missing) == {"links.csv", "posters/"}
    with pytest.raises(DataError, match="posters"):
        read_movielens(root, require_poster=True)
    with pytest.raises(DataError, match="ml-latest-small"):
        read_movielens(tmp_path / "none")
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,3\n1,99,4.0,4\n")
    with pytest.raises(DataError, match=r"ratings\.csv:3: movieId '99'"):
        read_movielens(root)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,good,3\n")
    with pytest.raises(DataError, match=r"ratings\.csv:2:"):
        read_movielens(root)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0\n")
    with pytest.raises(DataError, match=r"ratings\.csv:2:"):
        read_movielens(root)


def test_read_corpus_registry(tmp_path):
    assert set(READERS) == {"amazon", "pog", "movielens"}
    c = read_corpus("pog", write_pog(tmp_path / "pog"), history_len=5)
    assert c.name == "pog"
    with pytest.raises(ValueError, match="amazon, movielens, pog"):
        read_corpus("yelp", tmp_path)
