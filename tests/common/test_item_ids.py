"""Token item ids (atomic, collaborative, semantic) and the clustering they are built from."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from common.data.clustering import kmeans, residual_codes, residual_kmeans, spectral_clusters, tfidf_embeddings
from common.data.corpus import Corpus, Item, User
from common.data.indexing import ItemIndex, build_indexing
from common.data.indexing.tokens import CollaborativeIndexing, SemanticIndexing
from common.data.splits import leave_one_out


def blobs(n_per: int = 10, centres=((0, 0), (10, 0), (0, 10)), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.tensor(c, dtype=torch.float) + 0.3 * torch.randn(n_per, 2, generator=g) for c in centres])


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return all((a == a[i]).equal(b == b[i]) for i in range(len(a)))


def test_kmeans_recovers_blobs_deterministically():
    x = blobs()
    truth = torch.arange(3).repeat_interleave(10)
    centroids, assign = kmeans(x, 3, seed=1)
    assert centroids.shape == (3, 2) and same_partition(assign, truth)
    assert torch.equal(kmeans(x, 3, seed=1)[1], assign)
    # more clusters than distinct points: clamped, every cluster used
    _, few = kmeans(torch.tensor([[0.0], [0.0], [1.0]]), 5)
    assert sorted(few.unique().tolist()) == [0, 1]


def test_residual_levels_refine_the_reconstruction():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    books = residual_kmeans(x, levels=3, codebook_size=8, seed=0)
    codes = residual_codes(x, books)
    assert codes.shape == (200, 3) and int(codes.max()) < 8
    errors = []
    for level in range(1, 4):
        recon = sum(books[lv][codes[:, lv]] for lv in range(level))
        errors.append(float((x - recon).pow(2).sum(1).mean()))
    assert errors[0] > errors[1] > errors[2], errors


def test_spectral_clustering_separates_communities():
    a = torch.zeros(12, 12)
    a[:6, :6] = 1.0
    a[6:, 6:] = 1.0
    a[5, 6] = a[6, 5] = 1.0  # one bridge
    a.fill_diagonal_(0.0)
    labels = spectral_clusters(a, 2, seed=0)
    assert same_partition(labels, torch.tensor([0] * 6 + [1] * 6))


def test_tfidf_embeddings_put_similar_texts_together():
    texts = ["red cotton shirt", "red cotton dress", "blue steel kettle", "blue steel pan", "", "red shirt"]
    e = torch.nn.functional.normalize(tfidf_embeddings(texts, dim=4), dim=1)
    assert e.shape[0] == 6 and 0 < e.shape[1] <= 4
    assert e[0] @ e[1] > e[0] @ e[2] and e[2] @ e[3] > e[2] @ e[1]
    assert tfidf_embeddings(["a", "b"]).shape == (2, 0)  # no word in two texts: no vocabulary


def corpus_with_groups(n_users: int = 40, seed: int = 0) -> Corpus:
    """Two communities of items: users buy within one (items 0-9 "red", 10-19 "blue"); titles say the colour."""
    import random

    rng = random.Random(seed)
    items = {str(i): Item(str(i), title=f"{'red' if i < 10 else 'blue'} thing {i}") for i in range(20)}
    seqs = {}
    for u in range(n_users):
        lo = 0 if u % 2 == 0 else 10
        seqs[f"u{u}"] = [str(lo + rng.randrange(10)) for _ in range(6)]
    return Corpus("groups", Path("."), items, {u: User(u) for u in seqs}, seqs)


def group_features() -> torch.Tensor:
    """Image features of ``corpus_with_groups``'s items: the two colour groups at opposite corners, plus noise."""
    noise = 0.01 * torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    return torch.cat([torch.ones(10, 4), -torch.ones(10, 4)]) + noise


def test_atomic_ids_are_one_new_token_per_item():
    c = corpus_with_groups()
    idx = build_indexing("atomic", c)
    assert len(idx) == 20 and len(idx.vocabulary) == 20
    assert all(idx.tokens[idx.to_id[i]] == [idx.to_id[i]] for i in c.items)
    assert idx.vocabulary[:3] == ["<item_1>", "<item_2>", "<item_3>"]  # natural order: <item_2> before <item_10>
    assert idx.vocabulary.index("<item_10>") == 9


