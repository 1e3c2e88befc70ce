"""Writing ``pmg predict`` results: chosen (and optionally all) images, one JSON line per sample, and a
contact sheet per user (history | candidates | chosen) so a person can judge at a glance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from common.io import atomic_open
from pmg.data import local_image
from pmg.diffusion import load_image_tensor
from pmg.sheets import contact_sheet, to_pil


def _save_png(image, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        to_pil(image).save(f, format="PNG")


def write_predictions(module, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write images and sheets for generated results; returns their JSON rows (:func:`write_jsonl` writes them)."""
    out = module.prediction_dir
    corpus = module.sample_builder.data.corpus
    size = module.model.sd.image_size
    grid = module.gen_config.grid
    rows = []
    for r in results:
        s = r["sample"]
        stem = f"{s['user']}_{s['target']}"
        chosen_path = out / "images" / f"{stem}.png"
        _save_png(r["images"][r["best"]], chosen_path)
        cand_paths = []
        if module.gen_config.save_candidates:
            for k, img in enumerate(r["images"]):
                p = out / "candidates" / f"{stem}_{k}.png"
                _save_png(img, p)
                cand_paths.append(str(p))
        history = [Image.open(path).convert("RGB") for path in (local_image(corpus, i) for i in s["history"]) if path]
        target = (load_image_tensor(corpus.image_path(s["target"]), size) + 1) / 2
        z = r["scores"]["z"]
        labels = [f"wp={wp:g} wt={wt:g}\nz={float(z[k]):.3f}" for k, (wp, wt) in enumerate(grid)]
        sheet = contact_sheet(history, list(r["images"]), r["best"], out / "sheets" / f"{stem}.png", labels=labels,
                              target=target, title=f"user {s['user']} | {', '.join(r['pref_keywords'][:6])}")
        row = {
            "user": s["user"], "target": s["target"], "history": s["history"],
            "preference_keywords": r["pref_keywords"], "target_keywords": r["target_keywords"],
            "weights": [list(w) for w in grid], "chosen": r["best"], "chosen_weights": list(grid[r["best"]]),
            "scores": {k: [float(x) for x in v] for k, v in r["scores"].items()},
            "image": str(chosen_path), "candidates": cand_paths, "sheet": str(sheet),
        }
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """``predictions.jsonl``: one JSON line per sample, written at once (a rerun replaces it)."""
    with atomic_open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def log_to_wandb(logger, rows: list[dict[str, Any]]) -> None:
    """Contact sheets as W&B images and one table row per sample (keywords, weights, scores, chosen image)."""
    if not rows:
        return
    logger.log_image("predict/sheets", images=[r["sheet"] for r in rows],
                     caption=[f"user {r['user']} -> {r['target']}" for r in rows])
    columns = ["user", "target", "preference_keywords", "target_keywords", "chosen_weights", "z", "image"]
    import wandb

    data = [[r["user"], r["target"], ", ".join(r["preference_keywords"]), ", ".join(r["target_keywords"]),
             str(r["chosen_weights"]), r["scores"]["z"][r["chosen"]], wandb.Image(r["image"])] for r in rows]
    logger.log_table("predict/samples", columns=columns, data=data)
