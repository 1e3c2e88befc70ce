"""Model-free baselines, scored with the same metric code as the model.

* :func:`popularity_ranking`: items by training-interaction count. A model that learns must beat it.
* :func:`run_sasrec`: SASRec (``vip5.sasrec``), the trained sequential baseline, on the same splits and metrics.
* :func:`next_unused_id_ranking`: the id-leak heuristic (Hua et al. 2023). P5/VIP5 number items by first
  appearance along each user's full sequence, so a held-out item is often the next unused integer after the
  user's history ids. The heuristic guesses ``max+1, max+2, last+1, last+2``, then ``h+1`` for each history id h
  (most recent first), then ``max+3, max+4, ...``, skipping ids in the history. It is a sanity check: it scores
  near P5's own numbers on the official ids and about zero on leak-free (re-indexed) ids.

Both rank the full catalogue (sequential prompts) or, given ``candidates``, each user's candidate list (direct
prompts B-5..B-8). Item ids are strings, as everywhere; the heuristic needs integer-valued id strings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

from common.metrics.ranking import RankingMetrics, rank_of_target
from vip5.sasrec import SASRecConfig


def item_popularity(train_sequences: Mapping[str, Sequence[str]]) -> Counter:
    """Interaction count per item over the training sequences."""
    counts: Counter = Counter()
    for seq in train_sequences.values():
        counts.update(seq)
    return counts


def popularity_ranking(
    train_sequences: Mapping[str, Sequence[str]],
    k: int,
    exclude_history: bool = True,
    *,
    histories: Mapping[str, Sequence[str]] | None = None,
    candidates: Mapping[str, Sequence[str]] | None = None,
    catalogue: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Most popular items per user, best first.

    Args:
        train_sequences: user -> training items; popularity is counted here (no val/test leakage).
        k: list length (a candidate list is returned whole when ``k`` exceeds it).
        exclude_history: skip items of the user's history (not applied to candidate lists, which are given).
        histories: user -> history to exclude and users to rank (default: ``train_sequences``; at test time pass
            the test histories, which also hold the validation item).
        candidates: user -> candidate list (direct prompts): rank it by popularity instead of the catalogue.
        catalogue: every item, to rank never-seen items last (order kept); default: the items seen in training.
    Ties keep first-seen order (deterministic).
    """
    counts = item_popularity(train_sequences)
    order = {iid: n for n, iid in enumerate(counts)}  # first-seen order breaks ties
    histories = train_sequences if histories is None else histories
    if candidates is not None:
        return {
            uid: sorted(cands, key=lambda i: (-counts.get(i, 0), order.get(i, len(order))))[:k]
            for uid, cands in candidates.items()
        }
    ranked = sorted(counts, key=lambda i: (-counts[i], order[i]))
    if catalogue is not None:
        seen = set(ranked)
        ranked += [i for i in catalogue if i not in seen]
    out = {}
    for uid, hist in histories.items():
        banned = set(hist) if exclude_history else set()
        top: list[str] = []
        for iid in ranked:
            if iid not in banned:
                top.append(iid)
                if len(top) == k:
                    break
        out[uid] = top
    return out


def _as_int(iid: str) -> int:
    try:
        return int(iid)
    except ValueError:
        raise ValueError(f"next_unused_id_ranking needs integer item ids, got {iid!r}") from None


def _heuristic_head(history: Sequence[str]) -> list[int]:
    """The heuristic's first guesses: max+1, max+2, last+1, last+2, then h+1 per history id, most recent first."""
    ids = [_as_int(i) for i in history]
    top, last = max(ids), ids[-1]
    return [top + 1, top + 2, last + 1, last + 2] + [h + 1 for h in reversed(ids)]


