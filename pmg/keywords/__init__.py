"""PMG stages 2-3: explicit preference keywords and target keywords, extracted offline and cached.

Two extractors share one interface (:class:`KeywordExtractor`, ``base.py``): ``preference(histories)`` maps each
user's history item texts to ``n_preference`` keywords, ``target(items)`` maps each item text to ``n_target``
keywords. :class:`LLMKeywordExtractor` (``llm.py``) prompts a causal LM with the scenario prompts of
``pmg/prompts.yaml`` (Shen et al. 2024); :class:`TfidfKeywordExtractor` (``tfidf.py``) is the cheap statistical
baseline and the offline default. ``parse.py`` reads the LLM's answers. Configs name the extractors as
``pmg.keywords.LLMKeywordExtractor`` and ``pmg.keywords.TfidfKeywordExtractor``.
"""

from pmg.keywords.base import KeywordExtractor
from pmg.keywords.llm import LLMKeywordExtractor
from pmg.keywords.parse import parse_keywords
from pmg.keywords.tfidf import TfidfKeywordExtractor

__all__ = ["KeywordExtractor", "LLMKeywordExtractor", "TfidfKeywordExtractor", "parse_keywords"]
