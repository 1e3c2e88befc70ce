"""Item-id decoding: trie-constrained beam search and exact candidate ranking by likelihood.

The original evaluates ranking prompts with unconstrained beam search: beams may decode to
ids that do not exist, and a duplicate decode overwrote the earlier, better rank. Here:

* :class:`ItemTrie` is a prefix trie over the token ids of every catalogue item (decoder start token prepended,
  trailing ``</s>`` included, as OpenP5 ``generation_trie.py``). Its children are stored once as flat
  tensors (CSR), so :class:`TrieLogitsProcessor` masks a whole step with one gather + scatter instead of
  enumerating allowed tokens in Python per beam.
* **History exclusion** (optional) happens inside the processor: per row, the token that leads into a trie
  branch holding only excluded items is masked. Excluded items thus never take a beam slot, and no wider beam
  or second pass is needed (unlike OpenP5 ``test_filtered``, which widens the beam and filters afterwards).
* :func:`beam_search_items` wraps HF ``generate`` and returns ranked item lists in which a duplicate keeps its
  best rank; its unconstrained (faithful) mode reports the decoded strings that are no catalogue item, so the
  invalid-id rate is measurable.
* :func:`score_candidates` scores a candidate list (B-5..B-8) exactly by teacher-forced log-likelihood (the original
  ranks them by beam search): a row's candidates are merged into one prefix tree decoded as one sequence, so
  the prompt is cross-attended once per row and a shared id prefix is decoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

#: The original decodes with ``max_length=50``, which counts the decoder start token.
UNCONSTRAINED_MAX_NEW_TOKENS = 49


class ItemTrie:
    """Prefix trie over the token-id sequences of all valid item ids.

    Args:
        item_tokens: item id -> its target token ids (``tokenizer(item_id_string).input_ids``). A trailing
            ``eos_token_id`` is appended when missing.
        decoder_start_token_id: prepended to every sequence (T5: 0, the pad token), so the trie matches the
            ``input_ids`` a logits processor sees.
        eos_token_id: ends every item, so a complete id terminates and no id is a prefix of another.
        pad_token_id: the only token allowed after a complete item (default: ``decoder_start_token_id``, T5's pad).
    """

    def __init__(
        self,
        item_tokens: Mapping[str, Sequence[int]],
        decoder_start_token_id: int = 0,
        eos_token_id: int = 1,
        pad_token_id: int | None = None,
    ) -> None:
        if not item_tokens:
            raise ValueError("ItemTrie needs at least one item")
        self.decoder_start_token_id = decoder_start_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = decoder_start_token_id if pad_token_id is None else pad_token_id
        start = (decoder_start_token_id,)
        self.node_of_prefix: dict[tuple[int, ...], int] = {start: 0}
        children: list[dict[int, int]] = [{}]
        self.parent: list[int] = [-1]
        self.in_token: list[int] = [-1]
        self.n_items_below: list[int] = [0]
        self._item_of_sequence: dict[tuple[int, ...], str] = {}
        self._path: dict[str, list[int]] = {}
        for item_id, tokens in item_tokens.items():
            seq = [int(t) for t in tokens]
            if not seq or seq[-1] != eos_token_id:
                seq.append(eos_token_id)
            if eos_token_id in seq[:-1]:
                raise ValueError(f"item {item_id!r}: eos token {eos_token_id} inside its token ids {seq}")
            key = tuple(seq)
            if key in self._item_of_sequence:
                other = self._item_of_sequence[key]
                raise ValueError(f"items {other!r} and {item_id!r} have the same token ids {seq}")
            self._item_of_sequence[key] = item_id
            node, path = 0, [0]
            self.n_items_below[0] += 1
            for i, tok in enumerate(seq):
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children.append({})
                    self.parent.append(node)
                    self.in_token.append(tok)
                    self.n_items_below.append(0)
                    children[node][tok] = nxt
                    self.node_of_prefix[start + key[: i + 1]] = nxt
                node = nxt
                self.n_items_below[node] += 1
                path.append(node)
            self._path[item_id] = path
        self.num_nodes = len(children)
        self.max_new_tokens = max(len(s) for s in self._item_of_sequence)
        # CSR children. A complete item (leaf) may only be followed by pad, and one extra row (node id =
        # num_nodes) serves prefixes outside the trie with eos only, so no row is ever all -inf.
        flat: list[int] = []
        offsets = [0]
        for ch in children:
            flat.extend(sorted(ch) if ch else [self.pad_token_id])
            offsets.append(len(flat))
        flat.append(eos_token_id)
        offsets.append(len(flat))
        self.unknown_node = self.num_nodes
        self._offsets = torch.tensor(offsets, dtype=torch.long)
        self.n_children = [hi - lo for lo, hi in zip(offsets, offsets[1:])]  # per node, incl. the unknown row
        self._tokens = torch.tensor(flat, dtype=torch.long)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._path)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._path

    @property
    def item_ids(self) -> list[str]:
        return list(self._path)

    def node_of(self, prefix: Sequence[int]) -> int:
        """Trie node of a decoder prefix (start token first), or ``unknown_node`` when it leaves the trie."""
        return self.node_of_prefix.get(tuple(prefix), self.unknown_node)

    def allowed_tokens(self, prefix: Sequence[int]) -> list[int]:
        """Tokens allowed after a decoder prefix (``prefix_allowed_tokens_fn`` style, for debugging and tests)."""
        node = self.node_of(prefix)
        lo, hi = int(self._offsets[node]), int(self._offsets[node + 1])
        return self._tokens[lo:hi].tolist()

    def prefix_allowed_tokens_fn(self, batch_id: int, input_ids: torch.Tensor) -> list[int]:
        """OpenP5-compatible callback for ``generate(prefix_allowed_tokens_fn=...)`` (slower than the processor)."""
        return self.allowed_tokens(input_ids.tolist())

    def item_of(self, token_ids: Sequence[int]) -> str | None:
        """Item id of generated token ids (start token optional, cut after the first eos), or None."""
        seq = [int(t) for t in token_ids]
        if seq and seq[0] == self.decoder_start_token_id:
            seq = seq[1:]
        if self.eos_token_id not in seq:
            return None
        return self._item_of_sequence.get(tuple(seq[: seq.index(self.eos_token_id) + 1]))

    def csr(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(offsets, tokens)``: the allowed next tokens of node n are ``tokens[offsets[n]:offsets[n + 1]]``."""
        device = torch.device(device)
        if device not in self._on_device:
            self._on_device[device] = (self._offsets.to(device), self._tokens.to(device))
        return self._on_device[device]

    def dead_branches(self, excluded: Collection[str]) -> dict[int, list[int]]:
        """node -> tokens to mask there so that no excluded item (and nothing else) can be completed.

        A child is dead when every item below it is excluded; masking its entering token at the parent removes
        the excluded items while the shared prefixes stay open for the other items.
        """
        hits: dict[int, int] = {}
        for item_id in set(excluded):
            for node in self._path.get(item_id, ())[1:]:
                hits[node] = hits.get(node, 0) + 1
        dead: dict[int, list[int]] = {}
        for node, n in hits.items():
            if n == self.n_items_below[node]:
                dead.setdefault(self.parent[node], []).append(self.in_token[node])
        return dead


class TrieLogitsProcessor(LogitsProcessor):
    """Masks every token that does not continue a catalogue item (``-inf`` outside the allowed set).

    Args:
        trie: the item trie.
        num_beams: beams per sample; row r of ``input_ids`` belongs to sample ``r // num_beams``.
        exclude: optional per-sample collections of item ids that may not be generated (e.g. the user's
            history). Length = batch size.
        renormalize: turn the allowed scores into log-probabilities over the allowed tokens alone, so a forced
            step (the ``</s>`` after a complete id) adds nothing. For models trained to continue an item with
            further items, whose ``</s>`` probability says nothing about the item.
    """

    def __init__(self, trie: ItemTrie, num_beams: int = 1, exclude: Sequence[Collection[str]] | None = None,
                 renormalize: bool = False) -> None:
        self.trie = trie
        self.num_beams = num_beams
        self.renormalize = renormalize
        self._dead = [trie.dead_branches(ex) for ex in exclude] if exclude is not None else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, vocab = scores.shape
        device = scores.device
        nodes_list = [self.trie.node_of(p) for p in input_ids.tolist()]
        offsets, tokens = self.trie.csr(device)
        sizes = self.trie.n_children
        if sum(sizes[n] for n in nodes_list) * 8 > rows * vocab:
            # wide nodes (e.g. the root of a one-token-per-item catalogue): a dense mask per distinct node
            distinct = list(dict.fromkeys(nodes_list))
            where = {n: i for i, n in enumerate(distinct)}
            keep = torch.zeros(len(distinct), vocab, dtype=torch.bool, device=device)
            node_row, allowed = self._expand(distinct, offsets, tokens, device)
            keep[node_row, allowed] = True
            if len(distinct) == 1:
                keep = keep.expand(rows, vocab)
            else:
                keep = keep[torch.tensor([where[n] for n in nodes_list], device=device)]
            out = scores.masked_fill(~keep, float("-inf"))
        else:
            # narrow nodes: one full-size write (the -inf fill) plus a gather/scatter of the allowed entries
            row_idx, allowed = self._expand(nodes_list, offsets, tokens, device)
            out = torch.full_like(scores, float("-inf"))
            out[row_idx, allowed] = scores[row_idx, allowed]
        if self._dead is not None:
            ban_rows, ban_tokens = [], []
            for r, node in enumerate(nodes_list):
                for tok in self._dead[r // self.num_beams].get(node, ()):
                    ban_rows.append(r)
                    ban_tokens.append(tok)
            if ban_rows:
                out[torch.tensor(ban_rows, device=device), torch.tensor(ban_tokens, device=device)] = float("-inf")
        return out.log_softmax(-1) if self.renormalize else out

    @staticmethod
    def _expand(
        nodes_list: list[int], offsets: torch.Tensor, tokens: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(row index, allowed token) pairs of the given nodes, from the CSR arrays, without a Python loop."""
        nodes = torch.tensor(nodes_list, dtype=torch.long, device=device)
        starts = offsets[nodes]
        counts = offsets[nodes + 1] - starts
        row_idx = torch.repeat_interleave(torch.arange(len(nodes_list), device=device), counts)
        # position in the flat token array: running index minus the row's start in the output plus its CSR start
        shift = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
        return row_idx, tokens[torch.arange(row_idx.numel(), device=device) + shift]


@dataclass
class RankedItems:
    """Beam-search result of one sample.

    Attributes:
        items: catalogue item ids, best first; a duplicate keeps its best (first) rank.
        scores: the beam scores (``sequences_scores``) of ``items``.
        invalid: decoded outputs that are no catalogue item, in beam order (unconstrained mode only).
        n_duplicates: beams dropped because an earlier beam decoded to the same item.
    """

    items: list[str]
    scores: list[float]
    invalid: list[str] = field(default_factory=list)
    n_duplicates: int = 0


def invalid_rate(results: Sequence[RankedItems]) -> float:
    """Share of returned beams that decoded to no catalogue item."""
    total = sum(len(r.items) + len(r.invalid) + r.n_duplicates for r in results)
    return sum(len(r.invalid) for r in results) / total if total else 0.0


@torch.no_grad()
def beam_search_items(
    model_generate: Callable[..., Any],
    encoder_kwargs: Mapping[str, Any],
    trie: ItemTrie,
    num_beams: int = 20,
    k: int = 20,
    *,
    constrained: bool = True,
    exclude: Sequence[Collection[str]] | None = None,
    decode_fn: Callable[[list[int]], str] | None = None,
    max_new_tokens: int | None = None,
    length_penalty: float = 1.0,
    **generate_kwargs: Any,
) -> list[RankedItems]:
    """Top-k items per sample by beam search, constrained to the catalogue or not.

    Args:
        model_generate: an HF-style ``generate`` (``T5ForConditionalGeneration.generate`` or a wrapper that
            accepts the usual generation kwargs).
        encoder_kwargs: model inputs passed through (``input_ids``/``attention_mask``, ``inputs_embeds``, ...).
        trie: the catalogue.
        num_beams, k: beam width and returned sequences per sample (``k <= num_beams``). Original: 20 and 20.
        constrained: True masks with :class:`TrieLogitsProcessor` (improved); False is the faithful
            unconstrained search, whose invalid outputs are reported in ``RankedItems.invalid``.
        exclude: per-sample item ids never to return (the history). Constrained: masked inside the search;
            unconstrained: filtered from the decoded list (which can then be shorter than k).
        decode_fn: token ids -> text (``tokenizer.decode(ids, skip_special_tokens=True)``). In unconstrained
            mode a decoded string that equals a catalogue id counts as that item, as in the original's
            string comparison; without it only exact token matches count.
        max_new_tokens: default: the longest item (constrained) or 49 (the original ``max_length=50``).
        length_penalty: HF beam-score length normalisation (``sum logp / len**length_penalty``); 1.0 as HF default.
        **generate_kwargs: passed to ``model_generate``, overriding the defaults above (``early_stopping=True``,
            ``do_sample=False`` ...); a ``logits_processor`` list is extended, not replaced.
    """
    if k > num_beams:
        raise ValueError(f"k ({k}) must be <= num_beams ({num_beams})")
    processors = LogitsProcessorList(generate_kwargs.pop("logits_processor", None) or [])
    if constrained:
        processors.append(TrieLogitsProcessor(trie, num_beams=num_beams, exclude=exclude))
    if max_new_tokens is None:
        max_new_tokens = trie.max_new_tokens if constrained else UNCONSTRAINED_MAX_NEW_TOKENS
    kwargs: dict[str, Any] = {
        "num_beams": num_beams,
        "num_return_sequences": k,
        "output_scores": True,
        "return_dict_in_generate": True,
        "max_new_tokens": max_new_tokens,
        "length_penalty": length_penalty,
        "early_stopping": True,
        "do_sample": False,
    }
    kwargs.update(generate_kwargs)
    out = model_generate(**encoder_kwargs, **kwargs, logits_processor=processors)
    n_rows = out.sequences.shape[0] // k
    sequences = out.sequences.view(n_rows, k, -1).tolist()
    if getattr(out, "sequences_scores", None) is not None:
        beam_scores = out.sequences_scores.view(n_rows, k).float().tolist()
    else:  # greedy (num_beams=1) returns no sequence scores; keep the order
        beam_scores = [[-float(j) for j in range(k)] for _ in range(n_rows)]
    results = []
    for b in range(n_rows):
        banned = set(exclude[b]) if (exclude is not None and not constrained) else ()
        res = RankedItems([], [])
        seen: set[str] = set()
        for j in sorted(range(k), key=lambda j: -beam_scores[b][j]):
            score = beam_scores[b][j]
            if score == float("-inf"):  # fewer completions than beams (tiny catalogue, heavy exclusion)
                continue
            item = trie.item_of(sequences[b][j])
            if item is None:
                text = decode_fn(sequences[b][j]).strip() if decode_fn is not None else str(sequences[b][j])
                if text in trie:
                    item = text
                else:
                    res.invalid.append(text)
                    continue
            if item in banned:
                continue
            if item in seen:
                res.n_duplicates += 1
                continue
            seen.add(item)
            res.items.append(item)
            res.scores.append(score)
        results.append(res)
    return results


class CandidateScores(NamedTuple):
    """Per-row candidate log-likelihoods and the candidate indices sorted best first (ties: list order)."""

    scores: list[torch.Tensor]
    rankings: list[list[int]]

    def ranked(self, candidate_ids: Sequence[Sequence[str]]) -> list[list[str]]:
        """Map the rankings onto the candidates' item ids."""
        return [[ids[i] for i in order] for ids, order in zip(candidate_ids, self.rankings)]


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
) -> CandidateForest:
    """Merge each row's candidate token sequences (``</s>`` included, or appended via ``eos_token_id``) into a
    prefix tree (:class:`CandidateForest`)."""
    rows_tokens, rows_parent, rows_depth = [], [], []
    pairs: list[tuple[int, int, int, int]] = []
    n_tokens: list[int] = []
    flat = 0
    for r, cands in enumerate(candidates_token_ids):
        tokens, parent, depth, children = [start_token_id], [-1], [0], [{}]
        for cand in cands:
            seq = [int(t) for t in cand]
            if eos_token_id is not None and (not seq or seq[-1] != eos_token_id):
                seq.append(eos_token_id)
            if not seq:
                raise ValueError(f"row {r}: empty candidate token ids")
            node = 0
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

    Returns:
        per row, a float tensor of its candidates' scores (on the CPU).
    """
    forest = candidate_forest(candidates_token_ids, start_token_id, pad_token_id, eos_token_id)
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


def rank_candidates(scores: Sequence[torch.Tensor]) -> CandidateScores:
    """Candidate indices best first per row (stable: ties keep list order)."""
    return CandidateScores(list(scores), [torch.sort(s, descending=True, stable=True).indices.tolist()
                                          for s in scores])


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
