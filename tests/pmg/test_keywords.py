"""Keyword prompts, parser and extractors, offline and fast."""

from __future__ import annotations

import logging

import pytest

from common.weights import ModelNotAvailableError
from pmg.cache import KeywordCache
from pmg.keywords import LLMKeywordExtractor, TfidfKeywordExtractor, parse_keywords
from pmg.prompts import ScenarioPrompts, scenario_names
from pmg.text_generator import HFTextGenerator

# ---- parser -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1. a 2. b", ["a", "b"]),
        ("1) a, 2) b", ["a", "b"]),
        (" 1. Red\n2. Floral\n3. red\n4. FLORAL", ["red", "floral"]),
        ("1. sci-fi 2. 80s 3. Film-Noir 4. r&b", ["sci-fi", "80s", "film-noir", "r&b"]),
        ("1. red 2. blue ### Human: now list 3. green", ["red", "blue"]),
        ("1. red 2. blue</s>3. junk", ["red", "blue"]),
        ("1. Bohemian: flowing fabrics\n2. Vintage - retro cuts\nThese suit her.", ["bohemian", "vintage"]),
        (": red, floral,\na-line.", ["red", "floral", "a-line"]),
        ("**1.** Bold **2.** Dark", ["bold", "dark"]),
        ("", []),
        ("   \n ", []),
        ("!!! ??? ...", []),
        ("I'm sorry, but I cannot help with that request today.", []),
        ("The keywords are: 1. Keyword 1. 2. Keyword 2.", []),
        ("for a for a an the of and the of", []),
    ],
)
def test_parse_keywords(text, expected):
    assert parse_keywords(text, 10) == expected


def test_parse_keywords_caps_and_dedupes_before_cap():
    assert parse_keywords("1. a 2. A 3. b 4. c 5. d", 3) == ["a", "b", "c"]
    assert parse_keywords("1. a 2. b", 0) == []


# ---- prompts ----------------------------------------------------------------------------------------


def test_scenario_prompts():
    assert set(scenario_names()) >= {"costume", "movie", "emoticon"}
    costume, movie = ScenarioPrompts("costume"), ScenarioPrompts("movie")
    assert costume.attributes == ["color", "material", "season", "style", "elements"]
    assert movie.attributes == ["country", "style", "genre", "age", "actor", "director"]
    p = costume.render("attribute", n=7, attribute="material", items="1. linen shirt 2. wool coat")
    assert p.splitlines()[1].startswith("### Human:") and p.splitlines()[2].startswith("### Assistant:")
    assert "material" in p and "7" in p and "1. linen shirt 2. wool coat" in p and p.endswith("The keywords are")
    for name in ("costume", "movie", "emoticon"):
        sp = ScenarioPrompts(name)
        assert sp.negative and all(k in sp.turns for k in sp.KINDS)
        assert "{" not in sp.render("integrate", n=3, candidates="a, b")
    with pytest.raises(KeyError, match="valid"):
        ScenarioPrompts("cartoon")


# ---- TF-IDF -----------------------------------------------------------------------------------------

CATALOGUE = ["red floral dress", "red floral skirt", "blue denim jeans", "blue denim jacket", "black leather boots"]


def test_tfidf_picks_discriminative_words(tmp_path):
    ex = TfidfKeywordExtractor(cache_path=tmp_path / "tfidf.jsonl", n_preference=2, n_target=1, progress=False)
    ex.fit(CATALOGUE)
    # red/floral occur in both history items (summed weight 2 x 0.53) beat dress/skirt (1 x 0.66 each).
    pref = ex.preference({"u1": ["red floral dress", "red floral skirt"], "u2": ["blue denim jacket"], "u3": []})
    assert pref["u1"] == ["floral", "red"]
    assert pref["u2"] == ["jacket", "blue"] or pref["u2"] == ["jacket", "denim"]
    assert pref["u2"][0] == "jacket"  # unique to one item: highest idf
    assert pref["u3"] == [] and ex.stats["empty_history"] == 1
    assert ex.target({"i4": "blue denim jacket", "i9": "the of and"}) == {"i4": ["jacket"], "i9": []}
    assert ex.stats["no_keywords"] == 1

    again = TfidfKeywordExtractor(cache_path=tmp_path / "tfidf.jsonl", n_preference=2, n_target=1, progress=False)
    again.fit(CATALOGUE)
    assert again.preference({"u1": ["red floral dress", "red floral skirt"]}) == {"u1": ["floral", "red"]}
    assert again.stats["cached"] == 1 and again.stats["computed"] == 0


