"""Whole-word ids (the VIP5 encoder input) and the offline SentencePiece tokenizer."""

from __future__ import annotations

import pytest
import torch

from vip5.tokenizer import (
    IMAGE_TOKEN,
    batch_whole_word_ids,
    load_tokenizer,
    train_sentencepiece,
    whole_word_ids,
)

IMG = IMAGE_TOKEN


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        # "user_251": "▁user" then pieces without "▁" -> one word
        (["▁user", "_", "25", "1", "</s>"], [1, 1, 1, 1, 0]),
        # an item number in a history list ("▁12", "34") is one word; "▁," is a word of its own
        (["▁12", "34", "▁,", "▁56", "</s>"], [1, 1, 2, 3, 0]),
        # each image placeholder is a word of its own, and so is the token after it if it starts with "▁"
        (["▁item", "_", "12", "34", IMG, IMG, "▁,", "▁item", "_", "7", IMG, IMG, "</s>"],
         [1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 6, 7, 0]),
        # the counter starts at 0: a first piece without "▁" keeps id 0; padding gets 0
        (["abc", "▁d", "</s>", "<pad>", "<pad>"], [0, 1, 0, 0, 0]),
        # another extra id is an ordinary token (not "▁", not the image token)
        (["▁a", "<extra_id_1>", "▁b", "</s>"], [1, 1, 2, 0]),
    ],
)
def test_whole_word_ids_hand_made(tokens, expected):
    assert whole_word_ids(tokens, IMG) == expected


def test_whole_word_ids_token_item_ids_are_words_of_their_own():
    ids = {"<item_4>", "<s0_1>", "<s1_3>"}
    tokens = ["▁", ":", "<item_4>", IMG, "▁", ",", "<s0_1>", "<s1_3>", IMG, "▁to", "</s>"]
    # without id_tokens the id joins the word before it (VIP5's rule, written for digit ids) ...
    assert whole_word_ids(tokens, IMG) == [1, 1, 1, 2, 3, 3, 3, 3, 4, 5, 0]
    # ... with them an atomic id is one word, and a multi-token code (semantic/collaborative) is one word too
    assert whole_word_ids(tokens, IMG, id_tokens=ids) == [1, 1, 2, 3, 4, 4, 5, 5, 6, 7, 0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    words = ["red", "blue", "green", "round", "square", "striped", "shirt", "shoe", "bag", "lamp", "bought", "user"]
    g = torch.Generator().manual_seed(0)
    texts = []
    for i in range(2000):
        pick = torch.randint(len(words), (6,), generator=g).tolist()
        texts.append(" ".join(words[j] for j in pick) + f" user_{i % 300} item_{(7 * i) % 1000}, item_{i % 97}")
    out = tmp_path_factory.mktemp("spm")
    path = train_sentencepiece(texts, out, vocab_size=300)
    return out, path


def test_train_sentencepiece_and_load_real_vocab(trained):
    import sentencepiece as spm

    out, path = trained
    assert path == out / "spiece.model" and path.is_file()
    assert not list(out.glob("*.tmp"))
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tok = load_tokenizer(out)
    n = sp.get_piece_size()
    # transformers 5 trap: a placeholder vocab would have ~104 entries; this one is the trained model's
    assert len(tok) == n + 100
    assert tok.convert_ids_to_tokens(list(range(n))) == [sp.id_to_piece(i) for i in range(n)]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == len(tok) - 1  # as 32099 in the 32,100-id P5 tokenizer
    text = "user_12 bought item_345"
    assert tok(text).input_ids == sp.encode(text) + [tok.eos_token_id]


def test_extra_ids_and_determinism(tmp_path):
    texts = [f"red shirt item_{i} blue shoe user_{i % 7}" for i in range(300)]
    a = train_sentencepiece(texts, tmp_path / "a", vocab_size=60, extra_ids=10)
    b = train_sentencepiece(texts, tmp_path / "b", vocab_size=60, extra_ids=10)
    assert a.read_bytes() == b.read_bytes()
    tok = load_tokenizer(tmp_path / "a")
    assert sum(t.startswith("<extra_id_") for t in tok.get_vocab()) == 10


def test_batch_whole_word_ids_from_input_ids(trained):
    out, _ = trained
    tok = load_tokenizer(out)
    enc = tok([f"user_12 item_345 {IMG}{IMG} , item_7 {IMG}{IMG}", "red shirt"], padding=True, return_tensors="pt")
    ids = batch_whole_word_ids(tok, enc.input_ids)
    assert ids.shape == enc.input_ids.shape
    for row, wrow in zip(enc.input_ids.tolist(), ids.tolist()):
        assert wrow == whole_word_ids(tok.convert_ids_to_tokens(row), IMG)
    pad = enc.input_ids == tok.pad_token_id
    assert (ids[pad] == 0).all() and (ids[enc.input_ids == tok.eos_token_id] == 0).all()
    # each image slot is a word of its own: consecutive slots get consecutive ids
    slots = ids[0][enc.input_ids[0] == tok.convert_tokens_to_ids(IMG)].tolist()
    assert slots[1] == slots[0] + 1 and slots[3] == slots[2] + 1


def test_load_tokenizer_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)  # empty folder: transformers would silently build a placeholder vocab
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nope" / "deeper")


def test_load_t5_small_offline_says_what_to_download():
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("t5-small", "spiece.model"), str):
        pytest.skip("t5-small is in the local HF cache")
    with pytest.raises(OSError, match="hf download t5-small"):
        load_tokenizer("t5-small")