def test_collaborative_ids_follow_co_occurrence_from_training_only():
    c = corpus_with_groups()
    split = leave_one_out(c)
    idx = CollaborativeIndexing(n_clusters=4).fit(c, split)
    tops = {i: idx.tokens[idx.to_id[i]][0] for i in c.items}
    red, blue = {tops[str(i)] for i in range(10)}, {tops[str(i)] for i in range(10, 20)}
    assert not red & blue  # the two communities never share a top-level cluster
    assert len(set(idx.to_id.values())) == 20  # unique
    assert all(t.startswith(f"<c{lv}_") for toks in idx.tokens.values() for lv, t in enumerate(toks[:-1]))
    assert all(toks[-1].startswith("<item_") for toks in idx.tokens.values())  # leaf: item (default)
    # held-out items do not enter the graph: changing every user's test item leaves the ids unchanged
    moved = Corpus(c.name, c.root, c.items, c.users, {u: [*s[:-1], "0"] for u, s in c.sequences.items()})
    assert CollaborativeIndexing(n_clusters=4).fit(moved, leave_one_out(moved)).to_id == idx.to_id


def test_collaborative_cold_items_get_their_own_cluster():
    c = corpus_with_groups()
    items = {**c.items, "cold1": Item("cold1"), "cold2": Item("cold2")}
    c2 = Corpus(c.name, c.root, items, c.users, c.sequences)
    idx = build_indexing("collaborative", c2, n_clusters=4)
    cold_tops = {idx.tokens[idx.to_id[i]][0] for i in ("cold1", "cold2")}
    warm_tops = {idx.tokens[idx.to_id[str(i)]][0] for i in range(20)}
    assert len(cold_tops) == 1 and not cold_tops & warm_tops


def test_semantic_ids_unique_fixed_length_and_deterministic():
    c = corpus_with_groups()
    feats = group_features()
    idx = build_indexing("semantic", c, features=feats, levels=2, codebook_size=4, leaf="shared")
    assert len(set(idx.to_id.values())) == 20
    assert all(len(t) == 3 for t in idx.tokens.values())  # 2 levels + the collision level
    first = {i: idx.tokens[idx.to_id[i]][0] for i in c.items}
    assert not {first[str(i)] for i in range(10)} & {first[str(i)] for i in range(10, 20)}
    assert build_indexing("semantic", c, features=feats, levels=2, codebook_size=4, leaf="shared").to_id == idx.to_id
    # items with identical content share the code tuple and differ only in the collision level
    twins = Corpus(c.name, c.root, {"a": Item("a", title="red thing"), "b": Item("b", title="red thing"),
                                    **{k: v for k, v in c.items.items()}}, c.users, c.sequences)
    f2 = torch.cat([torch.ones(2, 4), feats])
    tw = build_indexing("semantic", twins, features=f2, levels=2, codebook_size=4, leaf="shared")
    ta, tb = tw.tokens[tw.to_id["a"]], tw.tokens[tw.to_id["b"]]
    assert ta[:2] == tb[:2] and {ta[2], tb[2]} == {"<s2_0>", "<s2_1>"}


@pytest.mark.parametrize("scheme", ["collaborative", "semantic"])
def test_item_leaf_keeps_the_prefix_and_ends_each_id_with_the_items_own_token(scheme):
    c = corpus_with_groups()
    feats = group_features()
    opts = {"n_clusters": 4} if scheme == "collaborative" else {"levels": 2, "codebook_size": 4}
    shared = build_indexing(scheme, c, features=feats, leaf="shared", **opts)
    own = build_indexing(scheme, c, features=feats, **opts)  # leaf: item is the default
    for k, item in enumerate(c.item_ids, 1):
        a, b = shared.tokens[shared.to_id[item]], own.tokens[own.to_id[item]]
        assert b == [*a[:-1], f"<item_{k}>"]  # same prefix, the item's own leaf
    assert len(set(own.to_id.values())) == 20
    with pytest.raises(ValueError, match="leaf must be"):
        build_indexing(scheme, c, features=feats, leaf="atomic", **opts)


