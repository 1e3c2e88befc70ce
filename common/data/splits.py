"""Leave-one-out splits, fixed candidate negatives and review (explanation) splits.

- ``leave_one_out``: train = seq[:-2], val = (history, seq[-2]), test = (history, seq[-1]) as in P5/VIP5.
  Unlike P5, a history never contains its own target.
- ``candidate_negatives``: fixed 99-item lists, from the source's negative_samples.txt or sampled once with a
  seed and cached, so test candidates do not change between runs (the official code re-draws them).
- ``review_splits``: the shipped exp_splits, or P5's random 8:1:1 split; leak-free by default
  (no training review of a user's val/test item).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from common.data._source import text_lines
from common.data.corpus import Corpus, DataError, Review
from common.io import write_text


@dataclass
class LeaveOneOut:
    """Per-user leave-one-out split. ``skipped_users`` counts users too short to split."""

    train: dict[str, list[str]]
    val: dict[str, tuple[list[str], str]]
    test: dict[str, tuple[list[str], str]]
    skipped_users: int = 0

    @property
    def users(self) -> list[str]:
        return list(self.test)


def leave_one_out(corpus: Corpus, min_length: int = 3) -> LeaveOneOut:
    """Split each user's sequence: train seq[:-2], val target seq[-2], test target seq[-1].

    Occurrences of a target are removed from its own history. Users with fewer than ``min_length`` items, or
    whose validation history would be empty after that removal, are skipped (counted in ``skipped_users``).
    """
    if min_length < 3:
        raise ValueError(f"min_length must be >= 3 (train, val and test need one item each), got {min_length}")
    train: dict[str, list[str]] = {}
    val: dict[str, tuple[list[str], str]] = {}
    test: dict[str, tuple[list[str], str]] = {}
    skipped = 0
    for uid, seq in corpus.sequences.items():
        if len(seq) < min_length:
            skipped += 1
            continue
        val_hist = [i for i in seq[:-2] if i != seq[-2]]
        if not val_hist:  # e.g. [a, a, a]: nothing left to condition on
            skipped += 1
            continue
        train[uid] = list(seq[:-2])
        val[uid] = (val_hist, seq[-2])
        test[uid] = ([i for i in seq[:-1] if i != seq[-1]], seq[-1])
    return LeaveOneOut(train, val, test, skipped)


def sample_users(users: list[str], n: int | None, seed: int) -> list[str]:
    """A fixed random sample of ``n`` users, in their given order (all of them when ``n`` is None or too large).

    Every model of a comparison (VIP5, SASRec, popularity) takes its test users from here, so they rank the same
    users."""
    if n is None or n >= len(users):
        return list(users)
    if n < 1:
        raise ValueError(f"a user sample needs n >= 1, got {n}")
    keep = set(random.Random(seed).sample(range(len(users)), n))
    return [u for i, u in enumerate(users) if i in keep]


def _check_catalogue(corpus: Corpus, n: int) -> None:
    if len(corpus.items) < n + 1:
        raise DataError(
            f"{corpus.name}: {len(corpus.items)} items cannot give {n} negatives plus the target per user; "
            f"need at least {n + 1} items (lower n)"
        )


def _from_source(corpus: Corpus, users: list[str], n: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    assert corpus.negatives is not None
    for uid in users:
        if uid not in corpus.negatives:
            raise DataError(f"{corpus.name}: negative_samples.txt has no line for user {uid!r}")
        seen = set(corpus.sequences[uid])
        usable = list(dict.fromkeys(i for i in corpus.negatives[uid] if i not in seen))
        if len(usable) < n:
            raise DataError(
                f"{corpus.name}: negative_samples.txt gives user {uid!r} only {len(usable)} distinct negatives "
                f"outside the user's sequence, fewer than n={n}; lower n or remove the file to sample them"
            )
        out[uid] = usable[:n]
    return out


def _sample(items: list[str], exclude: set[str], n: int, rng: random.Random) -> list[str]:
    """n distinct items drawn uniformly from ``items`` minus ``exclude``."""
    if len(exclude) * 2 > len(items):  # dense exclusion: sample from the explicit remainder
        return rng.sample([i for i in items if i not in exclude], n)
    picked: dict[str, None] = {}
    while len(picked) < n:
        i = items[rng.randrange(len(items))]
        if i not in exclude:
            picked[i] = None
    return list(picked)


def _read_cache(path: Path, corpus: Corpus, users: list[str], n: int) -> dict[str, list[str]]:
    cached: dict[str, list[str]] = {}
    try:
        for _, line in text_lines(path):
            toks = line.split()
            if toks:
                cached[toks[0]] = toks[1:]
    except DataError as e:
        raise DataError(f"{e}; delete the file to sample new negatives") from None
    for uid in users:
        negs = cached.get(uid)
        unique = set(negs or ())
        if (
            negs is None
            or len(negs) != n
            or len(unique) != n
            or not unique.isdisjoint(corpus.sequences.get(uid, ()))
            or not all(map(corpus.items.__contains__, unique))
        ):
            raise DataError(
                f"{path} does not match corpus {corpus.name!r} (user {uid!r}); it was made for other data: "
                "delete it to sample new negatives"
            )
    return {uid: cached[uid] for uid in users}


def candidate_negatives(
    corpus: Corpus,
    split: LeaveOneOut,
    n: int = 99,
    seed: int = 2022,
    cache_dir: Path | None = None,
) -> dict[str, list[str]]:
    """Fixed negatives for each evaluated user (the users of ``split.test``), none in the user's sequence.

    Source negatives (``corpus.negatives``) are used when present. Otherwise they are sampled uniformly,
    each user with its own RNG seeded by (seed, user id) so lists do not depend on which other users exist,
    and written atomically to ``cache_dir/negative_samples_<n>_<seed>.txt``; later calls reload that file.
    """
    users = split.users
    _check_catalogue(corpus, n)
    if corpus.negatives is not None:
        return _from_source(corpus, users, n)
    path = Path(cache_dir) / f"negative_samples_{n}_{seed}.txt" if cache_dir is not None else None
    if path is not None and path.is_file():
        return _read_cache(path, corpus, users, n)
    items = corpus.item_ids
    out: dict[str, list[str]] = {}
    for uid in users:
        exclude = set(corpus.sequences[uid])
        if len(items) - len(exclude) < n:
            raise DataError(f"{corpus.name}: user {uid!r} has touched all but {len(items) - len(exclude)} "
                            f"items, fewer than n={n} negatives")
        out[uid] = _sample(items, exclude, n, random.Random(f"{seed}:{uid}"))
    if path is not None:
        write_text(path, "".join(f"{uid} {' '.join(negs)}\n" for uid, negs in out.items()))
    return out


def _p5_random_split(reviews: list[Review], seed: int) -> dict[str, list[int]]:
    """P5's 8:1:1 review split: one review per user and per item into train, fill train to 80 %, 10 % val."""
    rng = random.Random(seed)
    order = list(range(len(reviews)))
    rng.shuffle(order)
    train: dict[int, None] = {}
    first_user: dict[str, int] = {}
    first_item: dict[str, int] = {}
    for k in order:
        first_user.setdefault(reviews[k].user_id, k)
        first_item.setdefault(reviews[k].item_id, k)
    for k in (*first_user.values(), *first_item.values()):
        train[k] = None
    rest = [k for k in order if k not in train]
    n_train = max(len(train), int(0.8 * len(reviews)))
    n_val = int(0.1 * len(reviews))
    fill = n_train - len(train)
    train.update(dict.fromkeys(rest[:fill]))
    rest = rest[fill:]
    return {"train": sorted(train), "val": sorted(rest[:n_val]), "test": sorted(rest[n_val:])}


def review_splits(
    corpus: Corpus,
    split: LeaveOneOut | None = None,
    seed: int = 2022,
    leak_free: bool = True,
) -> dict[str, list[Review]]:
    """Explanation reviews per split ("train", "val", "test"); only reviews with an explanation are kept.

    Uses ``corpus.review_split`` when the source ships one, else P5's random 8:1:1 split with ``seed``.
    ``leak_free`` drops from train every review of a user's own val/test item (computing the leave-one-out
    split when ``split`` is None), so no training prompt names a held-out (user, item) pair.
    """
    index = corpus.review_split or _p5_random_split(corpus.reviews, seed)
    out = {
        name: [corpus.reviews[k] for k in index.get(name, []) if corpus.reviews[k].explanation]
        for name in ("train", "val", "test")
    }
    if leak_free:
        split = split if split is not None else leave_one_out(corpus)
        held = {(u, t) for part in (split.val, split.test) for u, (_, t) in part.items()}
        out["train"] = [r for r in out["train"] if (r.user_id, r.item_id) not in held]
    return out
