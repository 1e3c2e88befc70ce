"""Trie-constrained beam search and likelihood ranking on a tiny random T5 with hand-made token ids."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from vip5.candidate_scoring import candidate_forest, score_candidates, t5_decode_fn, t5_self_attention
from vip5.trie import ItemTrie, TrieLogitsProcessor, rank_beams

EOS = 1


@pytest.fixture(scope="module")
def model() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=50, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=EOS,
    )
    return T5ForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def catalogue() -> dict[str, list[int]]:
    """30 items of 1-3 tokens (ids 2..49) sharing prefixes, like "12", "1234", "▁12" + "3"; eos appended by the trie."""
    rng = random.Random(0)
    items: dict[str, list[int]] = {}
    seen = set()
    while len(items) < 30:
        seq = tuple(rng.choice([5, 6, 7]) if i == 0 else rng.randrange(2, 50) for i in range(rng.randint(1, 3)))
        if seq not in seen:
            seen.add(seq)
            items[f"item{len(items)}"] = list(seq)
    return items


def _inputs(batch: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 50, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_trie_structure(catalogue):
    trie = ItemTrie(catalogue)
    assert len(trie) == 30 and "item3" in trie
    assert trie.allowed_tokens([0]) == sorted({s[0] for s in catalogue.values()})
    for item, seq in catalogue.items():
        assert trie.item_of([0, *seq, EOS, 0, 0]) == item
        assert trie.allowed_tokens([0, *seq]) == sorted(
            {o[len(seq)] for o in catalogue.values() if o[: len(seq)] == seq and len(o) > len(seq)} | {EOS}
        )
        assert trie.allowed_tokens([0, *seq, EOS]) == [0]  # after a complete id: pad only
        assert trie.item_of([0, *seq]) is None  # no eos: not complete
    assert trie.allowed_tokens([0, 99]) == [EOS]  # off the trie: only end the beam
    assert trie.dead_branches(["item0", "item0"]) == trie.dead_branches(["item0"])  # repeated history items
    with pytest.raises(ValueError, match="same token ids"):
        ItemTrie({"a": [5, 6], "b": [5, 6, EOS]})
    with pytest.raises(ValueError, match="eos token"):
        ItemTrie({"a": [5, EOS, 6]})


def test_processor_masks_exactly_the_allowed_tokens(catalogue):
    trie = ItemTrie(catalogue)
    first = catalogue["item0"][:1]
    prefixes = [[0, *first], [0, *catalogue["item0"]], [0, 42, 42], [0, *catalogue["item0"], EOS]]
    prefixes = [p[:2] for p in prefixes]  # one batch of equal-length rows: on-trie, off-trie, ...
    ids = torch.tensor(prefixes)
    out = TrieLogitsProcessor(trie)(ids, torch.zeros(len(prefixes), 50))
    for row, p in zip(out, prefixes):
        assert torch.isfinite(row).nonzero().flatten().tolist() == trie.allowed_tokens(p)
    root = TrieLogitsProcessor(trie)(torch.zeros(2, 1, dtype=torch.long), torch.randn(2, 50))
    assert torch.isfinite(root).sum(1).tolist() == [len(trie.allowed_tokens([0]))] * 2


def test_processor_dense_path_for_wide_nodes():
    """One token per item: the root allows most of the vocabulary, so the processor switches to dense masks."""
    trie = ItemTrie({f"i{t}": [t] for t in range(2, 45)})
    ids = torch.tensor([[0], [0], [0]])
    excluded = [{"i2", "i3"}, set(), {"i44"}]
    out = TrieLogitsProcessor(trie, num_beams=1, exclude=excluded)(ids, torch.randn(3, 50))
    for row, ex in zip(out, excluded):
        assert set(torch.isfinite(row).nonzero().flatten().tolist()) == set(range(2, 45)) - {int(i[1:]) for i in ex}
    mixed = torch.tensor([[0, 7], [0, 9], [0, 99]])  # distinct nodes: after an item, after an item, off the trie
    out = TrieLogitsProcessor(trie)(mixed, torch.zeros(3, 50))
    assert [torch.isfinite(r).nonzero().flatten().tolist() for r in out] == [[1], [1], [1]]
    two_level = ItemTrie({**{f"a{t}": [5, t] for t in range(2, 46)}, "b": [6, 2]})  # distinct nodes, one wide
    out = TrieLogitsProcessor(two_level)(torch.tensor([[0, 5], [0, 6]]), torch.zeros(2, 50))
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == list(range(2, 46))
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [2]


def test_renormalized_scores_are_log_probabilities_over_the_allowed_tokens():
    trie = ItemTrie({"a": [5, 7], "b": [5, 8], "c": [6]})
    scores = torch.randn(3, 12).log_softmax(-1)
    ids = torch.tensor([[0, 5], [0, 6], [0, 9]])  # two children, a complete id (forced </s>), off the trie
    plain = TrieLogitsProcessor(trie)(ids, scores)
    out = TrieLogitsProcessor(trie, renormalize=True)(ids, scores)
    assert torch.equal(torch.isfinite(out), torch.isfinite(plain))
    assert torch.allclose(out.exp().sum(1), torch.ones(3))
    assert out[1, EOS] == 0.0 and plain[1, EOS] < 0  # a forced step adds nothing
    assert torch.allclose(out[0, 7] - out[0, 8], scores[0, 7] - scores[0, 8])  # the order among children is kept


def test_exclusion_masks_only_excluded_branches(catalogue):
    trie = ItemTrie(catalogue)
    rng = random.Random(3)
    for _ in range(20):
        banned = set(rng.sample(list(catalogue), rng.randint(1, 20)))
        proc = TrieLogitsProcessor(trie, num_beams=1, exclude=[banned])
        live = {tuple(s + [EOS]) for i, s in catalogue.items() if i not in banned}
        prefixes = {(0, *s[:j]) for s in (list(x) for x in live) for j in range(len(s))}
        for p in prefixes:
            out = proc(torch.tensor([list(p)]), torch.zeros(1, 50))
            allowed = set(torch.isfinite(out[0]).nonzero().flatten().tolist())
            expected = {s[len(p) - 1] for s in live if s[: len(p) - 1] == p[1:]}
            assert allowed == expected


def _beams(model, trie, num_beams=5, exclude=None, constrained=True, max_new_tokens=None):
    """Per sample, the item each returned beam decodes to (best first, None for no item), searched as the
    Evaluator does: the stock ``generate`` with the trie processor."""
    processors = [TrieLogitsProcessor(trie, num_beams=num_beams, exclude=exclude)] if constrained else []
    out = model.generate(**_inputs(), num_beams=num_beams, num_return_sequences=num_beams,
                         max_new_tokens=max_new_tokens or trie.max_new_tokens, logits_processor=processors,
                         early_stopping=True, do_sample=False)
    items = [trie.item_of(s) for s in out.tolist()]
    return [items[b * num_beams : (b + 1) * num_beams] for b in range(len(items) // num_beams)]


def test_constrained_beam_search_returns_only_catalogue_items(model, catalogue):
    trie = ItemTrie(catalogue)
    beams = _beams(model, trie)
    assert len(beams) == 3
    for decoded in beams:
        ranked, invalid = rank_beams(decoded)
        assert invalid == 0 and len(ranked) == 5 and all(i in catalogue for i in ranked)
    # same beams as HF's own prefix_allowed_tokens_fn constraint (the processor is a faster equivalent)
    ref = model.generate(**_inputs(), num_beams=5, num_return_sequences=5, max_new_tokens=trie.max_new_tokens,
                         prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn, early_stopping=True)
    ref_items = [trie.item_of(s) for s in ref.tolist()]
    assert [sorted(b) for b in beams] == [sorted(ref_items[b * 5 : (b + 1) * 5]) for b in range(3)]
    excluded = [set(beams[0][:2]), set(), set(beams[2])]
    again = _beams(model, trie, exclude=excluded)
    for decoded, ex in zip(again, excluded):
        assert None not in decoded and len(set(decoded)) == 5 and not (set(decoded) & ex)
    assert again[1] == beams[1]


def test_unconstrained_search_reports_invalid_ids(model, catalogue):
    trie = ItemTrie(catalogue)
    ranked = [rank_beams(decoded) for decoded in _beams(model, trie, constrained=False, max_new_tokens=4)]
    assert sum(n for _, n in ranked) / 15 > 0.5  # a random model rarely spells a catalogue id
    assert all(i in catalogue for items, _ in ranked for i in items)


def test_duplicates_keep_their_best_rank():
    ranked, invalid = rank_beams(["item5", None, "item5", "item1", "item2"], exclude={"item2"})
    assert ranked == ["item5", "item1"] and invalid == 1


def test_candidate_forest_shares_prefixes():
    # "5 9", "5 9 4" and "6" under one root: 5, 9, 4 and 6 are decoded once each
    f = candidate_forest([[[5, 9], [5, 9, 4], [6]], [[7]]], start_token_id=0, eos_token_id=EOS)
    assert f.n_nodes == [5, 2] and f.input_ids[0].tolist() == [0, 5, 9, 4, 6] and f.input_ids[1].tolist()[:2] == [0, 7]
    assert f.depth[0].tolist() == [0, 1, 2, 3, 1]
    assert f.allowed[0, 3].tolist() == [True, True, True, True, False]  # "4" sees start, 5, 9 and itself
    assert f.allowed[0, 4].tolist() == [True, False, False, False, True]  # "6" sees start and itself
    assert f.allowed[1, 4].tolist() == [False, False, False, False, True]  # padding sees itself only
    assert f.n_tokens.tolist() == [3, 4, 2, 2]
    # candidate 1 ("5 9 4 </s>") is scored at nodes start, 5, 9, 4
    assert sorted((n, t) for n, t, c in zip(f.pair_node.tolist(), f.pair_token.tolist(), f.pair_candidate.tolist())
                  if c == 1) == [(0, 5), (1, 9), (2, 4), (3, EOS)]


def test_likelihood_ranking_equals_brute_force(model, catalogue):
    inputs = _inputs(batch=3)
    inputs["attention_mask"][1, -2:] = 0  # a padded prompt
    rng = random.Random(5)
    names = [rng.sample(list(catalogue), n) for n in (25, 2, 6)]  # row 0: a tree wider than T5's exact distances
    cands = [[catalogue[i] for i in row] for row in names]
    with torch.no_grad():
        enc = model.get_encoder()(**inputs).last_hidden_state
        decode = t5_decode_fn(model, enc, inputs["attention_mask"])
        kw = dict(start_token_id=0, eos_token_id=EOS)
        got = score_candidates(decode, t5_self_attention(model), cands, max_positions=40, **kw)
        mean = score_candidates(decode, t5_self_attention(model), cands, length_normalize=True, **kw)
        for r, row in enumerate(cands):
            brute = []
            for c in row:  # one teacher-forced forward per candidate, from the raw inputs
                labels = torch.tensor([c + [EOS]])
                logits = model(input_ids=inputs["input_ids"][r : r + 1],
                               attention_mask=inputs["attention_mask"][r : r + 1], labels=labels).logits
                brute.append(torch.log_softmax(logits, -1)[0, torch.arange(labels.shape[1]), labels[0]].sum())
            brute = torch.stack(brute)
            lengths = torch.tensor([len(c) + 1 for c in row], dtype=torch.float)
            assert torch.allclose(got[r], brute, atol=1e-5)
            assert torch.allclose(mean[r], brute / lengths, atol=1e-5)
