"""The item index (item -> id string, plus the id's tokens for token schemes) and the registry of schemes."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common.data._source import read_json
from common.data.corpus import Corpus, DataError
from common.data.splits import LeaveOneOut
from common.io import write_json


@dataclass
class ItemIndex:
    """item id -> id string used in prompts, and back.

    Attributes:
        name: the indexing scheme that produced it.
        to_id: item id -> prompt id string; must be injective.
        tokens: prompt id string -> its new vocabulary tokens (for schemes such as collaborative or semantic
            ids that add tokens); None for plain-text ids.
        to_item: inverse of ``to_id`` (derived).
    """

    name: str
    to_id: dict[str, str]
    tokens: dict[str, list[str]] | None = None
    to_item: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.to_item = {v: k for k, v in self.to_id.items()}
        if len(self.to_item) != len(self.to_id):
            seen: dict[str, str] = {}
            for item, id_ in self.to_id.items():
                if id_ in seen:
                    raise ValueError(f"indexing {self.name!r}: items {seen[id_]!r} and {item!r} share id {id_!r}")
                seen[id_] = item
        if self.tokens is not None and set(self.tokens) != set(self.to_item):
            raise ValueError(f"indexing {self.name!r}: tokens must be given for exactly the ids of to_id")

    def __len__(self) -> int:
        return len(self.to_id)

    @property
    def vocabulary(self) -> list[str]:
        """The new vocabulary tokens of the ids (empty for plain-text ids), in natural order (``<c0_2>`` before
        ``<c0_10>``): the tokenizer appends them in this order, so the same index gives the same token ids."""
        if not self.tokens:
            return []
        unique = {t for toks in self.tokens.values() for t in toks}
        def natural(token: str) -> list[tuple[int, int, str]]:
            return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", token)]

        return sorted(unique, key=natural)

    def to_dict(self) -> dict:
        return {"name": self.name, "to_id": self.to_id, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict) -> ItemIndex:
        return cls(data["name"], data["to_id"], data.get("tokens"))

    def ids(self, items: Iterable[str]) -> list[str]:
        return [self.to_id[i] for i in items]

    def items(self, ids: Iterable[str]) -> list[str]:
        return [self.to_item[i] for i in ids]

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        try:
            return cls.from_dict(read_json(path))
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}: not an item index file: {e}") from e


class ItemIndexing:
    """Base class: ``fit(corpus, split)`` returns the ItemIndex of every catalogue item.

    Args:
        seed: for schemes with randomness (ignored by deterministic ones).

    Class attributes:
        uses_features: ``fit`` reads item image features (``features``: rows aligned to ``corpus.item_ids``).
        cached: the fit is expensive; :func:`build_indexing` caches the result when given a ``cache_dir``.
    """

    name = "base"
    uses_features = False
    cached = False
    fit_version = 1  # part of the cache key: bump when ``fit`` gives other ids for the same inputs and options

    def __init__(self, seed: int = 2022) -> None:
        self.seed = seed

    def fit(self, corpus: Corpus, split: LeaveOneOut | None = None, features=None) -> ItemIndex:
        raise NotImplementedError

    def options(self) -> dict:
        """Constructor settings that change the result (part of the cache key)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


INDEXINGS: dict[str, type[ItemIndexing]] = {}


def register_indexing(name: str) -> Callable[[type[ItemIndexing]], type[ItemIndexing]]:
    def deco(cls: type[ItemIndexing]) -> type[ItemIndexing]:
        if name in INDEXINGS:
            raise ValueError(f"item indexing {name!r} is already registered")
        cls.name = name
        INDEXINGS[name] = cls
        return cls

    return deco
