"""Item identifiers made of new vocabulary tokens: atomic, collaborative and multimodal semantic ids.

Digit-string ids (``original``, ``sequential``, ``random``) make a from-scratch model memorise thousands of
arbitrary digit sequences. These schemes write each id as one or a few new tokens (``ItemIndex.tokens``),
which the VIP5 tokenizer appends to its vocabulary and the model learns as embeddings (trainable even on a
frozen backbone):

- ``atomic``: one token per item, ``<item_17>``.
- ``collaborative`` (OpenP5 / "How to Index Item IDs", CID): hierarchical spectral clustering of the item
  co-occurrence graph of the *training* sequences; an item's id is its cluster path, one token per level,
  ``<c0_3><c1_0><c2_5>``. Items co-bought by the same users share id prefixes.
- ``semantic`` (TIGER-style, extended with images): residual k-means over each item's L2-normalised image
  feature concatenated with an L2-normalised TF-IDF/LSA embedding of its title and description; the codebooks
  are fitted on the items of the training sequences only, then every item is coded. A final level numbers
  the items that share a code tuple, so every id is unique: ``<s0_4><s1_1><s2_7><s3_0>``.

Both multi-token schemes end each id with the item's own token by default (``leaf: item``):
``<c0_3><c1_0><item_17>``, ``<s0_4><s1_1><s2_7><item_17>``. The faithful OpenP5/TIGER last level, which numbers
the items inside a cluster or code and is therefore shared by unrelated items, is ``leaf: shared``.

Fitting is deterministic for a seed; the datamodule caches collaborative and semantic ids (see
``build_indexing``).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch

from common.data.clustering import residual_codes, residual_kmeans, spectral_clusters, tfidf_embeddings
from common.data.corpus import Corpus
from common.data.indexing.base import ItemIndex, ItemIndexing, register_indexing
from common.data.splits import LeaveOneOut, leave_one_out

log = logging.getLogger(__name__)


LeafName = Literal["shared", "item"]


def _check_leaf(leaf: str) -> LeafName:
    if leaf not in ("shared", "item"):
        raise ValueError(f"leaf must be 'shared' or 'item', got {leaf!r}")
    return leaf  # type: ignore[return-value]


def _own_tokens(items: list[str]) -> dict[str, str]:
    """Each item's own token, ``<item_k>`` with k its corpus position from 1 (atomic ids and ``leaf: item``)."""
    return {item: f"<item_{k}>" for k, item in enumerate(items, 1)}


def _leaf_tokens(codes: dict[str, list[str]], items: list[str], leaf: LeafName) -> dict[str, list[str]]:
    """``leaf="item"``: replace the last (item-numbering) token of every code by the item's own ``<item_k>``
    (k: corpus order from 1, as atomic ids). The prefix still groups similar items, coarse to fine, while the
    token that names an item in a prompt, and that the last decoding step picks, belongs to that item alone:
    a small model learns item-to-item transitions on it as it does on atomic ids (docs/vip5.md, "Item identifiers").
    """
    if leaf == "shared":
        return codes
    own = _own_tokens(items)
    return {item: [*toks[:-1], own[item]] for item, toks in codes.items()}


def _token_index(name: str, codes: dict[str, list[str]]) -> ItemIndex:
    """ItemIndex whose id strings are the concatenated tokens (no spaces: what the tokenizer decodes back)."""
    return ItemIndex(name, {item: "".join(toks) for item, toks in codes.items()},
                     {"".join(toks): list(toks) for toks in codes.values()})


def content_vectors(corpus: Corpus, features=None, text_dim: int = 64, image_weight: float = 1.0) -> torch.Tensor:
    """``[n_items, d]`` item content, rows in ``corpus.item_ids`` order: the L2-normalised image feature (times
    ``image_weight``) next to the L2-normalised TF-IDF/LSA embedding of title + description.

    Without image features the vectors are text only, with a warning; with neither, a ValueError.
    """
    parts = []
    texts = [" ".join(filter(None, (it.title, it.description))) for it in corpus.items.values()]
    text = tfidf_embeddings(texts, dim=text_dim)
    if text.shape[1]:
        parts.append(torch.nn.functional.normalize(text, dim=1))
    if features is not None and features.shape[1]:
        parts.append(image_weight * torch.nn.functional.normalize(features.float(), dim=1))
    else:
        log.warning("%s: item content vectors from text only (no image features)", corpus.name)
    if not parts:
        raise ValueError(f"{corpus.name}: item content vectors need item titles/descriptions or image features")
    return torch.cat(parts, 1)


