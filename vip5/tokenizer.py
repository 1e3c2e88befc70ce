"""Tokenizer side of VIP5: a T5 SentencePiece tokenizer and the whole-word ids of the VIP5 encoder input.

- ``load_tokenizer("t5-small")`` (or a local folder) gives the P5/VIP5 tokenizer: 32,000 pieces + 100
  ``<extra_id_k>`` = 32,100 ids, ``<extra_id_0>`` = 32099 is the image placeholder.
- ``train_sentencepiece(texts, out_dir)`` trains a SentencePiece (BPE) model on corpus text so that a T5
  built from a config gets a real tokenizer offline (same layout: pad 0, ``</s>`` 1, ``<unk>`` 2, extra ids
  at the top of the vocabulary, so ``<extra_id_0>`` is the last id).

Trap (transformers 5): ``T5Tokenizer(vocab_file=...)`` ignores the file, and ``T5Tokenizer.from_pretrained``
of a hub name that is not cached offline, or of a folder without ``spiece.model``/``tokenizer.json``, silently
returns a ~104-token placeholder vocabulary. ``load_tokenizer`` checks for both and raises instead.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import torch

from common.io import write_bytes, write_json
from common.weights import model_not_available

IMAGE_TOKEN = "<extra_id_0>"
"""VIP5's image placeholder: every occurrence in a prompt is one image soft-token slot."""
WORD_START = "\u2581"  # SentencePiece's "▁" word-boundary marker


def train_sentencepiece(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 2000,
    extra_ids: int = 100,
    **trainer_kwargs,
) -> Path:
    """Train a SentencePiece model (BPE by default) on ``texts`` and write ``out_dir/spiece.model``.

    BPE, not T5's unigram: on a corpus of a few dozen prompt templates (real data without titles or reviews) the
    unigram trainer keeps about 50 pieces and splits ``following`` into letters, while BPE keeps every word whole.

    Args:
        texts: corpus sentences (item titles, reviews, prompts ...).
        out_dir: folder for ``spiece.model`` and ``tokenizer_config.json`` (written atomically).
        vocab_size: SentencePiece pieces, before the ``extra_ids`` sentinels are added. A small corpus may yield
            fewer pieces (``hard_vocab_limit=False``); use ``len(load_tokenizer(out_dir))`` for the model vocab.
        extra_ids: number of ``<extra_id_k>`` sentinels appended by ``T5Tokenizer`` (T5 and P5 use 100).
        **trainer_kwargs: extra ``SentencePieceTrainer.train`` options (e.g. ``split_digits=True``).

    Returns:
        The path of the written ``spiece.model``.
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    model = io.BytesIO()
    options = dict(
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,  # deterministic output for the same corpus
        minloglevel=2,
    )
    options.update(trainer_kwargs)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, **options)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids})
    path = out_dir / "spiece.model"
    write_bytes(path, model.getvalue())
    return path


def load_tokenizer(name_or_dir: str | Path):
    """Load a T5 tokenizer from a folder (``spiece.model`` or ``tokenizer.json``) or a hub name such as ``t5-small``.

    Raises:
        FileNotFoundError: a folder without tokenizer files, or a path that does not exist.
        OSError: a hub name that cannot be resolved offline; the message says what to download and where.
    """
    from transformers import T5Tokenizer

    path = Path(name_or_dir)
    if path.is_dir():
        if not any((path / f).is_file() for f in ("spiece.model", "tokenizer.json")):
            raise FileNotFoundError(
                f"{path} has no spiece.model or tokenizer.json (train one with train_sentencepiece)"
            )
        tokenizer = T5Tokenizer.from_pretrained(str(path))
    elif path.exists() or str(name_or_dir).startswith((".", "/", "~")) or str(name_or_dir).count("/") > 1:
        raise FileNotFoundError(f"tokenizer folder {name_or_dir} does not exist")
    else:
        try:
            tokenizer = T5Tokenizer.from_pretrained(str(name_or_dir))
        except OSError as e:
            raise model_not_available(str(name_or_dir), "T5 tokenizer", err=e) from e
    extra = sum(1 for t in tokenizer.get_vocab() if t.startswith("<extra_id_"))
    if len(tokenizer) - extra <= 4:  # only <pad>, </s>, <unk> (+1): the silent placeholder vocabulary
        placeholder = ValueError(f"transformers built a {len(tokenizer)}-token placeholder vocabulary")
        raise model_not_available(str(name_or_dir), "T5 tokenizer", err=placeholder)
    return tokenizer


def whole_word_ids(
    tokens: Sequence[str], image_token: str = IMAGE_TOKEN, eos_token: str = "</s>", pad_token: str = "<pad>",
    id_tokens: Collection[str] = (),
) -> list[int]:
    """Whole-word ids of a SentencePiece token list, as VIP5 ``calculate_whole_word_ids``.

    A counter starting at 0 goes up at every token that starts with "▁" or equals ``image_token``; each token
    takes the current counter value. ``eos_token`` and ``pad_token`` get 0.

    ``id_tokens`` are the vocabulary tokens of token item ids (atomic, collaborative, semantic). Having no "▁",
    they would join the word before them (``":"``, ``","``); instead a run of them (one item's code) is one word
    of its own. Empty (text ids), the ids are exactly VIP5's.
    """
    ids, counter, prev_id_token = [], 0, False
    for tok in tokens:
        if tok == eos_token or tok == pad_token:
            ids.append(0)
            prev_id_token = False
            continue
        is_id_token = tok in id_tokens
        if tok.startswith(WORD_START) or tok == image_token or (is_id_token and not prev_id_token):
            counter += 1
        prev_id_token = is_id_token
        ids.append(counter)
    return ids


def batch_whole_word_ids(tokenizer, input_ids: torch.Tensor, image_token: str = IMAGE_TOKEN,
                         id_tokens: Collection[str] = ()) -> torch.Tensor:
    """``whole_word_ids`` for every row of a padded ``[B, L]`` id tensor; returns a ``[B, L]`` long tensor."""
    rows = [
        whole_word_ids(tokenizer.convert_ids_to_tokens(row), image_token, tokenizer.eos_token, tokenizer.pad_token,
                       id_tokens=id_tokens)
        for row in input_ids.tolist()
    ]
    return torch.tensor(rows, dtype=torch.long, device=input_ids.device).reshape(input_ids.shape)
