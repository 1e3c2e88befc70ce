"""Fitting a registered scheme by name, with a cache for the expensive ones."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from common.data.corpus import Corpus, DataError
from common.data.indexing.base import INDEXINGS, ItemIndex, ItemIndexing
from common.data.splits import LeaveOneOut, leave_one_out

log = logging.getLogger(__name__)


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
