"""Behaviour -> text: item texts per scenario, summaries, captions, cache, history rendering."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.corpus import Corpus, Item, User
from common.weights import ModelNotAvailableError
from pmg.behaviour import BehaviourText, clean_title, render_chat, render_history
from pmg.cache import JsonlStore


def _corpus(root: Path, items: list[Item]) -> Corpus:
    return Corpus(name="t", root=root, items={it.item_id: it for it in items}, users={"u": User("u")},
                  sequences={"u": [it.item_id for it in items]})


def test_clean_title_and_rendering():
    assert clean_title("Toy Story (1995)") == "Toy Story"
    assert clean_title("City of Lost Children, The (Cité des enfants perdus, La) (1995) ") == \
        "City of Lost Children, The (Cité des enfants perdus, La)"
    assert clean_title("Babylon 5") == "Babylon 5" and clean_title(None) == ""
    assert render_history(["a b", "c"]) == "1. a b 2. c"
    assert render_chat(["hi", "how are you?", "great news!"]) == "#Bob: hi  #Alice: how are you?  #Bob: great news!"


def test_movie_and_costume_texts(tmp_path):
    movies = _corpus(tmp_path, [
        Item("1", "Toy Story (1995)", "Toys come alive.", ["Adventure", "Animation"]),
        Item("2", "Heat (1995)", "A thief and a cop.", ["Crime"]),
        Item("3", "Mystery (2001)", None, ["(no genres listed)"]),
    ])
    bt = BehaviourText("movie")
    texts = bt.texts(movies, item_keywords={"1": ["toys", "friendship", "cowboy", "space", "bedroom", "extra"]})
    assert texts["1"] == "Toy Story (Adventure, Animation): toys, friendship, cowboy, space, bedroom."
    assert texts["2"] == "Heat (Crime): A thief and a cop."
    assert texts["3"] == "Mystery"
    assert bt.histories(movies, {"u": ["2", "3"]}) == {"u": ["Heat (Crime): A thief and a cop.", "Mystery"]}

    shop = _corpus(tmp_path, [Item("a", "Red floral dress", "long text", ["Dresses"]), Item("b")])
    bt = BehaviourText("costume")
    assert bt.texts(shop) == {"a": "Red floral dress", "b": ""}
    assert bt.stats["empty_text"] == 1


class FakeSummariser:
    model_id = "fake-summariser"

    def __init__(self):
        self.prompts = []

    def __call__(self, prompts):
        self.prompts += prompts
        return [" A short summary. ### Human: more"] * len(prompts)


def test_long_descriptions_summarised_or_cut_and_cached(tmp_path):
    long = " ".join(f"w{i}" for i in range(30))
    corpus = _corpus(tmp_path, [Item("1", "Film (2000)", long, ["Drama"]), Item("2", "Short (2001)", "Brief.", [])])
    summ = FakeSummariser()
    bt = BehaviourText("movie", max_words=10, summariser=summ, cache_path=tmp_path / "texts.jsonl")
    texts = bt.texts(corpus)
    assert texts == {"1": "Film (Drama): A short summary.", "2": "Short: Brief."}
    assert len(summ.prompts) == 1 and "at most 10" in summ.prompts[0] and "w29" in summ.prompts[0]
    store = JsonlStore(tmp_path / "texts.jsonl")
    assert len(store) == 2 and any(r["raw"] and r["raw"]["summary"] == "A short summary." for _, r in store.items())

    summ2 = FakeSummariser()
    bt2 = BehaviourText("movie", max_words=10, summariser=summ2, cache_path=tmp_path / "texts.jsonl")
    assert bt2.texts(corpus) == texts and summ2.prompts == [] and bt2.stats["cached"] == 2

    cut = BehaviourText("movie", max_words=10).texts(corpus)["1"]
    assert cut == "Film (Drama): w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 ..."


def test_captions(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    corpus = _corpus(tmp_path, [Item("a", "Dress", image="a.png"), Item("b", None, image="a.png"),
                                Item("c", "Coat", image="missing.png")])
    seen = []

    def captioner(path):
        seen.append(path)
        return "a red  dress on white"

    assert BehaviourText("costume", captioner=captioner).texts(corpus) == \
        {"a": "Dress, a red dress on white", "b": "a red dress on white", "c": "Coat"}
    assert seen == [str(tmp_path / "a.png")] * 2
    fb = BehaviourText("costume", captioner=captioner, caption_mode="fallback")
    assert fb.texts(corpus) == {"a": "Dress", "b": "a red dress on white", "c": "Coat"}
    assert BehaviourText("costume", captioner=captioner, caption_mode="replace").texts(corpus)["a"] == \
        "a red dress on white"


def test_captioner_by_name_offline_says_what_to_download(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    corpus = _corpus(tmp_path, [Item("a", "Dress", image="a.png")])
    bt = BehaviourText("costume", captioner="Salesforce/blip-image-captioning-base")  # not built until needed
    with pytest.raises(ModelNotAvailableError, match="download"):
        bt.texts(corpus)
