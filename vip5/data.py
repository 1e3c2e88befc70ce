"""VIP5SampleBuilder: turns the shared RecData into VIP5 text-to-text samples and tensor batches.

Per-epoch sampling follows the original VIP5 ``data.py``: per user a number of sequential and
direct samples, one per training review for explanations, templates drawn uniformly from each family's
training templates. Test prompts are deterministic (fixed separator, fixed candidate lists).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset

from common.data.datamodule import RecData, SampleBuilder, Split
from common.data.splits import sample_users
from common.hashing import stable_hash
from vip5 import prompts as P
from vip5.tokenizer import IMAGE_TOKEN, batch_whole_word_ids, load_tokenizer, train_sentencepiece

log = logging.getLogger(__name__)

FAMILIES = ("sequential", "direct", "explanation")
_ANGLE_TOKEN = re.compile(r"<[^<>\s]+>")  # id tokens (<item_12>, <c0_3>) and the image placeholder
# Which optional file provides which capability a template may require (the P5/VIP5 data folder).
CAPABILITY_FILES = {"titles": "meta.json.gz", "reviews": "exp_splits.pkl"}


@dataclass
class PromptConfig:
    """How prompts are sampled and rendered.

    Attributes:
        sequential_samples: sequential samples per user per epoch (original: 10).
        direct_samples: direct samples per user per epoch (original: 10).
        explanation_samples: samples per training review per epoch (original: 1).
        train_templates: template ids to train on; None = every training template of the three families.
        test_templates: template ids evaluated by ``vip5 test`` (seen A-3/B-5/C-3, unseen A-9/B-8/C-12).
        families: task families to train on.
        max_history: most recent history items kept in a prompt (improved: the original right-truncated the
            whole prompt at 1024 tokens, cutting the newest items).
        train_targets: ``last3`` (the original: one of the last three training positions) or ``all``
            (every training position can be a target).
        history_order: ``oldest_first`` (the original) or ``newest_first``: the most recent item first, so it
            always sits at the same word position after the prompt's fixed text (docs/vip5.md, "Item identifiers").
        max_source_length: source token limit (prompts are left-trimmed through max_history first).
        max_target_length: target token limit in training.
        target_items: items in a sequential training target. 1 (the original): the next item. k > 1: the next
            item followed by up to k - 1 later items of the user's training sequence, so one prompt trains several
            positions (the decoder continues the sequence, as SASRec's loss on every position does) while the
            first item stays the prompt's answer. Evaluation then scores an id by its own tokens, without ``</s>``.
        decoder_history: next-item prompts (sequential, item answer) give the newest ``decoder_history`` history
            items to the decoder, oldest first, before the answer, and the prompt lists only the items before
            them. Training then predicts each of those items from the ones before it, so one prompt trains
            every position of the window as a next-item target (SASRec's causal loss), and evaluation primes the
            decoder with the same items before the beam search. 0 (the original): the whole history is in the
            prompt and the answer is the decoder's first item.
        random_separator: draw the history separator (", " or " -> ") by a coin also at test time (faithful);
            default draws it only in training.
        n_candidates: candidates in B-5..B-8 lists (target + negatives).
        seed: sampling seed (per-epoch prompts are seeded by seed, epoch and index).
    """

    sequential_samples: int = 10
    direct_samples: int = 10
    explanation_samples: int = 1
    train_templates: list[str] | None = None
    test_templates: list[str] = field(default_factory=lambda: ["A-3", "A-9", "B-5", "B-8", "C-3", "C-12"])
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    max_history: int = 20
    train_targets: Literal["last3", "all"] = "last3"
    history_order: Literal["oldest_first", "newest_first"] = "oldest_first"
    max_source_length: int = 512
    max_target_length: int = 64
    target_items: int = 1
    decoder_history: int = 0
    random_separator: bool = False
    n_candidates: int = 100
    seed: int = 2022

    def __post_init__(self) -> None:
        for name in ("target_items", "decoder_history"):
            low = 1 if name == "target_items" else 0
            if getattr(self, name) < low:
                raise ValueError(f"model.prompts.{name} must be >= {low}, got {getattr(self, name)}")


MODEL_INPUTS = ("input_ids", "attention_mask", "whole_word_ids", "image_feats", "tasks")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of a collated batch that ``VIP5Model`` takes (``forward``, ``encode``, ``generate``)."""
    return {k: batch[k] for k in MODEL_INPUTS}


def select_rows(batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """The collated batch of the given rows only: tensors and per-row lists (``samples`` included), in that order."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            out[key] = value.index_select(0, torch.tensor(rows, device=value.device))
        else:
            out[key] = [value[r] for r in rows]
    return out


@dataclass(frozen=True)
class Recipe:
    """What one sample is made of; :meth:`VIP5SampleBuilder.make` renders it (lazily, seeded per index).

    Attributes:
        family: ``sequential``, ``direct`` or ``explanation``.
        split: whose history and target (``train``, ``val``, ``test``), or whose review (explanation).
        user: the user of a sequential or direct sample; None for explanation samples.
        review: index into the split's reviews (explanation samples).
        template: a fixed template id (test and predict samples); None draws one of the family's training
            templates.
    """

    family: str
    split: Split = "train"
    user: str | None = None
    review: int | None = None
    template: str | None = None


class _Samples(Dataset):
    """A list of sample recipes; ``make(recipe, rng)`` renders one (lazily, seeded per index)."""

    def __init__(self, builder: VIP5SampleBuilder, recipes: list[Recipe], seed: int, train: bool) -> None:
        self.builder, self.recipes, self.seed, self.train = builder, recipes, seed, train

    def __len__(self) -> int:
        return len(self.recipes)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        rng = P.sample_rng(self.seed, idx)
        # the index identifies the sample when DDP ranks' evaluation results are merged (common.distributed)
        return {**self.builder.make(self.recipes[idx], rng, train=self.train), "index": idx}


class VIP5SampleBuilder(SampleBuilder):
    """Builds VIP5 samples. Created by VIP5LitModule; connected to data by the DataModule.

    Args:
        config: prompt settings.
        n_image_tokens: image tokens per item (n).
        tokenizer: tokenizer name/folder, or None/``train`` to train SentencePiece on the corpus.
        tokenizer_vocab_size: vocabulary size of a trained tokenizer.
    """

    def __init__(
        self, config: PromptConfig, n_image_tokens: int, tokenizer: str | None, tokenizer_vocab_size: int = 2000
    ) -> None:
        self.config = config
        self.n_image_tokens = n_image_tokens
        self.tokenizer_spec = None if tokenizer in (None, "train") else tokenizer
        self.tokenizer_vocab_size = tokenizer_vocab_size
        self.tokenizer = None
        self.base_vocab_size: int | None = None  # tokenizer size before item-id tokens are appended
        self.n_item_tokens = 0
        self.id_tokens: frozenset[str] = frozenset()  # item-id vocabulary tokens (one whole word per item)
        self.spiece_bytes: bytes | None = None
        self.templates = P.load_templates()
        self.epoch = 0
        self.data: RecData | None = None
        self.predict_users: list[str] | None = None
        self.test_users: int | None = None  # a sample of test users (EvalConfig.test_users)
        self._warned_cut: set[str] = set()  # sides (source, target) whose truncation was reported

    # -- connection ----------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return 0 if self.data is None else self.data.feature_dim

    @property
    def n_images(self) -> int:
        return self.n_image_tokens if self.feature_dim > 0 else 0

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def indexing_name(self) -> str:
        return getattr(self.data.index, "name", "?") if self.data else "?"

    def connect(self, data: RecData) -> None:
        n_neg = min((len(v) for v in data.negatives.values()), default=0)
        if self.config.n_candidates - 1 > n_neg:
            raise ValueError(f"prompts.n_candidates={self.config.n_candidates} needs {self.config.n_candidates - 1} "
                             f"fixed negatives per user, the data module has {n_neg} (raise n_negatives)")
        self.data = data
        self.features = data.feature_matrix()
        self.row = {iid: i for i, iid in enumerate(data.corpus.item_ids)}
        self.item_ids = data.corpus.item_ids
        self._select_templates()
        if self.tokenizer is None:
            self.tokenizer = self._with_item_tokens(self._load_or_train_tokenizer())

    def _with_item_tokens(self, tokenizer):
        """Append the item-id tokens of token schemes (atomic, collaborative, semantic) to the vocabulary."""
        self.base_vocab_size = len(tokenizer)
        vocab = self.data.index.vocabulary
        if vocab:
            added = tokenizer.add_tokens(vocab)
            if added != len(vocab):
                raise ValueError(f"item indexing {self.data.index.name!r}: {len(vocab) - added} of its tokens are "
                                 "already in the tokenizer's vocabulary; id tokens must be new")
        self.n_item_tokens = len(vocab)
        self.id_tokens = frozenset(vocab)
        return tokenizer

    def token_content(self) -> torch.Tensor:
        """Per item-id token, the mean image + text content of its items (content-based initialisation)."""
        from common.data.indexing.tokens import token_content

        return token_content(self.data.index, self.data.corpus, self.features)

    def adopt_index(self, index) -> None:
        """Use the item ids a checkpoint was trained with (they are saved in it) instead of refitting them."""
        current = self.data.index
        if index.to_id == current.to_id and index.tokens == current.tokens:
            return
        if set(index.to_id) != set(current.to_id):
            raise RuntimeError(f"the checkpoint's item ids ({index.name}, {len(index)} items) cover another "
                               f"catalogue than this data ({len(current)} items)")
        log.warning("item ids (%s) differ from the ones fitted on this data: using the checkpoint's", index.name)
        self.data.index = index
        self.tokenizer = self._with_item_tokens(self._load_or_train_tokenizer())

    def _select_templates(self) -> None:
        corpus = self.data.corpus
        # user descriptions fall back to user ids (as P5 does), so user_names never drops a template
        available = {"user_names", "candidates"}
        if corpus.has_titles:
            available.add("titles")
        train_reviews = self.data.reviews.get("train") or []
        if train_reviews:
            available.add("reviews")
            if any(r.feature for r in train_reviews):
                available.add("features")
            if any(r.rating is not None for r in train_reviews):
                available.add("ratings")
        kept, dropped = P.drop_unavailable(self.templates, available)
        for cap in sorted({"titles", "reviews", "features", "ratings"} - available):
            ids = [t for t in dropped if cap in self.templates[t].requires]
            if ids:
                fname = CAPABILITY_FILES.get(cap, CAPABILITY_FILES["reviews"])
                log.warning("%s: %s unavailable (%s missing or empty): dropping templates %s",
                            corpus.name, cap, fname, ids)
        if not corpus.has_user_names:
            log.warning("%s: no user names (user_id2name.pkl missing): user descriptions fall back to user ids",
                        corpus.name)
        if not corpus.has_images or self.feature_dim == 0:
            log.warning("%s: no item image features: prompts carry no image tokens", corpus.name)
        self.available = kept
        wanted = self.config.train_templates
        self.train_templates = {
            fam: [t for t in kept.values() if t.family == fam and t.role != "unseen" and (not wanted or t.id in wanted)]
            for fam in self.config.families
        }
        self.test_templates = [t for t in self.config.test_templates if t in kept]

    def _load_or_train_tokenizer(self):
        if self.tokenizer_spec is not None:
            return load_tokenizer(self.tokenizer_spec)
        if self.spiece_bytes is None:
            texts = self._tokenizer_corpus()
            digest = stable_hash("\n".join(["bpe split_digits", *texts]), 12)
            folder = self.data.cache_dir / f"spiece_{self.tokenizer_vocab_size}_{digest}"
            if not (folder / "spiece.model").exists():
                # digits one by one: otherwise user-id numbers crowd the prompt words out of a small vocabulary
                train_sentencepiece(texts, folder, vocab_size=self.tokenizer_vocab_size, split_digits=True)
            self.spiece_bytes = (folder / "spiece.model").read_bytes()
            return load_tokenizer(folder)
        return self._tokenizer_from_bytes(self.spiece_bytes)

    def _tokenizer_from_bytes(self, data: bytes):
        from common.io import write_bytes

        folder = self.data.cache_dir / f"spiece_ckpt_{stable_hash(data, 12)}"
        if not (folder / "spiece.model").exists():
            write_bytes(folder / "spiece.model", data)
        return load_tokenizer(folder)

    def _tokenizer_corpus(self) -> list[str]:
        """Text the from-config tokenizer is trained on: rendered prompts of every family plus item text.

        Item-id tokens and image placeholders are left out: they join the vocabulary whole, and as training
        text thousands of distinct ids (``<item_5621>``) would take most of a small vocabulary's pieces
        (``_2777>``), leaving the prompt's words split into letters.
        """
        rng = random.Random(self.config.seed)
        whole = set(self.data.index.vocabulary) | {IMAGE_TOKEN}

        def words_only(text: str) -> str:
            return _ANGLE_TOKEN.sub(lambda m: " " if m.group(0) in whole else m.group(0), text)

        texts = []
        recipes = self._train_recipes(epoch=0)
        for recipe in rng.sample(recipes, min(4000, len(recipes))):  # every family, not just the first
            s = self.make(recipe, rng, train=True)
            texts += [words_only(s["source"]), words_only(s["target"])]
        for item in self.data.corpus.items.values():
            texts += [t for t in (item.title, item.description) if t]
        return texts

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"spiece": self.spiece_bytes, "n_images": self.n_images, "index": self.data.index.to_dict()}

    def adopt_tokenizer(self, spiece: bytes) -> None:
        """Use a trained SentencePiece model (from a checkpoint) instead of the one built for this data."""
        if spiece != self.spiece_bytes:
            self.spiece_bytes = spiece
            self.tokenizer = self._with_item_tokens(self._tokenizer_from_bytes(spiece))

    def restore_extras(self, extras: dict[str, Any]) -> None:
        data = extras.get("spiece")
        if data is not None and self.spiece_bytes is not None and data != self.spiece_bytes:
            raise RuntimeError(
                "the checkpoint's tokenizer differs from the one built for this data; "
                "evaluate with the data the checkpoint was trained on"
            )
        index = extras.get("index")
        if index is not None and index["to_id"] != self.data.index.to_id:
            raise RuntimeError(
                f"the checkpoint's item ids ({index['name']}) differ from this data's ({self.data.index.name}); "
                "load it through the CLI (--ckpt_path), which adopts the checkpoint's ids"
            )

    # -- datasets ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _train_recipes(self, epoch: int) -> list[Recipe]:
        c, split = self.config, self.data.split
        users = list(split.train)
        recipes: list[Recipe] = []
        fams = self.train_templates if hasattr(self, "train_templates") else {}
        if fams.get("sequential"):
            recipes += [Recipe("sequential", user=u) for u in users for _ in range(c.sequential_samples)]
        if fams.get("direct"):
            recipes += [Recipe("direct", user=u) for u in users for _ in range(c.direct_samples)]
        if fams.get("explanation"):
            n = len(self.data.reviews.get("train", []))
            recipes += [Recipe("explanation", review=i) for i in range(n) for _ in range(c.explanation_samples)]
        return recipes

    def dataset(self, split: Split, template: str | None = None) -> Dataset:
        c = self.config
        if split == "train":
            return _Samples(self, self._train_recipes(self.epoch), c.seed * 1000 + self.epoch, train=True)
        if split == "val":
            users = list(self.data.split.val)
            recipes = [Recipe(fam, "val", user=u) for fam in ("sequential", "direct") if self.train_templates.get(fam)
                       for u in users]
            if self.train_templates.get("explanation"):
                n = len(self.data.reviews.get("val", []))
                recipes += [Recipe("explanation", "val", review=i) for i in range(n)]
            return _Samples(self, recipes, c.seed, train=False)
        if split == "test":
            return _Samples(self, self._test_recipes(template), c.seed, train=False)
        if split == "predict":
            users = self.predict_users or list(self.data.split.test)
            unknown = [u for u in users if u not in self.data.split.test]
            if unknown:
                raise ValueError(f"unknown users for prediction: {unknown[:10]}")
            return _Samples(self, [Recipe("sequential", "test", u, template="A-3") for u in users], c.seed, train=False)
        raise ValueError(f"unknown split {split!r}")

    def _test_recipes(self, template: str) -> list[Recipe]:
        fam = self.available[template].family
        if fam == "explanation":
            n = len(self.data.reviews.get("test", []))
            return [Recipe(fam, "test", review=i, template=template) for i in range(n)]
        users = sample_users(list(self.data.split.test), self.test_users, self.config.seed)
        return [Recipe(fam, "test", u, template=template) for u in users]

    def dataloaders(self, split: Split, batch_size: int, num_workers: int):
        if split != "test":
            return super().dataloaders(split, batch_size, num_workers)
        return [
            DataLoader(self.dataset("test", t), batch_size=batch_size, collate_fn=self.collate, num_workers=num_workers)
            for t in self.test_templates
        ]

    # -- one sample ----------------------------------------------------------------------------
    def _id(self, item: str) -> str:
        return self.data.index.to_id[item]

    def _user_desc(self, user: str) -> str:
        u = self.data.corpus.users.get(user)
        return (u.name if u is not None and u.name else None) or user

    def _negatives(self, user: str, k: int, rng: random.Random, exclude: set[str]) -> list[str]:
        seen = set(self.data.corpus.sequences.get(user, ())) | exclude
        pool = self.item_ids
        if len(pool) - len(seen) < k:
            raise ValueError(f"catalogue too small for {k} negatives of user {user}")
        out: list[str] = []
        while len(out) < k:
            cand = pool[rng.randrange(len(pool))]
            if cand not in seen:
                seen.add(cand)
                out.append(cand)
        return out

    def validation_candidates(self, user: str, target: str) -> list[str] | None:
        """The user's fixed negatives (as many as a candidate list holds) followed by ``target``; None when the
        data has no negatives for the user."""
        negatives = [i for i in list(self.data.negatives.get(user, ()))[: self.config.n_candidates - 1] if i != target]
        return negatives + [target] if negatives else None

    def make(self, recipe: Recipe, rng: random.Random, train: bool) -> dict[str, Any]:
        if recipe.family == "explanation":
            return self._make_explanation(recipe, rng, train)
        return self._make_user(recipe, rng, train)

    def _pick(self, recipe: Recipe, rng: random.Random) -> P.Template:
        if recipe.template is not None:
            return self.available[recipe.template]
        # training, and validation (its rng is seeded per sample, so the draw is fixed)
        return rng.choice(self.train_templates[recipe.family])

    def _history_target(
        self, recipe: Recipe, rng: random.Random, window: int = 0
    ) -> tuple[list[str], str, list[str]]:
        """(history, target, later items): the later items continue a sequential training target
        (``target_items - 1`` at most; none elsewhere). With a decoder ``window`` (``decoder_history``),
        ``train_targets: all`` draws targets with at least ``window`` items before them where the sequence has
        them, so a sample's window is full and its causal targets cover the sequence."""
        split, user = self.data.split, recipe.user
        if recipe.split == "test":
            return (*split.test[user], [])
        if recipe.split == "val":
            return (*split.val[user], [])
        train = split.train[user]
        if recipe.family == "direct":
            t = rng.randrange(len(train))
            return train[:t], train[t], []
        n = len(train)
        if self.config.train_targets == "last3":
            lo = max(1, n - 3)
        else:
            lo = max(1, min(window, n - 1))
        t = rng.randrange(lo, n) if n > 1 else 0
        hist = [i for i in train[:t] if i != train[t]]
        return hist, train[t], train[t + 1: t + self.config.target_items]

    def _make_user(self, recipe: Recipe, rng: random.Random, train: bool) -> dict[str, Any]:
        family, user = recipe.family, recipe.user
        tpl = self._pick(recipe, rng)
        window = self.config.decoder_history if family == "sequential" and tpl.target_kind == "item" else 0
        history, target, later = self._history_target(recipe, rng, window)
        decoder_prefix = history[max(0, len(history) - window):] if window else []  # newest, oldest first
        history = history[: len(history) - len(decoder_prefix)]  # the prompt lists the items before them
        history = history[-self.config.max_history :] if self.config.max_history else history
        shown = history[::-1] if self.config.history_order == "newest_first" else history
        fields: dict[str, Any] = {"user_id": user, "user_desc": self._user_desc(user), "history": [
            self._id(i) for i in shown
        ]}
        image_items: dict[str, list[str]] = {"history": shown}
        answer_item = target
        label = None
        if tpl.target_kind == "yes_no":
            positive = rng.random() < 0.5 if train or recipe.split == "val" else True
            item = target if positive else self._negatives(user, 1, rng, set())[0]
            label = "yes" if positive else "no"
            answer_item = item
            fields["item_id"] = self._id(item)
            fields["title"] = self.data.corpus.items[item].title or "unknown title"
            image_items["item"] = [item]
        candidates = None
        if "candidates" in tpl.requires:
            if recipe.split in ("val", "test"):
                negs = list(self.data.negatives[user])[: self.config.n_candidates - 1]
                crng = P.sample_rng(self.config.seed, "candidates", user)  # same lists in every run and rank
                candidates = negs + [target]
                crng.shuffle(candidates)
            else:
                candidates = self._negatives(user, self.config.n_candidates - 1, rng, {target}) + [target]
                rng.shuffle(candidates)
            fields["candidates"] = [self._id(i) for i in candidates]
            image_items["candidates"] = candidates
        if tpl.target_kind != "item":
            later = []  # a yes/no answer is not continued
        fields["target"] = label if label is not None else " ".join(
            self._id(i) for i in [*decoder_prefix, target, *later])
        sep = ", "
        if train or self.config.random_separator:
            sep = rng.choice([", ", " -> "])
        source, target_text, _ = P.render(tpl, fields, n_image_tokens=self.n_images, separator=sep)
        images = P.image_items(tpl, image_items) if self.n_images else []
        return {
            "source": source, "target": target_text, "task": family, "template": tpl.id, "images": images,
            "user": user, "target_item": answer_item, "candidates": candidates,
            "history": history + decoder_prefix, "decoder_prefix": decoder_prefix,  # every item the model saw
        }

    def _make_explanation(self, recipe: Recipe, rng: random.Random, train: bool) -> dict[str, Any]:
        review = self.data.reviews[recipe.split][recipe.review]
        tpl = self._pick(recipe, rng)
        item = self.data.corpus.items[review.item_id]
        rating = review.rating if review.rating is not None else 0
        fields = {
            "user_id": review.user_id,
            "user_desc": review.user_name or self._user_desc(review.user_id),
            "item_id": self._id(review.item_id),
            "title": item.title or "unknown title",
            "star_rating": int(round(rating)),
            "feature": review.feature or "",
            "summary": review.summary or "",
            "explanation": review.explanation or "",
            "target": review.explanation or "",
        }
        if tpl.target_kind == "rating_text":
            # C-7/C-8: training targets carry a Gaussian-jittered rating as in the original
            stars = P.jitter_rating(rating, rng) if train else str(int(round(rating)))
            fields["rating_text"] = stars
        source, target_text, _ = P.render(tpl, fields, n_image_tokens=self.n_images, separator=", ")
        images = P.image_items(tpl, {"item": [review.item_id]}) if self.n_images else []
        return {
            "source": source, "target": target_text, "task": "explanation", "template": tpl.id, "images": images,
            "user": review.user_id, "target_item": review.item_id, "candidates": None, "history": [],
            "decoder_prefix": [],
        }

    # -- batches -------------------------------------------------------------------------------
    def _warn_cut(self, samples: list[dict[str, Any]], side: str, width: int, hint: str) -> None:
        """Warn once per side (``source``/``target``) when a batch's texts were cut at their token limit."""
        limit = getattr(self.config, f"max_{side}_length")
        if side in self._warned_cut or width < limit:
            return
        full = max(len(x) for x in self.tokenizer([s[side] for s in samples])["input_ids"])
        if full > limit:
            self._warned_cut.add(side)
            what = "prompts" if side == "source" else "targets"
            log.warning("%s of %d tokens are cut at max_%s_length=%d (e.g. %s): raise it or lower %s",
                        what, full, side, limit, samples[0]["template"], hint)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        tok = self.tokenizer
        c = self.config
        enc = tok([s["source"] for s in samples], padding=True, truncation=True,
                  max_length=c.max_source_length, return_tensors="pt")
        input_ids = enc["input_ids"]
        self._warn_cut(samples, "source", input_ids.size(1), "max_history / n_candidates")
        wwids = batch_whole_word_ids(tok, input_ids, IMAGE_TOKEN, id_tokens=self.id_tokens)
        lab = tok([s["target"] for s in samples], padding=True, truncation=True,
                  max_length=c.max_target_length, return_tensors="pt")["input_ids"]
        self._warn_cut(samples, "target", lab.size(1), "decoder_history / target_items")
        labels = lab.masked_fill(lab == tok.pad_token_id, -100).contiguous()
        n = self.n_images
        if n and self.features is not None:
            slots = (input_ids == self.image_token_id).sum(1) // n  # images that survived truncation
            v = max(int(slots.max()), 1)
            feats = torch.zeros(len(samples), v, self.features.size(1))
            for b, s in enumerate(samples):
                rows = [self.row[i] for i in s["images"][: int(slots[b])]]
                if rows:
                    feats[b, : len(rows)] = self.features[rows]
        else:
            feats = torch.zeros(len(samples), 1, max(self.feature_dim, 1))
        return {
            "input_ids": input_ids,
            "attention_mask": enc["attention_mask"],
            "whole_word_ids": wwids,
            "image_feats": feats,
            "labels": labels,
            "tasks": [s["task"] for s in samples],
            "samples": samples,
        }

