"""BLEU-4 and ROUGE for generated explanations, both on a 0-100 scale.

* ``bleu4``: corpus BLEU-4 (sacrebleu) with brevity penalty and **no smoothing**, like the tensorflow/nmt
  ``compute_bleu`` that P5/VIP5 call. Word level splits on whitespace (``tokenize="none"``), which is exactly
  what P5's notebooks feed ``compute_bleu`` (the explanation sentences are already tokenised); pass
  ``tokenize="13a"`` for sacrebleu's standard tokenisation. ``level="char"`` is the parity option: VIP5's
  notebook hands raw strings to ``compute_bleu``, which then counts *character* n-grams, spaces included.
* ``rouge``: ROUGE-1/2/L F-measure per sentence (rouge-score, no stemming, as P5), averaged over samples.
  rouge-score's default tokeniser lowercases and keeps only ``[a-z0-9]`` words; ``whitespace=True`` splits on
  whitespace and keeps case, closer to the nmt ``rouge`` of P5 (which, unlike rouge-score, also counts n-gram
  *sets* rather than multisets; results can differ slightly from the papers' tables).

sacrebleu and rouge-score come with the ``vip5`` extra (``pip install .[vip5]``) and are imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence

_EXTRA_HINT = "pip install '.[vip5]'"
_SPACE = "\ue000"  # stands for a whitespace character in char-level BLEU (a private-use code point)


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"{module} is needed for text metrics: {_EXTRA_HINT}") from e


def _check(preds: Sequence[str], refs: Sequence[str]) -> None:
    if isinstance(preds, str) or isinstance(refs, str):
        raise TypeError("preds and refs are lists of strings, one per sample")
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")


def _chars(text: str) -> str:
    return " ".join(_SPACE if ch.isspace() else ch for ch in text)


def bleu4(preds: Sequence[str], refs: Sequence[str], level: str = "word", tokenize: str = "none") -> float:
    """Corpus BLEU-4 x100 (single reference per sample, no smoothing).

    Args:
        preds: generated texts.
        refs: one reference text per prediction.
        level: ``"word"`` (default, reported) or ``"char"`` (VIP5 notebook parity: character n-grams).
        tokenize: sacrebleu tokeniser for word level: ``"none"`` (whitespace split, P5 parity) or ``"13a"``.
    """
    _check(preds, refs)
    if level not in ("word", "char"):
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    if not preds:
        return 0.0
    if level == "char":
        preds, refs, tokenize = [_chars(p) for p in preds], [_chars(r) for r in refs], "none"
    metrics = _require("sacrebleu.metrics")
    bleu = metrics.BLEU(tokenize=tokenize, smooth_method="none", max_ngram_order=4)
    return float(bleu.corpus_score(list(preds), [list(refs)]).score)


class _WhitespaceTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return text.split()


def rouge(preds: Sequence[str], refs: Sequence[str], whitespace: bool = False) -> dict[str, float]:
    """Mean sentence-level ROUGE F-measure x100: ``{"rouge1", "rouge2", "rougeL"}``.

    Args:
        preds: generated texts.
        refs: one reference text per prediction.
        whitespace: split on whitespace and keep case instead of rouge-score's default tokeniser.
    """
    _check(preds, refs)
    keys = ("rouge1", "rouge2", "rougeL")
    if not preds:
        return dict.fromkeys(keys, 0.0)
    rouge_scorer = _require("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(
        list(keys), use_stemmer=False, tokenizer=_WhitespaceTokenizer() if whitespace else None
    )
    totals = dict.fromkeys(keys, 0.0)
    for pred, ref in zip(preds, refs):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for key in keys:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * v / len(preds) for key, v in totals.items()}
