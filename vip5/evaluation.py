"""Evaluation and prediction for VIP5, with the original's evaluation defects fixed.

- Sequential (A-3 seen, A-9 unseen): beam search constrained by a prefix trie over every catalogue item
  id, so each returned item exists; HR@k/NDCG@k over the full catalogue. ``decoding: free`` is the
  original unconstrained search, reported with its invalid-id rate.
- Direct (B-5 seen, B-8 unseen): exact ranking of the fixed 100 candidates by teacher-forced likelihood
  (``direct_ranking: likelihood``), or candidate-constrained beam search (``beam``, the faithful option).
- Explanation (C-3 seen, C-12 unseen): greedy decoding with a length limit; word-level BLEU-4 (sacrebleu)
  and ROUGE-1/2/L (rouge-score). Char-level BLEU only as a labelled parity option.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from common.distributed import gather_keyed
from common.io import write_json, write_text
from common.metrics.ranking import hit_at_k, ndcg_at_k
from common.metrics.text import bleu4, rouge
from vip5.candidate_scoring import score_candidates, t5_decode_fn, t5_self_attention
from vip5.data import model_inputs, select_rows
from vip5.sasrec import left_pad
from vip5.trie import ItemTrie, TrieLogitsProcessor, rank_beams

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Decoding and metric settings.

    Attributes:
        num_beams: beams (and returned items) of sequential beam search (the paper: 20).
        sequential_ks: cut-offs for sequential HR/NDCG.
        direct_ks: cut-offs for direct HR/NDCG.
        decoding: ``trie`` (constrained to catalogue ids) or ``free`` (original, may emit invalid ids).
        exclude_history: drop items of the user's history from sequential recommendations.
        direct_ranking: ``likelihood`` (exact, batched) or ``beam`` (candidate-constrained beam search).
        max_explanation_length: new tokens for explanations (the original was silently capped at 20).
        bleu_level: ``word`` (default) or ``char`` (parity with the VIP5 notebook's char-level BLEU).
        top_k: items written per user by ``vip5 predict``.
        predict_explanations: also write an explanation (C-3 style, for the top item) in ``vip5 predict``.
        predict_users: users ``vip5 predict`` recommends for (default: every user of the test split).
        test_users: evaluate on a fixed random sample of this many test users (``common.data.splits.sample_users``,
            seeded by the prompts' seed); None = every test user.
        predictions_file: JSON-lines file (under the trainer's root dir) ``vip5 predict`` writes.
        validation_ranking: log ``val/hr@10`` every validation: the likelihood rank of each validation target
            among its candidate list or the user's fixed negatives (a checkpoint monitor that follows ranking
            quality; the validation loss can rise while the ranking improves).
    """

    num_beams: int = 20
    sequential_ks: list[int] = field(default_factory=lambda: [5, 10])
    direct_ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    decoding: Literal["trie", "free"] = "trie"
    exclude_history: bool = False
    direct_ranking: Literal["likelihood", "beam"] = "likelihood"
    max_explanation_length: int = 64
    bleu_level: Literal["word", "char"] = "word"
    top_k: int = 10
    predict_explanations: bool = False
    predict_users: list[str] | None = None
    test_users: int | None = None
    predictions_file: str = "predictions.jsonl"
    validation_ranking: bool = True


