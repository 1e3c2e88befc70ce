"""LightningDataModules shared by vip5 and pmg: one per source, the model side supplies the samples.

A DataModule knows its source and splits: it reads the corpus, cuts leave-one-out splits, fixes the
99-negative candidate lists, splits reviews, assigns item ids and loads (or extracts) image features.
How a sample becomes a tensor batch is the model's business: a :class:`SampleBuilder` is attached with
:meth:`RecDataModule.connect` (litgpt's ``DataModule.connect`` pattern), so ``vip5`` runs on MovieLens and
``pmg`` on Amazon without new data code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from common.data.corpus import Corpus, DataError, Review

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test", "predict"]


@dataclass
class RecData:
    """Everything a model needs from the data side, built once in ``setup``."""

    corpus: Corpus
    split: Any  # common.data.splits.LeaveOneOut
    negatives: dict[str, list[str]]
    reviews: dict[str, list[Review]]
    index: Any  # common.data.indexing.ItemIndex
    features: Any | None  # common.data.features.ImageFeatures (rows aligned to corpus.item_ids) or None
    cache_dir: Path
    seed: int

    @property
    def feature_dim(self) -> int:
        return 0 if self.features is None else int(self.features.dim)

    def feature_matrix(self) -> torch.Tensor | None:
        """Item features as one items×dim tensor, rows in ``corpus.item_ids`` order (kept in memory)."""
        return None if self.features is None else self.features.align(self.corpus.item_ids)


@contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Restore the global ``random``, NumPy and torch (CPU and CUDA) random states on exit."""
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class SampleBuilder:
    """The model side of a DataModule: turns :class:`RecData` into datasets and batches."""

    def connect(self, data: RecData) -> None:  # called in DataModule.setup, on every rank
        self.data = data

    def prepare(self, data: RecData) -> None:
        """Called in one process before ``setup`` (Lightning's ``prepare_data``): write every cache the builder
        fills (tokenizers, keywords), so that ``connect`` on every DDP rank only reads them. Default: connect."""
        self.connect(data)

    def dataset(self, split: Split) -> Dataset:
        raise NotImplementedError

    def dataloaders(self, split: Split, batch_size: int, num_workers: int) -> DataLoader | list[DataLoader]:
        """Loaders for a split; builders with several test prompts return one loader per prompt."""
        return DataLoader(
            self.dataset(split),
            batch_size=batch_size,
            shuffle=split == "train",
            num_workers=num_workers,
            collate_fn=self.collate,
            persistent_workers=num_workers > 0,
        )

    def collate(self, samples: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Per-epoch resampling of prompts/targets (the original resamples every epoch); default: nothing."""


class RecDataModule(L.LightningDataModule):
    """Base DataModule over one corpus. Subclasses name the source and its reader options.

    Args:
        data_dir: folder with the source files (see README "Data").
        indexing: item identifier scheme: ``original``, ``appearance`` (P5's leaky numbering), ``sequential``
            (leak-free, default), ``random``, or the token schemes ``atomic``, ``collaborative``, ``semantic``
            (``common.data.indexing.tokens``). Fitted ids are cached next to the features (or in ``cache/``).
        indexing_options: keyword options of the scheme, e.g. ``{n_clusters: 8}`` (collaborative) or
            ``{levels: 3, codebook_size: 16}`` (semantic).
        image_encoder: CLIP encoder preset for item-image features (``vitb32``, ``rn50``, ``demo-tiny`` ...)
            or None for no images. Features are extracted once in ``prepare_data`` and cached under
            ``<data_dir>/features``.
        missing_images: what an item without an image file, or with one that cannot be decoded, gets: ``error``
            (default) stops feature extraction with a DataError naming the item and the file; ``zero`` gives it
            a zero vector, counted in the feature report (``missing`` / ``unreadable`` in the ``.json`` sidecar).
        batch_size: training batch size per device.
        eval_batch_size: validation/test/predict batch size (defaults to ``batch_size``).
        num_workers: DataLoader workers (0 keeps 2-core machines from oversubscribing).
        n_negatives: negatives per user in the fixed candidate lists (99 gives the paper's 100 candidates).
        leak_free_reviews: drop each user's val/test items from explanation training (the original trains on
            them, so test explanations can be memorised).
        seed: seed for negatives, review split and random indexing.
        cache_dir: where prepared files are kept (negatives, fitted item ids, tokenizer, image features); default
            ``<data_dir>/cache`` and ``<data_dir>/features``. Set it when the data folder is read-only.
        generate_demo: if ``data_dir`` is missing, write the embedded demo data set there first (the offline
            default; real configs leave this off and get an error saying what to download).
    """

    source: str = ""

    def __init__(
        self,
        data_dir: Path,
        indexing: str = "sequential",
        indexing_options: dict[str, Any] | None = None,
        image_encoder: str | None = "vitb32",
        missing_images: Literal["zero", "error"] = "error",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        n_negatives: int = 99,
        leak_free_reviews: bool = True,
        seed: int = 2022,
        generate_demo: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.generate_demo = generate_demo
        self.data_dir = Path(data_dir)
        self.indexing = indexing
        self.indexing_options = indexing_options
        self.image_encoder = image_encoder
        self.missing_images = missing_images
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.n_negatives = n_negatives
        self.leak_free_reviews = leak_free_reviews
        self.seed = seed
        self._cache_root = None if cache_dir is None else Path(cache_dir)
        self.sample_builder: SampleBuilder | None = None
        self.data: RecData | None = None
        self._corpus: Corpus | None = None

    # -- wiring -------------------------------------------------------------------------------
    def connect(self, sample_builder: SampleBuilder) -> None:
        """Attach the model side (how samples become batches)."""
        self.sample_builder = sample_builder

    def reader_kwargs(self) -> dict[str, Any]:
        return {}

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache" if self._cache_root is None else self._cache_root

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features" if self._cache_root is None else self._cache_root / "features"

    def corpus(self) -> Corpus:
        if self._corpus is None:
            from common.data.readers import read_corpus

            self._corpus = read_corpus(self.source, self.data_dir, **self.reader_kwargs())
        return self._corpus

    # -- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        # One-off preparation (demo generation, feature extraction, tokenizer training) must not shift the
        # seeded random streams: a run that prepares its data trains exactly like one that finds it prepared.
        with preserved_rng_state():
            self._prepare()

    def _prepare(self) -> None:
        if self.generate_demo and not self.data_dir.exists():  # the generator writes all sources at once
            from common.data.demo import generate_demo

            generate_demo(self.data_dir.parent)
        corpus = self.corpus()
        if self.image_encoder is not None:
            self._extract_features(corpus)
        if self.sample_builder is not None:
            # The caches written while the data is built (candidate negatives, fitted item ids) and by the builder
            # (tokenizers, keywords) are written here, by one process, before the DDP ranks read them in setup.
            if self.data is None:
                self.data = self.build_data()
            self.sample_builder.prepare(self.data)

    def setup(self, stage: str | None = None) -> None:
        if self.data is None:
            self.data = self.build_data()
        if self.sample_builder is None:
            raise RuntimeError(
                f"{type(self).__name__} has no sample builder: call datamodule.connect(model.sample_builder) "
                "(the vip5/pmg CLIs do this)"
            )
        self.sample_builder.connect(self.data)

    def build_data(self) -> RecData:
        from common.data.indexing import build_indexing
        from common.data.splits import candidate_negatives, leave_one_out, review_splits

        corpus = self.corpus()
        split = leave_one_out(corpus)
        negatives = candidate_negatives(corpus, split, n=self.n_negatives, seed=self.seed, cache_dir=self.cache_dir)
        reviews = review_splits(corpus, split, seed=self.seed, leak_free=self.leak_free_reviews)
        features = self._load_features(corpus) if self.image_encoder is not None else None
        index = build_indexing(
            self.indexing, corpus, split, seed=self.seed,
            features=None if features is None else features.align(corpus.item_ids),
            cache_dir=self.features_dir if features is not None else self.cache_dir,
            **(self.indexing_options or {}),
        )
        return RecData(corpus, split, negatives, reviews, index, features, self.cache_dir, self.seed)

    def _encoder(self):
        from common.data.features import ENCODERS

        if self.image_encoder not in ENCODERS:
            raise DataError(f"unknown image_encoder {self.image_encoder!r}; valid: {sorted(ENCODERS)}")
        return ENCODERS[self.image_encoder]

    def _extract_features(self, corpus: Corpus):
        from common.data.features import extract_features

        if not corpus.has_images:
            log.warning("%s: no item images found; image features disabled", corpus.name)
            return None
        items = [(iid, corpus.image_path(iid)) for iid in corpus.item_ids]
        feats = extract_features(items, self._encoder(), self.features_dir, missing=self.missing_images)
        log.info("%s image features: %s", corpus.name, feats.report())
        return feats

    def _load_features(self, corpus: Corpus):
        from common.data.features import ImageFeatures

        if not corpus.has_images:
            return None
        feats = ImageFeatures.load(self.features_dir, encoder=self._encoder())
        feats.check_catalogue(corpus.item_ids)
        return feats

    def _loader(self, split: Split):
        assert self.sample_builder is not None
        bs = self.batch_size if split == "train" else self.eval_batch_size
        return self.sample_builder.dataloaders(split, bs, self.num_workers)

    def train_dataloader(self):
        if self.trainer is not None:
            self.sample_builder.set_epoch(self.trainer.current_epoch)
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader("predict")


class AmazonDataModule(RecDataModule):
    """Amazon (Beauty, Sports, Toys, Clothing) in the P5/VIP5 folder layout."""

    source = "amazon"


class POGDataModule(RecDataModule):
    """Alibaba iFashion POG click logs, as used by PMG (Shen et al. 2024)."""

    source = "pog"


class MovieLensDataModule(RecDataModule):
    """MovieLens latest-small, as used by PMG (Shen et al. 2024).

    Args:
        min_rating: keep ratings at or above this value as positive interactions.
        order: ``time`` (chronological, default) or ``rating_time`` (the PMG reference code's order).
        **kwargs: see :class:`RecDataModule`.
    """

    source = "movielens"

    def __init__(
        self, *args: Any, min_rating: float = 4.0, order: Literal["time", "rating_time"] = "time", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.min_rating = min_rating
        self.order = order

    def reader_kwargs(self) -> dict[str, Any]:
        return {"min_rating": self.min_rating, "order": self.order}
