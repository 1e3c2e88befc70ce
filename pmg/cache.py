"""Resumable on-disk stores for the offline PMG stages (item texts, preference and target keywords).

One JSON object per line, keyed by a string (``"user:123|<prompt hash>|<model id>|<decoding hash>"``). Appends
write whole lines followed by flush + fsync, so an interrupted run can leave at most one torn last line. Loading
skips and counts such lines (and any corrupt line), the first write cuts a torn tail off before appending, and
``compact()`` rewrites the file atomically through :mod:`common.io`. A rerun asks ``key in store`` and only does
the missing work. Later lines win, so re-doing a key (``retry_empty``) just appends its new record.

One writer per file: two processes appending to the same store is not supported (run extraction on one rank).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from common.io import atomic_open

log = logging.getLogger(__name__)


class JsonlStore:
    """Append-only JSONL store of records keyed by ``record["key"]``; safe to interrupt, cheap to resume.

    Args:
        path: the ``.jsonl`` file; created (with its folder) on the first ``put``.

    Attributes:
        torn: lines skipped on load because the file ended in the middle of a line (an interrupted append).
        corrupt: complete lines skipped on load because they were not a JSON object with a string ``key``.
        duplicates: lines on load whose key was already seen (the later line wins; ``compact`` drops the rest).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._records: dict[str, dict] = {}
        self.torn = 0
        self.corrupt = 0
        self.duplicates = 0
        self._valid_end = 0  # byte offset just past the last complete line
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:  # no newline: the last append was cut short
                self.torn += 1
                log.warning("%s: skipped a torn last line (%d bytes) from an interrupted run",
                            self.path, len(data) - pos)
                break
            line, pos = data[pos:nl], nl + 1
            self._valid_end = pos
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
                self.corrupt += 1
                continue
            if rec["key"] in self._records:
                self.duplicates += 1
            self._records[rec["key"]] = rec
        if self.corrupt:
            log.warning("%s: skipped %d corrupt line(s); compact() removes them", self.path, self.corrupt)

    # ---- mapping-like reads -------------------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def keys(self) -> list[str]:
        return list(self._records)

    def items(self) -> Iterator[tuple[str, dict]]:
        return iter(self._records.items())

    def get(self, key: str, default: dict | None = None) -> dict | None:
        return self._records.get(key, default)

    # ---- writes -------------------------------------------------------------------------------------
    def put(self, key: str, record: dict) -> None:
        """Store ``record`` under ``key`` (durably, before returning)."""
        self.put_many([(key, record)])

    def put_many(self, pairs: Iterable[tuple[str, dict]]) -> None:
        """Append several records with one fsync; each line is still whole, so a crash loses at most the tail."""
        lines, new = [], {}
        for key, record in pairs:
            rec = {"key": key, **{k: v for k, v in record.items() if k != "key"}}
            lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
            new[key] = rec
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
            self._valid_end = f.tell()
        self._records.update(new)

    def _cut_torn_tail(self) -> None:
        # Appending after a torn line would glue the new record onto it and lose both; drop the fragment first.
        if self.path.exists() and self.path.stat().st_size > self._valid_end:
            os.truncate(self.path, self._valid_end)

    def compact(self, keep: Callable[[str, dict], bool] | None = None) -> int:
        """Rewrite the file atomically with one line per live key (optionally only those ``keep`` accepts).

        Returns:
            the number of records written.
        """
        recs = [(k, r) for k, r in self._records.items() if keep is None or keep(k, r)]
        with atomic_open(self.path, "w") as f:
            for _, rec in recs:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._records = dict(recs)
        self._valid_end = self.path.stat().st_size
        self.torn = self.corrupt = self.duplicates = 0
        return len(recs)


class KeywordCache(JsonlStore):
    """A :class:`JsonlStore` of keyword-extraction results.

    Each record holds: ``key``, ``prompt_hash``, ``model_id``, ``decoding`` (the decoding parameters),
    ``raw`` (the model's raw output per stage), ``parsed`` (the keyword list) and ``reason`` (None, or why
    ``parsed`` is empty: ``empty_history``, ``empty_text``, ``no_keywords``).
    """

    @staticmethod
    def make_key(kind: str, ident: str, prompt_hash: str, extractor_id: str) -> str:
        return f"{kind}:{ident}|{prompt_hash}|{extractor_id}"

    @staticmethod
    def make_record(
        prompt_hash: str,
        model_id: str,
        decoding: dict,
        raw: Any,
        parsed: list[str],
        reason: str | None = None,
        **extra: Any,
    ) -> dict:
        return {
            "prompt_hash": prompt_hash,
            "model_id": model_id,
            "decoding": decoding,
            "raw": raw,
            "parsed": list(parsed),
            "reason": reason,
            **extra,
        }

    def keywords(self, key: str) -> list[str] | None:
        rec = self.get(key)
        return None if rec is None else list(rec.get("parsed") or [])