def next_unused_id_ranking(
    histories: Mapping[str, Sequence[str]],
    k: int,
    *,
    catalogue: Collection[str] | None = None,
    candidates: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[str]]:
    """The id-leak heuristic per user (see module doc), best first.

    Args:
        histories: user -> history item ids (integer strings), oldest first.
        k: list length.
        catalogue: valid item ids (skip the rest). After the guesses ``max+3, max+4, ...`` run out of the catalogue,
            its remaining ids follow by distance to the history's max. None: any positive integer is an id.
        candidates: user -> candidate list (direct prompts): the candidates the heuristic's first guesses name
            come first, in its order; the others follow by distance to the history's max (then by id).
    """
    valid = None if catalogue is None else {str(i) for i in catalogue}
    upper = max((_as_int(i) for i in valid), default=0) if valid is not None else None
    out = {}
    for uid, hist in histories.items():
        if not hist:
            raise ValueError(f"user {uid!r} has an empty history")
        top = max(_as_int(i) for i in hist)
        head = _heuristic_head(hist)
        if candidates is not None:
            cands = {_as_int(c): c for c in candidates[uid]}
            position: dict[int, int] = {}
            for n, iid in enumerate(head):
                position.setdefault(iid, n)
            key = {c: (position.get(c, len(head)), abs(c - top), c) for c in cands}
            out[uid] = [cands[c] for c in sorted(cands, key=key.__getitem__)][:k]
            continue
        banned = set(hist)
        ranked: list[str] = []
        taken: set[str] = set()

        def take(iid: int) -> None:
            s = str(iid)
            if iid >= 1 and s not in banned and s not in taken and (valid is None or s in valid):
                taken.add(s)
                ranked.append(s)

        for iid in head:
            take(iid)
        step = 3
        while len(ranked) < k and (upper is None or top + step <= upper):
            take(top + step)
            step += 1
        if len(ranked) < k and valid is not None:  # guesses exhausted: nearest remaining catalogue ids
            rest = [i for i in valid if i not in banned and i not in taken]
            ranked += sorted(rest, key=lambda i: (abs(int(i) - top), int(i)))[: k - len(ranked)]
        out[uid] = ranked[:k]
    return out


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]], targets: Mapping[str, str], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """HR@k, NDCG@k and MRR of per-user ranked lists against one target item per user."""
    users = list(targets)
    missing = [u for u in users if u not in rankings]
    if missing:
        raise KeyError(f"no ranking for {len(missing)} user(s), e.g. {missing[:3]}")
    metric = RankingMetrics(ks=ks)
    metric.update(rank_of_target([rankings[u] for u in users], [targets[u] for u in users]))
    return {name: float(v) for name, v in metric.compute().items()}


