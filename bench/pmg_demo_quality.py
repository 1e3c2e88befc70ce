"""Benchmark: does PMG personalise? Measured on the demo shop, whose ground truth says what each image shows.

Trains PMG (the embedded default: TF-IDF keywords, small Llama, the demo's trained text-to-image model in
``common/demo_weights/diffusion``) on the demo POG data with ``pmg fit``, then generates for every test sample
(each user's held-out last item) with four conditions, from the same noise seed:

- ``target_only``: the target item's keywords alone (no personalisation; one image at weights (1, 1));
- ``keywords``: target + preference keywords, the weight grid, CLIP selection (PMG without soft embeddings);
- ``soft``: target keywords + the learned soft embedding, the grid, CLIP selection (without keywords);
- ``pmg``: target + preference keywords + soft embedding, the grid, CLIP selection (the full model).

The attribute probe (``common/demo_weights/probe``) reads each chosen image: ``pref_acc`` = it shows the user's
preferred colour, ``target_acc`` = it shows the target item's shape (both from the demo's ``truth.json``). Since
users mostly buy items in their colour, the target item often has it already; ``pref_acc_differs`` restricts
``pref_acc`` to samples whose target is another colour, where only personalisation can show the user's colour.
``lpips_history`` is the mean LPIPS between the chosen image and the user's history images (offline the LPIPS
trunk is random, as the table says). For ``pmg`` the selection weight alpha is swept (0 = pick the candidate
closest to the target keywords, 1 = closest to the preference keywords) and plotted.

    python bench/pmg_demo_quality.py [--out outputs/bench/pmg_demo_quality] [--epochs 3] [--users 300]

Writes ``results.json`` and ``alpha_sweep.png`` into ``--out``; the LAST line printed is one JSON object:
    {"pref_acc_pmg", "pref_acc_target_only", "target_acc_pmg", "target_acc_target_only",
     "lpips_history_pmg", "lpips_history_target_only", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch  # noqa: E402

VARIANTS = ("target_only", "keywords", "soft", "pmg")


def _fit(data: Path, out: Path, diffusion: str, epochs: int, seed: int, extra: list[str]):
    from pmg.cli import DEFAULT_CONFIG, main

    cli = main(["--config", str(DEFAULT_CONFIG), "--trainer.logger", "false", "--trainer.enable_progress_bar",
                "false", "--trainer.default_root_dir", str(out), "--trainer.max_epochs", str(epochs),
                "--data.init_args.data_dir", str(data / "pog"), "--data.init_args.generate_demo", "false",
                "--model.stable_diffusion", diffusion, "--seed_everything", str(seed), *extra], run_cli=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli, time.perf_counter() - start


def _summary(rows: list[dict], differs: list[bool]) -> dict[str, float]:
    n = max(1, len(rows))
    d = [r for r, flag in zip(rows, differs) if flag]
    return {
        "pref_acc": sum(r["pref_acc"] for r in rows) / n,
        "pref_acc_differs": sum(r["pref_acc"] for r in d) / max(1, len(d)),
        "target_acc": sum(r["target_acc"] for r in rows) / n,
        "lpips_history": sum(r["lpips_history"] for r in rows) / n,
    }


@torch.no_grad()
def evaluate(cli, truth_path: Path, alphas: list[float], max_users: int | None):
    """Generate every variant for the test samples; per variant (and per alpha for pmg) the probe's readings."""
    from common.demo_models import DemoTruth, load_probe, probe_accuracy
    from common.metrics.image import ImageSimilarity
    from pmg.data import history_images
    from pmg.selection import select_best

    module, dm = cli.model, cli.datamodule
    model = module.model.eval()
    model.frozen_to(torch.device("cpu"))
    dm.setup("test")
    probe = load_probe(module.eval_config.probe)
    truth = DemoTruth(truth_path, "pog")
    similarity = ImageSimilarity(allow_random_trunk=True)
    gen, scorer, grid = model.generator, model.scorer, model.generation.grid
    corpus = module.sample_builder.data.corpus
    size = model.sd.image_size
    rows = {v: [] for v in VARIANTS} | {f"pmg@{a:g}": [] for a in alphas}
    differs, examples = [], []
    done = 0
    for batch in dm.test_dataloader():
        soft = model.soft_embedding(batch)
        for j, s in enumerate(batch["samples"]):
            if max_users is not None and done >= max_users:
                break
            done += 1
            pref, target = batch["pref_keywords"][j], batch["target_keywords"][j]
            seed = model.generation.seed + j + 1000 * done
            item, user = truth.item(s["target"]), truth.user(s["user"])
            differs.append(item["colour"] != user["colour"])
            history = torch.stack(history_images(corpus, s["history"], size))
            chosen = {"target_only": gen.generate(target, [], None, [(1.0, 1.0)], seed=seed)[0]}
            for name, p_kw, sft in (("keywords", pref, None), ("soft", [], soft[j]), ("pmg", pref, soft[j])):
                images = gen.generate(target, p_kw, sft, grid, seed=seed)
                best, scores = select_best(images, pref, target, scorer, alpha=model.generation.alpha)
                chosen[name] = images[best]
                if name == "pmg":
                    for a in alphas:
                        b, _ = select_best(images, pref, target, scorer, alpha=a)
                        chosen[f"pmg@{a:g}"] = images[b]
            for name, image in chosen.items():
                acc = probe_accuracy(probe, image.unsqueeze(0), [item], [user])
                lp = similarity.update(image.unsqueeze(0), None, [history])["lpips_history"]
                rows[name].append({"pref_acc": acc["pref_acc"][0], "target_acc": acc["target_acc"][0],
                                   "lpips_history": float(lp[0])})
            if len(examples) < 8:
                examples.append({"user": s["user"], "preferred": user["colour"], "target": item,
                                 "pref_keywords": pref, "target_keywords": target,
                                 "images": {k: chosen[k] for k in VARIANTS}})
        if max_users is not None and done >= max_users:
            break
    return {k: _summary(v, differs) for k, v in rows.items()}, sum(differs), done, examples, similarity.lpips_label


