"""The one content hash of the project: short, stable across runs and machines, for cache keys, cache folder
names and per-sample seeds."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any, n: int = 16) -> str:
    """The first ``n`` hex digits of the sha256 of bytes, of a string (UTF-8), or of a JSON-serialisable object
    (keys sorted, so equal dicts hash equally)."""
    if isinstance(obj, bytes):
        data = obj
    else:
        text = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
        data = text.encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:n]
