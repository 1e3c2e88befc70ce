"""Exact candidate ranking by teacher-forced likelihood, with a row's candidates decoded as one prefix tree.

Direct recommendation (B-5..B-8) ranks a fixed candidate list; the original ranks it by candidate-constrained
beam search. :func:`score_candidates` scores every candidate exactly: a row's candidates are merged into one
prefix tree (:class:`CandidateForest`) decoded as one sequence under a tree attention mask, so the prompt is
cross-attended once per row and a shared id prefix is decoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch


class CandidateForest(NamedTuple):
    """Each row's candidate token sequences merged into one prefix tree, laid out as one decoder sequence.

    Node 0 of a row is the decoder start token; every other node is one token of one or more candidates, placed
    after its parent. A node's logits predict the next token of every candidate passing through it, so a prefix
    shared by many candidates is decoded once (the first token of all candidates is predicted by node 0 alone).
    Rows are padded to the same node count; padding nodes see only themselves and score nothing.
    """

    input_ids: torch.Tensor  # (R, N) decoder input token of each node
    depth: torch.Tensor  # (R, N) position of the node's token in its candidates' decoder input
    allowed: torch.Tensor  # (R, N, N) bool: query node may attend key node (ancestor or itself)
    pair_row: torch.Tensor  # (P,) one entry per scored token, in row order: row ...
    pair_node: torch.Tensor  # (P,) ... node whose logits score it ...
    pair_token: torch.Tensor  # (P,) ... the token ...
    pair_candidate: torch.Tensor  # (P,) ... and the candidate it counts for (flat index over all rows)
    n_candidates: list[int]  # candidates per row
    n_nodes: list[int]  # real (unpadded) nodes per row
    n_tokens: torch.Tensor  # (sum n_candidates,) scored tokens per candidate


def candidate_forest(
    candidates_token_ids: Sequence[Sequence[Sequence[int]]],
    start_token_id: int,
    pad_token_id: int = 0,
    eos_token_id: int | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
) -> CandidateForest:
    """Merge each row's candidate token sequences (``</s>`` included, or appended via ``eos_token_id``) into a
    prefix tree (:class:`CandidateForest`). A row's ``prefixes`` entry (decoder tokens every candidate follows,
    e.g. history items given to the decoder) is laid out as a chain after the start token, unscored."""
    rows_tokens, rows_parent, rows_depth = [], [], []
    pairs: list[tuple[int, int, int, int]] = []
    n_tokens: list[int] = []
    flat = 0
    for r, cands in enumerate(candidates_token_ids):
        prefix = [int(t) for t in prefixes[r]] if prefixes is not None else []
        tokens, parent, depth = [start_token_id, *prefix], list(range(-1, len(prefix))), list(range(len(prefix) + 1))
        children: list[dict[int, int]] = [{} for _ in tokens]
        root = len(prefix)
        for cand in cands:
            seq = [int(t) for t in cand]
            if eos_token_id is not None and (not seq or seq[-1] != eos_token_id):
                seq.append(eos_token_id)
            if not seq:
                raise ValueError(f"row {r}: empty candidate token ids")
            node = root
            for i, t in enumerate(seq):
                pairs.append((r, node, t, flat))
                if i == len(seq) - 1:
                    break
                child = children[node].get(t)
                if child is None:
                    child = len(tokens)
                    children[node][t] = child
                    tokens.append(t)
                    parent.append(node)
                    depth.append(depth[node] + 1)
                    children.append({})
                node = child
            n_tokens.append(len(seq))
            flat += 1
        rows_tokens.append(tokens)
        rows_parent.append(parent)
        rows_depth.append(depth)
    width = max(len(t) for t in rows_tokens)
    input_ids = torch.full((len(rows_tokens), width), pad_token_id, dtype=torch.long)
    depth_t = torch.zeros((len(rows_tokens), width), dtype=torch.long)
    allowed = np.broadcast_to(np.eye(width, dtype=bool), (len(rows_tokens), width, width)).copy()
    for r, (tokens, parent, depth) in enumerate(zip(rows_tokens, rows_parent, rows_depth)):
        input_ids[r, : len(tokens)] = torch.tensor(tokens)
        depth_t[r, : len(depth)] = torch.tensor(depth)
        rows = allowed[r]
        for q in range(1, len(tokens)):  # parents precede children: a node sees its parent's ancestors
            rows[q] |= rows[parent[q]]
    pr, pn, pt, pc = (torch.tensor(col, dtype=torch.long) for col in zip(*pairs)) if pairs else (
        torch.empty(0, dtype=torch.long),) * 4
    return CandidateForest(input_ids, depth_t, torch.from_numpy(allowed), pr, pn, pt, pc,
                           [len(c) for c in candidates_token_ids], [len(t) for t in rows_tokens],
                           torch.tensor(n_tokens, dtype=torch.long))


def t5_forest_attention_mask(self_attention: Any, depth: torch.Tensor, allowed: torch.Tensor,
                             dtype: torch.dtype) -> torch.Tensor:
    """Additive (R, H, N, N) decoder self-attention mask that makes T5 decode a :class:`CandidateForest` exactly.

    T5 adds a relative position bias computed from the layout (key index - query index); in the tree the true
    distance is the difference of depths. The mask holds ``bias(true) - bias(layout)`` where a node may attend
    and the dtype's minimum elsewhere, so layout bias + mask = the bias each candidate sees when decoded alone.
    Hand-written: transformers has no tree attention for T5 (its 4D masks carry no position bias).

    Args:
        self_attention: the decoder's first self-attention (``T5Attention`` with ``has_relative_attention_bias``).
        depth, allowed: from :class:`CandidateForest` (rows of one decoder pass).
    """
    attn = self_attention
    n = depth.shape[-1]
    pos = torch.arange(n, device=depth.device)

    def bias(relative: torch.Tensor) -> torch.Tensor:  # memory - query -> (..., H, Q, K)
        buckets = attn._relative_position_bucket(relative, bidirectional=not attn.is_decoder,
                                                 num_buckets=attn.relative_attention_num_buckets,
                                                 max_distance=attn.relative_attention_max_distance)
        return attn.relative_attention_bias(buckets.to(attn.relative_attention_bias.weight.device)).movedim(-1, -3)

    true = depth[:, None, :] - depth[:, :, None]
    mask = (bias(true) - bias(pos[None, :] - pos[:, None])).float()
    return mask.masked_fill(~allowed.to(mask.device).unsqueeze(1), torch.finfo(dtype).min).to(dtype)


@torch.no_grad()
def score_candidates(
    decode_fn: Callable[[slice, torch.Tensor, torch.Tensor], torch.Tensor],
    self_attention: Any,
    candidates_token_ids: Sequence[Sequence[Sequence[int]]],
    *,
    start_token_id: int,
    pad_token_id: int = 0,
    eos_token_id: int | None = None,
    length_normalize: bool = False,
    max_positions: int = 2048,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[torch.Tensor]:
    """Exact teacher-forced log-likelihood of every candidate of every row, with shared prefixes decoded once.

    Each row's candidates form one prefix tree (:func:`candidate_forest`) decoded as one sequence under a tree
    mask (:func:`t5_forest_attention_mask`): the (long) prompt is cross-attended once per row, and a prefix shared
    by many candidates costs one decoder position instead of one per candidate (one vocabulary token per item:
    100 candidates take 101 positions rather than 200).

    Args:
        decode_fn: ``(rows: slice, decoder_input_ids (k, N), decoder_attention_mask (k, H, N, N))`` -> logits
            ``(k, N, V)`` of those rows (their encoder states are the caller's; see :func:`t5_decode_fn`).
        self_attention: the decoder's first self-attention module (its relative position bias).
        candidates_token_ids: per row, per candidate, target token ids. Rows may hold different numbers.
        length_normalize: divide the summed log-prob by the number of target tokens.
        max_positions: decoder positions (rows x nodes) per forward (memory: that many logit rows).
        dtype: of the attention mask (the decoder's compute dtype).
        prefixes: per row, decoder tokens that precede every candidate (after the start token), or None.

    Returns:
        per row, a float tensor of its candidates' scores (on the CPU).
    """
    forest = candidate_forest(candidates_token_ids, start_token_id, pad_token_id, eos_token_id, prefixes)
    n_rows, width = forest.input_ids.shape
    total = torch.zeros(int(forest.n_tokens.numel()), dtype=torch.float32)
    per_pass = max(1, max_positions // width)
    for r0 in range(0, n_rows, per_pass):
        rows = slice(r0, min(r0 + per_pass, n_rows))
        # trim the padding this chunk does not need
        n = max(forest.n_nodes[rows])
        mask = t5_forest_attention_mask(self_attention, forest.depth[rows, :n].to(device),
                                        forest.allowed[rows, :n, :n], dtype)
        logits = decode_fn(rows, forest.input_ids[rows, :n].to(device), mask).float()
        lse = logits.logsumexp(-1)
        # pairs are in row order, so this pass's rows own one contiguous slice of them
        lo, hi = torch.searchsorted(forest.pair_row, torch.tensor([rows.start, rows.stop])).tolist()
        sel = slice(lo, hi)
        r = (forest.pair_row[sel] - rows.start).to(logits.device)
        node, tok = forest.pair_node[sel].to(logits.device), forest.pair_token[sel].to(logits.device)
        token_lp = logits[r, node, tok] - lse[r, node]
        total.index_add_(0, forest.pair_candidate[sel], token_lp.cpu())
    if length_normalize:
        total = total / forest.n_tokens
    return list(torch.split(total, forest.n_candidates))


def t5_decode_fn(model: Any, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor) -> Callable[[slice, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``decode_fn`` of :func:`score_candidates` for a HF ``T5ForConditionalGeneration`` and encoder states."""
    from transformers.modeling_outputs import BaseModelOutput

    def decode(rows: slice, decoder_input_ids: torch.Tensor, decoder_attention_mask: torch.Tensor) -> torch.Tensor:
        return model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states[rows]),
                     attention_mask=attention_mask[rows], decoder_input_ids=decoder_input_ids,
                     decoder_attention_mask=decoder_attention_mask, use_cache=False).logits

    return decode


def t5_self_attention(model: Any) -> Any:
    """The first decoder self-attention of a HF T5 (the one holding the relative position bias)."""
    return model.decoder.block[0].layer[0].SelfAttention
