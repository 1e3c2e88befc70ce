"""Word-level tokenizers built offline from corpus text, for models built from a config.

No tokenizer can be downloaded on our machines, so a from-config Llama (keywords, soft prompt) or CLIP text
encoder (PMG conditioning) gets a ``tokenizers`` WordLevel vocabulary of the corpus words instead, saved with
``save_pretrained`` so ``AutoTokenizer.from_pretrained(out_dir)`` reloads it like any hub tokenizer.

Typical special tokens:
    Llama-like:  ``{"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}``
    CLIP-like:   ``{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                  "unk_token": "<|endoftext|>"}`` with ``add_eos=True`` (SD-1.5 pads with its end token).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from common.io import atomic_dir

_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token")


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Split on whitespace, then every punctuation character becomes its own token ("red," -> "red", ",").
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def build_word_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    special_tokens: Mapping[str, str],
    lowercase: bool = True,
    max_vocab: int | None = None,
    *,
    add_bos: bool = True,
    add_eos: bool = False,
    model_max_length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Build a WordLevel tokenizer from the words of ``texts``, save it to ``out_dir`` and return it reloaded.

    Args:
        texts: corpus sentences; every distinct word (after lower-casing and punctuation splitting) is a token.
        out_dir: folder written atomically (built in a temporary sibling, then renamed over any old one).
        special_tokens: HF attribute name (``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``, ...) ->
            token string. They get the first ids, in the order given (a string named twice keeps one id).
            Without ``unk_token``, ``"<unk>"`` is added: WordLevel needs one for unseen words.
        lowercase: lower-case the input (vocabulary and at encoding time).
        max_vocab: cap on the vocabulary size, special tokens included; the most frequent words are kept
            (ties broken alphabetically so the result is deterministic).
        add_bos / add_eos: wrap every encoded text in the bos / eos token (Llama: bos only; CLIP: both).
        model_max_length: recorded in the tokenizer config (CLIP: 77); None leaves the library default.

    Returns:
        The tokenizer loaded back from ``out_dir``, i.e. exactly what a later ``from_pretrained`` gives.
    """
    special = dict(special_tokens)
    unknown = set(special) - set(_SPECIAL_KEYS)
    if unknown:
        raise ValueError(f"unknown special-token names {sorted(unknown)}; valid: {list(_SPECIAL_KEYS)}")
    special.setdefault("unk_token", "<unk>")
    for key, wanted in (("bos_token", add_bos), ("eos_token", add_eos)):
        if wanted and key not in special:
            raise ValueError(f"add_{key[:3]}=True needs special_tokens[{key!r}]")

    normalizer = normalizers.Lowercase() if lowercase else None
    pre = _pre_tokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        counts.update(word for word, _ in pre.pre_tokenize_str(text))

    vocab: dict[str, int] = {}
    for token in special.values():
        vocab.setdefault(token, len(vocab))
    words = sorted((w for w in counts if w not in vocab), key=lambda w: (-counts[w], w))
    if max_vocab is not None:
        if max_vocab < len(vocab):
            raise ValueError(f"max_vocab={max_vocab} is smaller than the {len(vocab)} special tokens")
        words = words[: max_vocab - len(vocab)]
    for word in words:
        vocab[word] = len(vocab)

    tok = Tokenizer(WordLevel(vocab, unk_token=special["unk_token"]))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.add_special_tokens(list(dict.fromkeys(special.values())))
    bos = [special["bos_token"]] if add_bos else []
    eos = [special["eos_token"]] if add_eos else []
    if bos or eos:
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join([*bos, "$A", *eos]),
            pair=" ".join([*bos, "$A", *eos, "$B:1", *eos]),
            special_tokens=[(t, vocab[t]) for t in dict.fromkeys(bos + eos)],
        )

    kwargs = dict(special)
    if model_max_length is not None:
        kwargs["model_max_length"] = model_max_length
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)

    with atomic_dir(out_dir) as tmp:
        fast.save_pretrained(tmp)
        # read back from our own copy: under DDP another rank may be replacing out_dir with the same tokenizer
        loaded = PreTrainedTokenizerFast.from_pretrained(tmp)
    return loaded
