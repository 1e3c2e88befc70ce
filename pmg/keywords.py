"""PMG stages 2-3: explicit preference keywords and target keywords, extracted offline and cached.

Two extractors share one interface (:class:`KeywordExtractor`): ``preference(histories)`` maps each user's
history item texts to ``n_preference`` keywords, ``target(items)`` maps each item text to ``n_target`` keywords.
:class:`LLMKeywordExtractor` prompts a causal LM with the scenario prompts of ``prompts.yaml``
(Shen et al. 2024); :class:`TfidfKeywordExtractor` is the cheap statistical baseline and the offline default. Both store
every result in a :class:`~pmg.cache.KeywordCache` keyed by id + prompt hash + extractor id, so a rerun only
does the missing keys. Empty inputs and unparsable outputs are counted in ``stats`` and stored as an empty
list with a ``reason``; they are never replaced by made-up keywords.

Fixed relative to the original PMG code: the per-attribute branch asks each attribute once,
then really sends the merged candidates to the LLM in an integration prompt and parses *that* answer; the
parser keeps hyphens and digits inside keywords and de-duplicates.
"""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml

from pmg.cache import KeywordCache, stable_hash

log = logging.getLogger(__name__)

PROMPTS_PATH = Path(__file__).with_name("prompts.yaml")

# ---------------------------------------------------------------------------------------------------
# Prompts


