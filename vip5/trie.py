"""Trie-constrained decoding of item ids: every id a beam search returns exists in the catalogue.

The original evaluates ranking prompts with unconstrained beam search: beams may decode to ids that do not exist
(``evaluation.decoding: free`` keeps that search and reports its invalid-id rate). Here:

* :class:`ItemTrie` is a prefix trie over the token ids of every catalogue item (decoder start token prepended,
  trailing ``</s>`` included, as OpenP5 ``generation_trie.py``). Its children are stored once as flat
  tensors (CSR), so :class:`TrieLogitsProcessor` masks a whole step with one gather + scatter instead of
  enumerating allowed tokens in Python per beam.
* **History exclusion** (optional) happens inside the processor: per row, the token that leads into a trie
  branch holding only excluded items is masked. Excluded items thus never take a beam slot, and no wider beam
  or second pass is needed (unlike OpenP5 ``test_filtered``, which widens the beam and filters afterwards).

The beam search itself is the stock ``generate`` with the processor (:class:`vip5.evaluation.Evaluator`), where a
duplicate decode keeps its best rank (the original overwrote it with a later, worse one).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from transformers import LogitsProcessor


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
        prompt_length: decoder columns given before generation starts (the start token, then any decoder prefix
            such as the history items of ``prompts.decoder_history``); the trie constrains what follows them.
    """

    def __init__(self, trie: ItemTrie, num_beams: int = 1, exclude: Sequence[Collection[str]] | None = None,
                 renormalize: bool = False, prompt_length: int = 1) -> None:
        self.trie = trie
        self.num_beams = num_beams
        self.renormalize = renormalize
        self.prompt_length = prompt_length
        self._dead = [trie.dead_branches(ex) for ex in exclude] if exclude is not None else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, vocab = scores.shape
        device = scores.device
        start = [self.trie.decoder_start_token_id]
        nodes_list = [self.trie.node_of(start + p) for p in input_ids[:, self.prompt_length:].tolist()]
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


def rank_beams(decoded: Sequence[str | None], exclude: Collection[str] = ()) -> tuple[list[str], int]:
    """One sample's beams (best first, each decoded to an item id or None) as a ranked item list.

    A duplicate keeps its best rank (the original kept the worst); excluded items and outputs that are no
    catalogue item (None: only the unconstrained search makes them) are dropped.

    Returns:
        the ranked items and the number of invalid outputs (the numerator of the reported invalid-id rate).
    """
    ranked: list[str] = []
    seen: set[str] = set()
    for item in decoded:
        if item is None or item in seen or item in exclude:
            continue
        seen.add(item)
        ranked.append(item)
    return ranked, sum(item is None for item in decoded)
