"""SIGKILL in the middle of the offline preparation jobs, then a rerun: nothing is corrupted, the rerun gives what an
uninterrupted run gives, and it does not redo the work that was finished (feature batches, keyword chunks)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def kill_when(command: list[str], ready: Callable[[], bool]) -> None:
    """Run ``command`` and SIGKILL it as soon as ``ready()`` says part of its work is on disk (polled)."""
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"{command[:4]} ended ({proc.returncode}) before it could be interrupted: "
                            f"make its workload larger\n{proc.stderr.read()[-3000:]}")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_feature_extraction_resumes_after_sigkill(tmp_path, caplog):
    from common.data.features import ENCODERS, ImageFeatures, extract_features

    root = tmp_path / "shop"
    (root / "images").mkdir(parents=True)
    n = 600  # one partial file per batch of 2: hundreds of atomic writes, so the kill lands in the middle
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
    (root / "sequential_data.txt").write_text("".join(f"{u} {' '.join(str(i) for i in range(u, n + 1, 7))}\n"
                                                      for u in range(1, 8)))
    parts = lambda: list((root / "features").glob("*.partial/part-*.npz"))  # noqa: E731
    kill_when([sys.executable, "-m", "common.data.cli", "features", str(root), "--encoder", "demo-tiny",
               "--batch_size", "2", "--accelerator", "cpu"], lambda: len(parts()) >= 5)

    assert not list((root / "features").glob("*.npy"))  # no half-written feature file
    done = set()
    for f in parts():  # every partial on disk is complete (atomic writes)
        with np.load(f) as z:
            done |= set(z["ids"].tolist())
    assert 0 < len(done) < n

    items = [(str(i), str(root / "images" / f"{i}.png")) for i in range(1, n + 1)]
    with caplog.at_level("INFO", logger="common.data.features"):
        resumed = extract_features(items, ENCODERS["demo-tiny"], root / "features", batch_size=64)
    [msg] = [r.getMessage() for r in caplog.records if "cached in partials" in r.getMessage()]
    pending, cached = map(int, re.search(r"for (\d+) images \((\d+) cached", msg).groups())
    assert (pending, cached) == (n - len(done), len(done))  # finished batches are not encoded again
    fresh = extract_features(items, ENCODERS["demo-tiny"], tmp_path / "fresh", batch_size=64)
    assert resumed.item_ids == fresh.item_ids == [i for i, _ in items]
    assert np.allclose(resumed.align(resumed.item_ids).numpy(), fresh.align(fresh.item_ids).numpy(), atol=1e-5)
    assert not parts() and ImageFeatures.load(root / "features").item_ids == resumed.item_ids


KEYWORD_JOB = """
import json, sys
from pmg.keywords import TfidfKeywordExtractor
TfidfKeywordExtractor.chunk_size = 8  # one durable append per 8 users
histories = json.load(open(sys.argv[1]))
ex = TfidfKeywordExtractor(cache_path=sys.argv[2], progress=False)
ex.fit([t for texts in histories.values() for t in texts])
ex.preference(histories)
"""


def test_keyword_extraction_resumes_after_sigkill(tmp_path, monkeypatch):
    from pmg.cache import KeywordCache
    from pmg.keywords import TfidfKeywordExtractor

    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    histories = {f"u{u}": [" ".join(rng.sample(words, 6)) for _ in range(4)] for u in range(4000)}
    (tmp_path / "histories.json").write_text(json.dumps(histories))
    cache = tmp_path / "cache" / "pmg_keywords.jsonl"
    lines = lambda: cache.read_bytes().count(b"\n") if cache.exists() else 0  # noqa: E731
    kill_when([sys.executable, "-c", KEYWORD_JOB, str(tmp_path / "histories.json"), str(cache)],
              lambda: lines() >= 40)

    store = KeywordCache(cache)
    assert store.corrupt == 0 and store.torn <= 1 and 0 < len(store) < len(histories)
    finished = len(store)
    monkeypatch.setattr(TfidfKeywordExtractor, "chunk_size", 8)
    texts = [t for h in histories.values() for t in h]
    resumed = TfidfKeywordExtractor(cache_path=cache, progress=False).fit(texts)
    got = resumed.preference(histories)
    assert resumed.stats["cached"] == finished and resumed.stats["computed"] == len(histories) - finished
    assert got == TfidfKeywordExtractor(progress=False).fit(texts).preference(histories)  # uninterrupted
    again = KeywordCache(cache)
    assert len(again) == len(histories) and again.corrupt == again.duplicates == 0


def test_prepare_amazon_is_atomic_under_sigkill(tmp_path):
    from test_prepare import FILES, write_raw

    from common.data.prepare import DONE, prepare_amazon

    raw = write_raw(tmp_path / "raw", n_users=6000, n_items=150, seed=1)  # ~40k reviews: large pickles to write
    out = tmp_path / "out"
    staging = lambda: [d for d in out.glob(".prepare-*") if any(d.iterdir())] if out.is_dir() else []  # noqa: E731
    kill_when([sys.executable, "-m", "common.data.cli", "prepare-amazon", str(raw["reviews"]), str(raw["meta"]),
               str(out), "--sentires", str(raw["sentires"])], lambda: bool(staging()))

    # killed while writing: the folder is not marked finished; a file already moved into place is complete
    assert not (out / DONE).exists()
    moved = {f: (out / f).read_bytes() for f in FILES if (out / f).exists()}
    report = prepare_amazon(raw["reviews"], raw["meta"], out, sentires=raw["sentires"])
    assert not list(out.glob(".prepare-*"))  # the interrupted run's staging folder is cleaned up
    fresh = tmp_path / "fresh"
    assert prepare_amazon(raw["reviews"], raw["meta"], fresh, sentires=raw["sentires"]) == report
    for f in FILES:  # the same bytes as an uninterrupted run
        assert (out / f).read_bytes() == (fresh / f).read_bytes() == moved.get(f, (fresh / f).read_bytes()), f
    # a finished folder is not redone: a rerun returns the stored report and touches no file
    stamps = {f: (out / f).stat().st_mtime_ns for f in [*FILES, DONE]}
    assert prepare_amazon(raw["reviews"], raw["meta"], out, sentires=raw["sentires"]) == report
    assert {f: (out / f).stat().st_mtime_ns for f in stamps} == stamps