def token_content(index: ItemIndex, corpus: Corpus, features=None) -> torch.Tensor:
    """``[len(index.vocabulary), d]``: each id token's content, the mean content vector of the items whose id
    contains it (an atomic token: its item; a cluster or code token: its members). For content-based
    initialisation of the item-token embeddings."""
    if not index.tokens:
        raise ValueError(f"item indexing {index.name!r} writes ids as text: it has no id tokens to initialise")
    x = content_vectors(corpus, features)
    row = {iid: r for r, iid in enumerate(corpus.item_ids)}
    pos = {t: k for k, t in enumerate(index.vocabulary)}
    sums = torch.zeros(len(pos), x.shape[1])
    counts = torch.zeros(len(pos), 1)
    for item, id_ in index.to_id.items():
        for t in index.tokens[id_]:
            sums[pos[t]] += x[row[item]]
            counts[pos[t]] += 1
    return sums / counts.clamp_min(1)


@register_indexing("atomic")
class AtomicIndexing(ItemIndexing):
    """One new token per item, ``<item_k>``, numbered in corpus order from 1 (the number carries no meaning:
    each token is its own embedding row)."""

    def fit(self, corpus: Corpus, split: LeaveOneOut | None = None, features=None) -> ItemIndex:
        return _token_index(self.name, {item: [tok] for item, tok in _own_tokens(corpus.item_ids).items()})


@register_indexing("collaborative")
class CollaborativeIndexing(ItemIndexing):
    """Hierarchical spectral clustering of the training co-occurrence graph (OpenP5's collaborative indexing).

    Args:
        n_clusters: clusters per split (OpenP5's N); a cluster of at most ``n_clusters`` items is a leaf and
            numbers its items.
        leaf: ``item`` (default): the last token is the item's own ``<item_k>`` (see :func:`_leaf_tokens`);
            ``shared`` (OpenP5, faithful): the last token numbers the item inside its leaf cluster, so
            ``<c2_0>`` is shared by the first item of every leaf.
        seed: k-means seed.

    Items that co-occur with nothing in training (cold items) form their own top-level cluster.
    """

    cached = True

    def __init__(self, seed: int = 2022, n_clusters: int = 8, leaf: LeafName = "item") -> None:
        super().__init__(seed)
        if n_clusters < 2:
            raise ValueError(f"collaborative indexing needs n_clusters >= 2, got {n_clusters}")
        self.n_clusters, self.leaf = n_clusters, _check_leaf(leaf)

    def fit(self, corpus: Corpus, split: LeaveOneOut | None = None, features=None) -> ItemIndex:
        split = split if split is not None else leave_one_out(corpus)
        items = corpus.item_ids
        row = {iid: i for i, iid in enumerate(items)}
        n = len(items)
        heads, tails = [], []
        for seq in split.train.values():  # every ordered pair of distinct items one user trained on
            cols = torch.tensor(sorted({row[i] for i in seq if i in row}), dtype=torch.long)
            heads.append(cols.repeat_interleave(len(cols)))
            tails.append(cols.repeat(len(cols)))
        adjacency = torch.zeros(n, n)  # co-occurrence counts
        if heads:
            heads_t, tails_t = torch.cat(heads), torch.cat(tails)
            adjacency.index_put_((heads_t, tails_t), torch.ones(len(heads_t)), accumulate=True)
        adjacency.fill_diagonal_(0.0)
        warm = (adjacency.sum(1) > 0).nonzero().flatten()
        cold = (adjacency.sum(1) == 0).nonzero().flatten()
        paths: dict[int, list[int]] = {}
        self._split(adjacency, warm, [], paths)
        if len(cold):
            top = 1 + max((p[0] for p in paths.values()), default=-1)
            self._split(None, cold, [top], paths)
        codes = {items[i]: [f"<c{level}_{c}>" for level, c in enumerate(paths[i])] for i in range(n)}
        return _token_index(self.name, _leaf_tokens(codes, items, self.leaf))

    def _split(self, adjacency: torch.Tensor | None, nodes: torch.Tensor, prefix: list[int],
               paths: dict[int, list[int]]) -> None:
        k = self.n_clusters
        if len(nodes) <= k:
            for j, node in enumerate(nodes.tolist()):
                paths[node] = [*prefix, j]
            return
        labels = None
        if adjacency is not None:
            sub = adjacency[nodes][:, nodes]
            labels = spectral_clusters(sub, k, seed=self.seed + len(prefix))
        if labels is None or labels.unique().numel() < 2:  # no graph, or no split found: chunk in order
            labels = torch.arange(len(nodes)) * k // len(nodes)
        for c in labels.unique().tolist():
            self._split(adjacency, nodes[labels == c], [*prefix, c], paths)


