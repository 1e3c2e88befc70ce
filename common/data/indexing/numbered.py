"""Digit-string ids: ``original``, ``appearance`` (P5's leaky numbering), ``sequential`` and ``random``."""

from __future__ import annotations

import random
from collections.abc import Iterable

from common.data.corpus import Corpus
from common.data.indexing.base import ItemIndex, ItemIndexing, register_indexing
from common.data.splits import LeaveOneOut, leave_one_out


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
