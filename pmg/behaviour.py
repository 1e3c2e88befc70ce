"""PMG stage 1: user behaviour -> text (Shen et al. 2024).

Each history item becomes one short text built from its metadata through the scenario's ``item_text`` template
in ``prompts.yaml``: movies ``Title (Genre, Genre): kw1, kw2.`` when item keywords exist (else the description),
clothes their title, emoticons their name. Optional extras, each only built when configured: an LLM summary of
descriptions longer than ``max_words`` words (any :class:`~pmg.text_generator.TextGenerator`), and an image caption
from a transformers image-to-text model loaded by name. Results can be cached in a
:class:`~pmg.cache.JsonlStore`, so model calls are made once per item.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

from common.data.corpus import Corpus, Item
from common.hashing import stable_hash
from common.weights import model_not_available
from pmg.cache import JsonlStore
from pmg.prompts import ScenarioPrompts, render_history, render_template
from pmg.text_generator import TextGenerator

__all__ = ["BehaviourText", "clean_title", "render_chat", "render_history"]

log = logging.getLogger(__name__)

# MovieLens titles end in " (1995)"; a few carry a range or a trailing space ("(2006-2007) ").
_YEAR = re.compile(r"\s*\(\s*\d{4}(?:\s*[-\u2013]\s*\d{0,4})?\s*\)\s*$")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
_NO_GENRE = {"(no genres listed)"}


def clean_title(title: str | None) -> str:
    """Title without the MovieLens ``" (YYYY)"`` suffix and extra spaces."""
    return " ".join(_YEAR.sub("", title or "").split())


def render_chat(turns: Sequence[str], speakers: Sequence[str] = ("Alice", "Bob")) -> str:
    """Chat turns (oldest first) as ``"#Alice: ...  #Bob: ..."``, speakers alternating back from the last turn,
    which gets ``speakers[-1]`` (the emoticon scenario's target text)."""
    n = len(speakers)
    named = [f"#{speakers[(n - 1 - (len(turns) - 1 - i)) % n]}: {' '.join(t.split())}" for i, t in enumerate(turns)]
    return "  ".join(named)


def fill_item_template(template: str, **fields: str) -> str:
    """Fill a template whose ``[...]`` groups vanish when any field inside them is empty."""

    def optional(m: re.Match) -> str:
        inner = m.group(1)
        names = re.findall(r"\{(\w+)\}", inner)
        return render_template(inner, **fields) if all(fields.get(k) for k in names) else ""

    text = render_template(_OPTIONAL.sub(optional, template), **fields)
    return " ".join(text.split()).strip(" ,;:")


class BehaviourText:
    """Turns items into the short texts that the keyword prompts list.

    Args:
        scenario: ``costume``, ``movie`` or ``emoticon``; picks the ``item_text`` template.
        template: overrides the scenario template. Fields: ``{title}`` (year stripped), ``{categories}``,
            ``{keywords}``, ``{description}``, ``{caption}``, ``{details}`` (keywords as ``"kw1, kw2."`` when
            the item has some, else the description); ``[...]`` groups vanish when a field inside is empty.
        max_words: descriptions longer than this are summarised by ``summariser`` or, without one, cut.
        summariser: a :class:`~pmg.text_generator.TextGenerator` for long descriptions (e.g. ``HFTextGenerator``).
        captioner: a transformers image-to-text model name/path (loaded on first use), or a callable
            ``image_path -> caption``; None disables captions.
        caption_mode: ``append`` adds the caption after the title, ``replace`` uses it instead of the title,
            ``fallback`` uses it only for items without a title.
        caption_prompt: text prefix given to an image-text-to-text captioner (None: image only).
        device: device for the captioner pipeline (None: its default).
        n_item_keywords: item keywords used in ``{keywords}``/``{details}`` (reference: the first 5).
        cache_path: ``.jsonl`` store of item texts; None recomputes every call.
        prompts_path: prompt file; the packaged ``pmg/prompts.yaml`` by default.

    Attributes:
        stats: counts of ``summarised``, ``truncated``, ``captioned``, ``missing_image``, ``empty_text``, ``cached``.
    """

    def __init__(
        self,
        scenario: str = "costume",
        template: str | None = None,
        max_words: int = 60,
        summariser: TextGenerator | None = None,
        captioner: str | Callable[[str], str] | None = None,
        caption_mode: Literal["append", "replace", "fallback"] = "append",
        caption_prompt: str | None = None,
        device: str | None = None,
        n_item_keywords: int = 5,
        cache_path: str | Path | None = None,
        prompts_path: str | Path | None = None,
    ) -> None:
        self.prompts = ScenarioPrompts(scenario, prompts_path)
        self.template = template or self.prompts.item_text
        self.max_words, self.n_item_keywords = max_words, n_item_keywords
        self.summariser = summariser
        self.caption_mode, self.caption_prompt, self.device = caption_mode, caption_prompt, device
        self._captioner_arg = captioner
        self._caption_fn: Callable[[str], str] | None = None if isinstance(captioner, str) else captioner
        self.store = JsonlStore(cache_path) if cache_path else None
        self.stats: Counter = Counter()

    @property
    def text_id(self) -> str:
        """Identifies everything besides item metadata that shapes the text (part of the cache key)."""
        summ = getattr(self.summariser, "model_id", type(self.summariser).__name__) if self.summariser else None
        cap = self._captioner_arg if isinstance(self._captioner_arg, str) or self._captioner_arg is None \
            else getattr(self._captioner_arg, "__name__", "callable")
        return stable_hash([self.template, self.max_words, self.n_item_keywords, summ, cap, self.caption_mode,
                            self.caption_prompt], 12)

    # ---- captions -----------------------------------------------------------------------------------
    def _captioner(self) -> Callable[[str], str]:
        if self._caption_fn is None:
            from transformers import pipeline
            from transformers.pipelines import SUPPORTED_TASKS

            name = self._captioner_arg
            # transformers 5 folded "image-to-text" into "image-text-to-text".
            task = "image-to-text" if "image-to-text" in SUPPORTED_TASKS else "image-text-to-text"
            try:
                pipe = pipeline(task, model=name, device=self.device)
            except (OSError, ValueError) as e:
                raise model_not_available(name, "image captioner", "Salesforce/blip-image-captioning-base", e) from e

            def caption(path: str) -> str:
                if task == "image-to-text":
                    res = pipe(path)
                else:
                    res = pipe(images=path, text=self.caption_prompt, return_full_text=False)
                res = res[0] if isinstance(res, list) else res
                text = res.get("generated_text", "") if isinstance(res, dict) else str(res)
                return text if isinstance(text, str) else str(text)

            self._caption_fn = caption
        return self._caption_fn

    # ---- texts --------------------------------------------------------------------------------------
    def _fields(self, item: Item, keywords: Sequence[str] | None, caption: str, description: str) -> dict[str, str]:
        title = clean_title(item.title)
        if caption and (self.caption_mode == "replace" or (self.caption_mode == "fallback" and not title)):
            title, caption = caption, ""
        elif self.caption_mode == "fallback":
            caption = ""
        kws = ", ".join(list(keywords or [])[: self.n_item_keywords])
        return {
            "title": title,
            "categories": ", ".join(c for c in item.categories if c and c not in _NO_GENRE),
            "keywords": kws,
            "description": description,
            "caption": caption,
            "details": f"{kws}." if kws else description,
        }

    def _needs_summary(self, item: Item) -> bool:
        return len((item.description or "").split()) > self.max_words

    def item_text(self, item: Item, keywords: Sequence[str] | None = None, image_path: str | None = None) -> str:
        """One item's text (no cache; model calls, if configured, happen here)."""
        return self._build({item.item_id: (item, keywords, image_path)})[item.item_id]["text"]

    def _build(self, todo: dict[str, tuple[Item, Sequence[str] | None, str | None]]) -> dict[str, dict]:
        long = [iid for iid, (item, _, _) in todo.items() if self._needs_summary(item)]
        summaries: dict[str, str] = {}
        if long and self.summariser is not None:
            prompts = [self.prompts.render_summary(" ".join(todo[i][0].description.split()), self.max_words)
                       for i in long]
            for iid, out in zip(long, self.summariser(prompts)):
                summaries[iid] = " ".join(out.split("###", 1)[0].split())
        out: dict[str, dict] = {}
        for iid, (item, keywords, image) in todo.items():
            raw: dict[str, str] = {}
            description = " ".join((item.description or "").split())
            if iid in summaries:
                raw["summary"] = summaries[iid]
                if summaries[iid]:
                    description = summaries[iid]
                    self.stats["summarised"] += 1
                else:
                    log.warning("item %s: the summariser returned nothing; using the cut description", iid)
            if len(description.split()) > self.max_words:
                description = " ".join(description.split()[: self.max_words]) + " ..."
                self.stats["truncated"] += 1
            caption = ""
            if self._captioner_arg is not None and not (self.caption_mode == "fallback" and clean_title(item.title)):
                if image and ("://" in image or Path(image).exists()):
                    caption = " ".join(self._captioner()(image).split())
                    raw["caption"] = caption
                    self.stats["captioned"] += 1
                else:
                    self.stats["missing_image"] += 1
            text = fill_item_template(self.template, **self._fields(item, keywords, caption, description))
            if not text:
                self.stats["empty_text"] += 1
                log.warning("item %s: no title, description or caption; its text is empty", iid)
            out[iid] = {"text": text, "raw": raw or None}
        return out

    def texts(
        self,
        corpus: Corpus,
        item_ids: Iterable[str] | None = None,
        item_keywords: dict[str, list[str]] | None = None,
        chunk_size: int = 256,
    ) -> dict[str, str]:
        """Item id -> text for ``item_ids`` (default: every item of the corpus), cached when ``cache_path`` is set.

        Args:
            corpus: supplies item metadata and resolves image paths.
            item_ids: items to render.
            item_keywords: item id -> keywords (e.g. ``TfidfKeywordExtractor.target`` or LLM item keywords).
            chunk_size: items per model batch / cache write.
        """
        ids = list(dict.fromkeys(item_ids if item_ids is not None else corpus.item_ids))
        kw = item_keywords or {}
        result: dict[str, str] = {}
        todo: dict[str, tuple[Item, Sequence[str] | None, str | None]] = {}
        keys: dict[str, str] = {}
        for iid in ids:
            item = corpus.items[iid]
            image = corpus.image_path(iid) if self._captioner_arg is not None else None
            src = [item.title, item.description, item.categories, image, list(kw.get(iid) or [])]
            keys[iid] = f"item:{iid}|{stable_hash(src)}|{self.text_id}"
            rec = self.store.get(keys[iid]) if self.store is not None else None
            if rec is not None:
                result[iid] = rec["text"]
                self.stats["cached"] += 1
            else:
                todo[iid] = (item, kw.get(iid), image)
        pending = list(todo)
        for s in range(0, len(pending), chunk_size):
            built = self._build({i: todo[i] for i in pending[s : s + chunk_size]})
            if self.store is not None:
                rows = [(keys[i], {"item_id": i, "model_id": self.text_id, **r}) for i, r in built.items()]
                self.store.put_many(rows)
            result.update({i: r["text"] for i, r in built.items()})
        return {i: result[i] for i in ids}

    def histories(
        self,
        corpus: Corpus,
        sequences: dict[str, list[str]],
        item_keywords: dict[str, list[str]] | None = None,
    ) -> dict[str, list[str]]:
        """User id -> the texts of that user's history items (same order), ready for ``KeywordExtractor.preference``."""
        needed = dict.fromkeys(i for seq in sequences.values() for i in seq)
        texts = self.texts(corpus, needed, item_keywords)
        return {uid: [texts[i] for i in seq] for uid, seq in sequences.items()}
