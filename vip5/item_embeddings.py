"""New vocabulary rows for item-id tokens (atomic, collaborative, semantic ids) next to a stock T5 vocabulary.

The item tokens get their own tables instead of a resized shared embedding, so that they train while the
backbone's vocabulary stays frozen (no gradients or optimizer state for the frozen rows) and the parameter
count reports them as a separate group. Token ids ``>= base_size`` are item tokens:

- :class:`ItemTokenEmbedding` replaces ``t5.shared`` (and the encoder/decoder ``embed_tokens``);
- :class:`ItemTokenHead` replaces ``t5.lm_head`` and appends the item-token logits through the same item table
  (input and output embeddings are tied, as in every T5 under transformers 5).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

InitName = Literal["normal", "mean", "content"]


class ItemTokenEmbedding(nn.Module):
    """Token embedding: ``base`` (the backbone's table) for ids below its size, ``item`` rows above it.

    Args:
        base: the backbone's token embedding (kept as is, frozen or not).
        n_item_tokens: new rows.
        init: ``normal`` draws the rows from N(0, std of the base table); ``mean`` starts every row at the
            mean base embedding plus 1% of that noise (close to an average word, as some resize schemes do);
            ``content`` projects ``content`` (one row of item content per token, any width) to the model
            width by a fixed random Gaussian matrix (distances are kept, Johnson–Lindenstrauss) and scales it
            to the std of the base table, so tokens of similar items start close.
        seed: seed of the initial rows and of the projection.
        scale: the rows' initial std relative to the base table's (1 = the same). Larger rows stand out among
            the prompt's word tokens, so a from-scratch model learns to read them sooner (``bench/vip5_indexing.py``
            measures it); ``mean`` keeps its 1% noise relative to the scaled std.
        content: ``[n_item_tokens, d]`` per-token content (``common.data.indexing.tokens.token_content``), for
            ``init="content"``.
    """

    def __init__(self, base: nn.Embedding, n_item_tokens: int, init: InitName = "normal", seed: int = 0,
                 content: torch.Tensor | None = None, scale: float = 1.0) -> None:
        super().__init__()
        if n_item_tokens < 1:
            raise ValueError(f"n_item_tokens must be >= 1, got {n_item_tokens}")
        if not scale > 0:
            raise ValueError(f"item token scale must be > 0, got {scale}")
        self.base = base
        self.base_size = base.num_embeddings
        self.item = nn.Embedding(n_item_tokens, base.embedding_dim)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = base.weight.float()
            std = w.std() * scale
            noise = torch.randn(n_item_tokens, w.shape[1], generator=gen) * std
            if init == "normal":
                rows = noise
            elif init == "mean":
                rows = w.mean(0) * scale + 0.01 * noise
            elif init == "content":
                if content is None or content.shape[0] != n_item_tokens:
                    raise ValueError(f"item_token_init='content' needs one content row per item token "
                                     f"({n_item_tokens}), got {None if content is None else tuple(content.shape)}")
                proj = torch.randn(content.shape[1], w.shape[1], generator=gen)
                rows = content.float() @ proj
                rows = (rows - rows.mean(0)) / rows.std().clamp_min(1e-12) * std
            else:
                raise ValueError(f"unknown item_token_init {init!r}; valid: normal, mean, content")
            self.item.weight.copy_(rows)

    @property
    def num_embeddings(self) -> int:
        return self.base_size + self.item.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        """The full table (a concatenation: read-only, for code that inspects ``embedding.weight``)."""
        return torch.cat([self.base.weight, self.item.weight.to(self.base.weight.dtype)])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_item = ids >= self.base_size
        out = self.base(ids.masked_fill(is_item, 0))
        item = self.item((ids - self.base_size).clamp_min(0))
        return torch.where(is_item.unsqueeze(-1), item.to(out.dtype), out)


class ItemTokenHead(nn.Module):
    """LM head over the base vocabulary followed by the item tokens, whose output rows are the item embedding
    rows (transformers 5 always ties T5's input and output embeddings).

    Args:
        base: the backbone's ``lm_head``.
        embedding: the :class:`ItemTokenEmbedding` of the same model.
        bias: add a trainable output bias per item token (starts at 0). It carries an item's overall
            popularity, so the tied rows need not (SASRec-style models have no bias; a from-scratch T5 learns the
            popularity prior first, and this lets it do so with one number per item).
    """

    def __init__(self, base: nn.Linear, embedding: ItemTokenEmbedding, bias: bool = False) -> None:
        super().__init__()
        self.base = base
        self._embedding = [embedding]  # a plain list: the tied table is not registered (and saved) twice
        self.bias = nn.Parameter(torch.zeros(embedding.item.num_embeddings)) if bias else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self._embedding[0].item.weight
        bias = None if self.bias is None else self.bias.to(hidden.dtype)
        return torch.cat([self.base(hidden), F.linear(hidden, weight.to(hidden.dtype), bias)], -1)


def attach_item_tokens(t5: nn.Module, n_item_tokens: int, init: InitName = "normal", seed: int = 0,
                       content: torch.Tensor | None = None, scale: float = 1.0,
                       bias: bool = False) -> ItemTokenEmbedding:
    """Give a stock ``T5ForConditionalGeneration`` ``n_item_tokens`` new trainable tokens after its vocabulary
    (``bias``: an output bias per item token, see :class:`ItemTokenHead`)."""
    embedding = ItemTokenEmbedding(t5.get_input_embeddings(), n_item_tokens, init=init, seed=seed, content=content,
                                   scale=scale)
    t5.set_input_embeddings(embedding)
    t5.lm_head = ItemTokenHead(t5.lm_head, embedding, bias=bias)
    t5.config.vocab_size = embedding.num_embeddings
    return embedding


def item_token_parameters(t5: nn.Module) -> list[nn.Parameter]:
    """The item-token parameters of a T5 given them by :func:`attach_item_tokens` (empty otherwise)."""
    emb = t5.get_input_embeddings()
    if not isinstance(emb, ItemTokenEmbedding):
        return []
    bias = getattr(t5.lm_head, "bias", None)
    return [emb.item.weight] + ([bias] if isinstance(t5.lm_head, ItemTokenHead) and bias is not None else [])
