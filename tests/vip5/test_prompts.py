"""VIP5 templates as data: the 29 prompts, roles, requirements, and rendering faithful to the original data.py."""

from __future__ import annotations

import random
import re

import pytest

from vip5 import prompts as P

PH = "<extra_id_0>"


@pytest.fixture(scope="module")
def templates() -> P.Templates:
    return P.load_templates()


def test_all_29_templates_with_families_and_roles(templates):
    ids = [f"A-{i}" for i in range(1, 10)] + [f"B-{i}" for i in range(1, 9)] + [f"C-{i}" for i in range(1, 13)]
    assert list(templates) == ids
    assert {t.family for t in templates.values() if t.id[0] == "A"} == {"sequential"}
    assert {t.family for t in templates.values() if t.id[0] == "B"} == {"direct"}
    assert {t.family for t in templates.values() if t.id[0] == "C"} == {"explanation"}
    assert set(P.templates_for(role="unseen", templates=templates)) == {"A-9", "B-8", "C-12"}
    assert set(P.templates_for(role="seen_test", templates=templates)) == {"A-3", "B-5", "C-3"}
    train_a = P.templates_for("sequential", "train", templates)
    assert list(train_a) == [f"A-{i}" for i in range(1, 9)]  # A-3 is trained on too; A-9 is held out
    assert list(P.templates_for("direct", "test", templates)) == ["B-5", "B-8"]
    assert len(P.templates_for(templates=templates)) == 29
    kinds = {t.id: t.target_kind for t in templates.values()}
    assert {k for k, v in kinds.items() if v == "yes_no"} == {"A-7", "A-8", "B-1", "B-2", "B-3", "B-4"}
    assert {k for k, v in kinds.items() if v == "rating_text"} == {"C-7", "C-8"}


def test_formatting_facts_of_the_original_strings(templates):
    for t in templates.values():
        assert re.search(r"[^ ][?:]", t.source) is None, t.id  # a space before every "?" and ":"
        assert all(t.source[i - 1 : i + 2] == " \n " for i, ch in enumerate(t.source) if ch == "\n"), t.id
        if "{user_id}" in t.source:
            assert "user_{user_id}" in t.source, t.id
    # single items are item_<iid> except in, whose original writes the bare id
    assert "item_{item_id}" in templates["B-1"].source and "buy {item_id} {item_photo}" in templates["A-7"].source
    assert "user_{user_id} .  Select" in templates["B-8"].source  # the original's double space is kept


def test_unknown_template_id_lists_valid_ids(templates):
    with pytest.raises(KeyError, match="valid ids: A-1, A-2"):
        templates["A-10"]
    with pytest.raises(ValueError, match="unknown family"):
        P.templates_for("rating", templates=templates)


