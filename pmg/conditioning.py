"""Assembly of the SD conditioning from keyword states E_k and soft states E_m (Shen et al. 2024).

Pure functions, so training, inference and the weight grid build conditions the same way:

- :func:`encode_text`: texts -> frozen CLIP text states, padded to a fixed token count;
- :func:`assemble_condition`: ``[E_k; E_m]`` with exactly 77 tokens, keywords first, soft tokens last
  (PMG-Bench order; the UNet's cross-attention has no positional term, so only the *count* matters);
- :func:`scale_tokens`: the "scale" weighting mode (every state but the start token times w);
- :func:`repeat_keywords`: the "repeat" weighting mode (MindSpore demo: keywords repeated in the prompt).

Token budget: with L soft tokens the keywords are encoded to ``77 - L`` tokens (75 for L = 2, 73 for L = 4),
CLIP start/end tokens included, padded with the end token. Ablations:
- no soft tokens (``use_soft=False`` or L = 0): the keywords alone, encoded to 77 tokens;
- no keywords: the caller encodes the empty prompt ``""`` to ``77 - L`` tokens and passes it as the keyword states,
  so E_m still sits in the same slots, after a start token and padding, as in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase


@torch.no_grad()
def encode_text(
    text_encoder: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> Tensor:
    """CLIP ``last_hidden_state`` ``[B, max_length, D]`` of ``texts`` (truncated / padded to ``max_length``).

    No attention mask is passed, as the SD-1.5 pipeline does: padding tokens are states of the end token that
    attend causally to the prompt, and the UNet sees them.
    """
    limit = text_encoder.config.max_position_embeddings
    if not 2 <= max_length <= limit:
        raise ValueError(f"max_length={max_length} must be in [2, {limit}] (start + end token fit)")
    ids = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device)).last_hidden_state


def assemble_condition(keyword_states: Tensor | None, soft: Tensor | None, total: int = 77) -> Tensor:
    """``[B, total, D]`` = keyword states ``[B, total - L, D]`` followed by soft states ``[B, L, D]``.

    Either part may be None (see the module doc for the ablations), but the tokens must add up to ``total``
    exactly: a wrong count changes the UNet output, so it is an error rather than a silent pad or cut.
    The result has the soft states' dtype (gradients flow into them); keyword states are cast to it.
    """
    parts = [p for p in (keyword_states, soft) if p is not None]
    if not parts:
        raise ValueError("assemble_condition needs keyword states, soft states or both")
    if any(p.dim() != 3 for p in parts):
        raise ValueError(f"expected [B, tokens, D] tensors, got shapes {[tuple(p.shape) for p in parts]}")
    if len({(p.shape[0], p.shape[2]) for p in parts}) != 1:
        raise ValueError(f"batch size and width must match: {[tuple(p.shape) for p in parts]}")
    n_tokens = sum(p.shape[1] for p in parts)
    if n_tokens != total:
        shapes = {
            "keyword_states": None if keyword_states is None else tuple(keyword_states.shape),
            "soft": None if soft is None else tuple(soft.shape),
        }
        raise ValueError(
            f"condition has {n_tokens} tokens, expected {total}: {shapes}; encode keywords to {total} - L tokens"
        )
    ref = parts[-1]
    return torch.cat([p.to(device=ref.device, dtype=ref.dtype) for p in parts], dim=1)


def scale_tokens(states: Tensor, weight: float, skip_first: bool = True) -> Tensor:
    """``states [B, T, D]`` times ``weight``, except the first (start-token) state when ``skip_first``.

    The CLIP start-token state has a far larger norm than the others and is identical for every prompt, so
    scaling it changes the attention of every query rather than the weight of the prompt.
    """
    if not skip_first:
        return states * weight
    return torch.cat([states[:, :1], states[:, 1:] * weight], dim=1)


def repeat_keywords(
    target_kw: Sequence[str] | str, pref_kw: Sequence[str] | str, w_t: int, w_p: int, sep: str = ", "
) -> str:
    """The "repeat" weighting of the MindSpore demo: target keywords ``w_t`` times, then preference keywords
    ``w_p`` times, all joined by ``sep`` (e.g. ``(["hat"], ["red", "dotted"], 1, 2)`` ->
    ``"hat, red, dotted, red, dotted"``). A string counts as one keyword; weights must be >= 0 integers."""
    if w_t < 0 or w_p < 0 or int(w_t) != w_t or int(w_p) != w_p:
        raise ValueError(f"repeat weights must be integers >= 0, got w_t={w_t}, w_p={w_p}")
    target = [target_kw] if isinstance(target_kw, str) else list(target_kw)
    pref = [pref_kw] if isinstance(pref_kw, str) else list(pref_kw)
    return sep.join(target * int(w_t) + pref * int(w_p))
