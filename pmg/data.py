"""PMGSampleBuilder: user histories -> behaviour prompts, keywords and target images.

Samples come from the same leave-one-out splits as VIP5: the supervision image of a training sample is
the last item of the user's training part (the paper's "last item"), validation and test use the held-out
items. A target is never part of its own history. Keyword extraction (statistical or LLM) runs once and
is cached on disk; reruns read the cache.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from common.data.corpus import Corpus
from common.data.datamodule import RecData, SampleBuilder, Split
from common.hashing import stable_hash
from pmg.behaviour import BehaviourText
from pmg.diffusion import load_image_tensor
from pmg.keywords import KeywordExtractor, TfidfKeywordExtractor
from pmg.prompts import ScenarioPrompts, render_history

log = logging.getLogger(__name__)


@dataclass
class PMGDataConfig:
    """How PMG samples are built.

    Attributes:
        scenario: prompt scenario (``costume`` for clothes/products, ``movie`` for posters, ``emoticon``).
        history_len: most recent history items given to the LLM (MindSpore demo: 5 for POG, 3 for movies).
        train_windows: ``last`` (one sample per user: the last training item, the paper) or ``all`` (every
            training position with at least one history item).
        n_preference_keywords: preference keywords per user (paper: 10).
        n_target_keywords: keywords per target item (paper: 5).
        max_prompt_length: LLM tokens of the behaviour prompt (longer prompts keep their end).
    """

    scenario: str = "costume"
    history_len: int = 5
    train_windows: Literal["last", "all"] = "last"
    n_preference_keywords: int = 10
    n_target_keywords: int = 5
    max_prompt_length: int = 256


def local_image(corpus: Corpus, item_id: str) -> str | None:
    """Path of the item's image if it is a local file (a remote URL is not usable offline: fetch it first)."""
    from pathlib import Path

    path = corpus.image_path(item_id)
    return path if path and "://" not in path and Path(path).is_file() else None


def history_images(corpus: Corpus, item_ids: list[str], size: int) -> list[torch.Tensor]:
    """The local images of ``item_ids`` as ``[3, size, size]`` tensors in [0, 1] (items without one are skipped):
    what generated images are compared with."""
    return [(load_image_tensor(path, size) + 1) / 2 for path in (local_image(corpus, i) for i in item_ids) if path]


class _List(Dataset):
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        # the index identifies the sample when DDP ranks' results are merged (common.distributed)
        return {**self.items[idx], "index": idx}


