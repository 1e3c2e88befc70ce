"""``vip5-data``: data preparation commands shared by vip5 and pmg.

    vip5-data demo --out data/demo                       # the embedded offline demo shop (3 formats)
    vip5-data prepare-amazon reviews_Beauty_5.json.gz meta_Beauty.json.gz data/beauty
    vip5-data download-images data/beauty                 # item images into <root>/images (resumable)
    vip5-data features data/beauty --source amazon --encoder vitb32
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from jsonargparse import CLI


def demo(out: Path = Path("data/demo"), n_users: int = 300, n_items: int = 150, seed: int = 0) -> None:
    """Write the deterministic demo shop (Amazon/P5 folder, POG logs, MovieLens CSVs, PNG images).

    Args:
        out: output folder.
        n_users: number of users.
        n_items: number of items.
        seed: generator seed.
    """
    from common.data.demo import generate_demo

    paths = generate_demo(out, n_users=n_users, n_items=n_items, seed=seed)
    for name, path in paths.items():
        print(f"{name}: {path}")


def prepare_amazon(
    reviews: Path, meta: Path, out: Path, seed: int = 2022, sentires: Path | None = None, overwrite: bool = False
) -> None:
    """Convert raw Amazon-2014 files into the P5/VIP5 folder layout (as P5's preprocessing did).

    Args:
        reviews: ``reviews_<Category>_5.json.gz``.
        meta: ``meta_<Category>.json.gz``.
        out: output folder (e.g. data/beauty).
        seed: seed of the user shuffle, negatives and review split.
        sentires: optional Sentires ``reviews_<Category>.pickle`` giving explanations and feature words.
        overwrite: rebuild a finished folder.
    """
    from common.data.prepare import prepare_amazon as _prepare

    print(json.dumps(_prepare(reviews, meta, out, seed=seed, sentires=sentires, overwrite=overwrite), indent=2))


def download_images(root: Path, retries: int = 3, timeout: float = 10.0, workers: int = 4) -> None:
    """Download the item images of a prepared Amazon folder into ``<root>/images`` (resumable).

    Args:
        root: a prepared P5-layout folder (with item2img_dict.pkl or meta.json.gz).
        retries: attempts per image.
        timeout: seconds per request.
        workers: parallel downloads.
    """
    from common.data.images import amazon_image_urls
    from common.data.images import download_images as _download

    report = _download(amazon_image_urls(root), root / "images", retries=retries, timeout=timeout, workers=workers)
    print(report)


def features(
    root: Path,
    source: Literal["amazon", "pog", "movielens"] = "amazon",
    encoder: str = "vitb32",
    missing: Literal["zero", "error"] = "error",
    batch_size: int = 64,
    devices: int | str = 1,
    accelerator: str = "auto",
) -> None:
    """Extract CLIP image features for every item (cached under ``<root>/features``).

    Args:
        root: data folder.
        source: data source format.
        encoder: encoder preset (rn50, rn101, vitb32, vitb16, vitl14; demo-tiny: the CLIP trained on the
            demo renders; demo-random: random weights).
        missing: items without an image file or with an undecodable one: ``error`` stops naming the first file;
            ``zero`` gives them zero vectors, counted in the printed report.
        batch_size: images per batch.
        devices: processes (GPUs) sharing the work under DDP; each image is encoded once and rank 0 writes the
            one feature file.
        accelerator: ``auto``, ``gpu`` or ``cpu``.
    """
    from common.data.features import ENCODERS, extract_features
    from common.data.readers import read_corpus

    corpus = read_corpus(source, root)
    items = [(iid, corpus.image_path(iid)) for iid in corpus.item_ids]
    trainer = {"devices": devices, "accelerator": accelerator}
    if devices not in (1, "1"):
        trainer["strategy"] = "ddp"
    feats = extract_features(items, ENCODERS[encoder], root / "features", batch_size=batch_size, missing=missing,
                             trainer_kwargs=trainer)
    print(f"features: {feats.report()}")


def main(args: list[str] | None = None) -> None:
    CLI(
        {"demo": demo, "prepare-amazon": prepare_amazon, "download-images": download_images, "features": features},
        args=args,
    )


if __name__ == "__main__":
    main()