def run_baselines(
    data_dir: str,
    source: str = "amazon",
    indexing: str = "sequential",
    n_negatives: int = 99,
    seed: int = 2022,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, dict[str, float]]]:
    """Popularity and next-unused-id on the leave-one-out test split of any data set the readers load.

    Sequential: full-catalogue ranking of each user's test item; direct: ranking of the fixed candidate list
    (the test item plus the saved negatives), exactly the lists ``vip5 test`` uses for B-5/B-8.
    """
    import random
    from pathlib import Path

    from common.data.indexing import build_indexing
    from common.data.readers import read_corpus
    from common.data.splits import candidate_negatives, leave_one_out

    root = Path(data_dir)
    corpus = read_corpus(source, root)
    split = leave_one_out(corpus)
    negatives = candidate_negatives(corpus, split, n=n_negatives, seed=seed, cache_dir=root / "cache")
    index = build_indexing(indexing, corpus, split, seed=seed)
    histories = {u: h for u, (h, _) in split.test.items()}
    targets = {u: t for u, (_, t) in split.test.items()}
    candidates = {}
    for u, t in targets.items():
        cands = list(negatives[u]) + [t]
        random.Random(f"{seed}:{u}").shuffle(cands)
        candidates[u] = cands
    k = max(ks)
    to_id, to_item = index.to_id, index.to_item

    def as_items(ranked: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        return {u: [to_item[i] for i in r] for u, r in ranked.items()}

    id_hist = {u: [to_id[i] for i in h] for u, h in histories.items() if h}
    catalogue = [to_id[i] for i in corpus.item_ids]
    results = {
        "popularity": {
            "sequential": evaluate_rankings(
                popularity_ranking(split.train, k, histories=histories, catalogue=corpus.item_ids), targets, ks),
            "direct": evaluate_rankings(popularity_ranking(split.train, k, candidates=candidates), targets, ks),
        },
    }
    try:
        seq = as_items(next_unused_id_ranking(id_hist, k, catalogue=catalogue))
        direct = as_items(next_unused_id_ranking(
            id_hist, k, candidates={u: [to_id[i] for i in c] for u, c in candidates.items() if u in id_hist}))
        users = {u: targets[u] for u in id_hist}
        results["next_unused_id"] = {"sequential": evaluate_rankings(seq, users, ks),
                                     "direct": evaluate_rankings(direct, users, ks)}
    except ValueError as err:  # ids that are not integers (e.g. atomic tokens): the heuristic does not apply
        results["next_unused_id"] = {"skipped": str(err)}
    return results


def run_sasrec(
    data_dir: str,
    source: str = "amazon",
    minutes: float | None = 40.0,
    users: int | None = None,
    seed: int = 2022,
    ks: Sequence[int] = (5, 10),
    config: SASRecConfig | None = None,
) -> dict[str, float]:
    """Train SASRec (``vip5.sasrec``) on the training sequences for ``minutes`` (None: ``config.max_epochs``) and
    rank the full catalogue for the test users (all, or a fixed sample of ``users``), history excluded."""
    from pathlib import Path

    from common.data.readers import read_corpus
    from common.data.splits import leave_one_out, sample_users
    from vip5.sasrec import SASRec, fit_sasrec, sasrec_ranks

    corpus = read_corpus(source, Path(data_dir))
    split = leave_one_out(corpus)
    test_users = sample_users(list(split.test), users, seed)
    num = {iid: n + 1 for n, iid in enumerate(corpus.item_ids)}
    config = config or SASRecConfig(seed=seed)
    model = SASRec(len(num), config)
    stats = fit_sasrec(model, {u: [num[i] for i in s] for u, s in split.train.items()}, config,
                       max_seconds=None if minutes is None else minutes * 60)
    ranks = sasrec_ranks(model, [[num[i] for i in split.test[u][0]] for u in test_users],
                         [num[split.test[u][1]] for u in test_users])
    metric = RankingMetrics(ks=ks)
    metric.update(ranks)
    seconds = max(stats.seconds, 1e-9)
    return {**{name: float(v) for name, v in metric.compute().items()}, "n": len(test_users), "steps": stats.steps,
            "epochs": round(stats.epochs, 2), "train_seconds": round(stats.seconds, 1),
            "samples_per_s": round(stats.sequences / seconds, 1), "tokens_per_s": round(stats.targets / seconds, 1)}


def main(args: list[str] | None = None) -> None:
    """``python -m vip5.baselines --data_dir data/beauty [--model popularity|sasrec] [--out baselines.json]``."""
    import json

    from jsonargparse import ArgumentParser

    from common.io import write_json

    parser = ArgumentParser(description="Baselines through VIP5's splits and metrics: popularity and next unused id "
                                        "(model-free), or SASRec (trained).")
    parser.add_argument("--data_dir", type=str, required=True, help="data folder")
    parser.add_argument("--source", type=str, default="amazon", help="amazon | pog | movielens")
    parser.add_argument("--model", type=Literal["popularity", "sasrec"], default="popularity",
                        help="popularity (with the next-unused-id rule) or sasrec")
    parser.add_argument("--indexing", type=str, default="sequential", help="item indexing the ids come from")
    parser.add_argument("--n_negatives", type=int, default=99, help="negatives in the candidate lists")
    parser.add_argument("--seed", type=int, default=2022, help="seed of negatives, indexing and SASRec")
    parser.add_argument("--minutes", type=float | None, default=40.0, help="SASRec training budget (None: epochs)")
    parser.add_argument("--users", type=int | None, default=None, help="SASRec: test a fixed sample of users")
    parser.add_argument("--sasrec", type=SASRecConfig, default=SASRecConfig(), help="SASRec settings")
    parser.add_argument("--out", type=str | None, default=None, help="write the results as JSON here")
    cfg = parser.parse_args(args)
    if cfg.model == "sasrec":
        sasrec_config = SASRecConfig(**{**vars(cfg.sasrec), "seed": cfg.seed})
        results = {"sasrec": run_sasrec(cfg.data_dir, cfg.source, cfg.minutes, cfg.users, cfg.seed,
                                        config=sasrec_config)}
    else:
        results = {"indexing": cfg.indexing, **run_baselines(cfg.data_dir, cfg.source, cfg.indexing,
                                                             cfg.n_negatives, cfg.seed)}
    print(json.dumps(results, indent=2))
    if cfg.out:
        write_json(cfg.out, results)


if __name__ == "__main__":
    main()