def default_codebook_size(n_items: int, levels: int, leaf: LeafName) -> int:
    """Centroids per level when ``codebook_size`` is None (see ``SemanticIndexing``)."""
    k = n_items ** (1 / (levels + 1)) if leaf == "item" else 2 * n_items ** (1 / levels)
    return min(256, max(4, math.ceil(k - 1e-9)))


@register_indexing("semantic")
class SemanticIndexing(ItemIndexing):
    """Residual k-means codes over image + text features (TIGER's semantic ids with an image part).

    Args:
        levels: code levels before the collision level (TIGER: 3).
        codebook_size: centroids per level; None picks it from the number of training items n, clamped to
            [4, 256]. With ``leaf: item`` the item token tells the items of a code apart, so the code only
            groups: ``ceil(n^(1/(levels+1)))``, code cells of about that many items each. With ``leaf: shared``
            the code should be nearly unique: ``ceil(2 · n^(1/levels))`` (TIGER: 256 for ~10k items).
        text_dim: width of the LSA text embedding.
        image_weight: weight of the (L2-normalised) image part against the text part.
        leaf: ``item`` (default): the collision level becomes the item's own ``<item_k>`` (see
            :func:`_leaf_tokens`); ``shared`` (TIGER, faithful): the collision level numbers items with the same
            code, so ``<s3_0>`` ends most ids.
        seed: k-means seed.

    Without image features (no images, or no image encoder configured) the codes use text only, with a warning.
    """

    uses_features = True
    cached = True
    fit_version = 2  # 2: the default codebook size depends on ``leaf``

    def __init__(self, seed: int = 2022, levels: int = 3, codebook_size: int | None = None, text_dim: int = 64,
                 image_weight: float = 1.0, leaf: LeafName = "item") -> None:
        super().__init__(seed)
        if levels < 1:
            raise ValueError(f"semantic indexing needs levels >= 1, got {levels}")
        self.levels, self.codebook_size = levels, codebook_size
        self.text_dim, self.image_weight, self.leaf = text_dim, image_weight, _check_leaf(leaf)

    def fit(self, corpus: Corpus, split: LeaveOneOut | None = None, features=None) -> ItemIndex:
        split = split if split is not None else leave_one_out(corpus)
        items = corpus.item_ids
        x = content_vectors(corpus, features, self.text_dim, self.image_weight)
        in_train = {i for seq in split.train.values() for i in seq}
        fit_rows = torch.tensor([r for r, iid in enumerate(items) if iid in in_train] or list(range(len(items))))
        k = self.codebook_size or default_codebook_size(len(fit_rows), self.levels, self.leaf)
        codebooks = residual_kmeans(x[fit_rows], self.levels, k, seed=self.seed)
        codes = residual_codes(x, codebooks).tolist()
        seen: dict[tuple[int, ...], int] = {}
        out = {}
        for iid, code in zip(items, codes):
            j = seen.get(tuple(code), 0)
            seen[tuple(code)] = j + 1
            out[iid] = [f"<s{level}_{c}>" for level, c in enumerate([*code, j])]
        return _token_index(self.name, _leaf_tokens(out, items, self.leaf))


__all__ = ["AtomicIndexing", "CollaborativeIndexing", "SemanticIndexing", "content_vectors", "default_codebook_size",
           "token_content"]
