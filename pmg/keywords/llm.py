"""Keywords from a causal LM with the scenario prompts of ``pmg/prompts.yaml`` (Shen et al. 2024).

Fixed relative to the original PMG code: the per-attribute branch asks each attribute once, then really sends
the merged candidates to the LLM in an integration prompt and parses *that* answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.hashing import stable_hash
from pmg.keywords.base import KeywordExtractor
from pmg.keywords.parse import parse_keywords
from pmg.prompts import ScenarioPrompts, render_history
from pmg.text_generator import HFTextGenerator, TextGenerator


class LLMKeywordExtractor(KeywordExtractor):
    """Keywords from a causal LM with the scenario prompts, greedy decoding.

    Args:
        model: hub name or local folder of the LLM, or an already-built transformers model.
        scenario: ``costume``, ``movie`` or ``emoticon`` (a key of the prompt file).
        cache_path: ``.jsonl`` cache of raw outputs and parsed keywords.
        n_preference: keywords per user.
        n_target: keywords per target item.
        per_attribute: ask one question per scenario attribute, then an integration question over the merged
            candidates (paper); otherwise one preference question.
        n_per_attribute: keywords asked per attribute question; defaults to ``n_preference``.
        max_new_tokens: generation budget per question.
        batch_size: prompts per ``generate`` call.
        tokenizer: tokenizer name/path or object when it differs from ``model``.
        generator: a ready :class:`TextGenerator` (overrides ``model``; tests use canned ones).
        device: see :class:`HFTextGenerator`.
        dtype: see :class:`HFTextGenerator`.
        prompts_path: prompt file; the packaged ``pmg/prompts.yaml`` by default.
        retry_empty: redo cached empty results.
        progress: show a tqdm bar.
    """

    def __init__(
        self,
        model: str | Any = "meta-llama/Llama-2-7b-chat-hf",
        scenario: str = "costume",
        cache_path: str | Path | None = None,
        n_preference: int = 10,
        n_target: int = 5,
        per_attribute: bool = True,
        n_per_attribute: int | None = None,
        max_new_tokens: int = 100,
        batch_size: int = 4,
        tokenizer: str | Any | None = None,
        generator: TextGenerator | None = None,
        device: str = "auto",
        dtype: str = "auto",
        prompts_path: str | Path | None = None,
        retry_empty: bool = False,
        progress: bool = True,
    ) -> None:
        super().__init__(cache_path, n_preference, n_target, retry_empty, progress)
        self.prompts = ScenarioPrompts(scenario, prompts_path)
        self.per_attribute = per_attribute and bool(self.prompts.attributes)
        self.n_per_attribute = n_per_attribute or n_preference
        self.max_new_tokens = max_new_tokens
        self.generator = generator or HFTextGenerator(model, tokenizer, max_new_tokens, batch_size, device, dtype)
        self.chunk_size = max(1, batch_size)

    @property
    def model_id(self) -> str:
        return getattr(self.generator, "model_id", None) or type(self.generator).__name__

    @property
    def decoding(self) -> dict:
        return getattr(self.generator, "decoding", None) or {"do_sample": False, "max_new_tokens": self.max_new_tokens}

    def _first_prompts(self, kind: str, payload: Any) -> dict[str, str]:
        if kind == "item":
            return {"target": self.prompts.render("target", n=self.n_target, item=payload)}
        items = render_history(payload)
        if self.per_attribute:
            return {a: self.prompts.render("attribute", n=self.n_per_attribute, attribute=a, items=items)
                    for a in self.prompts.attributes}
        return {"preference": self.prompts.render("preference", n=self.n_preference, items=items)}

    def _prompt_hash(self, kind: str, payload: Any) -> str:
        extra = self.prompts.template("integrate") if kind == "user" and self.per_attribute else ""
        return stable_hash([self._first_prompts(kind, payload), extra, self.n_preference, self.n_target])

    def _generate(self, prompts: list[str]) -> list[str]:
        return list(self.generator(prompts)) if prompts else []

    def _compute(self, kind: str, chunk: dict[str, Any]) -> dict[str, dict]:
        asks = [(i, stage, p) for i, payload in chunk.items()
                for stage, p in self._first_prompts(kind, payload).items()]
        answers = self._generate([p for _, _, p in asks])
        raw: dict[str, dict[str, str]] = {i: {} for i in chunk}
        for (i, stage, _), ans in zip(asks, answers):
            raw[i][stage] = ans
        out: dict[str, dict] = {}
        if kind == "item" or not self.per_attribute:
            n = self.n_target if kind == "item" else self.n_preference
            for i in chunk:
                parsed = parse_keywords(next(iter(raw[i].values())), n)
                out[i] = {"raw": raw[i], "parsed": parsed, "reason": None if parsed else "no_keywords"}
            return out
        # Per-attribute: merge each user's candidates, then send the integration prompt (the original built it
        # but never sent it). No candidates -> nothing to integrate; counted as no_keywords.
        cands = {}
        for i in chunk:
            merged = [kw for a in self.prompts.attributes for kw in parse_keywords(raw[i][a], self.n_per_attribute)]
            cands[i] = list(dict.fromkeys(merged))
        ask2 = [i for i in chunk if cands[i]]
        answers2 = self._generate([self.prompts.render("integrate", n=self.n_preference, candidates=", ".join(cands[i]))
                                   for i in ask2])
        for i, ans in zip(ask2, answers2):
            raw[i]["integrate"] = ans
        for i in chunk:
            parsed = parse_keywords(raw[i].get("integrate"), self.n_preference)
            out[i] = {"raw": raw[i], "parsed": parsed, "reason": None if parsed else "no_keywords",
                      "candidates": cands[i]}
        return out
