"""Benchmark: the (w_p, w_t) grid in one batched diffusion call vs one call per pair, plus a per-image split.

Same tiny from-config SD components (pmg.diffusion.tiny_sd_components), steps and resolution for both
ways; warm-up first, then the median of several interleaved repeats, torch threads fixed. Reports the time per
*selected* image (one sample = K candidates -> 1 kept image) and splits it into keyword extraction
(TF-IDF, pmg.keywords.TfidfKeywordExtractor), diffusion (the batched grid) and CLIP scoring (selection).

    python bench/pmg_generate.py [--k 4] [--steps 10] [--image-size 32] [--repeats 5] [--threads 2]

The LAST line is one JSON object:
    {"k": 4, "batched_over_sequential": ..., "seconds_per_image": {"keywords": ..., "diffusion": ..., "scoring": ...}}
batched_over_sequential < 1 means the batched grid is faster. Random weights: the numbers are timings only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ITEM_TEXTS = [
    "red striped cotton shirt with round buttons",
    "blue dotted summer dress with a wide hem",
    "black leather shoe with a square toe",
    "green plain wool hat for winter",
    "yellow striped canvas bag with long straps",
    "white dotted silk scarf with a red border",
    "red plain knit sweater with a round collar",
    "blue square pattern jacket with pockets",
]


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(_time(fn) for _ in range(repeats))


def _keyword_timer() -> tuple[Callable[[], tuple[list[str], list[str]]], str]:
    """(callable extracting one sample's preference + target keywords, label)."""
    from pmg.keywords import TfidfKeywordExtractor

    extractor = TfidfKeywordExtractor(cache_path=None, progress=False).fit(ITEM_TEXTS)
    counter = iter(range(10**9))

    def extract() -> tuple[list[str], list[str]]:
        i = next(counter)  # fresh ids: the extractor memoises results per id
        pref = extractor.preference({f"u{i}": ITEM_TEXTS[:4]})[f"u{i}"]
        target = extractor.target({f"i{i}": ITEM_TEXTS[4]})[f"i{i}"]
        return pref, target

    return extract, "TfidfKeywordExtractor"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=4, help="weight pairs per sample")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--weighting", default="scale", choices=["scale", "repeat"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pmg.diffusion import tiny_sd_components
    from pmg.generator import WeightedGenerator
    from pmg.selection import TINY_CLIP_ARCH, ClipScorer, select_best

    components = tiny_sd_components(texts=ITEM_TEXTS, image_size=args.image_size, seed=0)
    gen = WeightedGenerator(components, scheduler=args.scheduler, steps=args.steps, weighting=args.weighting)
    scorer = ClipScorer(TINY_CLIP_ARCH, pretrained=None, allow_random_weights=True)
    extract, kw_label = _keyword_timer()
    grid = [(1.0 + i // 2, 1.0 + i % 2) for i in range(args.k)]
    pref, target = extract()
    soft = torch.randn(2, components.text_dim, generator=torch.Generator().manual_seed(0))

    def batched() -> torch.Tensor:
        return gen.generate(target, pref, soft, grid=grid, seed=1)

    def sequential() -> torch.Tensor:
        return gen.generate_sequential(target, pref, soft, grid=grid, seed=1)

    images = batched()  # warm-up (allocator, lazy inits, negative-prompt encoding)
    sequential()
    # interleaved, so load from other processes hits both ways alike; the ratio is the median per-repeat ratio
    pairs = [(_time(batched), _time(sequential)) for _ in range(args.repeats)]
    t_batched = statistics.median(b for b, _ in pairs)
    t_sequential = statistics.median(s for _, s in pairs)
    ratio = statistics.median(b / s for b, s in pairs)
    t_keywords = _median_time(extract, args.repeats)
    select_best(images, pref, target, scorer)
    t_scoring = _median_time(lambda: select_best(images, pref, target, scorer), args.repeats)

    unet_params = sum(p.numel() for p in components.unet.parameters())
    print(f"tiny SD: UNet {unet_params / 1e6:.2f} M params, {args.image_size} px, {args.steps} {args.scheduler} steps, "
          f"K={args.k}, CFG batch {2 * args.k}, threads {args.threads}, median of {args.repeats}")
    print(f"grid of K={args.k} in one batch: {t_batched:.3f} s; as {args.k} calls: {t_sequential:.3f} s "
          f"-> ratio {ratio:.3f} (target <= 0.6)")
    print(f"per selected image: keywords {t_keywords:.4f} s ({kw_label}), diffusion {t_batched:.3f} s, "
          f"scoring {t_scoring:.4f} s ({scorer.note or scorer.arch})")
    result = {
        "k": args.k,
        "batched_over_sequential": round(ratio, 4),
        "seconds_per_image": {
            "keywords": round(t_keywords, 5),
            "diffusion": round(t_batched, 5),
            "scoring": round(t_scoring, 5),
        },
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
