"""Conditioning assembly with a tiny CLIP text encoder."""

from __future__ import annotations

import pytest
import torch

from pmg.conditioning import assemble_condition, encode_text, repeat_keywords, scale_tokens
from pmg.diffusion import tiny_sd_components


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_components(texts=["red striped shirt", "blue dotted hat, green plain dress"])


def test_encode_text_shape_padding_and_truncation(sd):
    states = encode_text(sd.text_encoder, sd.tokenizer, ["red hat", "blue dotted dress, green"], max_length=75)
    assert states.shape == (2, 75, sd.text_dim) and not states.requires_grad
    again = encode_text(sd.text_encoder, sd.tokenizer, ["red hat"], max_length=75)
    torch.testing.assert_close(states[:1], again)
    long = encode_text(sd.text_encoder, sd.tokenizer, ["red " * 200], max_length=77)
    assert long.shape == (1, 77, sd.text_dim)
    with pytest.raises(ValueError, match="max_length"):
        encode_text(sd.text_encoder, sd.tokenizer, ["red"], max_length=78)


@pytest.mark.parametrize("n_soft", [1, 2, 4, 16])
def test_condition_has_77_tokens_keywords_first(sd, n_soft):
    kw = encode_text(sd.text_encoder, sd.tokenizer, ["red hat", "blue dress"], max_length=77 - n_soft)
    soft = torch.randn(2, n_soft, sd.text_dim, requires_grad=True)
    cond = assemble_condition(kw, soft)
    assert cond.shape == (2, 77, sd.text_dim)
    assert torch.equal(cond[:, : 77 - n_soft], kw) and torch.equal(cond[:, 77 - n_soft :], soft)
    cond.sum().backward()
    assert torch.equal(soft.grad, torch.ones_like(soft))


def test_condition_ablations_and_errors(sd):
    full = encode_text(sd.text_encoder, sd.tokenizer, ["red hat"], max_length=77)
    assert torch.equal(assemble_condition(full, None), full)  # no soft tokens: keywords alone, 77 tokens
    empty = encode_text(sd.text_encoder, sd.tokenizer, [""], max_length=73)  # no keywords: empty prompt + E_m
    assert assemble_condition(empty, torch.zeros(1, 4, sd.text_dim)).shape == (1, 77, sd.text_dim)
    with pytest.raises(ValueError, match="76 tokens"):
        assemble_condition(full[:, :73], torch.zeros(1, 3, sd.text_dim))
    with pytest.raises(ValueError, match="expected 77"):
        assemble_condition(full[:, :75], None)
    with pytest.raises(ValueError, match="batch size and width"):
        assemble_condition(full[:, :75], torch.zeros(2, 2, sd.text_dim))
    with pytest.raises(ValueError, match="needs"):
        assemble_condition(None, None)


def test_scale_tokens():
    states = torch.randn(2, 5, 8)
    assert torch.equal(scale_tokens(states, 1.0), states)
    scaled = scale_tokens(states, 2.0)
    assert torch.equal(scaled[:, 0], states[:, 0])  # the start-token state is left alone
    torch.testing.assert_close(scaled[:, 1:], 2 * states[:, 1:])
    torch.testing.assert_close(scale_tokens(states, 0.5, skip_first=False), 0.5 * states)


def test_repeat_keywords():
    assert repeat_keywords(["costume", "hat"], ["red", "dotted"], 1, 2) == "costume, hat, red, dotted, red, dotted"
    assert repeat_keywords("poster", ["dark"], 2, 0, sep=" ") == "poster poster"
    assert repeat_keywords([], [], 1, 3) == ""
    with pytest.raises(ValueError):
        repeat_keywords(["a"], ["b"], 1, 1.5)
