"""Statistical keywords from TF-IDF: the offline default and the ablation baseline of PMG's LLM keywords."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.hashing import stable_hash
from pmg.keywords.base import KeywordExtractor
from pmg.keywords.parse import is_term


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
        self._keep = [is_term(t) for t in terms]
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