class Evaluator:
    """Accumulates per-prompt results over test batches; one instance per LightningModule."""

    def __init__(self, model, builder, config: EvalConfig) -> None:
        self.model, self.builder, self.config = model, builder, config
        self._trie: ItemTrie | None = None
        self._item_tokens: dict[str, list[int]] | None = None
        self.reset()

    def reset(self) -> None:
        # per prompt, keyed by the sample's index in its test dataset: under DDP the ranks' results are merged on
        # these keys (common.distributed), which drops the sampler's padding repeats
        self.ranks: dict[str, dict[int, int]] = {}
        self.invalid: dict[str, dict[int, float]] = {}
        self.texts: dict[str, dict[int, tuple[str, str]]] = {}

    # -- item id tokens ----------------------------------------------------------------------
    @property
    def continues_items(self) -> bool:
        """Whether sequential targets put further items after an item in training (``prompts.target_items > 1``
        or ``prompts.decoder_history``): then ``</s>`` after an id is no part of it, and ids are scored by their
        own tokens."""
        config = self.builder.config
        return config.target_items > 1 or config.decoder_history > 0

    def decoder_prefixes(self, samples: list[dict[str, Any]]) -> list[list[int]]:
        """Per sample, the token ids of the history items it gives the decoder (``prompts.decoder_history``)."""
        return [[t for i in s.get("decoder_prefix") or () for t in self.item_tokens[i]] for s in samples]

    def _decoder_inputs(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``generate`` arguments that start every sample's decoder with its prefix: the start token and the
        prefix, left-padded to one width (padding masked out), so generated tokens share their columns."""
        prefixes = self.decoder_prefixes(samples)
        if not any(prefixes):
            return {}
        start = self.model.t5.config.decoder_start_token_id
        ids = left_pad([[start, *prefix] for prefix in prefixes], max_len=1 + max(map(len, prefixes)))
        lengths = torch.tensor([1 + len(prefix) for prefix in prefixes])
        mask = (torch.arange(ids.shape[1]) >= ids.shape[1] - lengths[:, None]).long()
        device = next(self.model.parameters()).device
        return {"decoder_input_ids": ids.to(device), "decoder_attention_mask": mask.to(device)}

    @property
    def item_tokens(self) -> dict[str, list[int]]:
        """Token ids of every catalogue item's id string, with ``</s>`` unless :attr:`continues_items`."""
        if self._item_tokens is None:
            tok, index = self.builder.tokenizer, self.builder.data.index
            items = self.builder.item_ids
            ids = tok([index.to_id[i] for i in items], add_special_tokens=not self.continues_items)["input_ids"]
            self._item_tokens = dict(zip(items, ids))
        return self._item_tokens

    @property
    def trie(self) -> ItemTrie:
        if self._trie is None:
            self._trie = ItemTrie(self.item_tokens)
        return self._trie

    def _decode_items(self, sequences: torch.Tensor) -> list[str | None]:
        tok, index = self.builder.tokenizer, self.builder.data.index
        out = []
        for text in tok.batch_decode(sequences, skip_special_tokens=True):
            text = text.replace(" ", "") if index.tokens else text.strip()  # token ids are written without spaces
            out.append(index.to_item.get(text))
        return out

    # -- per family ----------------------------------------------------------------------------
    @torch.no_grad()
    def _beam_items(
        self, batch: dict[str, Any], k: int, trie: ItemTrie | None, exclude: list[set[str]] | None = None
    ) -> list[list[str | None]]:
        beams = max(k, 1)
        primed = self._decoder_inputs(batch["samples"])
        given = primed["decoder_input_ids"].shape[1] if primed else 1  # the start token (+ history prefix)
        processors = [TrieLogitsProcessor(trie, num_beams=beams, exclude=exclude, renormalize=self.continues_items,
                                          prompt_length=given)] if trie is not None else []
        new_tokens = max(len(t) for t in self.item_tokens.values()) + self.continues_items  # (+ </s>)
        out = self.model.generate(
            **model_inputs(batch),
            **primed,
            num_beams=beams,
            num_return_sequences=beams,
            max_new_tokens=new_tokens,
            logits_processor=processors,
            early_stopping=True,
            do_sample=False,
        )
        seqs = out.sequences if hasattr(out, "sequences") else out
        items = self._decode_items(seqs[:, given:])
        return [items[r * beams : (r + 1) * beams] for r in range(len(batch["samples"]))]

    def _sequential(self, batch: dict[str, Any]) -> tuple[list[int], list[list[str]], list[float]]:
        """Per sample: the target's rank (-1: not returned), the ranked items, the share of invalid beams."""
        cfg = self.config
        if cfg.decoding == "free" and self.continues_items:
            raise ValueError("evaluation.decoding: free reads the whole generated text as one id, but this model was "
                             "trained to go on with later items (prompts.target_items > 1 or "
                             "prompts.decoder_history): use decoding: trie")
        trie = self.trie if cfg.decoding == "trie" else None
        # history items are masked inside the constrained search, so they never take a beam slot; the
        # unconstrained (faithful) search can only filter afterwards
        exclude = [set(s["history"]) for s in batch["samples"]] if cfg.exclude_history and trie else None
        beams = self._beam_items(batch, cfg.num_beams, trie, exclude)
        ranks, lists, invalid = [], [], []
        for s, cand in zip(batch["samples"], beams):
            ranked, n_invalid = rank_beams(cand, set(s["history"]) if cfg.exclude_history else ())
            invalid.append(n_invalid / max(len(cand), 1))
            ranked = ranked[: cfg.num_beams]
            lists.append(ranked)
            ranks.append(ranked.index(s["target_item"]) if s["target_item"] in ranked else -1)
        return ranks, lists, invalid

    @torch.no_grad()
    def _direct(self, batch: dict[str, Any]) -> list[int]:
        if self.config.direct_ranking == "beam":
            ranks = []
            for r, s in enumerate(batch["samples"]):
                sub = select_rows(batch, [r])
                trie = ItemTrie({c: self.item_tokens[c] for c in s["candidates"]})
                ranked = [c for c in self._beam_items(sub, self.config.num_beams, trie)[0] if c is not None]
                ranks.append(ranked.index(s["target_item"]) if s["target_item"] in ranked else -1)
            return ranks
        return self._likelihood_ranks(batch)

    def _likelihood_ranks(self, batch: dict[str, Any]) -> list[int]:
        ranks = []
        for s, sc in zip(batch["samples"], self.candidate_scores(batch)):
            target = s["candidates"].index(s["target_item"])
            # rank = number of candidates scored strictly higher (ties broken against the target)
            ranks.append(int((sc > sc[target]).sum() + (sc[:target] == sc[target]).sum()))
        return ranks

    @torch.no_grad()
    def validation_ranks(self, batch: dict[str, Any]) -> dict[int, int]:
        """Likelihood rank of the target item of every validation sample that names one (sequential and direct
        prompts; not yes/no or explanation prompts) among candidates: the prompt's own list, or else the user's
        fixed negatives with the target last (ties count against it). Cheap enough to run every epoch, and it
        follows ranking quality where the validation loss may not (checkpoint selection on ``val/hr@10``).
        Returns ``{batch row: rank}`` for the rows that were ranked."""
        rows, samples = [], []
        for r, s in enumerate(batch["samples"]):
            if s["task"] == "explanation" or self.builder.available[s["template"]].target_kind == "yes_no":
                continue
            candidates = s["candidates"] or self.builder.validation_candidates(s["user"], s["target_item"])
            if not candidates:
                continue
            rows.append(r)
            samples.append({**s, "candidates": candidates})
        if not rows:
            return {}
        return dict(zip(rows, self._likelihood_ranks({**select_rows(batch, rows), "samples": samples})))

    @torch.no_grad()
    def candidate_scores(self, batch: dict[str, Any], max_positions: int = 2048) -> list[torch.Tensor]:
        """Teacher-forced log-likelihood of every candidate id, exact and batched.

        The prompt is encoded once per row; the row's candidates are then merged into one prefix tree decoded as
        one sequence (:func:`vip5.candidate_scoring.score_candidates`), so the decoder cross-attends to the (long)
        prompt once per row and a prefix shared by several ids is decoded once. ``max_positions`` bounds the decoder
        positions (rows x tree nodes) per pass (memory).
        """
        model, t5 = self.model, self.model.t5
        samples = batch["samples"]
        inputs = model_inputs(batch)
        enc = model.encode(**inputs).last_hidden_state
        t5_decode = t5_decode_fn(t5, enc, batch["attention_mask"])

        def decode(rows: slice, decoder_input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            with model.adapter_tasks(inputs["tasks"][rows]):  # per-task adapters follow the rows of the pass
                return t5_decode(rows, decoder_input_ids, mask)

        return score_candidates(
            decode, t5_self_attention(t5), [[self.item_tokens[c] for c in s["candidates"]] for s in samples],
            start_token_id=t5.config.decoder_start_token_id, pad_token_id=self.builder.tokenizer.pad_token_id,
            max_positions=max_positions, dtype=enc.dtype, device=enc.device, prefixes=self.decoder_prefixes(samples))

    @torch.no_grad()
    def _explain(self, batch: dict[str, Any]) -> list[str]:
        out = self.model.generate(
            **model_inputs(batch), num_beams=1, do_sample=False, max_new_tokens=self.config.max_explanation_length
        )
        seqs = out.sequences if hasattr(out, "sequences") else out
        return [t.strip() for t in self.builder.tokenizer.batch_decode(seqs, skip_special_tokens=True)]

    # -- API -----------------------------------------------------------------------------------
    def update(self, batch: dict[str, Any]) -> None:
        samples = batch["samples"]
        template, family = samples[0]["template"], samples[0]["task"]
        store = (self.texts if family == "explanation" else self.ranks).setdefault(template, {})
        # the sample's dataset index (set by the test datasets); a running number for batches built by hand
        keys = [s.get("index", len(store) + j) for j, s in enumerate(samples)]
        if family == "sequential":
            ranks, _, invalid = self._sequential(batch)
            store.update(zip(keys, ranks))
            self.invalid.setdefault(template, {}).update(zip(keys, invalid))
        elif family == "direct":
            store.update(zip(keys, self._direct(batch)))
        else:
            store.update(zip(keys, zip(self._explain(batch), (s["target"] for s in samples))))

    def gathered(self) -> tuple[dict[str, list[int]], dict[str, list[float]], dict[str, list[tuple[str, str]]]]:
        """Ranks, invalid shares and (generated, reference) texts per prompt over every DDP rank, each sample once,
        in dataset order (this process's own results outside DDP)."""
        local = {(kind, t, i): v for kind, store in (("rank", self.ranks), ("invalid", self.invalid),
                                                     ("text", self.texts))
                 for t, rows in store.items() for i, v in rows.items()}
        out: tuple[dict, dict, dict] = ({}, {}, {})
        for (kind, template, _), value in gather_keyed(local).items():
            out[("rank", "invalid", "text").index(kind)].setdefault(template, []).append(value)
        return out

    def compute(self) -> dict[str, dict[str, Any]]:
        """The per-prompt metric table over every sample of the test split (gathered from all DDP ranks)."""
        all_ranks, all_invalid, all_texts = self.gathered()
        self.explanations = all_texts  # (generated, reference) per explanation prompt, written by report()
        table: dict[str, dict[str, Any]] = {}
        for template, ranks in all_ranks.items():
            r = torch.tensor(ranks, dtype=torch.long)
            seq = self.builder.available[template].family == "sequential"
            ks = self.config.sequential_ks if seq else self.config.direct_ks
            row: dict[str, Any] = {"n": int(r.numel())}
            for k in ks:
                row[f"HR@{k}"] = float(hit_at_k(r, k).mean())
                if k > 1:
                    row[f"NDCG@{k}"] = float(ndcg_at_k(r, k).mean())
            if seq and template in all_invalid:
                row["invalid_rate"] = float(sum(all_invalid[template]) / max(len(all_invalid[template]), 1))
            table[template] = row
        for template, pairs in all_texts.items():
            preds, refs = (list(x) for x in zip(*pairs))
            row = {"n": len(preds), "BLEU-4": bleu4(preds, refs, level=self.config.bleu_level)}
            row.update(rouge(preds, refs))
            table[template] = row
        return dict(sorted(table.items()))

    def report(self, table: dict[str, dict[str, Any]], trainer, indexing: str) -> Path | None:
        """Print the table, log it to W&B (when a WandbLogger is attached) and write JSON next to the ckpt."""
        meta = {
            "decoding": self.config.decoding,
            "direct_ranking": self.config.direct_ranking,
            "indexing": indexing,
            "bleu_level": self.config.bleu_level,
        }
        print(format_table(table, meta))
        ckpt = getattr(trainer, "ckpt_path", None)
        folder = Path(ckpt).parent if ckpt else Path(trainer.default_root_dir)
        path = folder / "test_results.json"
        write_json(path, {"meta": meta, "results": table})
        print(f"results written to {path}")
        texts = getattr(self, "explanations", {})
        if texts:  # the generated explanations behind BLEU/ROUGE, one JSON line per test review and prompt
            write_text(folder / "test_explanations.jsonl", "".join(
                json.dumps({"prompt": t, "generated": g, "reference": r}, ensure_ascii=False) + "\n"
                for t, pairs in sorted(texts.items()) for g, r in pairs))
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                cols = sorted({k for row in table.values() for k in row})
                logger.log_table("test/results", columns=["prompt", *cols],
                                 data=[[p, *[row.get(c) for c in cols]] for p, row in table.items()])
        return path

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """Top-k recommendations (trie-constrained) for each user of the batch, with titles when known."""
        _, lists, _ = self._sequential(batch)
        corpus, index = self.builder.data.corpus, self.builder.data.index
        rows = []
        for s, items in zip(batch["samples"], lists):
            recs = [
                {"item": i, "id": index.to_id[i], "title": corpus.items[i].title}
                for i in items[: self.config.top_k]
            ]
            rows.append({"user": s["user"], "recommendations": recs})
        if self.config.predict_explanations:
            for row in rows:
                row["explanation"] = self.explain_item(row["user"], row["recommendations"][0]["item"])
        return rows

    @torch.no_grad()
    def explain_item(self, user: str, item: str) -> str | None:
        """Greedy explanation of why ``user`` would like ``item`` (C-3 style prompt); None without C-3."""
        b = self.builder
        if "C-3" not in b.available:
            return None
        from vip5 import prompts as P

        fields = {"user_id": user, "user_desc": b._user_desc(user), "item_id": b.data.index.to_id[item],
                  "title": b.data.corpus.items[item].title or "unknown title", "star_rating": 5, "feature": "",
                  "summary": "", "explanation": "", "target": ""}
        tpl = b.available["C-3"]
        source, _, _ = P.render(tpl, fields, n_image_tokens=b.n_images)
        images = P.image_items(tpl, {"item": [item]}) if b.n_images else []
        sample = {"source": source, "target": "", "task": "explanation", "template": "C-3", "images": images,
                  "user": user, "target_item": item, "candidates": None, "history": []}
        batch = b.collate([sample])
        return self._explain(batch)[0]


def format_table(table: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """A plain-text prompt × metric table."""
    cols = [c for c in ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10", "invalid_rate", "BLEU-4",
                        "rouge1", "rouge2", "rougeL", "n") if any(c in r for r in table.values())]
    width = {c: max(10, len(c) + 2) for c in cols}
    head = f"{'prompt':<8}" + "".join(f"{c:>{width[c]}}" for c in cols)
    lines = [" ".join(f"{k}={v}" for k, v in meta.items()), head, "-" * len(head)]
    for prompt, row in table.items():
        cells = []
        for c in cols:
            v, w = row.get(c), width[c]
            cells.append(f"{'':>{w}}" if v is None else (f"{v:>{w}d}" if isinstance(v, int) else f"{v:>{w}.4f}"))
        lines.append(f"{prompt:<8}" + "".join(cells))
    return "\n".join(lines)

