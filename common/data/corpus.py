"""One in-memory schema for every data source (Amazon/P5, POG, MovieLens).

Readers (``common.data.amazon``, ``.pog``, ``.movielens``) turn files into a :class:`Corpus`; splits,
item indexing, image features and both models only ever see a ``Corpus``. Item and user ids are the
strings written in the source files (Amazon/P5: the numbers of ``sequential_data.txt``; POG: item ids;
MovieLens: movieId), so the ``original`` item indexing is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file (and line or field) at fault."""


@dataclass
class Item:
    item_id: str
    title: str | None = None
    description: str | None = None
    categories: list[str] = field(default_factory=list)
    image: str | None = None  # path (absolute, or relative to Corpus.root) or URL; None when unknown
    raw_id: str | None = None  # id in the raw source (Amazon ASIN), when it differs from item_id


@dataclass
class User:
    user_id: str
    name: str | None = None  # Amazon reviewerName; None when unknown
    raw_id: str | None = None


@dataclass
class Review:
    """One (user, item) interaction with text: the material of explanation generation."""

    user_id: str
    item_id: str
    rating: float | None = None
    text: str | None = None
    summary: str | None = None
    explanation: str | None = None
    feature: str | None = None
    timestamp: int | None = None
    user_name: str | None = None


@dataclass
class Corpus:
    """Users, items, time-ordered interactions and reviews of one data set.

    Attributes:
        name: data set name (``beauty``, ``pog``, ``movielens`` ...), used as a prompt prefix and cache key.
        root: the folder the files were read from; relative image paths resolve against it.
        items: item id -> Item, in a stable order (the order of the item catalogue in the files).
        users: user id -> User, in file order.
        sequences: user id -> that user's item ids, oldest first. Leave-one-out splits are cut from these.
        reviews: interactions with text; ``review_split`` (when the source ships one) indexes into it.
        review_split: ``{"train"|"val"|"test": [indices into reviews]}`` or None (then one is computed).
        negatives: user id -> fixed negative item ids (``negative_samples.txt``), or None.
        missing: optional files that were absent, file name -> what was disabled because of it.
    """

    name: str
    root: Path
    items: dict[str, Item]
    users: dict[str, User]
    sequences: dict[str, list[str]]
    reviews: list[Review] = field(default_factory=list)
    review_split: dict[str, list[int]] | None = None
    negatives: dict[str, list[str]] | None = None
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def item_ids(self) -> list[str]:
        return list(self.items)

    @property
    def user_ids(self) -> list[str]:
        return list(self.users)

    @property
    def has_titles(self) -> bool:
        return any(it.title for it in self.items.values())

    @property
    def has_images(self) -> bool:
        return any(it.image for it in self.items.values())

    @property
    def has_user_names(self) -> bool:
        return any(u.name for u in self.users.values())

    def image_path(self, item_id: str) -> str | None:
        """Absolute path (or URL) of an item's image, or None."""
        ref = self.items[item_id].image
        if ref is None or "://" in ref:
            return ref
        p = Path(ref)
        return str(p if p.is_absolute() else self.root / p)

    def validate(self) -> None:
        """Check referential integrity; raise DataError naming the first offending record."""
        for uid, seq in self.sequences.items():
            if uid not in self.users:
                raise DataError(f"{self.name}: sequence of unknown user {uid!r}")
            for iid in seq:
                if iid not in self.items:
                    raise DataError(f"{self.name}: user {uid!r} interacts with unknown item {iid!r}")
        for n, r in enumerate(self.reviews):
            if r.item_id not in self.items:
                raise DataError(f"{self.name}: review #{n} names unknown item {r.item_id!r}")
            if r.user_id not in self.users:
                raise DataError(f"{self.name}: review #{n} names unknown user {r.user_id!r}")
        if self.negatives:
            for uid, negs in self.negatives.items():
                for iid in negs:
                    if iid not in self.items:
                        raise DataError(f"{self.name}: negatives of user {uid!r} name unknown item {iid!r}")
