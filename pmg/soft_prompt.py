"""PMG's soft preference embedding E_m (Shen et al. 2024, Sec. 3.3): frozen LLM + soft tokens + P-Tuning v2.

The behaviour prompt (right-padded token ids) is embedded by the frozen causal LM; L trainable *soft tokens* are
written right after each sample's last real token, S trainable key/value *prefixes* are prepended on every layer
(P-Tuning v2), and the last hidden states at the L soft positions are mapped linearly to the width of the SD text
encoder. Only soft tokens, prefixes and mapper train.

Differences from the original PMG code:
- soft tokens start as real token embeddings (``soft_init="vocab"``), not ``randn`` with std 1, whose rows are far
  larger than real Llama embeddings; ``soft_init="randn"`` keeps the original;
- prefixes start as the LLM's own keys/values of S real tokens (``prefix_init="tokens"``, Li & Liang 2021);
  ``prefix_init="randn"`` is the original ``nn.Embedding`` N(0, 1) init;
- head counts and widths come from the model config, so GQA models get prefixes of width
  ``layers * 2 * kv_heads * head_dim``.

The prefix enters through the transformers ``Cache`` interface: the model sees a cache of
length S, so real tokens get positions S..S+T-1, exactly as with a generation cache or PEFT prefix tuning. The cache
is *read-only* (``update`` returns prefix + new states without storing them), so a layer can be run twice, which
our own gradient checkpointing relies on: transformers' built-in checkpointing drops ``past_key_values``, which
would silently remove the prefixes.

Ablations: ``prefix_length=0`` is a plain forward (no P-Tuning v2). ``n_soft_tokens=0`` means no soft embedding at
all: no LLM is loaded, there is nothing to train and ``forward`` returns ``None`` (the caller then conditions on
keywords alone, i.e. ``use_soft=False`` in the model that owns this module).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from common.weights import model_not_available

_TRAINABLE = ("soft_tokens", "prefix", "mapper")


class _PrefixCache(DynamicCache):
    """A cache holding only the P-Tuning v2 prefixes; ``update`` returns prefix + new states and stores nothing.

    The model reads ``get_seq_length() == S`` (positions of the real tokens start at S, the attention mask has
    S + T columns), and a recomputed layer sees the same keys/values as the first pass.
    """

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


def load_llm(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a causal LM by hub name or local folder; offline, a missing model is an error saying what to fetch."""
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except OSError as err:
        raise model_not_available(str(name_or_path), "LLM", "meta-llama/Llama-2-7b-chat-hf", err,
                                  where="`model.llm`") from err