def test_default_codebook_size_groups_items_under_an_item_leaf_and_separates_them_under_a_shared_one():
    from common.data.indexing.tokens import default_codebook_size

    assert default_codebook_size(150, 1, "item") == 13  # ceil(sqrt(150)): cells of ~12 items
    assert default_codebook_size(27, 2, "item") == 3 + 1  # 27^(1/3) = 3, clamped up to 4
    assert default_codebook_size(4096, 3, "item") == 8
    assert default_codebook_size(150, 3, "shared") == 11  # ceil(2 * 150^(1/3)), TIGER-style near-unique codes
    assert default_codebook_size(10**6, 1, "shared") == 256
    c = corpus_with_groups()
    feats = group_features()
    idx = build_indexing("semantic", c, features=feats, levels=1)  # 20 items: 5 cells of ~4
    firsts = {idx.tokens[idx.to_id[i]][0] for i in c.items}
    assert 2 <= len(firsts) <= 5 and all(len(t) == 2 for t in idx.tokens.values())


def test_semantic_without_images_warns_and_uses_text(caplog):
    c = corpus_with_groups()
    with caplog.at_level(logging.WARNING):
        idx = SemanticIndexing(levels=1, codebook_size=2).fit(c)
    assert "text only" in caplog.text
    first = {i: idx.tokens[idx.to_id[i]][0] for i in c.items}
    assert len({first[str(i)] for i in range(10)}) == 1 and first["0"] != first["10"]  # titles split red/blue


def test_fitted_ids_are_cached_and_refitted_when_an_input_changes(tmp_path, monkeypatch):
    c = corpus_with_groups()
    feats = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    opts = {"cache_dir": tmp_path, "levels": 2, "codebook_size": 4}
    idx = build_indexing("semantic", c, features=feats, **opts)
    files = list(tmp_path.glob("item_ids_semantic_*.json"))
    assert len(files) == 1 and ItemIndex.load(files[0]).to_id == idx.to_id

    def boom(*a, **k):
        raise AssertionError("refitted although cached")

    monkeypatch.setattr(SemanticIndexing, "fit", boom)
    assert build_indexing("semantic", c, features=feats, **opts).to_id == idx.to_id
    monkeypatch.undo()
    build_indexing("semantic", c, features=feats + 1, **opts)
    build_indexing("semantic", c, features=feats, cache_dir=tmp_path, levels=3, codebook_size=4)
    assert len(list(tmp_path.glob("item_ids_semantic_*.json"))) == 3
    files[0].write_text("{broken")  # a damaged cache is refitted, not trusted
    assert build_indexing("semantic", c, features=feats, **opts).to_id == idx.to_id


def test_bad_options_name_the_scheme():
    with pytest.raises(ValueError, match="collaborative.*n_clusters"):
        build_indexing("collaborative", corpus_with_groups(), n_clusters=1)
    with pytest.raises(ValueError, match="'atomic': bad options"):
        build_indexing("atomic", corpus_with_groups(), levels=3)


def test_index_round_trips_through_dict_and_file(tmp_path):
    idx = build_indexing("collaborative", corpus_with_groups(), n_clusters=4)
    again = ItemIndex.from_dict(idx.to_dict())
    assert again.to_id == idx.to_id and again.tokens == idx.tokens and again.vocabulary == idx.vocabulary
    idx.save(tmp_path / "i.json")
    assert ItemIndex.load(tmp_path / "i.json").tokens == idx.tokens


def test_token_content_averages_the_items_behind_each_token():
    from common.data.indexing.tokens import content_vectors, token_content

    c = corpus_with_groups()
    feats = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    x = content_vectors(c, feats)
    assert x.shape[0] == 20
    atomic = build_indexing("atomic", c)
    tc = token_content(atomic, c, feats)
    assert torch.allclose(tc[atomic.vocabulary.index(atomic.to_id["3"])], x[3])
    collab = build_indexing("collaborative", c, n_clusters=4)
    top = collab.tokens[collab.to_id["0"]][0]
    members = [r for r, i in enumerate(c.item_ids) if collab.tokens[collab.to_id[i]][0] == top]
    assert torch.allclose(token_content(collab, c, feats)[collab.vocabulary.index(top)], x[members].mean(0), atol=1e-6)


def test_token_content_needs_id_tokens():
    from common.data.indexing.tokens import token_content

    c = corpus_with_groups()
    with pytest.raises(ValueError, match="'random' writes ids as text"):
        token_content(build_indexing("random", c), c)
