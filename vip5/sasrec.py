"""SASRec (Kang & McAuley, 2018) with cross-entropy over all items: the sequential baseline VIP5 is measured against.

A causal self-attention encoder over a user's most recent items (learned positions, pre-norm blocks, tied item
embeddings as the output layer). Every position of a training sequence predicts the next item, scored by a full
softmax over the catalogue: the cross-entropy variant of Klenitskiy & Vasilev ("Turning Dross Into Gold Loss: is
BERT4Rec really better than SASRec?", RecSys 2023), which is the strong published form of SASRec.

It trains and ranks on the same leave-one-out split, full catalogue and metric code (``common.metrics.ranking``)
as VIP5 and the popularity baseline; ``python -m vip5.baselines --model sasrec`` runs it. No library ships a
SASRec for these splits (RecBole brings its own data pipeline), so the model and its loop are written here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass
class SASRecConfig:
    """SASRec settings; the defaults are the usual ones for Amazon 5-core data.

    Attributes:
        hidden: embedding and model width.
        layers: self-attention blocks.
        heads: attention heads.
        max_len: most recent items a sequence keeps.
        dropout: dropout on embeddings, attention and feed-forward outputs (high on sparse Amazon data).
        lr: Adam learning rate.
        batch_size: user sequences per step (64: on a CPU budget, more optimiser steps reach a given HR@10 about
            twice as fast as 256 on Amazon Sports).
        max_epochs: upper bound on epochs (the time budget usually ends training first).
        seed: seed of initialisation and shuffling.
    """

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.5
    lr: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 200
    seed: int = 2022


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRec(nn.Module):
    """Item ids ``1..n_items`` (0 = padding), sequences left-padded.

    Args:
        n_items: catalogue size.
        config: sizes and dropout.
    """

    def __init__(self, n_items: int, config: SASRecConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or SASRecConfig()
        if c.hidden % c.heads:
            raise ValueError(f"hidden ({c.hidden}) must divide by heads ({c.heads})")
        self.n_items = n_items
        self.items = nn.Embedding(n_items + 1, c.hidden, padding_idx=0)
        self.positions = nn.Embedding(c.max_len, c.hidden)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(_Block(c.hidden, c.heads, c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.hidden)
        nn.init.normal_(self.items.weight, std=c.hidden ** -0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, L, d]`` of left-padded item sequences ``[B, L]`` (L <= max_len)."""
        b, n = seqs.shape
        if n > self.config.max_len:
            raise ValueError(f"sequences of {n} items exceed max_len={self.config.max_len}")
        pad = seqs == 0
        # positions count back from the most recent item, so a shorter batch keeps the same position of each item
        pos = torch.arange(self.config.max_len - n, self.config.max_len, device=seqs.device)
        x = self.items(seqs) * math.sqrt(self.config.hidden) + self.positions(pos)
        x = self.drop(x.masked_fill(pad.unsqueeze(-1), 0.0))
        causal = torch.ones(n, n, dtype=torch.bool, device=seqs.device).tril()
        # a real position attends to earlier real positions; a padding row to itself (never an empty row)
        mask = (causal & ~pad[:, None, :]) | torch.eye(n, dtype=torch.bool, device=seqs.device)
        mask = mask[:, None]  # [B, 1, L, L], shared by the heads
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item ``1..n_items`` (column ``i - 1`` is item ``i``)."""
        return hidden @ self.items.weight[1:].T


def left_pad(seqs: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """The last ``max_len`` ids of each sequence, left-padded with 0 to the longest one."""
    n = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = torch.zeros(len(seqs), n, dtype=torch.long)
    for row, s in enumerate(seqs):
        s = list(s)[-n:]
        if s:
            out[row, n - len(s):] = torch.tensor(s)
    return out


@dataclass
class FitStats:
    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0
    targets: int = 0  # next-item targets (= input items) trained on
    sequences: int = 0


def fit_sasrec(
    model: SASRec,
    train: Mapping[str, Sequence[int]],
    config: SASRecConfig,
    max_seconds: float | None = None,
    progress: bool = True,
) -> FitStats:
    """Train on every position of every training sequence (next-item cross-entropy over all items).

    Args:
        model: the SASRec to train (in place).
        train: user -> training item ids (1-based), oldest first.
        config: optimisation settings (lr, batch size, epochs, seed).
        max_seconds: wall-clock budget of training; None = ``config.max_epochs`` epochs.
        progress: show a progress bar.
    """
    seqs = [list(s)[-(config.max_len + 1):] for s in train.values() if len(s) > 1]
    if not seqs:
        raise ValueError("no training sequence has two items or more")
    gen = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
    stats = FitStats()
    start = time.perf_counter()
    model.train()
    steps_per_epoch = math.ceil(len(seqs) / config.batch_size)
    bar = tqdm(total=None if max_seconds else config.max_epochs * steps_per_epoch, disable=not progress,
               desc="SASRec", unit="step")
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
        for epoch in range(config.max_epochs):
            order = list(range(len(seqs)))
            rng.shuffle(order)
            for lo in range(0, len(order), config.batch_size):
                batch = [seqs[i] for i in order[lo: lo + config.batch_size]]
                inputs = left_pad([s[:-1] for s in batch], config.max_len)
                targets = left_pad([s[1:] for s in batch], config.max_len)
                valid = targets > 0
                hidden = model(inputs)[valid]  # only real positions reach the softmax
                loss = F.cross_entropy(model.item_logits(hidden), targets[valid] - 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                stats.steps += 1
                stats.targets += int(valid.sum())
                stats.sequences += len(batch)
                stats.seconds = time.perf_counter() - start
                bar.update(1)
                if stats.steps % 50 == 1:
                    bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch, refresh=False)
                if max_seconds is not None and stats.seconds >= max_seconds:
                    stats.epochs = epoch + (lo + len(batch)) / len(order)
                    bar.close()
                    return stats
            stats.epochs = epoch + 1
    bar.close()
    return stats


@torch.no_grad()
def sasrec_ranks(
    model: SASRec,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    exclude_history: bool = True,
    batch_size: int = 512,
) -> torch.Tensor:
    """0-based rank of each target among all items (strictly better-scored items ahead of it).

    Items of the history are skipped (as in every ranking of this framework) when ``exclude_history``; the target
    itself is never skipped.
    """
    model.eval()
    ranks = []
    for lo in range(0, len(histories), batch_size):
        hist = histories[lo: lo + batch_size]
        tgt = torch.tensor(targets[lo: lo + batch_size]) - 1
        scores = model.item_logits(model(left_pad(hist, model.config.max_len))[:, -1])
        if exclude_history:
            for row, h in enumerate(hist):
                drop = torch.tensor([i - 1 for i in set(h) if i - 1 != int(tgt[row])], dtype=torch.long)
                if len(drop):
                    scores[row, drop] = -math.inf
        target_score = scores.gather(1, tgt[:, None])
        ranks.append((scores > target_score).sum(1))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