def plot_alpha(table: dict, alphas: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, label in (("pref_acc", "pref_acc (user's colour)"), ("pref_acc_differs", "pref_acc, target of "
                       "another colour"), ("target_acc", "target_acc (target's shape)")):
        ax.plot(alphas, [table[f"pmg@{a:g}"][key] for a in alphas], marker="o", label=label)
        ax.axhline(table["target_only"][key], ls=":", color=ax.lines[-1].get_color(), lw=1)
    ax.set_xlabel("alpha (selection weight of the preference term)")
    ax.set_ylabel("fraction of test samples")
    ax.set_ylim(0, 1.02)
    ax.set_title("PMG on the demo shop; dotted: target prompt only", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def contact_sheet(examples: list[dict], path: Path, scale: int = 3) -> None:
    """One row per example: target item as generated without personalisation, then keywords, soft, PMG."""
    from PIL import Image, ImageDraw

    size = examples[0]["images"]["pmg"].shape[-1] * scale
    label_w = 150
    sheet = Image.new("RGB", (label_w + size * len(VARIANTS), 14 + size * len(examples)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, name in enumerate(VARIANTS):
        draw.text((label_w + k * size + 2, 1), name, fill="black")
    for r, ex in enumerate(examples):
        y = 14 + r * size
        t = ex["target"]
        draw.text((2, y + 2), f"target: {t['colour']} {t['shape']}", fill="black")
        draw.text((2, y + 16), f"user likes: {ex['preferred']}", fill="black")
        for k, name in enumerate(VARIANTS):
            arr = (ex["images"][name].clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
            sheet.paste(Image.fromarray(arr).resize((size, size), Image.Resampling.NEAREST), (label_w + k * size, y))
    sheet.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/bench/pmg_demo_quality"))
    p.add_argument("--data", type=Path, default=None, help="demo folder (default: generated under --out)")
    p.add_argument("--diffusion", default="common/demo_weights/diffusion", help="diffusers folder")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--users", type=int, default=None, help="cap on test samples (default: all)")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grid", default=None, help="(w_p, w_t) pairs as JSON, e.g. '[[1, 1], [2, 1]]' (default: the "
                                                 "embedded default's model.generation.grid)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from common.data.demo import generate_demo

    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or args.out / "data"
    if args.data is None:
        generate_demo(data)
    alphas = [float(a) for a in args.alphas.split(",")]
    extra = ["--model.generation.grid", args.grid] if args.grid else []
    cli, fit_s = _fit(data, args.out / "run", args.diffusion, args.epochs, args.seed, extra)
    t0 = time.perf_counter()
    table, n_differs, n, examples, lpips_label = evaluate(cli, data / "truth.json", alphas, args.users)
    eval_s = time.perf_counter() - t0
    plot_alpha(table, alphas, args.out / "alpha_sweep.png")
    contact_sheet(examples, args.out / "examples.png")
    print(f"{n} test samples ({n_differs} whose target is not in the user's colour); fit {fit_s:.0f} s, "
          f"generation and scoring {eval_s:.0f} s; {lpips_label}")
    print(f"{'variant':<12} {'pref_acc':>8} {'pref_acc_differs':>17} {'target_acc':>10} {'lpips_history':>13}")
    for name, r in table.items():
        print(f"{name:<12} {r['pref_acc']:8.3f} {r['pref_acc_differs']:17.3f} {r['target_acc']:10.3f} "
              f"{r['lpips_history']:13.4f}")
    results = {"samples": n, "samples_target_not_preferred": n_differs, "fit_seconds": round(fit_s, 1),
               "lpips": lpips_label, "epochs": args.epochs, "grid": cli.model.gen_config.grid, "table": table}
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    line = {f"{k}_{v}": round(table[v][k], 4) for v in VARIANTS for k in ("pref_acc", "target_acc", "lpips_history")}
    line |= {f"pref_acc_differs_{v}": round(table[v]["pref_acc_differs"], 4) for v in VARIANTS}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
