"""The emoticon scenario of the paper (keyword-only, no trained soft embedding).

Conversation text + the names of emoticons the user sent before -> character keywords (preference) and
emotion/expression/posture keywords (target) -> a weighted grid of generated emoticons -> CLIP-selected best.
It runs through the same pieces as every other PMG sample: a keyword extractor with the ``emoticon`` scenario
prompts, :class:`pmg.generator.WeightedGenerator` and :func:`pmg.selection.select_best`.

    python -m pmg.emoticon --conversation "I passed the exam!" "Wow, congratulations" \\
        --emoticons "happy cat" "cat waving" "sleepy cat" --out outputs/emoticon.png
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pmg.behaviour import render_chat
from pmg.keywords import KeywordExtractor
from pmg.prompts import ScenarioPrompts


@dataclass
class Emoticon:
    """One generated emoticon: candidates [K, 3, H, W] in [0, 1], the chosen index, keywords and scores."""

    images: torch.Tensor
    best: int
    character_keywords: list[str]
    emotion_keywords: list[str]
    scores: dict[str, Any]


def emoticon_keywords(
    conversation: list[str], used_emoticons: list[str], extractor: KeywordExtractor, key: str = "chat"
) -> tuple[list[str], list[str]]:
    """(character keywords from the used emoticons' names, emotion keywords from the last chat turns)."""
    if not conversation:
        raise ValueError("the emoticon scenario needs at least one chat turn")
    characters = extractor.preference({key: list(used_emoticons)})[key]
    emotions = extractor.target({key: render_chat(conversation)})[key]
    return characters, emotions


def generate_emoticon(
    conversation: list[str],
    used_emoticons: list[str],
    extractor: KeywordExtractor,
    generator,
    scorer,
    grid: list[tuple[float, float]] = ((1.0, 1.0), (2.0, 1.0), (1.0, 2.0)),
    alpha: float = 0.5,
    seed: int = 0,
) -> Emoticon:
    """Keywords -> weighted grid in one batched call (no soft tokens) -> best candidate by the z score."""
    from pmg.selection import select_best

    characters, emotions = emoticon_keywords(conversation, used_emoticons, extractor)
    # the paper's emoticon target phrase: a cute sticker on a white background, then the emotion keywords
    target = ["cute emoji sticker", "white background", *emotions]
    images = generator.generate(target, characters, None, list(grid), seed=seed)
    best, scores = select_best(images, characters or ["sticker"], target, scorer, alpha=alpha)
    return Emoticon(images, best, characters, emotions, scores)


def main(args: list[str] | None = None) -> None:
    """Command line: small from-config models by default, or ``--stable_diffusion <folder>`` and a real CLIP."""
    from jsonargparse import ArgumentParser

    from pmg.generator import WeightedGenerator
    from pmg.keywords import TfidfKeywordExtractor
    from pmg.selection import ClipScorer
    from pmg.sheets import contact_sheet

    p = ArgumentParser(description="Generate an emoticon from a conversation and previously used emoticons.")
    p.add_argument("--conversation", type=list[str], required=True, help="chat turns, oldest first")
    p.add_argument("--emoticons", type=list[str], required=True, help="names of emoticons the user sent before")
    p.add_argument("--out", type=Path, default=Path("outputs/emoticon.png"), help="contact sheet PNG")
    p.add_argument("--extractor", type=KeywordExtractor | None, default=None,
                   help="keyword extractor (default: TF-IDF; pmg.keywords.LLMKeywordExtractor for the paper's)")
    p.add_argument("--stable_diffusion", type=str | None, default=None, help="SD folder; default: small model")
    p.add_argument("--clip_arch", type=str, default="pmg-tiny-clip")
    p.add_argument("--clip_pretrained", type=str | None, default=None)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    cfg = p.parse_args(args)
    init = p.instantiate_classes(cfg)
    extractor = init.extractor or TfidfKeywordExtractor(n_preference=5, n_target=5, progress=False)
    if isinstance(extractor, TfidfKeywordExtractor) and extractor.vectorizer is None:
        extractor.fit([*cfg.emoticons, *cfg.conversation])
    if cfg.stable_diffusion:
        from pmg.diffusion import load_sd_components

        sd = load_sd_components(cfg.stable_diffusion)
    else:
        from pmg.diffusion import tiny_sd_components

        sd = tiny_sd_components(texts=[*cfg.emoticons, *cfg.conversation, "cute emoji sticker white background"])
    negative = ScenarioPrompts("emoticon").negative
    gen = WeightedGenerator(sd, steps=cfg.steps, negative_prompt=negative)
    scorer = ClipScorer(cfg.clip_arch, cfg.clip_pretrained, allow_random_weights=cfg.clip_pretrained is None)
    result = generate_emoticon(cfg.conversation, cfg.emoticons, extractor, gen, scorer, seed=cfg.seed)
    z = result.scores["z"]
    contact_sheet([], list(result.images), result.best, cfg.out,
                  labels=[f"z={float(v):.3f}" for v in z],
                  title=f"characters: {', '.join(result.character_keywords)} | emotion: "
                        f"{', '.join(result.emotion_keywords)}")
    print(json.dumps({"characters": result.character_keywords, "emotion": result.emotion_keywords,
                      "chosen": result.best, "sheet": str(cfg.out)}))


if __name__ == "__main__":
    main()
