"""Tolerant parsing of LLM keyword answers (numbered lists, comma lists, explanations, prose, refusals).

Fixed relative to the original PMG code: the parser keeps hyphens and digits inside keywords and de-duplicates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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


def is_term(text: str) -> bool:
    """A keyword candidate needs a letter, or is a year ("1984")."""
    return bool(_LETTER.search(text)) or bool(re.fullmatch(r"\d{4}", text))


def _is_keyword(kw: str, max_words: int) -> bool:
    words = kw.split()
    if not words or len(words) > max_words:
        return False
    if not is_term(kw):
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
