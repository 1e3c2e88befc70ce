"""Registry of source readers: ``read_corpus("amazon" | "pog" | "movielens", root, **kwargs) -> Corpus``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common.data.amazon import read_amazon
from common.data.corpus import Corpus
from common.data.movielens import read_movielens
from common.data.pog import read_pog

READERS: dict[str, Callable[..., Corpus]] = {
    "amazon": read_amazon,
    "pog": read_pog,
    "movielens": read_movielens,
}


def read_corpus(source: str, root: Path, **kwargs) -> Corpus:
    """Read ``root`` with the reader registered as ``source``; kwargs go to that reader."""
    try:
        reader = READERS[source]
    except KeyError:
        raise ValueError(f"unknown data source {source!r}; valid sources: {', '.join(sorted(READERS))}") from None
    return reader(Path(root), **kwargs)