class PMGSampleBuilder(SampleBuilder):
    """Builds PMG samples; created by PMGLitModule and connected to data by the DataModule.

    Args:
        config: sample settings.
        keywords: keyword extractor; None = TF-IDF (offline default). Its cache goes to the data cache folder
            unless it names one.
        llm_tokenizer: tokenizer name/folder of the soft-prompt LLM; None builds a word tokenizer from the
            corpus (for the from-config LLM of the offline default).
        image_size: pixel size of supervision images.
    """

    def __init__(
        self,
        config: PMGDataConfig,
        keywords: KeywordExtractor | None = None,
        llm_tokenizer: str | None = None,
        image_size: int = 32,
    ) -> None:
        self.config = config
        self.keywords = keywords
        self.llm_tokenizer_spec = llm_tokenizer
        self.image_size = image_size
        self.tokenizer = None
        self.data: RecData | None = None
        self.prompts = ScenarioPrompts(config.scenario)
        self.stats: Counter = Counter()
        self.predict_users: list[str] | None = None  # set by the module from its generation settings
        self.predict_limit = 8

    # -- set-up --------------------------------------------------------------------------------
    def _extractor(self, data: RecData) -> KeywordExtractor:
        if self.keywords is None:
            self.keywords = TfidfKeywordExtractor(
                cache_path=data.cache_dir / "pmg_keywords.jsonl",
                n_preference=self.config.n_preference_keywords,
                n_target=self.config.n_target_keywords,
            )
        elif self.keywords.cache is None:
            from pmg.cache import KeywordCache

            self.keywords.cache = KeywordCache(data.cache_dir / "pmg_keywords.jsonl")
        return self.keywords

    def connect(self, data: RecData) -> None:
        self._build(data)
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer()

    def _build(self, data: RecData) -> None:
        self.data = data
        self.behaviour = BehaviourText(self.config.scenario, cache_path=data.cache_dir / "pmg_item_texts.jsonl")
        self.item_text = self.behaviour.texts(data.corpus)
        self.samples = {split: self._samples(split) for split in ("train", "val", "test")}
        self._extract_keywords()

    def _load_tokenizer(self):
        if self.llm_tokenizer_spec is not None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.llm_tokenizer_spec)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token  # Llama has no pad token; the reference pads with eos
            tok.padding_side = "right"  # soft tokens sit right after each sample's tokens (padding-invariant)
            return tok
        from common.tiny_tokenizer import build_word_tokenizer

        texts = self.vocabulary_texts()
        digest = stable_hash("\n".join(texts), 12)
        folder = self.data.cache_dir / f"pmg_llm_tokenizer_{digest}"
        if (folder / "tokenizer.json").exists():
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast.from_pretrained(folder)
        else:
            tok = build_word_tokenizer(
                texts, folder, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
            )
        tok.padding_side = "right"
        return tok

    def vocabulary_texts(self) -> list[str]:
        """Corpus text for from-config tokenizers: item texts, prompts and keywords."""
        texts = list(self.item_text.values())
        texts += [self.prompts.render("soft", items="")]
        texts += [", ".join(k) for k in self.pref_keywords.values()]
        texts += [", ".join(k) for k in self.target_keywords.values()]
        texts += [self.prompts.negative]
        return texts

    def _samples(self, split: str) -> list[dict[str, Any]]:
        corpus, s = self.data.corpus, self.data.split
        out: list[dict[str, Any]] = []
        for user in s.train:
            if split == "train":
                seq = s.train[user]
                ends = [len(seq) - 1] if self.config.train_windows == "last" else range(1, len(seq))
                pairs = [(seq[:t], seq[t]) for t in ends]
            else:
                pairs = [getattr(s, split)[user]]
            for history, target in pairs:
                history = [i for i in history if i != target][-self.config.history_len :]
                if not history:
                    self.stats["no_history"] += 1
                    continue
                if local_image(corpus, target) is None:
                    self.stats["target_without_image"] += 1
                    continue
                out.append({"user": user, "history": history, "target": target, "split": split})
        for reason, n in self.stats.items():
            log.warning("PMG %s samples: %d skipped (%s)", split, n, reason.replace("_", " "))
        self.stats.clear()
        return out

    def _extract_keywords(self) -> None:
        ex = self._extractor(self.data)
        if isinstance(ex, TfidfKeywordExtractor) and ex.vectorizer is None:
            ex.fit(self.item_text.values())
        histories = {
            f"{s['user']}@{s['split']}:{s['target']}": [self.item_text[i] for i in s["history"]]
            for samples in self.samples.values()
            for s in samples
        }
        self.pref_keywords = ex.preference(histories)
        targets = {s["target"] for samples in self.samples.values() for s in samples}
        self.target_keywords = ex.target({i: self.item_text[i] for i in sorted(targets)})

    # -- datasets ------------------------------------------------------------------------------
    def dataset(self, split: Split) -> Dataset:
        if split == "predict":
            users = self.predict_users
            test = self.samples["test"]
            chosen = [s for s in test if s["user"] in set(users)] if users else test[: self.predict_limit]
            if users and len(chosen) < len(users):
                missing = sorted(set(users) - {s["user"] for s in chosen})
                raise ValueError(f"no PMG test sample for users {missing[:10]}")
            return _List(chosen)
        return _List(self.samples[split])

    def sample_keywords(self, sample: dict[str, Any]) -> tuple[list[str], list[str]]:
        key = f"{sample['user']}@{sample['split']}:{sample['target']}"
        return self.pref_keywords.get(key, []), self.target_keywords.get(sample["target"], [])

    def behaviour_prompt(self, history: list[str]) -> str:
        return self.prompts.render("soft", items=render_history([self.item_text[i] for i in history]))

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        tok = self.tokenizer
        prompts = [self.behaviour_prompt(s["history"]) for s in samples]
        tok.truncation_side = "left"  # keep the end of long histories (the most recent items)
        enc = tok(prompts, padding=True, truncation=True, max_length=self.config.max_prompt_length,
                  return_tensors="pt")
        corpus = self.data.corpus
        images = torch.stack([load_image_tensor(corpus.image_path(s["target"]), self.image_size) for s in samples])
        pref, target = zip(*(self.sample_keywords(s) for s in samples))
        return {
            "prompt_ids": enc["input_ids"],
            "prompt_mask": enc["attention_mask"],
            "images": images,
            "pref_keywords": [list(k) for k in pref],
            "target_keywords": [list(k) for k in target],
            "samples": samples,
        }
