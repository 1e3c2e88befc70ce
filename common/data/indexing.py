"""Pluggable item indexing: the id string each item gets in prompts (Hua et al. 2023).

P5/VIP5 number items by first appearance along each user's *full* sequence, so a held-out item is often the
next unused integer after the user's history ids: a model can score by arithmetic on ids. The
schemes here:

- ``original``: the ids of the source files (faithful mode; leaky on the P5 Amazon files);
- ``appearance``: P5's numbering recomputed from the corpus (first appearance along full sequences), to
  reproduce the leak on sources whose own ids do not have it (MovieLens, POG);
- ``sequential``: OpenP5's time-aware train-first numbering: every user's training part first, then the
  held-out items, so held-out items no longer get the next free number;
- ``random``: a seeded shuffle numbered from 1001 (OpenP5), every id with the same number of digits.

``common.data.item_ids`` adds schemes whose ids are new vocabulary tokens: ``atomic`` (one token per item),
``collaborative`` (hierarchical spectral clusters of the co-occurrence graph) and ``semantic`` (residual
k-means over image + text features).

New schemes subclass :class:`ItemIndexing` and register with ``@register_indexing("name")``; prompts and
decoding tries only ever read an :class:`ItemIndex`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common.data._source import read_json
from common.data.corpus import Corpus, DataError
from common.data.splits import LeaveOneOut, leave_one_out
from common.io import write_json

log = logging.getLogger(__name__)


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


def build_indexing(
    name: str,
    corpus: Corpus,
    split: LeaveOneOut | None = None,
    seed: int = 2022,
    features=None,
    cache_dir: str | Path | None = None,
    **kwargs,
) -> ItemIndex:
    """Fit the indexing registered as ``name``; kwargs go to its constructor (e.g. ``start``, ``levels``).

    Args:
        features: item image features, ``[n_items, dim]`` rows aligned to ``corpus.item_ids`` (schemes with
            ``uses_features``); None where there are none.
        cache_dir: where expensive schemes (``cached``) keep their fitted index, keyed by a digest of every
            input (catalogue, training sequences, features, options, seed): a changed input refits.
    """
    import common.data.item_ids  # noqa: F401  (registers the token schemes)

    try:
        cls = INDEXINGS[name]
    except KeyError:
        raise ValueError(f"unknown item indexing {name!r}; valid names: {', '.join(sorted(INDEXINGS))}") from None
    try:
        indexing = cls(seed=seed, **kwargs)
    except TypeError as e:
        raise ValueError(f"item indexing {name!r}: bad options {kwargs}: {e}") from None
    split = split if split is not None else leave_one_out(corpus)
    if not (cls.cached and cache_dir is not None):
        return indexing.fit(corpus, split, features)
    path = Path(cache_dir) / f"item_ids_{name}_{_fit_digest(indexing, corpus, split, features)}.json"
    if path.is_file():
        try:
            return ItemIndex.load(path)
        except DataError as e:  # a damaged cache is refitted, never trusted
            log.warning("refitting item ids: %s", e)
    index = indexing.fit(corpus, split, features)
    index.save(path)
    return index


def _fit_digest(indexing: ItemIndexing, corpus: Corpus, split: LeaveOneOut, features) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([indexing.name, indexing.fit_version, indexing.options(), list(corpus.item_ids),
                         split.train], sort_keys=True, default=str).encode())
    h.update(json.dumps([(i.title, i.description) for i in corpus.items.values()]).encode())
    if features is not None and indexing.uses_features:
        h.update(features.float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _with_rest(first: Iterable[str], corpus: Corpus) -> list[str]:
    """``first`` without repeats, then every other catalogue item in corpus order."""
    order = dict.fromkeys(i for i in first if i in corpus.items)
    order.update(dict.fromkeys(corpus.items))
    return list(order)


class _Numbered(ItemIndexing):
    """Numbers items ``start, start+1, ...`` in the order given by ``order(corpus, split)``."""

    def __init__(self, seed: int = 2022, start: int = 1) -> None:
        super().__init__(seed)
        self.start = start

    def order(self, corpus: Corpus, split: LeaveOneOut) -> list[str]:
        raise NotImplementedError

    def fit(self, corpus: Corpus, split: LeaveOneOut | None = None, features=None) -> ItemIndex:
        order = self.order(corpus, split if split is not None else leave_one_out(corpus))
        return ItemIndex(self.name, {item: str(self.start + k) for k, item in enumerate(order)})


@register_indexing("original")
class OriginalIndexing(ItemIndexing):
    """The ids written in the source files."""

    def fit(self, corpus: Corpus, split: LeaveOneOut | None = None, features=None) -> ItemIndex:
        return ItemIndex(self.name, {i: i for i in corpus.items})


@register_indexing("appearance")
class AppearanceIndexing(_Numbered):
    """P5's leaky numbering: first appearance while walking each user's full sequence, users in corpus order."""

    def order(self, corpus: Corpus, split: LeaveOneOut) -> list[str]:
        return _with_rest((i for seq in corpus.sequences.values() for i in seq), corpus)


@register_indexing("sequential")
class SequentialIndexing(_Numbered):
    """OpenP5 time-aware sequential indexing: training parts first, then held-out items, then the rest.

    Users are walked in corpus order, first over their training parts (``split.train``), then over their
    val and test targets; items no split user touched come last in corpus order.
    """

    def order(self, corpus: Corpus, split: LeaveOneOut) -> list[str]:
        train = (i for seq in split.train.values() for i in seq)
        held = (t for u in split.test for t in (split.val[u][1], split.test[u][1]))
        return _with_rest((*train, *held), corpus)


@register_indexing("random")
class RandomIndexing(ItemIndexing):
    """Seeded shuffle numbered from ``start``. By default ``start`` is the smallest 10**k + 1 (k >= 3) that
    keeps every id at the same number of digits: 1001 for up to 8,999 items, as in OpenP5."""

    def __init__(self, seed: int = 2022, start: int | None = None) -> None:
        super().__init__(seed)
        self.start = start

    def fit(self, corpus: Corpus, split: LeaveOneOut | None = None, features=None) -> ItemIndex:
        order = list(corpus.items)
        random.Random(self.seed).shuffle(order)
        start = self.start
        if start is None:
            k = 3
            while 10**k + len(order) >= 10 ** (k + 1):
                k += 1
            start = 10**k + 1
        return ItemIndex(self.name, {item: str(start + n) for n, item in enumerate(order)})


def leak_rate(split: LeaveOneOut, index: ItemIndex) -> float:
    """Share of test users whose target id is max(history ids) + 1 under ``index`` (numeric ids only)."""
    hits = total = 0
    for hist, target in split.test.values():
        try:
            ids = [int(i) for i in index.ids(hist)]
            t = int(index.to_id[target])
        except ValueError:
            raise ValueError(f"leak_rate needs numeric ids; indexing {index.name!r} has non-numeric ones") from None
        total += 1
        hits += bool(ids) and t == max(ids) + 1
    return hits / total if total else 0.0
