"""VIP5 on the demo data within a fixed CPU budget: does it beat popularity, and do images help?

Trains the embedded default twice on the same generated shop, with image tokens (n=2) and text-only (n=0), for
the same number of epochs on the prompts it is scored on (sequential and direct; 5 next-item prompts per user
per epoch, no dropout), then evaluates the model at the end of training on A-3 (sequential, full catalogue,
trie-constrained beam search, history excluded) and B-5 (direct, the fixed candidate lists, exact likelihood
ranking), and scores popularity through the same metric code. Item images show the colour/shape that drive user
tastes, so images must help direct recommendation. Extra CLI arguments after ``--`` apply to both runs. The
LAST line is one JSON object:

    {"hr10_vip5": ..., "hr10_popularity": ..., "hr10_direct_with_images": ...,
     "hr10_direct_without_images": ..., ...}

    .venv/bin/python bench/vip5_demo_quality.py [--epochs 10] [--threads 2] [-- --model.optimizer.init_args.lr 0.002]

Why this recipe (measured, docs/results.md, "Item identifiers"): a from-scratch model learns popularity first and only
later learns to read the items in the prompt; dropout and the explanation prompts delay that jump past a
few-minute budget.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from _demo_run import fit_and_test  # noqa: E402  (bench/ helper; after the offline defaults)

# The embedded default (atomic ids, newest history item first, history excluded from recommendations), trained
# on the two families it is scored on, 5 next-item prompts per user per epoch, without dropout.
BENCH_ARGS = ["--model.prompts.families", "[sequential, direct]", "--model.prompts.sequential_samples", "5",
              "--model.net.backbone_config.dropout_rate", "0.0"]


def train_and_test(data: Path, out: Path, n_image_tokens: int, epochs: int, extra: list[str], ckpt: str) -> dict:
    module, fit_s = fit_and_test(data, out, ["--trainer.max_epochs", str(epochs), "--model.net.n_image_tokens",
                                             str(n_image_tokens), "--model.prompts.test_templates", "[A-3, B-5]",
                                             *BENCH_ARGS, *extra], ckpt=ckpt)
    return {"results": module.test_results, "fit_seconds": round(fit_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None, help="demo data folder (default: generated in a temp dir)")
    ap.add_argument("--ckpt", choices=("best", "last"), default="last",
                    help="checkpoint scored: the end of training, or the best val/hr@10")
    ap.add_argument("extra", nargs="*", help="CLI arguments for every run (after --)")
    args = ap.parse_args()

    import torch

    from common.data.demo import generate_demo
    from vip5.baselines import run_baselines

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="vip5_quality_"))
    data = args.data or generate_demo(tmp / "demo")["amazon"].parent
    base = run_baselines(str(data / "amazon"), n_negatives=19)
    print("popularity:", json.dumps(base["popularity"]), flush=True)
    runs = {}
    for n in (2, 0):
        print(f"training VIP5 with n_image_tokens={n} for {args.epochs} epochs ...", flush=True)
        runs[n] = train_and_test(data, tmp / f"n{n}", n, args.epochs, args.extra, args.ckpt)
        print(f"n={n}: {json.dumps(runs[n])}", flush=True)
    res = {
        "hr10_vip5": runs[2]["results"]["A-3"]["HR@10"],
        "hr10_popularity": base["popularity"]["sequential"]["hr@10"],
        "hr10_direct_with_images": runs[2]["results"]["B-5"]["HR@10"],
        "hr10_direct_without_images": runs[0]["results"]["B-5"]["HR@10"],
        "hr10_direct_popularity": base["popularity"]["direct"]["hr@10"],
        "hr10_vip5_without_images": runs[0]["results"]["A-3"]["HR@10"],
        "ndcg10_vip5": runs[2]["results"]["A-3"]["NDCG@10"],
        "ndcg10_direct_with_images": runs[2]["results"]["B-5"]["NDCG@10"],
        "ndcg10_direct_without_images": runs[0]["results"]["B-5"]["NDCG@10"],
        "n_candidates": 20,
        "epochs": args.epochs,
        "fit_seconds": {f"n{n}": r["fit_seconds"] for n, r in runs.items()},
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
