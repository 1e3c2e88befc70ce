"""Next-item targets per step: SASRec and a plain T5 at the same number of optimiser steps.

    .venv/bin/python bench/vip5_targets.py DATA_DIR --model sasrec-one|sasrec-all|t5|t5-prefix|t5-causal [--steps 1500]

Every variant trains with batch 64 at lr 1e-3 (SASRec: the baseline's constant Adam; T5: the VIP5 recipe's
warm-up, linear decay and gradient clipping) and reports HR@10 / NDCG@10 on a fixed sample of test users (full
catalogue, history excluded) every ``--eval_every`` steps (500), with the number of next-item
targets seen so far:

- ``sasrec-all``: SASRec as the baseline trains it, every position of a user's sequence a target (~7 a sequence).
- ``sasrec-one``: the same network, one target a sample: a random (user, position) pair, the 10 items before it.
- ``t5``: a T5 built from config whose vocabulary is the item ids (no prompt text): the encoder reads the 10
  previous items newest first, the decoder's first position predicts the next one (one target a sample).
- ``t5-prefix``: the same T5, the newest history item fed as the decoder's first input and up to 8 later items as
  continued targets, every one of them predicted from the item before it.
- ``t5-causal``: the same T5 with SASRec's targets: the user's sequence (up to 50 items) in the decoder, every
  position predicting the next item; the encoder reads one constant token.

T5 options: ``--emb_std`` (initial std of the embedding rows), ``--emb_lr`` (learning-rate multiple of the
embedding table), ``--dropout``, ``--constant_lr``, ``--sasrec_optimizer`` (Adam with beta2 0.98, a constant rate,
no clipping).

It measures learning per step, not speed, so it can run while the machine does other work.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HISTORY = 10
CONTINUED = 8


def _right_pad(rows: list[list[int]], value: int = 0) -> torch.Tensor:
    """Rows right-padded with ``value`` (T5 inputs and labels; SASRec's left padding is ``vip5.sasrec.left_pad``)."""
    out = torch.full((len(rows), max(map(len, rows))), value, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _ranks(scores: torch.Tensor, targets: torch.Tensor, histories: list[list[int]]) -> torch.Tensor:
    for row, hist in enumerate(histories):
        drop = [i for i in set(hist) if i != int(targets[row])]
        if drop:
            scores[row, drop] = -math.inf
    return (scores > scores.gather(1, targets[:, None])).sum(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--source", default="amazon")
    ap.add_argument("--model", required=True, choices=["sasrec-one", "sasrec-all", "t5", "t5-prefix", "t5-causal"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval_every", type=int, default=500, help="steps between test evaluations")
    ap.add_argument("--constant_lr", action="store_true", help="T5: keep lr 1e-3 after the warm-up (as SASRec)")
    ap.add_argument("--emb_std", type=float, default=None, help="T5: initial std of the item embeddings (T5: 1)")
    ap.add_argument("--dropout", type=float, default=0.1, help="T5: dropout rate")
    ap.add_argument("--emb_lr", type=float, default=1.0, help="T5: learning-rate multiplier of the embeddings")
    ap.add_argument("--sasrec_optimizer", action="store_true",
                    help="T5: SASRec's optimiser (Adam, betas 0.9/0.98, constant lr, no clipping)")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from transformers import T5Config, T5ForConditionalGeneration

    from common.data.readers import read_corpus
    from common.data.splits import leave_one_out, sample_users
    from common.metrics.ranking import hit_at_k, ndcg_at_k
    from vip5.sasrec import SASRec, SASRecConfig, left_pad

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    corpus = read_corpus(args.source, args.data_dir)
    split = leave_one_out(corpus)
    users = sample_users(list(split.test), args.users, args.seed)
    index = {iid: n for n, iid in enumerate(corpus.item_ids)}  # 0-based item index
    train = [[index[i] for i in s] for s in split.train.values() if len(s) > 1]
    pairs = [(u, t) for u, s in enumerate(train) for t in range(1, len(s))]
    n_items = len(index)

    if args.model.startswith("sasrec"):
        config = SASRecConfig(max_len=HISTORY if args.model == "sasrec-one" else 50)
        sasrec = SASRec(n_items, config)  # ids 1..n (0 pads)
        params = list(sasrec.parameters())
        opt = torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.98))
        schedule, clip = (lambda step: 1.0), None  # the baseline's optimiser (vip5.sasrec.fit_sasrec)

        def scores(hists: list[list[int]]) -> torch.Tensor:  # hists oldest first
            x = left_pad([[i + 1 for i in h] for h in hists], config.max_len)
            return sasrec.item_logits(sasrec(x)[:, -1])

        def loss_of(rng: random.Random) -> tuple[torch.Tensor, int]:
            if args.model == "sasrec-one":
                batch = [pairs[rng.randrange(len(pairs))] for _ in range(64)]
                x = left_pad([[i + 1 for i in train[u][:t]] for u, t in batch], config.max_len)
                y = torch.tensor([train[u][t] for u, t in batch])
                return F.cross_entropy(sasrec.item_logits(sasrec(x)[:, -1]), y), len(y)
            seqs = [train[rng.randrange(len(train))][-51:] for _ in range(64)]
            x = left_pad([[i + 1 for i in s[:-1]] for s in seqs], config.max_len)
            y = left_pad([[i + 1 for i in s[1:]] for s in seqs], config.max_len)
            valid = y > 0
            return F.cross_entropy(sasrec.item_logits(sasrec(x)[valid]), y[valid] - 1), int(valid.sum())

        model = sasrec
    else:
        # vocabulary: 0 pad / decoder start, 1 eos, items from 2
        t5 = T5ForConditionalGeneration(T5Config(
            vocab_size=n_items + 2, d_model=64, d_ff=256, d_kv=32, num_heads=2, num_layers=2, num_decoder_layers=2,
            dropout_rate=args.dropout, feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=1))
        if args.emb_std is not None:
            with torch.no_grad():
                t5.shared.weight.normal_(0.0, args.emb_std)
        params = list(t5.parameters())
        emb = [t5.shared.weight]
        groups = [{"params": [p for p in params if p is not emb[0]], "mult": 1.0},
                  {"params": emb, "mult": args.emb_lr}]
        opt = (torch.optim.Adam(groups, lr=1e-3, betas=(0.9, 0.98)) if args.sasrec_optimizer
               else torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.0))

        def schedule(step: int) -> float:  # the VIP5 recipe's: 200 warm-up steps, linear decay to 0 (or constant)
            if args.sasrec_optimizer:
                return 1.0
            decay = 1.0 if args.constant_lr else max(0.0, 1 - step / args.steps)
            return min(1.0, (step + 1) / 200) * decay

        clip = None if args.sasrec_optimizer else 1.0
        prefix = args.model == "t5-prefix"

        def item_logits(x: torch.Tensor, dec: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
            mask = x.ne(0).long()
            enc = t5.encoder(input_ids=x, attention_mask=mask).last_hidden_state
            hidden = t5.decoder(input_ids=dec, encoder_hidden_states=enc, encoder_attention_mask=mask).last_hidden_state
            hidden = hidden[:, -1] if labels is None else hidden[labels != -100]
            return t5.lm_head(hidden * t5.model_dim**-0.5)[:, 2:]  # tied embeddings: T5's output scaling

        def encoder_input(hists: list[list[int]]) -> torch.Tensor:  # newest first
            return _right_pad([[i + 2 for i in reversed(h[-HISTORY:])] for h in hists])

        def scores(hists: list[list[int]]) -> torch.Tensor:
            if args.model == "t5-causal":
                dec = _right_pad([[0] + [i + 2 for i in h[-50:]] for h in hists])
                newest = torch.full_like(dec, -100)  # scores read at each row's newest item (0 = start or padding)
                newest[torch.arange(len(hists)), dec.ne(0).sum(1)] = 0
                return item_logits(torch.ones(len(hists), 1, dtype=torch.long), dec, newest)
            x = encoder_input(hists)
            dec = torch.zeros(len(hists), 1, dtype=torch.long)
            return item_logits(x, torch.cat([dec, x[:, :1]], 1) if prefix else dec)

        def loss_of(rng: random.Random) -> tuple[torch.Tensor, int]:
            if args.model == "t5-causal":
                seqs = [train[rng.randrange(len(train))][-51:] for _ in range(64)]
                dec = _right_pad([[0] + [i + 2 for i in s[:-1]] for s in seqs])
                labels = _right_pad([[-100] + s[1:] for s in seqs], value=-100)
                x = torch.ones(len(seqs), 1, dtype=torch.long)
                valid = labels != -100
                return F.cross_entropy(item_logits(x, dec, labels), labels[valid]), int(valid.sum())
            batch = [pairs[rng.randrange(len(pairs))] for _ in range(64)]
            x = encoder_input([train[u][:t] for u, t in batch])
            if not prefix:
                y = torch.tensor([train[u][t] for u, t in batch])
                return F.cross_entropy(item_logits(x, torch.zeros(len(batch), 1, dtype=torch.long)), y), len(y)
            dec, lab = [], []
            for u, t in batch:
                later = train[u][t:t + CONTINUED]
                dec.append([0, train[u][t - 1] + 2] + [i + 2 for i in later[:-1]])
                lab.append([-100] + later)
            labels = _right_pad(lab, value=-100)
            valid = labels != -100
            return F.cross_entropy(item_logits(x, _right_pad(dec), labels), labels[valid]), int(valid.sum())

        model = t5

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        model.eval()
        ranks = []
        for lo in range(0, len(users), 500):
            chunk = users[lo: lo + 500]
            hists = [[index[i] for i in split.test[u][0]] for u in chunk]
            targets = torch.tensor([index[split.test[u][1]] for u in chunk])
            ranks.append(_ranks(scores(hists), targets, hists))
        model.train()
        r = torch.cat(ranks)
        return float(hit_at_k(r, 10).mean()), float(ndcg_at_k(r, 10).mean())

    rng = random.Random(0)
    targets_seen, start = 0, time.perf_counter()
    model.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * schedule(step) * group.get("mult", 1.0)
        loss, n = loss_of(rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        targets_seen += n
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            hr, ndcg = evaluate()
            print(json.dumps({"model": args.model, "step": step + 1, "targets": targets_seen,
                              "loss": round(loss.item(), 3), "hr10": round(hr, 4), "ndcg10": round(ndcg, 4),
                              "seconds": round(time.perf_counter() - start)}), flush=True)


if __name__ == "__main__":
    main()
