"""JsonlStore / KeywordCache: durable appends, torn-line recovery, resume without loss or duplicates."""

from __future__ import annotations

import json

from common.hashing import stable_hash
from pmg.cache import JsonlStore, KeywordCache


def _fill(store: JsonlStore, keys: list[str], log: list[str]) -> None:
    """What an extraction run does: only missing keys are computed."""
    for k in keys:
        if k not in store:
            log.append(k)
            store.put(k, {"parsed": [f"kw-{k}"]})


def test_put_get_reload(tmp_path):
    path = tmp_path / "c" / "store.jsonl"
    s = JsonlStore(path)
    assert len(s) == 0 and "a" not in s
    s.put("a", {"parsed": ["red"], "raw": "1. red"})
    s.put_many([("b", {"parsed": []}), ("c", {"parsed": ["x", "y"]})])
    s2 = JsonlStore(path)
    assert s2.keys() == ["a", "b", "c"]
    assert s2.get("a") == {"key": "a", "parsed": ["red"], "raw": "1. red"}
    assert s2.get("zzz") is None and "b" in s2
    assert (s2.torn, s2.corrupt, s2.duplicates) == (0, 0, 0)


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path):
    path = tmp_path / "kw.jsonl"
    keys = [f"user:{i}" for i in range(6)]
    done: list[str] = []
    _fill(JsonlStore(path), keys[:3], done)
    # The process dies in the middle of writing the 4th record: a partial last line without newline.
    partial = json.dumps({"key": keys[3], "parsed": ["kw"]})[:17]
    with open(path, "a") as f:
        f.write(partial)

    s = JsonlStore(path)
    assert s.torn == 1 and s.corrupt == 0
    assert s.keys() == keys[:3]  # nothing lost, the fragment is not a record

    done.clear()
    _fill(s, keys, done)
    assert done == keys[3:]  # the rerun fills only the missing keys

    s3 = JsonlStore(path)
    assert s3.keys() == keys and s3.torn == 0 and s3.duplicates == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["key"] for line in lines)  # the torn tail was cut, not glued
    done.clear()
    _fill(s3, keys, done)
    assert done == []


def test_corrupt_middle_line_and_overwrite_then_compact(tmp_path):
    path = tmp_path / "kw.jsonl"
    s = JsonlStore(path)
    s.put("a", {"parsed": []})
    with open(path, "a") as f:
        f.write("not json\n")
    s = JsonlStore(path)
    assert s.corrupt == 1
    s.put("a", {"parsed": ["redone"]})  # a retry appends; the later line wins
    s.put("b", {"parsed": ["b"]})
    s = JsonlStore(path)
    assert s.get("a")["parsed"] == ["redone"] and s.duplicates == 1 and s.corrupt == 1
    assert s.compact() == 2
    assert len(path.read_text().splitlines()) == 2
    s = JsonlStore(path)
    assert (s.corrupt, s.duplicates) == (0, 0) and s.get("a")["parsed"] == ["redone"]
    assert s.compact(keep=lambda k, r: k == "b") == 1
    assert JsonlStore(path).keys() == ["b"]
    assert not list(tmp_path.glob("*.tmp"))


def test_keyword_cache_record(tmp_path):
    c = KeywordCache(tmp_path / "kw.jsonl")
    key = KeywordCache.make_key("item", "42", "abc", "llama|d1")
    assert key == "item:42|abc|llama|d1"
    c.put(key, KeywordCache.make_record("abc", "llama", {"do_sample": False}, {"target": "1. x"}, ["x"]))
    rec = KeywordCache(tmp_path / "kw.jsonl").get(key)
    assert rec["raw"] == {"target": "1. x"} and rec["parsed"] == ["x"] and rec["reason"] is None
    assert rec["model_id"] == "llama" and rec["decoding"] == {"do_sample": False} and rec["prompt_hash"] == "abc"
    assert c.keywords(key) == ["x"] and c.keywords("nope") is None
    assert stable_hash({"b": 1, "a": 2}) == stable_hash({"a": 2, "b": 1}) != stable_hash({"a": 1, "b": 2})
