"""VIP5 as plain PyTorch on a stock Hugging Face ``T5ForConditionalGeneration`` (Geng et al. 2023).

The stock T5 is used through its extension points only: the encoder input is built here and passed as
``inputs_embeds``, adapters are forward hooks on stock sub-layers (``vip5.adapters``), and decoding is
the stock ``generate`` fed with ``encoder_outputs`` (beam search, logits processors, ``prefix_allowed_tokens_fn``).

Encoder input, per position: ``shared(input_ids)``; image-slot positions (``input_ids == image_token_id``,
category 1) overwritten in order by the mapped image tokens (item i owns slots i·n … i·n+n−1); then
``+ whole_word_embeddings(whole_word_ids) + category_embeddings(category_ids)``.

What trains, by ``training_mode``:
- ``adapters``: adapters + every T5 layer norm + the visual mapper; everything else is frozen (the VIP5 script).
- ``adapters_self_attn_only``: the same with adapters only at the self-attention sites (RQ2 ablation).
- ``full``: every parameter.
The whole-word and category tables stay frozen at their init, as in the original, unless
``train_word_embeddings`` is set. Frozen tensors have ``requires_grad=False``: no gradients, no optimizer state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.t5.modeling_t5 import T5LayerNorm

from common.weights import model_not_available
from vip5.adapters import SELF_ATTN_SITES, AdapterConfig, TaskSpec, adapter_tasks, inject_adapters, is_adapter_parameter
from vip5.dropout import use_fast_cpu_dropout
from vip5.item_embeddings import attach_item_tokens, item_token_parameters
from vip5.visual import VisualEmbedding

TrainingMode = Literal["adapters", "adapters_self_attn_only", "full"]
P5_IMAGE_TOKEN_ID = 32099  # <extra_id_0> in the 32,100-id P5/VIP5 tokenizer


def load_backbone(
    backbone: str = "t5-small", backbone_config: dict[str, Any] | None = None
) -> T5ForConditionalGeneration:
    """A stock T5: pretrained by name/path, or randomly initialised from ``T5Config(**backbone_config)``."""
    if backbone_config is not None:
        t5 = T5ForConditionalGeneration(T5Config(**backbone_config))
    else:
        try:
            t5 = T5ForConditionalGeneration.from_pretrained(backbone)
        except OSError as e:
            raise model_not_available(backbone, "T5 backbone", err=e) from e
    # T5 starts decoding from the pad id. transformers 5 no longer puts this in a from-config T5Config.
    if getattr(t5.config, "decoder_start_token_id", None) is None:
        t5.config.decoder_start_token_id = t5.config.pad_token_id
    if t5.generation_config.decoder_start_token_id is None:
        t5.generation_config.decoder_start_token_id = t5.config.decoder_start_token_id
    return use_fast_cpu_dropout(t5)


@dataclasses.dataclass
class VIP5Config:
    """The VIP5 architecture: every setting of the model that does not come from the data.

    The tokenizer- and data-dependent sizes (vocabulary, image-feature width, image-slot token id, item-id tokens)
    are not part of it: ``VIP5Model`` takes them as its own arguments, and ``VIP5LitModule`` fills them in once
    the data side has connected.

    Attributes:
        backbone: T5 name or folder for ``from_pretrained`` (``t5-small`` in the paper). Ignored when
            ``backbone_config`` is given.
        backbone_config: ``T5Config`` keyword arguments for a randomly initialised T5 (offline default and tests).
        n_image_tokens: soft tokens per image (the ``<extra_id_0>`` slots per item in the prompt); 0 = text only
            (a P5-style model), no visual parameters.
        adapter: bottleneck adapter settings (sites, reduction factor, shared or per task).
        use_adapters: False builds no adapters (only with ``training_mode: full``: a backbone trained whole, e.g.
            from scratch, needs none; they cost 6 % of the step time of a d_model-128 T5 on a CPU).
        training_mode: ``adapters`` (adapters + layer norms + visual mapper), ``adapters_self_attn_only`` (the
            same with adapters at the self-attention sites only, the paper's RQ2 ablation), or ``full``.
        train_word_embeddings: train the whole-word and category tables (VIP5 keeps them frozen at their init).
        whole_word_vocab: rows of the whole-word id table (VIP5: 1024; ids must stay below it).
        category_vocab: rows of the category table (VIP5: 16; ids 0 = text, 1 = image slot are used).
        embedding_init: init of those tables: ``normal`` = N(0, 1) as VIP5, ``zeros`` = start with no effect.
        item_token_init: initial rows of item-id tokens (``data.indexing`` atomic/collaborative/semantic):
            ``normal``, ``mean``, or ``content`` (each token starts from the image + text content of its items,
            projected to the model width; see ``vip5.item_embeddings``).
        item_token_scale: initial std of the item-token rows relative to the backbone's token table (1 = the
            same). On a small from-scratch backbone, rows larger than the word tokens' let the model find the
            items in a prompt within hundreds of steps instead of plateauing at popularity (docs/vip5.md, "Item
            identifiers"; ``bench/vip5_indexing.py`` uses 3).
        item_token_bias: a trainable output bias per item-id token (token schemes only), which holds each item's
            popularity apart from its embedding row (``vip5.item_embeddings.ItemTokenHead``).
    """

    backbone: str = "t5-small"
    backbone_config: dict[str, Any] | None = None
    n_image_tokens: int = 2
    adapter: AdapterConfig = dataclasses.field(default_factory=AdapterConfig)
    use_adapters: bool = True
    training_mode: TrainingMode = "adapters"
    train_word_embeddings: bool = False
    whole_word_vocab: int = 1024
    category_vocab: int = 16
    embedding_init: Literal["normal", "zeros"] = "normal"
    item_token_init: Literal["normal", "mean", "content"] = "normal"
    item_token_scale: float = 1.0
    item_token_bias: bool = False

    def __post_init__(self) -> None:
        if self.training_mode not in ("adapters", "adapters_self_attn_only", "full"):
            raise ValueError(f"unknown training_mode {self.training_mode!r}")
        if self.embedding_init not in ("normal", "zeros"):
            raise ValueError(f"unknown embedding_init {self.embedding_init!r}")
        if self.n_image_tokens < 0:
            raise ValueError(f"n_image_tokens must be >= 0, got {self.n_image_tokens}")
        if not self.use_adapters and self.training_mode != "full":
            raise ValueError(f"use_adapters=False needs training_mode='full' (got {self.training_mode!r}): with a "
                             "frozen backbone the adapters are what trains")


class VIP5Model(nn.Module):
    """VIP5: T5 + visual mapper + whole-word/category embeddings + bottleneck adapters.

    Args:
        config: the architecture (:class:`VIP5Config`).
        vocab_size: resize the token embeddings to the tokenizer size (32100 for the P5 tokenizer); None keeps it.
        feature_dim: width of the image features (CLIP ViT-B/32: 512).
        image_token_id: id of the image placeholder ``<extra_id_0>`` (32099 for the P5 tokenizer; for a trained
            SentencePiece tokenizer it is ``len(tokenizer) - 1``).
        n_item_tokens: new vocabulary tokens for item ids (atomic, collaborative, semantic schemes), appended after
            ``vocab_size``; they always train, in every ``training_mode`` (``vip5.item_embeddings``).
        item_token_content: ``[n_item_tokens, d]`` per-token item content for ``item_token_init="content"``.
    """

    def __init__(
        self,
        config: VIP5Config | None = None,
        vocab_size: int | None = None,
        feature_dim: int = 512,
        image_token_id: int = P5_IMAGE_TOKEN_ID,
        n_item_tokens: int = 0,
        item_token_content: torch.Tensor | None = None,
    ):
        super().__init__()
        config = config or VIP5Config()
        self.config = config
        self.training_mode = config.training_mode
        self.train_word_embeddings = config.train_word_embeddings
        self.image_token_id = image_token_id
        self.n_image_tokens = n_image_tokens = config.n_image_tokens
        adapter = config.adapter if config.use_adapters else None

        self.t5 = load_backbone(config.backbone, config.backbone_config)
        if vocab_size is not None and vocab_size != self.t5.config.vocab_size:
            self.t5.resize_token_embeddings(vocab_size)
        self.item_tokens = (
            attach_item_tokens(self.t5, n_item_tokens, config.item_token_init, content=item_token_content,
                               scale=config.item_token_scale, bias=config.item_token_bias)
            if n_item_tokens else None
        )
        d_model = self.t5.config.d_model

        self.whole_word_embeddings = nn.Embedding(config.whole_word_vocab, d_model)
        self.category_embeddings = nn.Embedding(config.category_vocab, d_model)
        if config.embedding_init == "zeros":
            nn.init.zeros_(self.whole_word_embeddings.weight)
            nn.init.zeros_(self.category_embeddings.weight)
        self.visual = VisualEmbedding(feature_dim, d_model, n_image_tokens) if n_image_tokens > 0 else None

        if config.training_mode == "adapters_self_attn_only":
            if adapter is None:
                raise ValueError("training_mode='adapters_self_attn_only' needs an adapter config")
            sites = tuple(s for s in adapter.sites if s in SELF_ATTN_SITES)
            if not sites:
                raise ValueError(f"adapter.sites {adapter.sites} has no self-attention site")
            adapter = dataclasses.replace(adapter, sites=sites)
        self.adapter_config = adapter
        # The controllers live inside the stock T5 sub-layers (stock names untouched); this list is for reference.
        self.adapter_controllers = [] if adapter is None else inject_adapters(self.t5, adapter)
        self._set_trainable()

    # ------------------------------------------------------------------ trainability
    def _set_trainable(self) -> None:
        full = self.training_mode == "full"
        for name, p in self.named_parameters():
            p.requires_grad_(full or is_adapter_parameter(name))
        if full:
            return
        for m in self.t5.modules():
            if isinstance(m, T5LayerNorm):
                m.weight.requires_grad_(True)
        if self.visual is not None:
            self.visual.requires_grad_(True)
        self.whole_word_embeddings.requires_grad_(self.train_word_embeddings)
        self.category_embeddings.requires_grad_(self.train_word_embeddings)
        for p in item_token_parameters(self.t5):
            p.requires_grad_(True)

    def embedding_tables(self) -> list[nn.Parameter]:
        """The token embedding tables: the backbone's vocabulary, the item-id token rows, whole-word and category
        embeddings (not the item tokens' output bias)."""
        groups = self._group_of()
        bias = getattr(self.t5.lm_head, "bias", None) if self.item_tokens is not None else None
        return [p for p in self.parameters() if groups.get(id(p)) in ("embeddings", "item_tokens") and p is not bias]

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters an optimizer should see (shared tensors once)."""
        return (p for p in self.parameters() if p.requires_grad)

    def _group_of(self) -> dict[int, str]:
        groups: dict[int, str] = {}
        for m in self.t5.modules():
            if isinstance(m, T5LayerNorm):
                groups[id(m.weight)] = "layer_norms"
        token_table = self.t5.get_input_embeddings()
        token_table = token_table.base if self.item_tokens is not None else token_table
        for emb in (token_table, self.whole_word_embeddings, self.category_embeddings):
            groups[id(emb.weight)] = "embeddings"
        for p in item_token_parameters(self.t5):
            groups[id(p)] = "item_tokens"
        if self.visual is not None:
            for p in self.visual.parameters():
                groups[id(p)] = "visual"
        for name, p in self.named_parameters():
            if is_adapter_parameter(name):
                groups[id(p)] = "adapters"
        return groups

    def count_parameters(self) -> dict[str, Any]:
        """Parameter counts, each shared tensor once (like ``parameters()``), as VIP5's printed percentage.

        Returns:
            ``{"trainable", "total", "pct", "by_group", "trainable_by_group"}``; the two group dicts map
            ``adapters``, ``layer_norms``, ``visual``, ``embeddings`` (token, whole-word and category tables;
            ``lm_head`` is tied to the token table), ``item_tokens`` (the new rows of item-id tokens, reported
            apart from the adapters' budget) and ``backbone`` (all other T5 weights) to all / trainable counts.
        """
        group_of = self._group_of()
        names = ("adapters", "layer_norms", "visual", "embeddings", "item_tokens", "backbone")
        by_group, trainable_by_group = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
        for p in self.parameters():
            group = group_of.get(id(p), "backbone")
            by_group[group] += p.numel()
            trainable_by_group[group] += p.numel() if p.requires_grad else 0
        trainable, total = sum(trainable_by_group.values()), sum(by_group.values())
        return {
            "trainable": trainable,
            "total": total,
            "pct": 100.0 * trainable / total,
            "by_group": by_group,
            "trainable_by_group": trainable_by_group,
        }

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors, by parameter name: what an adapter checkpoint needs to hold."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------------ inputs
    @contextmanager
    def adapter_tasks(self, tasks: TaskSpec) -> Iterator[None]:
        """Route per-task adapters inside the block (no-op for shared adapters or ``tasks=None``)."""
        if tasks is None or self.adapter_config is None or self.adapter_config.shared:
            yield
            return
        with adapter_tasks(self.t5, tasks):
            yield

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        whole_word_ids: torch.Tensor | None = None,
        image_feats: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encoder ``inputs_embeds`` ``[B, L, d]``.

        Args:
            input_ids: ``[B, L]`` token ids; ``image_token_id`` marks image slots.
            whole_word_ids: ``[B, L]`` (see ``vip5.tokenizer.whole_word_ids``); None = all 0.
            image_feats: ``[B, V, feature_dim]`` one row per item in prompt order, zero-padded. None leaves the slots
                as the placeholder token's embedding.
            image_counts: ``[B]`` real feature rows per sample; slots beyond ``count * n`` keep the placeholder
                embedding. None = all ``V`` rows count (padding rows are then only used if there are slots for them).
        """
        embeds = self.t5.get_input_embeddings()(input_ids)
        image_mask = input_ids == self.image_token_id
        if self.visual is not None and image_feats is not None and image_feats.shape[1] > 0:
            embeds = self._fill_image_slots(embeds, image_mask, image_feats, image_counts)
        if whole_word_ids is None:
            whole_word_ids = torch.zeros_like(input_ids)
        return embeds + self.whole_word_embeddings(whole_word_ids) + self.category_embeddings(image_mask.long())

    def _fill_image_slots(
        self,
        embeds: torch.Tensor,
        image_mask: torch.Tensor,
        image_feats: torch.Tensor,
        image_counts: torch.Tensor | None,
    ) -> torch.Tensor:
        b, length, d = embeds.shape
        tokens = self.visual(image_feats.to(self.visual.mlp[0].weight.dtype))  # [B, V, n, d]
        n_slots = tokens.shape[1] * self.n_image_tokens
        tokens = tokens.reshape(b, n_slots, d)
        # Slot j of a row (its j-th placeholder, counting from 0) takes image token j: item j // n, token j % n.
        slot = image_mask.long().cumsum(1) - 1
        limit = (
            n_slots if image_counts is None else (image_counts.to(slot.device).long() * self.n_image_tokens)[:, None]
        )
        fill = image_mask & (slot < limit)
        picked = tokens.gather(1, slot.clamp(0, n_slots - 1).unsqueeze(-1).expand(b, length, d))
        return torch.where(fill.unsqueeze(-1), picked.to(embeds.dtype), embeds)

    # ------------------------------------------------------------------ model calls
    def _attention_mask(self, input_ids: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The given mask, or the non-pad positions of ``input_ids`` (None when both are None)."""
        if mask is None and input_ids is not None:
            mask = input_ids.ne(self.t5.config.pad_token_id).long()
        return mask

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        whole_word_ids: torch.Tensor | None = None,
        image_feats: torch.Tensor | None = None,
        tasks: TaskSpec = None,
        image_counts: torch.Tensor | None = None,
    ) -> BaseModelOutput:
        """Run the encoder once (e.g. to score many candidates with ``forward(encoder_outputs=...)``)."""
        attention_mask = self._attention_mask(input_ids, attention_mask)
        embeds = self.embed_inputs(input_ids, whole_word_ids, image_feats, image_counts)
        with self.adapter_tasks(tasks):
            out = self.t5.encoder(inputs_embeds=embeds, attention_mask=attention_mask, return_dict=True)
        return BaseModelOutput(last_hidden_state=out.last_hidden_state)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        whole_word_ids: torch.Tensor | None = None,
        image_feats: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        tasks: TaskSpec = None,
        encoder_outputs: BaseModelOutput | None = None,
        image_counts: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
    ) -> Seq2SeqLMOutput:
        """Teacher-forced pass; ``loss`` is the stock token-mean CE over ``labels != -100``.

        With ``encoder_outputs`` (from ``encode``) the encoder is skipped; its rows may be repeated k times per
        sample (``repeat_interleave``) to score k candidates, and ``tasks`` may stay one per sample.
        """
        attention_mask = self._attention_mask(input_ids, attention_mask)
        with self.adapter_tasks(tasks):
            if encoder_outputs is None:
                encoder_outputs = self.encode(
                    input_ids, attention_mask, whole_word_ids, image_feats, None, image_counts
                )
            return self.t5(
                encoder_outputs=encoder_outputs,
                attention_mask=attention_mask,
                labels=labels,
                decoder_input_ids=decoder_input_ids,
                decoder_attention_mask=decoder_attention_mask,
                return_dict=True,
            )

    def target_logits(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        whole_word_ids: torch.Tensor | None = None,
        image_feats: torch.Tensor | None = None,
        tasks: TaskSpec = None,
        image_counts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher-forced logits at the target positions only: ``(logits [N, V], targets [N], row of each [N])``.

        The training loss needs nothing else: the output layer (a large vocabulary when items are tokens) runs on
        the ``N`` positions with ``labels != -100`` instead of every padded position, and no second loss is
        computed inside T5 (``forward(labels=...)`` computes the stock one).
        """
        attention_mask = self._attention_mask(input_ids, attention_mask)
        with self.adapter_tasks(tasks):
            encoded = self.encode(input_ids, attention_mask, whole_word_ids, image_feats, None, image_counts)
            hidden = self.t5.decoder(
                input_ids=self.t5.prepare_decoder_input_ids_from_labels(labels=labels),
                encoder_hidden_states=encoded.last_hidden_state,
                encoder_attention_mask=attention_mask,
                use_cache=False,
                return_dict=True,
            ).last_hidden_state
        rows, cols = (labels != -100).nonzero(as_tuple=True)
        hidden = hidden[rows, cols]
        if self.t5.config.scale_decoder_outputs:  # as T5ForConditionalGeneration.forward (tied embeddings)
            hidden = hidden * (self.t5.model_dim**-0.5)
        return self.t5.lm_head(hidden), labels[rows, cols], rows

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        whole_word_ids: torch.Tensor | None = None,
        image_feats: torch.Tensor | None = None,
        tasks: TaskSpec = None,
        image_counts: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        """Encode once, then the stock ``T5ForConditionalGeneration.generate`` (all its kwargs work)."""
        attention_mask = self._attention_mask(input_ids, attention_mask)
        with self.adapter_tasks(tasks):
            encoder_outputs = self.encode(input_ids, attention_mask, whole_word_ids, image_feats, None, image_counts)
            return self.t5.generate(encoder_outputs=encoder_outputs, attention_mask=attention_mask, **generate_kwargs)