# ---- LLM extractor with a canned generator ------------------------------------------------------------


class CannedGenerator:
    """Answers by prompt type; records every prompt it receives."""

    model_id = "canned"
    decoding = {"do_sample": False, "max_new_tokens": 100}

    def __init__(self, junk_for: str | None = None):
        self.prompts: list[str] = []
        self.junk_for = junk_for

    def __call__(self, prompts):
        self.prompts += prompts
        out = []
        for p in prompts:
            human = p.split("### Human:")[1]
            if self.junk_for and self.junk_for in human:
                out.append(" I am not sure what you mean.")
            elif "candidate keywords" in human:
                out.append(": 1. bohemian 2. airy 3. floral\n### Human: thanks")
            elif "piece of clothing" in human:
                out.append(": 1. navy 2. linen 3. striped")
            elif "the color" in human:
                out.append(": 1. red 2. floral 3. pastel")
            elif "the material" in human:
                out.append(": 1. linen 2. red")
            else:
                out.append(": 1. casual")
        return out


def test_llm_extractor_integrates_and_caches(tmp_path, caplog):
    gen = CannedGenerator()
    cache = tmp_path / "pref.jsonl"
    ex = LLMKeywordExtractor(scenario="costume", generator=gen, cache_path=cache, n_preference=3, progress=False)
    histories = {"u1": ["floral dress", "linen shirt"], "u2": ["denim jacket"], "u3": []}
    with caplog.at_level(logging.WARNING):
        res = ex.preference(histories)
    n_attr = len(ex.prompts.attributes)
    assert len(gen.prompts) == 2 * (n_attr + 1)  # per attribute, then one integration call per user
    # The result comes from the integration answer, not from the last attribute's answer.
    assert res == {"u1": ["bohemian", "airy", "floral"], "u2": ["bohemian", "airy", "floral"], "u3": []}
    integ = [p for p in gen.prompts if "candidate keywords" in p]
    assert len(integ) == 2 and "red, floral, pastel, linen, casual" in integ[0]
    rec = KeywordCache(cache).get(next(k for k in KeywordCache(cache).keys() if k.startswith("user:u1|")))
    assert set(rec["raw"]) == {*ex.prompts.attributes, "integrate"} and rec["candidates"][:2] == ["red", "floral"]
    assert rec["model_id"] == "canned" and rec["decoding"]["do_sample"] is False
    assert ex.stats["empty_history"] == 1 and "u3" in caplog.text and "empty_history" in caplog.text

    # Rerun: everything cached, the empty history is not redone unless asked.
    gen2 = CannedGenerator()
    ex2 = LLMKeywordExtractor(scenario="costume", generator=gen2, cache_path=cache, n_preference=3, progress=False)
    assert ex2.preference(histories) == res and gen2.prompts == [] and ex2.stats["cached"] == 3
    # A changed history is a new key; only it is computed.
    assert ex2.preference({**histories, "u2": ["wool coat"]})["u2"] == ["bohemian", "airy", "floral"]
    assert len(gen2.prompts) == n_attr + 1


