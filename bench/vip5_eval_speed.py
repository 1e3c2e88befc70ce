"""VIP5 evaluation speed and validity: trie-constrained vs unconstrained beam search (sequential, A-3) and
likelihood ranking vs candidate beam search over the 100 candidates (direct, B-5).

Same model, same users, same machine, one run. The model is the embedded default trained briefly on the demo
data (so it emits id-like strings). Prints progress lines; the LAST line is one JSON object:

    {"users_per_s_constrained": ..., "users_per_s_unconstrained": ..., "invalid_rate_constrained": ...,
     "invalid_rate_unconstrained": ..., "direct_likelihood_over_beam_speedup": ...,
     "direct_encoder_share_of_likelihood": ..., "direct_speedup_bound": ...}

The last two explain the direct speedup: both ways encode the same long prompt per user, so beam time / encoder
time bounds what any likelihood decoder can reach. The clocks time the model's work on batches collated once
beforehand (the same batches for every way); the batching rate is printed on its own line.

Expected: constrained decoding has 0 invalid ids and is no slower than unconstrained; likelihood
ranking is at least 3x faster than candidate beam search.

    .venv/bin/python bench/vip5_eval_speed.py [--users 64] [--beams 20] [--train_batches 300]
    .venv/bin/python bench/vip5_eval_speed.py -- --data.init_args.indexing sequential   # digit ids
    .venv/bin/python bench/vip5_eval_speed.py --data data/demo --ckpt outputs/demo/vip5/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train_batches", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=None, help="demo data folder (default: generated in a temp dir)")
    ap.add_argument("--ckpt", type=Path, default=None, help="a trained demo checkpoint (skips training)")
    ap.add_argument("--candidates", type=int, default=100, help="candidates per direct prompt (paper: 100)")
    ap.add_argument("extra", nargs="*", help="CLI arguments for the model (after --), e.g. --data.init_args.indexing "
                    "sequential")
    args = ap.parse_args()

    import torch
    from torch.utils.data import DataLoader, Subset

    from common.data.demo import generate_demo
    from vip5.cli import DEFAULT_CONFIG
    from vip5.cli import main as vip5_main
    from vip5.data import model_inputs

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="vip5_eval_speed_"))
    data = args.data or generate_demo(tmp / "demo")["amazon"].parent
    cli = vip5_main(["--config", str(DEFAULT_CONFIG), "--trainer.logger", "false",
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
                     "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp / "run"),
                     "--data.init_args.data_dir", str(data / "amazon"), "--data.init_args.generate_demo", "false",
                     "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(args.train_batches),
                     "--trainer.limit_val_batches", "0", "--model.evaluation.num_beams", str(args.beams),
                     "--data.init_args.n_negatives", str(args.candidates - 1),
                     "--model.prompts.max_source_length", "1024", *args.extra],
                    run_cli=False)
    module, dm = cli.model, cli.datamodule
    if args.ckpt:
        module.checkpoint_hint = str(args.ckpt)
        dm.prepare_data()
        dm.setup("test")
        module.setup("test")
        checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=False)
        module.on_load_checkpoint(checkpoint)  # builds the model with the checkpoint's tokenizer and item ids
        module.load_state_dict(checkpoint["state_dict"])
    else:
        print(f"training the demo model for {args.train_batches} batches ...", flush=True)
        cli.trainer.fit(module, dm)
    module.eval()
    builder = module.sample_builder
    ev = module.evaluator

    def batches(template: str) -> list[dict]:
        ds = builder.dataset("test", template)
        return list(DataLoader(Subset(ds, range(min(args.users, len(ds)))), batch_size=args.batch,
                               collate_fn=builder.collate))

    # Prompts are rendered, tokenised and collated once per prompt, outside the clocks: every way below reads the
    # same batches (in `vip5 test` the DataLoader builds them, in worker processes when num_workers > 0), so the
    # clocks time the model's work only. The batching time is printed next to them.
    collated = {}
    for template in ("A-3", "B-5"):
        start = time.perf_counter()
        collated[template] = batches(template)
        n = sum(len(b["samples"]) for b in collated[template])
        print(f"{template}: {n} users batched at {n / (time.perf_counter() - start):.2f} users/s", flush=True)

    def timed(fn, template: str) -> tuple[float, list]:
        fn(collated[template][0])  # warm-up: first-call allocations and lazy initialisation stay off the clock
        out, n = [], 0
        start = time.perf_counter()
        for batch in collated[template]:
            out.append(fn(batch))
            n += len(batch["samples"])
        return n / (time.perf_counter() - start), out

    results = {}
    for mode in ("trie", "free"):
        ev.config.decoding = mode
        rate, outs = timed(ev._sequential, "A-3")
        shares = [share for o in outs for share in o[2]]  # each user's share of invalid beams
        invalid = sum(shares) / max(len(shares), 1)
        key = "constrained" if mode == "trie" else "unconstrained"
        results[f"users_per_s_{key}"] = round(rate, 3)
        results[f"invalid_rate_{key}"] = round(invalid, 4)
        print(f"sequential A-3 {key}: {rate:.2f} users/s, invalid ids {invalid:.3f}", flush=True)
    ev.config.decoding = "trie"
    speed = {}
    for mode in ("likelihood", "beam"):
        ev.config.direct_ranking = mode
        rate, _ = timed(ev._direct, "B-5")
        speed[mode] = rate
        print(f"direct B-5 {mode}: {rate:.2f} users/s", flush=True)
    results["direct_likelihood_over_beam_speedup"] = round(speed["likelihood"] / speed["beam"], 2)
    # Both ways encode the same prompt (100 candidates with their image tokens) once per user; that shared cost
    # bounds the speedup: beam time / encoder time is what a free likelihood decoder would reach.
    with torch.no_grad():
        rate, _ = timed(lambda batch: ev.model.encode(**model_inputs(batch)), "B-5")
    results["direct_encoder_share_of_likelihood"] = round(speed["likelihood"] / rate, 3)
    results["direct_speedup_bound"] = round(rate / speed["beam"], 2)
    print(f"direct B-5 encoder only: {rate:.2f} users/s (the speedup cannot exceed "
          f"{results['direct_speedup_bound']:.2f}x)", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