def tiny_llama(
    vocab_size: int,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    pad_token_id: int | None = None,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A small random Llama (GQA on purpose: 4 query heads, 2 key/value heads) for the offline default and tests."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=2048,
        pad_token_id=pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


class SoftPreferenceModel(nn.Module):
    """Frozen causal LM + L soft tokens + S-long P-Tuning v2 prefixes + linear mapper -> E_m ``[B, L, d_te]``.

    Args:
        llm: hub name or folder of a causal LM (loaded frozen with ``dtype``), or an already built model
            (e.g. :func:`tiny_llama`). Not loaded when ``n_soft_tokens == 0``.
        text_encoder_dim: width d_te of the SD text encoder (768 for SD-1.5).
        n_soft_tokens: L, soft tokens appended after each sample's real tokens (paper 4, PMG-Bench 2). 0 disables
            the soft embedding (``forward`` returns None).
        prefix_length: S, prefix key/value positions per layer (paper 4, PMG-Bench 2); 0 = no P-Tuning v2.
        soft_init: ``"vocab"``: rows of the LLM's input embedding table (``init_token_ids``, or random rows);
            ``"randn"``: N(0, 1) as in the reference code.
        prefix_init: ``"tokens"``: the LLM's keys/values for S tokens (``init_token_ids`` or random rows);
            ``"randn"``: N(0, 1) as in the reference code.
        init_token_ids: token ids used by the ``vocab``/``tokens`` inits (e.g. the ids of "image", "style"),
            cycled to length L (soft tokens) and S (prefix). None draws random vocabulary rows.
        gradient_checkpointing: recompute each decoder layer in backward (for 7B-sized LLMs).
        dtype: dtype to load ``llm`` in when it is a name (e.g. ``torch.bfloat16``); trainable weights stay fp32.
        seed: seed of the random rows drawn by the inits (the module is deterministic given it).
    """

    def __init__(
        self,
        llm: str | os.PathLike | PreTrainedModel,
        text_encoder_dim: int,
        n_soft_tokens: int = 4,
        prefix_length: int = 4,
        soft_init: Literal["vocab", "randn"] = "vocab",
        prefix_init: Literal["tokens", "randn"] = "tokens",
        init_token_ids: Sequence[int] | None = None,
        gradient_checkpointing: bool = False,
        dtype: torch.dtype | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n_soft_tokens < 0 or prefix_length < 0:
            raise ValueError(f"n_soft_tokens={n_soft_tokens} and prefix_length={prefix_length} must be >= 0")
        if soft_init not in ("vocab", "randn") or prefix_init not in ("tokens", "randn"):
            raise ValueError(f"unknown soft_init={soft_init!r} or prefix_init={prefix_init!r}")
        self.n_soft_tokens = n_soft_tokens
        self.prefix_length = prefix_length if n_soft_tokens else 0
        self.text_encoder_dim = text_encoder_dim
        self.llm: PreTrainedModel | None = None
        self.soft_tokens: nn.Parameter | None = None
        self.prefix: nn.Parameter | None = None
        self.mapper: nn.Linear | None = None
        if n_soft_tokens == 0:
            return

        self.llm = load_llm(llm, dtype) if isinstance(llm, str | os.PathLike) else llm
        self.llm.requires_grad_(False)
        self.llm.eval()
        cfg = self.llm.config.get_text_config(decoder=True)
        self.hidden_size: int = cfg.hidden_size
        self.num_layers: int = cfg.num_hidden_layers
        self.kv_heads: int = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim: int = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

        gen = torch.Generator().manual_seed(seed)
        embed = self.llm.get_input_embeddings()
        vocab = embed.weight.shape[0]

        def init_ids(n: int) -> Tensor:
            if init_token_ids:
                return torch.tensor([init_token_ids[i % len(init_token_ids)] for i in range(n)])
            return torch.randint(vocab, (n,), generator=gen)

        if soft_init == "vocab":
            soft = embed.weight.detach()[init_ids(n_soft_tokens).to(embed.weight.device)].float().cpu()
        else:
            soft = torch.randn(n_soft_tokens, self.hidden_size, generator=gen)
        self.soft_tokens = nn.Parameter(soft.clone())

        if self.prefix_length:
            width = self.num_layers * 2 * self.kv_heads * self.head_dim
            if prefix_init == "tokens":
                prefix = self._token_prefix(init_ids(self.prefix_length)).reshape(self.prefix_length, width)
            else:
                prefix = torch.randn(self.prefix_length, width, generator=gen)
            self.prefix = nn.Parameter(prefix.clone())
        self.mapper = nn.Linear(self.hidden_size, text_encoder_dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mapper.reset_parameters()
        if gradient_checkpointing:
            self._enable_checkpointing()

    # ----------------------------------------------------------------------------------------------- set-up
    @torch.no_grad()
    def _token_prefix(self, ids: Tensor) -> Tensor:
        """The frozen LLM's keys/values of ``ids`` at positions 0..S-1 as ``[S, layers, 2, kv_heads, head_dim]``."""
        device = self.llm.get_input_embeddings().weight.device
        out = self.llm.base_model(input_ids=ids[None].to(device), use_cache=True)
        kv = [torch.stack([layer.keys[0], layer.values[0]]) for layer in out.past_key_values.layers]  # [2, kv, S, hd]
        return torch.stack(kv).permute(3, 0, 1, 2, 4).float().cpu()

    def _enable_checkpointing(self) -> None:
        """Recompute every decoder layer during backward (non-reentrant; the prefix cache is read-only)."""
        layers = next(
            m for m in self.llm.base_model.children() if isinstance(m, nn.ModuleList) and len(m) == self.num_layers
        )
        for layer in layers:
            # Instance-level forward override (as accelerate's hooks do): the module tree stays unchanged.
            layer.forward = functools.partial(_checkpointed, layer.forward)

    def train(self, mode: bool = True) -> SoftPreferenceModel:
        super().train(mode)
        if self.llm is not None:
            self.llm.eval()  # frozen: no dropout, whatever the caller's mode
        return self

    # ------------------------------------------------------------------------------------------------ forward
    def prefix_cache(self, batch_size: int) -> _PrefixCache | None:
        """A fresh read-only cache with the prefixes: per layer keys/values ``[B, kv_heads, S, head_dim]``."""
        if self.prefix is None:
            return None
        dtype = self.llm.get_input_embeddings().weight.dtype
        kv = self.prefix.to(dtype).view(self.prefix_length, self.num_layers, 2, self.kv_heads, self.head_dim)
        kv = kv.permute(1, 2, 3, 0, 4).unsqueeze(2).expand(-1, -1, batch_size, -1, -1, -1)
        return _PrefixCache(ddp_cache_data=[(layer[0], layer[1]) for layer in kv])

    def build_inputs(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Splice the soft tokens after each sample's real tokens.

        Returns:
            inputs_embeds ``[B, T+L, H]``, attention mask ``[B, S+T+L]`` (S prefix ones first) and the positions
            ``[B, L]`` of the soft tokens in the sequence.
        """
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(dim=1)
        steps = torch.arange(t + self.n_soft_tokens, device=input_ids.device)
        if not torch.equal(attention_mask.bool(), steps[None, :t] < lengths[:, None]):
            raise ValueError("input_ids must be right-padded: attention_mask = ones, then zeros, in every row")
        embed = self.llm.get_input_embeddings()
        embeds = embed(input_ids)
        embeds = torch.cat([embeds, embeds.new_zeros(b, self.n_soft_tokens, embeds.shape[-1])], dim=1)
        positions = lengths[:, None] + steps[None, : self.n_soft_tokens]  # [B, L]
        soft = self.soft_tokens.to(embeds.dtype).expand(b, -1, -1)
        embeds = embeds.scatter(1, positions[..., None].expand(-1, -1, embeds.shape[-1]), soft)
        mask = (steps[None] < (lengths + self.n_soft_tokens)[:, None]).to(attention_mask.dtype)
        prefix = mask.new_ones(b, self.prefix_length)
        return embeds, torch.cat([prefix, mask], dim=1), positions

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor | None:
        """E_m ``[B, L, d_te]`` (fp32) for right-padded prompts ``input_ids [B, T]``; None when L = 0."""
        if self.n_soft_tokens == 0:
            return None
        embeds, mask, positions = self.build_inputs(input_ids, attention_mask)
        cache = self.prefix_cache(input_ids.shape[0])
        hidden = self.llm.base_model(
            inputs_embeds=embeds, attention_mask=mask, past_key_values=cache, use_cache=cache is not None
        ).last_hidden_state
        soft_states = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.mapper(soft_states.float())

    # -------------------------------------------------------------------------------------------- parameters
    def _trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if name.split(".")[0] in _TRAINABLE}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Soft tokens, prefixes and mapper only (what a checkpoint needs; the LLM is reloaded by name)."""
        return {name: p.detach().clone() for name, p in self._trainable_parameters().items()}

    def count_parameters(self) -> dict[str, int]:
        """Trainable sizes: prefix S*layers*2*kv_heads*head_dim, soft L*hidden, mapper
        hidden*d_te + d_te; plus ``trainable`` (their sum) and ``frozen`` (the LLM)."""

        def size(part: nn.Module | Tensor | None) -> int:
            if part is None:
                return 0
            return part.numel() if isinstance(part, Tensor) else sum(p.numel() for p in part.parameters())

        counts = {name: size(getattr(self, name)) for name in _TRAINABLE}
        counts["trainable"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        counts["frozen"] = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return counts


def _checkpointed(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a decoder layer's forward under non-reentrant activation checkpointing when gradients are recorded."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