def test_llm_extractor_counts_unparsable_and_retries(tmp_path):
    cache = tmp_path / "kw.jsonl"
    gen = CannedGenerator(junk_for="piece of clothing")
    ex = LLMKeywordExtractor(scenario="costume", generator=gen, cache_path=cache, per_attribute=False,
                             progress=False)
    assert ex.target({"i1": "striped navy shirt", "i2": ""}) == {"i1": [], "i2": []}
    assert ex.stats["no_keywords"] == 1 and ex.stats["empty_text"] == 1 and len(gen.prompts) == 1
    rec = next(r for k, r in KeywordCache(cache).items() if k.startswith("item:i1|"))
    assert rec["parsed"] == [] and rec["reason"] == "no_keywords" and "not sure" in rec["raw"]["target"]

    fixed = CannedGenerator()
    ex2 = LLMKeywordExtractor(scenario="costume", generator=fixed, cache_path=cache, per_attribute=False,
                              progress=False)
    assert ex2.target({"i1": "striped navy shirt"}) == {"i1": []} and fixed.prompts == []
    ex3 = LLMKeywordExtractor(scenario="costume", generator=fixed, cache_path=cache, per_attribute=False,
                              retry_empty=True, progress=False)
    assert ex3.target({"i1": "striped navy shirt"}) == {"i1": ["navy", "linen", "striped"]}
    assert KeywordCache(cache).keywords(next(k for k in KeywordCache(cache).keys() if k.startswith("item:i1|"))) \
        == ["navy", "linen", "striped"]


def test_llm_extractor_single_preference_prompt():
    gen = CannedGenerator()
    ex = LLMKeywordExtractor(scenario="movie", generator=gen, per_attribute=False, progress=False)
    assert ex.preference({"u": ["Heat (Crime)"]}) == {"u": ["casual"]}
    assert len(gen.prompts) == 1 and "enjoyed these movies: 1. Heat (Crime)." in gen.prompts[0]


def test_missing_weights_error_says_what_to_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ex = LLMKeywordExtractor(model="meta-llama/Llama-2-7b-chat-hf", progress=False)  # lazy: nothing loaded yet
    with pytest.raises(ModelNotAvailableError, match="hf download"):
        ex.target({"i": "a striped shirt"})


# ---- LLM extractor end to end on a tiny random Llama ---------------------------------------------------

# Only function/prose words: whatever the random model says, it parses to nothing (a "junk" LLM).
JUNK_WORDS = "the of and to in on at by for with it that this as from is are i sorry keywords".split()


@pytest.fixture(scope="module")
def tiny_llama():
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", *JUNK_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.mark.parametrize("batch_size", [1, 3])
def test_llm_extractor_on_tiny_llama(tmp_path, tiny_llama, batch_size):
    model, tok = tiny_llama
    calls = []
    real_generate = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return real_generate(*args, **kwargs)

    model.generate = counting_generate
    try:
        ex = LLMKeywordExtractor(model=model, tokenizer=tok, scenario="movie", cache_path=tmp_path / "kw.jsonl",
                                 max_new_tokens=6, batch_size=batch_size, progress=False)
        users = {"u1": ["Heat (Crime)", "Alien (Horror)"], "u2": ["Up (Animation)"], "u3": ["Jaws"]}
        res = ex.preference(users)
    finally:
        del model.generate
    n_attr = len(ex.prompts.attributes)
    # Junk everywhere: no candidates, so no integration call is made; every user is counted as no_keywords.
    assert res == {"u1": [], "u2": [], "u3": []}
    assert ex.stats["no_keywords"] == 3
    assert sum(calls) == 3 * n_attr and max(calls) <= batch_size
    if batch_size == 1:
        assert len(calls) == 3 * n_attr
    store = KeywordCache(tmp_path / "kw.jsonl")
    assert len(store) == 3
    for _, rec in store.items():
        assert set(rec["raw"]) == set(ex.prompts.attributes) and rec["reason"] == "no_keywords"
        assert all(isinstance(v, str) for v in rec["raw"].values())
        assert rec["decoding"] == {"do_sample": False, "max_new_tokens": 6}


def test_hf_generator_batches_match_single(tiny_llama):
    model, tok = tiny_llama
    prompts = ["the of and to", "it", "in on at by for with it"]
    batched = HFTextGenerator(model, tok, max_new_tokens=5, batch_size=3)(prompts)
    single = [HFTextGenerator(model, tok, max_new_tokens=5, batch_size=1)([p])[0] for p in prompts]
    assert batched == single and all(isinstance(t, str) for t in batched)