def test_bad_yaml_is_rejected(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text('X-1: {family: sequential, role: train, requires: [photos], source: "{user_id}", '
                   'target: "{target}", target_kind: item}\n')
    with pytest.raises(ValueError, match="unknown requirement"):
        P.load_templates(bad)
    bad.write_text('X-1: {family: sequential, role: train, requires: [], source: "{userid}", '
                   'target: "{target}", target_kind: item}\n')
    with pytest.raises(ValueError, match="unknown source slot"):
        P.load_templates(bad)


def test_drop_unavailable(templates):
    kept, dropped = P.drop_unavailable(templates, set())
    assert list(kept) == ["A-1", "A-2", "A-3", "A-7", "B-1"]
    assert len(dropped) == 24
    kept, dropped = P.drop_unavailable(templates, P.REQUIREMENTS - {"reviews"})
    assert dropped == [f"C-{i}" for i in range(1, 13)]
    kept, _ = P.drop_unavailable(templates, {"user_names", "candidates"})
    assert "B-5" in kept and "B-3" not in kept and "A-9" in kept
    with pytest.raises(ValueError, match="unknown data name"):
        P.drop_unavailable(templates, {"title"})


def _original_list(ids, n, sep_symbol):
    """The original data.py expression for history/candidate lists."""
    return f" {{}}{sep_symbol} ".format(f"{PH} " * n).join(ids) + f" {PH}" * n


@pytest.mark.parametrize("n", [0, 1, 2, 3])
@pytest.mark.parametrize("sep,symbol", [(", ", ","), (" -> ", "->")])
def test_item_list_matches_original_expression(n, sep, symbol):
    ids = ["12", "345", "6"]
    assert P.render_item_list(ids, n, PH, sep) == _original_list(ids, n, symbol)
    if n:
        assert P.image_placeholders(n) == f"{PH} " * (n - 1) + PH  # the original single-item photo slot


def test_render_sequential_exact(templates):
    fields = {"user_id": "7", "history": ["12", "34"], "target": "56"}
    source, target, n_images = P.render(templates["A-3"], fields, n_image_tokens=2)
    assert source == (
        f"Here is the purchase history list of user_7 : \n 12 {PH} {PH} , 34 {PH} {PH} \n "
        "try to recommend next item to the user"
    )
    assert (target, n_images) == ("56", 2)
    source, _, _ = P.render(templates["A-3"], fields, n_image_tokens=1, separator=" -> ")
    assert f"12 {PH} -> 34 {PH} \n" in source
    source, _, n_images = P.render(templates["A-3"], fields, n_image_tokens=0)
    assert ": \n 12 , 34 \n" in source and n_images == 0


def test_render_single_item_candidates_and_explanations(templates):
    src, tgt, n = P.render(templates["B-1"], {"user_id": "7", "item_id": "12", "label": False}, 1)
    assert (src, tgt, n) == (f"Will user_7 likely to interact with item_12 {PH} ?", "no", 1)
    fields = {"user_desc": "Ann", "history": ["1", "2"], "item_id": "9", "answer": "yes"}
    src, tgt, n = P.render(templates["A-8"], fields, 2)
    assert src.endswith(f"Predict whether the user will purchase 9 {PH} {PH} next ?") and (tgt, n) == ("yes", 3)
    assert P.image_items(templates["A-8"], fields) == ["1", "2", "9"]
    # candidate lists always use ",", whatever the history separator
    fields = {"user_id": "7", "candidates": ["3", "1"], "target": "1"}
    src, tgt, n = P.render(templates["B-8"], fields, 1, separator=" -> ")
    assert src.endswith(f"candidates : \n 3 {PH} , 1 {PH}") and (tgt, n) == ("1", 2)
    rev = {"user_id": "7", "item_id": "12", "title": "Red Mug", "star_rating": 4.0, "feature": "colour",
           "user_desc": "Ann", "explanation": "nice colour"}
    src, tgt, n = P.render(templates["C-3"], rev, 1)
    assert src == f"Help user_7 generate a 4-star explanation about this product : \n Red Mug {PH}"
    assert (tgt, n) == ("nice colour", 1)
    assert P.render(templates["C-7"], rev, 1)[1] == "4 , nice colour"  # val/test: int(rating)
    assert P.render(templates["C-7"], {**rev, "rating_text": "3.9"}, 1)[1] == "3.9 , nice colour"
    assert P.image_items(templates["B-2"], {"item": ["raw-asin"]}) == ["raw-asin"]  # corpus ids for features


def test_missing_field_and_coin(templates):
    with pytest.raises(KeyError, match="A-4 needs field"):
        P.render(templates["A-4"], {"history": ["1"], "target": "2"}, 1)
    with pytest.raises(ValueError, match="needs an rng"):
        P.render(templates["A-1"], {"user_id": "1", "history": ["1"], "target": "2"}, 1, separator="coin")
    fields = {"user_id": "1", "history": ["1", "2"], "target": "3"}
    first = P.render(templates["A-1"], fields, 1, separator="coin", rng=P.sample_rng(2022, "test", "A-1", "1"))
    again = P.render(templates["A-1"], fields, 1, separator="coin", rng=P.sample_rng(2022, "test", "A-1", "1"))
    assert first == again  # a per-sample seeded coin is deterministic
    seps = {P.coin_separator(P.sample_rng(0, u)) for u in range(50)}
    assert seps == {", ", " -> "}


def test_jitter_rating_stays_in_bucket():
    rng = random.Random(0)
    values = [float(P.jitter_rating(4, rng)) for _ in range(200)]
    assert all(1.0 <= v <= 5.0 for v in values) and 3.6 < sum(values) / len(values) < 4.3
    assert all(4.0 <= float(P.jitter_rating(5.0, rng)) <= 5.0 for _ in range(50))