@functools.lru_cache(maxsize=8)
def _load_yaml(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_prompts(path: str | Path | None = None) -> dict:
    """The prompt file as a dict (``frame``, ``summarise``, ``scenarios``); the packaged one by default."""
    return _load_yaml(str(path or PROMPTS_PATH))


def scenario_names(path: str | Path | None = None) -> list[str]:
    return list(load_prompts(path)["scenarios"])


_FIELD = re.compile(r"\{(\w+)\}")


def render_template(template: str, **fields: Any) -> str:
    """Fill ``{name}`` placeholders (only those; other braces stay). A missing field raises KeyError."""

    def sub(m: re.Match) -> str:
        if m.group(1) not in fields:
            raise KeyError(f"template field {{{m.group(1)}}} not given (have: {sorted(fields)})")
        return str(fields[m.group(1)])

    return _FIELD.sub(sub, template)


def render_history(texts: Sequence[str], start: int = 1) -> str:
    """``"1. text 2. text ..."`` (1-based by default; the MindSpore demo counted from 0)."""
    return " ".join(f"{i}. {t}" for i, t in enumerate(texts, start))


class ScenarioPrompts:
    """The prompts of one scenario (``costume``, ``movie``, ``emoticon``) rendered in the Vicuna-like frame.

    Args:
        scenario: a key of ``scenarios`` in the prompt file.
        path: prompt file; the packaged ``pmg/prompts.yaml`` by default.
    """

    KINDS = ("preference", "attribute", "integrate", "soft", "target")

    def __init__(self, scenario: str, path: str | Path | None = None) -> None:
        data = load_prompts(path)
        if scenario not in data["scenarios"]:
            raise KeyError(f"unknown scenario {scenario!r}; valid: {sorted(data['scenarios'])}")
        self.name = scenario
        self.frame: str = data["frame"]
        self.summary: dict = data.get("summarise", {})
        spec = data["scenarios"][scenario]
        self.system: str = spec["system"]
        self.attributes: list[str] = list(spec.get("attributes", []))
        self.negative: str = " ".join(str(spec.get("negative", "")).split())
        self.item_text: str = spec.get("item_text", "{title}")
        self.turns: dict[str, dict] = {k: spec[k] for k in self.KINDS if k in spec}

    def template(self, kind: str) -> str:
        """The unfilled prompt of ``kind`` (used in prompt hashes)."""
        if kind not in self.turns:
            raise KeyError(f"scenario {self.name!r} has no {kind!r} prompt; has: {sorted(self.turns)}")
        turn = self.turns[kind]
        return render_template(self.frame, system=self.system, human=turn["human"], prefill=turn.get("prefill", ""))

    def render(self, kind: str, **fields: Any) -> str:
        """The full prompt text of ``kind`` with ``fields`` filled in."""
        turn = self.turns.get(kind)
        if turn is None:
            raise KeyError(f"scenario {self.name!r} has no {kind!r} prompt; has: {sorted(self.turns)}")
        human = " ".join(render_template(turn["human"], **fields).split())
        return render_template(self.frame, system=self.system, human=human, prefill=turn.get("prefill", "")).rstrip()

    def render_summary(self, text: str, n: int) -> str:
        s = self.summary
        human = " ".join(render_template(s["human"], text=text, n=n).split())
        return render_template(self.frame, system=s["system"], human=human, prefill=s.get("prefill", "")).rstrip()


# ---------------------------------------------------------------------------------------------------
# Parsing

DEFAULT_STOPS = ("###", "</s>", "<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<eos>")
# A list marker: 1-2 digits then "." or ")", at the start or after a space/separator, followed by a space, the
# end or a letter. "80s", "3.5" and "sci-fi" never match.
_MARKER = re.compile(r"(?:^|(?<=[\s,;:(\[]))\d{1,2}[.)](?=\s|$|[^\W\d_])")
# Where a keyword ends and an explanation starts: sentence end, colon, spaced dash, bracket, !/?.
_EXPLANATION = re.compile(r"\.\s|\.$|:|\s[-\u2013\u2014]+\s|[(\[!?]")
_SEPARATORS = re.compile(r"[,;/|\n]")
# Words that mark a piece as prose (a refusal, an explanation or a copied format placeholder), not a keyword.
_PROSE = frozenset(
    "i i'm i'd i'll me my you your we our sorry cannot can't unable keyword keywords here following assistant "
    "human is are was were be been".split()
)
_FUNCTION = frozenset("the an and or of to in on at by for with it that this as from but not so".split())
_LETTER = re.compile(r"[^\W\d_]")


def _clean(piece: str) -> str:
    s = re.sub(r"[^\w\s\-&']", " ", piece.lower().replace("_", " "))
    return " ".join(w for w in (w.strip("-'&") for w in s.split()) if w)


def _is_keyword(kw: str, max_words: int) -> bool:
    words = kw.split()
    if not words or len(words) > max_words:
        return False
    if not _LETTER.search(kw) and not re.fullmatch(r"\d{4}", kw):
        return False
    if any(w in _PROSE for w in words) or all(w in _FUNCTION for w in words):
        return False
    return True


def parse_keywords(text: str | None, k: int, max_words: int = 4, stops: Sequence[str] = DEFAULT_STOPS) -> list[str]:
    """Tolerant parser for LLM keyword answers.

    Cuts the text at the first stop string (``###``, EOS text), reads numbered items (``1.``/``1)``), or, if
    there are none, splits on commas/semicolons/newlines. Each item loses any explanation after it (``: ...``,
    `` - ...``, ``. ...``), is lower-cased and stripped of punctuation (hyphens, ``&``, apostrophes and digits
    inside words stay: "sci-fi", "80s"); pieces longer than ``max_words`` words or that read as prose are
    dropped. Order-preserving de-duplication, capped at ``k``. Junk or empty output gives ``[]``.
    """
    if not text or k <= 0:
        return []
    for stop in stops:
        text = text.split(stop, 1)[0]
    text = text.replace("*", "")
    markers = list(_MARKER.finditer(text))
    if markers:
        bounds = [m.end() for m in markers] + [len(text)]
        segments = [text[bounds[i] : markers[i + 1].start() if i + 1 < len(markers) else len(text)]
                    for i in range(len(markers))]
        segments = [s.strip().split("\n", 1)[0] for s in segments]
    else:
        body = text.strip()
        if ":" in body.split("\n", 1)[0]:  # "The keywords are: red, blue" -> drop the lead-in
            body = body.split(":", 1)[1]
        segments = [re.sub(r"^\s*[-*\u2022\u00b7]+\s*", "", line) for line in body.split("\n")]
    out: list[str] = []
    seen: set[str] = set()
    for seg in segments:
        seg = seg.lstrip(" \t:.-")
        m = _EXPLANATION.search(seg)
        if m:
            seg = seg[: m.start()]
        for piece in _SEPARATORS.split(seg):
            kw = _clean(piece)
            if kw not in seen and _is_keyword(kw, max_words):
                seen.add(kw)
                out.append(kw)
                if len(out) >= k:
                    return out
    return out


# ---------------------------------------------------------------------------------------------------
# Text generation


class ModelNotAvailableError(OSError):
    """Model weights could not be loaded (offline, or a wrong path). The message says what to download."""


def weights_error(name: str, what: str, example: str, err: BaseException) -> ModelNotAvailableError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ModelNotAvailableError(
        f"Could not load the {what} {name!r} ({type(err).__name__}: {first}). No hub access here and no random "
        f"weights are substituted. On a machine with network access run `hf download {example} --local-dir "
        f"<dir>` (gated models need their licence accepted on huggingface.co first), copy <dir> here and pass "
        f"its path instead of {name!r}, or pre-fill the Hugging Face cache (HF_HOME) for that name."
    )


@runtime_checkable
class TextGenerator(Protocol):
    """Anything that maps prompts to continuations (the prompt not repeated), in order."""

    def __call__(self, prompts: list[str]) -> list[str]: ...


class HFTextGenerator:
    """Greedy continuation with a transformers causal LM, loaded by name/path on first use.

    Args:
        model: hub name or local folder (e.g. ``meta-llama/Llama-2-7b-chat-hf``), or an already-built model.
        tokenizer: name/path or object; defaults to the model's own name/path.
        max_new_tokens: tokens generated per prompt (the reference code uses 100).
        batch_size: prompts per ``generate`` call (left padding; prompts sorted by length first).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda:0`` ...; ignored for a built model.
        dtype: ``auto`` (bf16 on CUDA, fp32 on CPU), ``float32``, ``bfloat16``, ``float16``.
    """

    def __init__(
        self,
        model: str | Any = "meta-llama/Llama-2-7b-chat-hf",
        tokenizer: str | Any | None = None,
        max_new_tokens: int = 100,
        batch_size: int = 4,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self._model_arg, self._tok_arg = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, max(1, batch_size)
        self.device, self.dtype = device, dtype
        self.model = None if isinstance(model, str) else model
        self.tokenizer = None if tokenizer is None or isinstance(tokenizer, str) else tokenizer
        self._ready = False

    @property
    def model_id(self) -> str:
        if isinstance(self._model_arg, str):
            return self._model_arg
        cfg = getattr(self._model_arg, "config", None)
        return getattr(cfg, "_name_or_path", "") or type(self._model_arg).__name__

    @property
    def decoding(self) -> dict:
        return {"do_sample": False, "max_new_tokens": self.max_new_tokens}

    def load(self) -> None:
        """Load missing model/tokenizer (offline errors name what to download) and set left padding."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.model is None:
            device = self.device if self.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            if self.dtype == "auto":
                dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
            else:
                dtype = getattr(torch, self.dtype)
            try:
                self.model = AutoModelForCausalLM.from_pretrained(self._model_arg, dtype=dtype).to(device)
            except (OSError, ValueError) as e:
                raise weights_error(self._model_arg, "LLM", "meta-llama/Llama-2-7b-chat-hf", e) from e
        self.model.eval()
        if self.tokenizer is None:
            name = self._tok_arg or (self._model_arg if isinstance(self._model_arg, str) else self.model_id)
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(name)
            except (OSError, ValueError) as e:
                raise weights_error(name, "tokenizer", "meta-llama/Llama-2-7b-chat-hf", e) from e
        self.tokenizer.padding_side = "left"  # decoder-only batches continue from the right edge
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self._ready = True

    def __call__(self, prompts: list[str]) -> list[str]:
        import torch
        from transformers import GenerationConfig

        if not self._ready:
            self.load()
        tok, model = self.tokenizer, self.model
        gen_cfg = GenerationConfig(
            do_sample=False, max_new_tokens=self.max_new_tokens,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        )
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        device = next(model.parameters()).device
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, return_token_type_ids=False)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.inference_mode():
                ids = model.generate(**enc, generation_config=gen_cfg)
            texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i] = t
        return out


# ---------------------------------------------------------------------------------------------------
# Extractors


class KeywordExtractor:
    """Shared driver: cache look-up, bad-input accounting, progress bar; subclasses compute the chunks.

    Args:
        cache_path: ``.jsonl`` cache; None keeps results in memory only.
        n_preference: keywords per user (paper: 10; the reference code asked for 8).
        n_target: keywords per target item (paper: 5).
        retry_empty: redo cached records whose keyword list is empty (empty history, unparsable output).
        progress: show a tqdm bar.

    Attributes:
        stats: running counts: ``computed``, ``cached``, and per reason of an empty result
            (``empty_history``, ``empty_text``, ``no_keywords``), cached ones included.
    """

    chunk_size = 64

    def __init__(
        self,
        cache_path: str | Path | None = None,
        n_preference: int = 10,
        n_target: int = 5,
        retry_empty: bool = False,
        progress: bool = True,
    ) -> None:
        self.cache = KeywordCache(cache_path) if cache_path else None
        self._memory: dict[str, dict] = {}
        self.n_preference, self.n_target = n_preference, n_target
        self.retry_empty, self.progress = retry_empty, progress
        self.stats: Counter = Counter()

    # subclass hooks ---------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        raise NotImplementedError

    @property
    def decoding(self) -> dict:
        return {}

    @property
    def extractor_id(self) -> str:
        return f"{self.model_id}|{stable_hash(self.decoding, 8)}"

    def _prompt_hash(self, kind: str, payload: Any) -> str:
        return stable_hash(payload)

    def _compute(self, kind: str, chunk: dict[str, Any]) -> dict[str, dict]:
        """``{id: {"raw": ..., "parsed": [...], "reason": None|str, ...}}`` for non-empty payloads."""
        raise NotImplementedError

    # public API -------------------------------------------------------------------------------------
    def preference(self, histories: dict[str, list[str]]) -> dict[str, list[str]]:
        """User id -> preference keywords, from each user's history item texts (oldest first)."""
        clean = {uid: [t.strip() for t in texts if t and t.strip()] for uid, texts in histories.items()}
        return self._run("user", clean, "empty_history")

    def target(self, items: dict[str, str]) -> dict[str, list[str]]:
        """Item id -> target keywords, from each item's text (for emoticons: the rendered last chat turns)."""
        return self._run("item", {iid: (t or "").strip() for iid, t in items.items()}, "empty_text")

    def _lookup(self, key: str) -> dict | None:
        return self.cache.get(key) if self.cache is not None else self._memory.get(key)

    def _store(self, pairs: list[tuple[str, dict]]) -> None:
        if self.cache is not None:
            self.cache.put_many(pairs)
        else:
            self._memory.update(pairs)

    def _run(self, kind: str, payloads: dict[str, Any], empty_reason: str) -> dict[str, list[str]]:
        from tqdm.auto import tqdm

        hashes = {i: self._prompt_hash(kind, p) for i, p in payloads.items()}
        keys = {i: KeywordCache.make_key(kind, i, hashes[i], self.extractor_id) for i in payloads}
        results: dict[str, dict] = {}
        todo: dict[str, Any] = {}
        fresh_empty: list[tuple[str, dict]] = []
        for i, p in payloads.items():
            rec = self._lookup(keys[i])
            if rec is not None and not (self.retry_empty and not rec.get("parsed")):
                results[i] = rec
                self.stats["cached"] += 1
            elif not p:
                rec = KeywordCache.make_record(hashes[i], self.model_id, self.decoding, None, [], reason=empty_reason)
                fresh_empty.append((keys[i], rec))
                results[i] = rec
            else:
                todo[i] = p
        self._store(fresh_empty)
        ids = list(todo)
        what = "users" if kind == "user" else "items"
        with tqdm(total=len(ids), desc=f"{type(self).__name__} {what}", disable=not self.progress or not ids) as bar:
            for s in range(0, len(ids), self.chunk_size):
                chunk = {i: todo[i] for i in ids[s : s + self.chunk_size]}
                pairs = []
                for i, out in self._compute(kind, chunk).items():
                    rec = KeywordCache.make_record(hashes[i], self.model_id, self.decoding, **out)
                    pairs.append((keys[i], rec))
                    results[i] = rec
                self._store(pairs)
                self.stats["computed"] += len(chunk)
                bar.update(len(chunk))
        self._report(kind, results)
        return {i: list(results[i].get("parsed") or []) for i in payloads}

    def _report(self, kind: str, results: dict[str, dict]) -> None:
        by_reason: dict[str, list[str]] = {}
        for i, rec in results.items():
            if not rec.get("parsed"):
                by_reason.setdefault(rec.get("reason") or "no_keywords", []).append(i)
        for reason, ids in by_reason.items():
            self.stats[reason] += len(ids)
        if by_reason:
            parts = "; ".join(f"{r}: {len(v)} ({', '.join(v[:5])}{', ...' if len(v) > 5 else ''})"
                              for r, v in by_reason.items())
            log.warning(
                "%s: %d of %d %s got no keywords - %s. Stored as empty lists, not replaced; "
                "pass retry_empty=True to redo them.",
                type(self).__name__, sum(map(len, by_reason.values())), len(results), kind + "s", parts,
            )


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


class TfidfKeywordExtractor(KeywordExtractor):
    """Statistical keywords: TF-IDF fitted on all item texts (offline default and ablation baseline).

    A user's preference keywords are the terms with the largest summed TF-IDF weight over their history texts
    (each text l2-normalised, so every item counts once); an item's target keywords are its top-weighted terms.
    Ties break alphabetically. Fit on the whole catalogue with :meth:`fit`; otherwise the first call fits on
    the texts it is given.

    Args:
        cache_path: ``.jsonl`` cache.
        n_preference: keywords per user.
        n_target: keywords per item.
        stopwords: ``"english"`` (scikit-learn's list), a list of words, or None.
        ngram_range: word n-gram range of the vectoriser.
        min_df: minimum document frequency of a term.
        max_df: maximum document frequency (fraction) of a term.
        retry_empty: redo cached empty results.
        progress: show a tqdm bar.
    """

    chunk_size = 1024

    def __init__(
        self,
        cache_path: str | Path | None = None,
        n_preference: int = 10,
        n_target: int = 5,
        stopwords: str | list[str] | None = "english",
        ngram_range: tuple[int, int] = (1, 1),
        min_df: int = 1,
        max_df: float = 1.0,
        retry_empty: bool = False,
        progress: bool = True,
    ) -> None:
        super().__init__(cache_path, n_preference, n_target, retry_empty, progress)
        self.params = {"stopwords": stopwords, "ngram_range": list(ngram_range), "min_df": min_df, "max_df": max_df}
        self.vectorizer = None
        self._corpus_hash = ""

    def fit(self, texts: Iterable[str]) -> TfidfKeywordExtractor:
        from sklearn.feature_extraction.text import TfidfVectorizer

        docs = [t for t in texts if t and t.strip()]
        if not docs:
            raise ValueError("TfidfKeywordExtractor.fit: no non-empty texts")
        p = self.params
        self.vectorizer = TfidfVectorizer(
            lowercase=True, stop_words=p["stopwords"], ngram_range=tuple(p["ngram_range"]),
            min_df=p["min_df"], max_df=p["max_df"], token_pattern=r"(?u)\b[^\W_][\w'-]*[^\W_]\b",
        ).fit(docs)
        self._corpus_hash = stable_hash(sorted(set(docs)), 8)
        terms = self.vectorizer.get_feature_names_out()
        self._keep = [bool(_LETTER.search(t)) or bool(re.fullmatch(r"\d{4}", t)) for t in terms]
        return self

    @property
    def model_id(self) -> str:
        return f"tfidf-{self._corpus_hash}"

    @property
    def decoding(self) -> dict:
        return {**self.params, "n_preference": self.n_preference, "n_target": self.n_target}

    def preference(self, histories: dict[str, list[str]]) -> dict[str, list[str]]:
        if self.vectorizer is None:
            self.fit(dict.fromkeys(t for texts in histories.values() for t in texts))
        return super().preference(histories)

    def target(self, items: dict[str, str]) -> dict[str, list[str]]:
        if self.vectorizer is None:
            self.fit(items.values())
        return super().target(items)

    def _compute(self, kind: str, chunk: dict[str, Any]) -> dict[str, dict]:
        import numpy as np

        terms = self.vectorizer.get_feature_names_out()
        keep = np.asarray(self._keep)
        n = self.n_preference if kind == "user" else self.n_target
        out = {}
        for i, payload in chunk.items():
            texts = payload if kind == "user" else [payload]
            w = np.asarray(self.vectorizer.transform(texts).sum(axis=0)).ravel()
            w = np.where(keep, w, 0.0)
            top = [j for j in np.lexsort((terms, -w)) if w[j] > 0][:n]
            parsed = [str(terms[j]) for j in top]
            out[i] = {"raw": {str(terms[j]): round(float(w[j]), 4) for j in top}, "parsed": parsed,
                      "reason": None if parsed else "no_keywords"}
        return out
