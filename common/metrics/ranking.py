"""Top-k ranking metrics with one ground-truth item per sample (RecBole style: pure functions of ranks).

A *rank* is the 0-based position of the ground truth in the ranked list, or -1 when it is absent (not
returned, beyond the list, or dropped as an invalid id). With a single relevant item the ideal DCG is 1, so
NDCG@k = 1/log2(rank + 2) for rank < k (P5/VIP5 ``evaluate_all`` and OpenP5 compute the same).
HR@k equals Recall@k here. The functions return per-sample values; average them (or use :class:`RankingMetrics`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def rank_of_target(ranked_lists: Sequence[Sequence[Hashable]], targets: Sequence[Hashable]) -> torch.Tensor:
    """0-based position of each target in its ranked list, -1 when absent (LongTensor of shape (N,))."""
    if len(ranked_lists) != len(targets):
        raise ValueError(f"{len(ranked_lists)} ranked lists for {len(targets)} targets")
    ranks = []
    for ranked, target in zip(ranked_lists, targets):
        ranked = list(ranked)
        ranks.append(ranked.index(target) if target in ranked else -1)
    return torch.tensor(ranks, dtype=torch.long)


def _hit(ranks: torch.Tensor, k: int | None) -> torch.Tensor:
    ranks = torch.as_tensor(ranks)
    hit = ranks >= 0
    return hit & (ranks < k) if k is not None else hit


def hit_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """1.0 where the target is in the top k (0-based rank < k), else 0.0."""
    return _hit(ranks, k).float()


def ndcg_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """1/log2(rank + 2) where rank < k, else 0 (single ground truth, IDCG = 1)."""
    ranks = torch.as_tensor(ranks)
    gain = 1.0 / torch.log2(ranks.clamp_min(0).double() + 2.0)
    return torch.where(_hit(ranks, k), gain, torch.zeros_like(gain)).float()


def mrr(ranks: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Reciprocal rank 1/(rank + 1); 0 when absent (or rank >= k when k is given)."""
    ranks = torch.as_tensor(ranks)
    rr = 1.0 / (ranks.clamp_min(0).double() + 1.0)
    return torch.where(_hit(ranks, k), rr, torch.zeros_like(rr)).float()


class RankingMetrics(Metric):
    """Accumulates ranks over batches (and processes) and computes ``hr@k``, ``ndcg@k`` per k and ``mrr``.

    Hold one per split (and per test prompt) in the LightningModule; ``update(ranks)`` with the ranks of
    :func:`rank_of_target`. The state is the list of ranks, gathered across processes with ``cat``, so means
    are exact under DDP (no mean of means).

    Args:
        ks: cut-offs; VIP5 reports (5, 10) for sequential and (1, 5, 10) for direct prompts.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: Sequence[int] = (5, 10), **kwargs) -> None:
        super().__init__(**kwargs)
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"ks must be positive cut-offs, got {ks}")
        self.ks = tuple(int(k) for k in ks)
        self.add_state("ranks", default=[], dist_reduce_fx="cat")

    def update(self, ranks: torch.Tensor) -> None:
        self.ranks.append(torch.as_tensor(ranks, dtype=torch.long, device=self.device).reshape(-1))

    def compute(self) -> dict[str, torch.Tensor]:
        ranks = dim_zero_cat(self.ranks) if len(self.ranks) else torch.zeros(0, dtype=torch.long)
        if ranks.numel() == 0:
            nan = torch.tensor(math.nan)
            return {**{f"{m}@{k}": nan for k in self.ks for m in ("hr", "ndcg")}, "mrr": nan}
        out = {}
        for k in self.ks:
            out[f"hr@{k}"] = hit_at_k(ranks, k).mean()
            out[f"ndcg@{k}"] = ndcg_at_k(ranks, k).mean()
        out["mrr"] = mrr(ranks).mean()
        return out
