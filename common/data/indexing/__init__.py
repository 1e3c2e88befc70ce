"""Pluggable item indexing: the id string each item gets in prompts (Hua et al. 2023).

P5/VIP5 number items by first appearance along each user's *full* sequence, so a held-out item is often the
next unused integer after the user's history ids: a model can score by arithmetic on ids. The
schemes here:

Digit-string ids (``numbered.py``):

- ``original``: the ids of the source files (faithful mode; leaky on the P5 Amazon files);
- ``appearance``: P5's numbering recomputed from the corpus (first appearance along full sequences), to
  reproduce the leak on sources whose own ids do not have it (MovieLens, POG);
- ``sequential``: OpenP5's time-aware train-first numbering: every user's training part first, then the
  held-out items, so held-out items no longer get the next free number;
- ``random``: a seeded shuffle numbered from 1001 (OpenP5), every id with the same number of digits.

``tokens.py`` adds schemes whose ids are new vocabulary tokens: ``atomic`` (one token per item),
``collaborative`` (hierarchical spectral clusters of the co-occurrence graph) and ``semantic`` (residual
k-means over image + text features).

New schemes subclass :class:`ItemIndexing` and register with ``@register_indexing("name")``; prompts and
decoding tries only ever read an :class:`ItemIndex`.
"""

from common.data.indexing import numbered, tokens  # noqa: F401  (each module registers its schemes)
from common.data.indexing.base import INDEXINGS, ItemIndex, ItemIndexing, register_indexing
from common.data.indexing.build import build_indexing
from common.data.indexing.numbered import leak_rate

__all__ = ["INDEXINGS", "ItemIndex", "ItemIndexing", "build_indexing", "leak_rate", "register_indexing"]
