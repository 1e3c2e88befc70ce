"""VIP5 from scratch against SASRec and popularity on a real data folder, with the same wall-clock training budget.

    .venv/bin/python bench/vip5_real.py DATA_DIR --minutes M [--users N] [--source amazon] \
        [--config configs/sports_scratch.yaml] [--out DIR] [-- vip5 arguments, e.g. --model.optimizer.init_args.lr 2e-3]

1. Popularity (training counts) ranks the full catalogue for N fixed test users (``common.data.splits.sample_users``).
2. SASRec (``vip5.sasrec``: cross-entropy over all items, every position a target) trains for M minutes.
3. VIP5 trains with the recipe config (default ``configs/sports_scratch.yaml``) for M minutes
   (``trainer.max_time``; its learning-rate schedule ends with the budget), then ranks the full catalogue for
   the same N users with A-3 (trie-constrained beam search, history excluded).

Every model excludes the user's history from its ranking and is scored by ``common.metrics.ranking``. The data
folder is only read: splits, negatives and the tokenizer are cached under ``--out``. Per model it prints training
samples/s (VIP5: prompts; SASRec: user sequences) and tokens/s (VIP5: prompt + target tokens; SASRec: items in
the input sequences), and, as its LAST line, one JSON object:

    {"hr10_vip5", "ndcg10_vip5", "hr10_sasrec", "ndcg10_sasrec", "hr10_popularity", "ndcg10_popularity",
     "train_minutes", "vip5_steps", "sasrec_steps", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA_MODULES = {"amazon": "common.data.AmazonDataModule", "movielens": "common.data.MovieLensDataModule",
                "pog": "common.data.POGDataModule"}


def popularity(split, users: list[str]) -> dict[str, float]:
    from vip5.baselines import evaluate_rankings, popularity_ranking

    ranked = popularity_ranking(split.train, 10, histories={u: split.test[u][0] for u in users})
    metrics = evaluate_rankings(ranked, {u: split.test[u][1] for u in users}, ks=(5, 10))
    return {k: round(v, 5) for k, v in metrics.items()}


def vip5(data_dir: Path, source: str, config: Path, out: Path, users: int, seconds: float, extra: list[str]) -> dict:
    import lightning as L

    from vip5.cli import main

    class Throughput(L.Callback):
        """Counts training prompts and their non-padding tokens (source + target)."""

        samples = tokens = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.samples += batch["input_ids"].size(0)
            self.tokens += int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())

    cli = main(["--config", str(config), "--trainer.logger", "false", "--trainer.default_root_dir", str(out),
                "--trainer.max_time", json.dumps({"seconds": int(seconds)}),
                "--data", DATA_MODULES[source], "--data.init_args.data_dir", str(data_dir),
                "--data.init_args.cache_dir", str(out.parent / "cache"),
                "--model.evaluation.test_users", str(users), "--model.prompts.test_templates", "[A-3]", *extra],
               run_cli=False)
    counter = Throughput()
    cli.trainer.callbacks.append(counter)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    fit_s = time.perf_counter() - start
    cli.trainer.test(cli.model, cli.datamodule, ckpt_path="last", verbose=False)
    row = cli.model.test_results["A-3"]
    return {"hr@5": row["HR@5"], "ndcg@5": row["NDCG@5"], "hr@10": row["HR@10"], "ndcg@10": row["NDCG@10"],
            "n": row["n"], "steps": cli.trainer.global_step, "epochs": cli.trainer.current_epoch,
            "seconds": round(fit_s, 1), "samples_per_s": round(counter.samples / fit_s, 1),
            "tokens_per_s": round(counter.tokens / fit_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path, help="data folder in the reader's layout (read only)")
    ap.add_argument("--minutes", type=float, default=40.0, help="training budget per model")
    ap.add_argument("--users", type=int, default=5000, help="test users (a fixed sample; all if larger)")
    ap.add_argument("--source", default="amazon", choices=sorted(DATA_MODULES))
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "sports_scratch.yaml", help="VIP5 recipe")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a new temporary folder)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--skip", nargs="*", default=[], choices=["vip5", "sasrec"], help="models not to train")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    args.extra = argv[cut + 1:]  # vip5 CLI arguments after --

    import torch

    from common.data.readers import read_corpus
    from common.data.splits import leave_one_out, sample_users
    from vip5.baselines import run_sasrec

    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="vip5_real_"))
    corpus = read_corpus(args.source, args.data_dir)  # the data modules' reader defaults
    split = leave_one_out(corpus)
    users = sample_users(list(split.test), args.users, args.seed)
    print(f"{corpus.name}: {len(split.test)} users, {len(corpus.item_ids)} items; testing {len(users)} users; "
          f"{args.minutes:g} min of training per model; outputs in {out}", flush=True)
    res: dict = {"train_minutes": args.minutes, "users": len(users)}
    pop = popularity(split, users)
    print("popularity:", json.dumps(pop), flush=True)
    res.update(hr10_popularity=pop["hr@10"], ndcg10_popularity=pop["ndcg@10"])
    if "sasrec" not in args.skip:
        sas = run_sasrec(str(args.data_dir), args.source, args.minutes, args.users, args.seed)
        print("sasrec:", json.dumps(sas), flush=True)
        res.update(hr10_sasrec=round(sas["hr@10"], 5), ndcg10_sasrec=round(sas["ndcg@10"], 5),
                   sasrec_steps=sas["steps"], sasrec_samples_per_s=sas["samples_per_s"],
                   sasrec_tokens_per_s=sas["tokens_per_s"])
    if "vip5" not in args.skip:
        v = vip5(args.data_dir, args.source, args.config, out / "vip5", args.users, args.minutes * 60, args.extra)
        print("vip5:", json.dumps(v), flush=True)
        res.update(hr10_vip5=v["hr@10"], ndcg10_vip5=v["ndcg@10"], vip5_steps=v["steps"],
                   vip5_samples_per_s=v["samples_per_s"], vip5_tokens_per_s=v["tokens_per_s"])
    print(json.dumps(res))


if __name__ == "__main__":
    main()
