"""CLIP image features: one items x dim matrix per (data set, encoder), extracted once and cached on disk.

VIP5 shipped no extraction code: its features are the CLIP ``encode_image`` output,
one ``.npy`` per item, with undocumented normalisation. Here:

- the encoder is an open_clip architecture plus a pretrained tag or checkpoint path (:class:`ClipEncoder`, presets
  in :data:`ENCODERS`); a real architecture never runs on random weights unless ``allow_random_weights=True``,
  and weights that cannot be loaded offline give an error saying what to download and where it goes;
- extraction is a Lightning predict loop, so ``trainer_kwargs={"devices": 4, "strategy": "ddp"}`` spreads it over
  GPUs; every batch is written as an atomic partial file, rank 0 assembles them (the cache folder must be
  shared by all ranks, as it is on one node), so an interrupted run resumes where it stopped;
- the result is ``<cache_dir>/<arch>__<pretrained>.npy`` (float32, rows in item order) plus a ``.json`` sidecar
  recording item ids, encoder, dim, whether rows are L2-normalised (default yes), items without an image file
  and items whose image cannot be decoded (zero rows under the ``zero`` policy; the default ``error`` policy
  stops at the first one, naming it) and the matrix's sha256;
- :class:`ImageFeatures` holds the matrix in memory (one tensor instead of VIP5's per-sample ``np.load``), checks it
  against the item catalogue and aligns rows to any item order.

The cache is keyed by encoder only, so use one ``cache_dir`` per data set. It is reused while the item ids, the
set of items without images and the normalisation agree; delete the files to force a re-extraction after
images changed (a repaired unreadable image included).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.clip import TINY_ARCHS, check_random_weights, create_clip, register_tiny_archs
from common.data._source import read_json
from common.data.corpus import DataError
from common.io import atomic_open, save_numpy, write_json

log = logging.getLogger(__name__)

DEMO_ARCH = "demo-tiny-clip"  # a small from-config architecture of common.clip (random init, seeded)
DEMO_CLIP_DIR = str(Path(__file__).resolve().parents[1] / "demo_weights" / "clip")  # common.demo_models
# Preset name -> (open_clip architecture, pretrained tag). The first five are VIP5's --image_feature_type values.
ENCODERS: dict[str, tuple[str, str | None]] = {
    "rn50": ("RN50", "openai"),
    "rn101": ("RN101", "openai"),
    "vitb32": ("ViT-B-32", "openai"),
    "vitb16": ("ViT-B-16", "openai"),
    "vitl14": ("ViT-L-14", "openai"),
    "demo-tiny": ("pmg-tiny-clip", DEMO_CLIP_DIR),  # trained on the demo renders (common.demo_models)
    "demo-random": (DEMO_ARCH, None),  # random weights: plumbing only
}
INIT_SEED = 0  # random-init encoders are built under this seed: identical features on every run and rank
_FORMAT = 1


# -- encoder ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipEncoder:
    """An open_clip image encoder.

    Args:
        arch: open_clip architecture (``ViT-B-32``, ``RN50`` ...) or a small from-config one
            (:data:`common.clip.TINY_ARCHS`).
        pretrained: open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k`` ...) or a local checkpoint file;
            None builds random weights, which is only allowed for the from-config architectures or with
            ``allow_random_weights``.
        allow_random_weights: explicitly accept a real architecture with random weights (plumbing tests only:
            the features are then meaningless).
        quick_gelu: QuickGELU activations (what OpenAI's weights were trained with). None takes it from the
            pretrained tag; set True when ``pretrained`` is a local file holding OpenAI weights.
    """

    arch: str = "ViT-B-32"
    pretrained: str | None = "openai"
    allow_random_weights: bool = False
    quick_gelu: bool | None = None

    def __post_init__(self) -> None:
        check_random_weights(self.arch, self.pretrained, self._random_ok)

    @property
    def _random_ok(self) -> bool:
        return self.allow_random_weights or self.arch in TINY_ARCHS

    @classmethod
    def preset(cls, name: str) -> ClipEncoder:
        """The encoder of a preset name from :data:`ENCODERS`."""
        if name not in ENCODERS:
            raise ValueError(f"unknown encoder preset {name!r}; valid: {sorted(ENCODERS)}")
        arch, pretrained = ENCODERS[name]
        return cls(arch, pretrained)

    @property
    def spec(self) -> dict[str, Any]:
        return {"arch": self.arch, "pretrained": self.pretrained}

    @property
    def cache_stem(self) -> str:
        """``<arch>__<pretrained or 'random'>``, made file-name safe (a checkpoint path becomes stem + hash)."""
        tag = self.pretrained or "random"
        if self.pretrained and (os.sep in tag or "/" in tag or Path(tag).suffix):
            digest = hashlib.sha1(str(Path(tag).expanduser().resolve()).encode()).hexdigest()[:8]
            tag = f"{Path(tag).stem}-{digest}"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.arch}__{tag}")

    def output_dim(self) -> int:
        """Feature width, from the architecture config (no weights are loaded)."""
        import open_clip

        register_tiny_archs()
        cfg = open_clip.get_model_config(self.arch)
        if cfg is not None:
            return int(cfg["embed_dim"])
        visual, _ = self.build()  # hf-hub:/local-dir: architectures: measure it
        size = getattr(visual, "image_size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        with torch.no_grad():
            return int(visual(torch.zeros(1, 3, *size)).shape[-1])

    def build(self) -> tuple[nn.Module, Callable[[Image.Image], torch.Tensor]]:
        """The visual tower (its forward is CLIP's ``encode_image`` without normalisation) and the eval transform.

        Raises:
            ValueError: unknown architecture or tag.
            ModelNotAvailableError: the pretrained weights are neither cached locally nor downloadable.
        """
        model, preprocess = create_clip(
            self.arch, self.pretrained, allow_random_weights=self._random_ok, seed=INIT_SEED, quick_gelu=self.quick_gelu
        )
        return model.visual.eval(), preprocess


def _as_encoder(encoder: ClipEncoder | tuple[str, str | None] | str) -> ClipEncoder:
    if isinstance(encoder, ClipEncoder):
        return encoder
    if isinstance(encoder, str):
        return ClipEncoder.preset(encoder)
    return ClipEncoder(*encoder)


def cache_paths(cache_dir: Path, encoder: ClipEncoder | tuple[str, str | None] | str) -> tuple[Path, Path]:
    """(matrix .npy, sidecar .json) of an encoder's cache in ``cache_dir``."""
    stem = _as_encoder(encoder).cache_stem
    return Path(cache_dir) / f"{stem}.npy", Path(cache_dir) / f"{stem}.json"


# -- the feature matrix -------------------------------------------------------------------------------
def _sha256(matrix: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype=np.float32).tobytes()).hexdigest()


class ImageFeatures:
    """An items x dim float matrix with its item ids.

    Attributes:
        matrix: float32 tensor, one row per item in ``item_ids`` order.
        item_ids: item id of each row.
        missing: items without an image file (zero rows).
        unreadable: items whose image file could not be decoded (zero rows).
        normalized: rows are L2-normalised (None when unknown).
        encoder: ``{"arch", "pretrained"}`` of the encoder, when known.
        path: the file the matrix was read from (named in error messages).
    """

    def __init__(
        self,
        matrix: torch.Tensor | np.ndarray,
        item_ids: Sequence[str],
        missing: Sequence[str] = (),
        normalized: bool | None = None,
        encoder: dict[str, Any] | None = None,
        path: Path | None = None,
        unreadable: Sequence[str] = (),
    ) -> None:
        self.path = path
        self.matrix = torch.as_tensor(matrix).float()
        self.item_ids = [str(i) for i in item_ids]
        if self.matrix.ndim != 2 or self.matrix.shape[0] != len(self.item_ids):
            raise DataError(
                f"{self._where}: feature matrix of shape {tuple(self.matrix.shape)} does not have one row per item "
                f"({len(self.item_ids)} item ids)"
            )
        self._rows = {iid: n for n, iid in enumerate(self.item_ids)}
        if len(self._rows) != len(self.item_ids):
            raise DataError(f"{self._where}: repeated item ids")
        self.missing = list(missing)
        self.unreadable = list(unreadable)
        self.normalized = normalized
        self.encoder = encoder

    @property
    def _where(self) -> str:
        return str(self.path) if self.path is not None else "image features"

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self.item_ids)

    def __repr__(self) -> str:
        return (
            f"ImageFeatures({len(self)} items x {self.dim}, encoder={self.encoder}, missing={len(self.missing)}, "
            f"unreadable={len(self.unreadable)})"
        )

    def report(self) -> str:
        """One line for logs and the CLI: size, and how many rows are zero vectors and why."""
        return (
            f"{len(self)} items x {self.dim}; zero vectors: {len(self.missing)} without an image, "
            f"{len(self.unreadable)} with an unreadable image"
        )

    def row(self, item_id: str) -> torch.Tensor:
        """The feature vector of one item."""
        try:
            return self.matrix[self._rows[str(item_id)]]
        except KeyError:
            raise KeyError(f"item {item_id!r} has no row in {self._where}") from None

    def check_catalogue(self, item_ids: Sequence[str], strict: bool = False) -> None:
        """Raise DataError (naming the file) unless every catalogue item has a row; ``strict``: and no other rows."""
        wanted = [str(i) for i in item_ids]
        absent = [i for i in wanted if i not in self._rows]
        if absent:
            raise DataError(
                f"{self._where}: no features for {len(absent)} of {len(wanted)} catalogue items "
                f"(first: {', '.join(absent[:5])}); the features were extracted for another item list: "
                "re-extract them (delete the file) for this data set"
            )
        if strict and len(set(wanted)) != len(self.item_ids):
            raise DataError(
                f"{self._where}: {len(self.item_ids)} feature rows for a catalogue of {len(set(wanted))} items"
            )

    def align(self, item_ids: Sequence[str]) -> torch.Tensor:
        """Rows in the given item order (a new tensor)."""
        self.check_catalogue(item_ids)
        return self.matrix[torch.tensor([self._rows[str(i)] for i in item_ids], dtype=torch.long)]

    @classmethod
    def load(
        cls,
        path: Path,
        encoder: ClipEncoder | tuple[str, str | None] | str | None = None,
        verify: bool = True,
    ) -> ImageFeatures:
        """Read a cache written by :func:`extract_features`.

        Args:
            path: the ``.npy`` (or ``.json``) file, or the cache folder (then ``encoder`` picks the file; it may be
                left out when the folder holds one cache).
            encoder: encoder spec or preset name, for a folder.
            verify: check the matrix against the sha256 in the sidecar.
        """
        path = Path(path)
        if path.is_dir():
            if encoder is not None:
                path = cache_paths(path, encoder)[0]
            else:
                found = sorted(p for p in path.glob("*.npy") if p.with_suffix(".json").is_file())
                if len(found) != 1:
                    raise DataError(
                        f"{path}: {len(found)} feature caches ({[p.name for p in found]}); name the encoder"
                    )
                path = found[0]
        npy, side = path.with_suffix(".npy"), path.with_suffix(".json")
        if not npy.is_file() or not side.is_file():
            raise DataError(
                f"no image features at {npy} (+ .json); extract them first, e.g. "
                "`vip5-data features --root <data dir> --encoder <preset>`"
            )
        meta = read_json(side)
        try:
            matrix = np.load(npy, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError(f"{npy}: unreadable feature cache ({e}); delete it and re-extract") from e
        if matrix.shape != (len(meta["item_ids"]), meta["dim"]):
            raise DataError(
                f"{npy}: matrix of shape {matrix.shape}, but {side.name} lists {len(meta['item_ids'])} items "
                f"x {meta['dim']}; delete both files and re-extract"
            )
        if verify and _sha256(matrix) != meta["sha256"]:
            raise DataError(f"{npy}: sha256 does not match {side.name} (changed or corrupt); delete and re-extract")
        return cls(
            torch.from_numpy(matrix),
            meta["item_ids"],
            missing=meta.get("missing", []),
            normalized=meta.get("normalized"),
            encoder=meta.get("encoder"),
            path=npy,
            unreadable=meta.get("unreadable", []),
        )

    @classmethod
    def from_npy_dir(
        cls, folder: Path, item_ids: Sequence[str], file_stems: dict[str, str] | None = None
    ) -> ImageFeatures:
        """Read VIP5's released per-item files ``features/<type>_features/<ds>/<ASIN>.npy`` into one matrix.

        Args:
            folder: the folder of ``.npy`` files.
            item_ids: the items, in row order.
            file_stems: item id -> file stem (e.g. datamaps ``id2item``, item number -> ASIN); default the item id.
        """
        folder = Path(folder)
        rows, absent = [], []
        for iid in item_ids:
            f = folder / f"{(file_stems or {}).get(iid, iid)}.npy"
            if f.is_file():
                rows.append(np.load(f, allow_pickle=False).astype(np.float32).reshape(-1))
            else:
                absent.append(str(f))
        if absent:
            raise DataError(f"{folder}: {len(absent)} feature files missing (first: {', '.join(absent[:3])})")
        matrix = np.stack(rows)
        norms = np.linalg.norm(matrix, axis=1)
        return cls(matrix, item_ids, normalized=bool(np.allclose(norms, 1.0, atol=1e-3)), path=folder)


# -- extraction ---------------------------------------------------------------------------------------
def _is_local_file(ref: str | os.PathLike | None) -> bool:
    return ref is not None and "://" not in str(ref) and Path(ref).is_file()


_ZERO_HINT = "; set missing_images: zero (vip5-data features --missing zero) to give such items a zero vector"


def _unreadable(path: str, item_id: str, e: Exception, hint: str = "") -> DataError:
    """A DataError naming the image file that PIL could not read (``e``, kept as the cause)."""
    err = DataError(f"{path}: the image of item {item_id!r} cannot be read ({type(e).__name__}: {e}){hint}")
    err.__cause__ = e
    return err


def _check_image(path: str, item_id: str, hint: str = "") -> DataError | None:
    """The error for an image file whose structure PIL rejects (a quick check: no full decode), else None."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
        return _unreadable(path, item_id, e, hint)
    return None


def load_rgb(path: str, item_id: str = "?") -> Image.Image:
    """Decode an image file to RGB; DataError naming the file if it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:
        raise _unreadable(path, item_id, e) from e


class ImageDataset(Dataset):
    """(position, preprocessed image, decoded) for a list of image files.

    An image that fails to decode raises DataError naming the file (``on_error="raise"``), or becomes a black
    placeholder with ``decoded=False`` (``on_error="zero"``), whose row is then replaced by a zero vector.
    """

    def __init__(
        self,
        paths: Sequence[str],
        item_ids: Sequence[str],
        transform: Callable,
        on_error: Literal["raise", "zero"] = "raise",
    ) -> None:
        self.paths, self.item_ids, self.transform = list(paths), list(item_ids), transform
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, bool]:
        try:
            image = load_rgb(self.paths[i], self.item_ids[i])
        except DataError as e:
            if self.on_error == "raise":
                raise DataError(f"{e}{_ZERO_HINT}") from e.__cause__
            log.warning("%s; its features become a zero vector", e)
            return i, self.transform(Image.new("RGB", (8, 8))), False
        return i, self.transform(image), True


class ClipImageModule(L.LightningModule):
    """Predict-only wrapper of an open_clip visual tower: ``encode_image`` output (unnormalised) per batch."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[1]).float()


class PartialWriter(BasePredictionWriter):
    """Writes each predicted batch as an atomic ``.npz`` (item ids, raw features, decoded flags), so a rerun can
    skip it."""

    def __init__(self, folder: Path, item_ids: Sequence[str]) -> None:
        super().__init__(write_interval="batch")
        self.folder, self.item_ids = folder, list(item_ids)
        self.token = uuid.uuid4().hex[:8]  # never overwrite another run's partials

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        positions = batch[0].tolist()
        name = f"part-{self.token}-r{trainer.global_rank}-b{batch_idx:06d}.npz"
        with atomic_open(self.folder / name, "wb") as f:
            np.savez(
                f,
                ids=np.array([self.item_ids[p] for p in positions]),
                feat=prediction.float().cpu().numpy(),
                decoded=batch[2].cpu().numpy().astype(bool),
            )


def _read_partials(folder: Path) -> dict[str, tuple[np.ndarray, bool, bool]]:
    """Item id -> (feature row, row already L2-normalised, image decoded) from every partial file in ``folder``."""
    done: dict[str, tuple[np.ndarray, bool, bool]] = {}
    for f in sorted(folder.glob("part-*.npz")):
        try:
            with np.load(f, allow_pickle=False) as z:
                normed = bool(z["normalized"]) if "normalized" in z.files else False
                ids = z["ids"].tolist()
                decoded = z["decoded"].tolist() if "decoded" in z.files else [True] * len(ids)
                for i, row, ok in zip(ids, z["feat"], decoded):
                    if ok or i not in done:  # a decoded row wins over a placeholder from an earlier run
                        done[i] = (row, normed, bool(ok))
        except (ValueError, OSError, KeyError) as e:  # cannot happen with atomic writes; be safe anyway
            log.warning("ignoring unreadable partial %s (%s)", f, e)
    return done


def _normalize(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _run_predict(
    pending: list[tuple[str, str]],
    encoder: ClipEncoder,
    partial_dir: Path,
    batch_size: int,
    num_workers: int,
    trainer_kwargs: dict[str, Any] | None,
    missing: Literal["zero", "error"],
) -> L.Trainer:
    visual, preprocess = encoder.build()
    ids = [i for i, _ in pending]
    data = ImageDataset([p for _, p in pending], ids, preprocess, on_error="zero" if missing == "zero" else "raise")
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    kwargs: dict[str, Any] = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
    }
    kwargs.update(trainer_kwargs or {})
    kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), PartialWriter(partial_dir, ids)]
    trainer = L.Trainer(**kwargs)
    trainer.predict(ClipImageModule(visual), dataloaders=loader, return_predictions=False)
    return trainer


def extract_features(
    items: list[tuple[str, str | None]],
    encoder: ClipEncoder | tuple[str, str | None] | str,
    cache_dir: Path,
    batch_size: int = 64,
    missing: Literal["zero", "error"] = "error",
    trainer_kwargs: dict[str, Any] | None = None,
    normalize: bool = True,
    num_workers: int = 0,
) -> ImageFeatures:
    """Encode every item's image with a CLIP image tower and cache the items x dim matrix.

    Args:
        items: (item id, image file) pairs in row order; the file may be None, absent or a URL (= no image).
        encoder: a :class:`ClipEncoder`, an (arch, pretrained) pair or a preset name from :data:`ENCODERS`.
        cache_dir: folder of the cache (one per data set); gets ``<arch>__<pretrained>.npy`` and ``.json``.
        batch_size: images per forward pass (and per partial file).
        missing: what happens to an item without an image file or whose image cannot be decoded: ``error``
            (default) raises DataError naming the item and the file; ``zero`` gives it a zero row, listed in the
            sidecar (``missing``, ``unreadable``) and counted by :meth:`ImageFeatures.report`.
        trainer_kwargs: Lightning ``Trainer`` arguments (``accelerator``, ``devices``, ``strategy``,
            ``precision`` ...); defaults: auto accelerator, 1 device, no logger or checkpoints.
        normalize: L2-normalise the rows (recorded in the sidecar).
        num_workers: DataLoader workers decoding images.

    Returns:
        The features (also on disk). A complete cache for the same items is returned without running the model.

    Raises:
        DataError: repeated item ids; under ``missing="error"`` an item without an image file or with an image
            file that cannot be decoded (names the item and the file).
        ModelNotAvailableError: pretrained weights unavailable offline (the message says what to download).
    """
    enc = _as_encoder(encoder)
    if missing not in ("zero", "error"):
        raise ValueError(f"missing must be 'zero' or 'error', got {missing!r}")
    cache_dir = Path(cache_dir)
    npy, side = cache_paths(cache_dir, enc)
    ids = [str(i) for i, _ in items]
    if len(set(ids)) != len(ids):
        raise DataError(f"extract_features: repeated item ids in the item list for {npy}")
    refs = [None if p is None else str(p) for _, p in items]
    path_of = dict(zip(ids, refs))
    absent = [iid for iid, ref in zip(ids, refs) if not _is_local_file(ref)]
    if missing == "error" and absent:
        first = absent[0]
        raise DataError(
            f"item {first!r} has no image file ({path_of[first]!r}); {len(absent)} of {len(ids)} items "
            f"lack one. Download the images{_ZERO_HINT}"
        )

    partial_dir = cache_dir / f"{enc.cache_stem}.partial"
    if npy.is_file() and side.is_file():
        try:
            cached = ImageFeatures.load(npy)
        except DataError as e:
            log.warning("%s; extracting again", e)
            cached = None
        if cached is not None and cached.normalized == normalize:
            if set(cached.item_ids) == set(ids) and set(cached.missing) == set(absent):
                if missing == "error" and cached.unreadable:
                    first = cached.unreadable[0]
                    raise DataError(
                        f"{path_of[first]}: the image of item {first!r} could not be decoded when {npy} was "
                        f"extracted ({len(cached.unreadable)} such items have zero vectors there); repair the "
                        f"images and delete {npy.name} to extract again{_ZERO_HINT}"
                    )
                if cached.item_ids == ids:
                    return cached
                bad = set(cached.unreadable)
                return ImageFeatures(cached.align(ids), ids, absent, normalize, cached.encoder, npy,
                                     unreadable=[i for i in ids if i in bad])
            # another item list or newly found images: keep the rows that are still valid as a partial
            valid = set(ids) - set(absent) - set(cached.missing) - set(cached.unreadable)
            keep = [i for i in cached.item_ids if i in valid]
            if keep:
                with atomic_open(partial_dir / f"part-cache-{uuid.uuid4().hex[:8]}.npz", "wb") as f:
                    np.savez(f, ids=np.array(keep), feat=cached.align(keep).numpy(), normalized=normalize)
            log.info("%s is for another item list; reusing %d of its rows", npy, len(keep))

    partial_dir.mkdir(parents=True, exist_ok=True)
    done = _read_partials(partial_dir)
    if missing == "error":  # images an interrupted zero-policy run could not decode are tried again (and raise)
        done = {i: v for i, v in done.items() if v[2]}
    absent_set = set(absent)
    pending: list[tuple[str, str]] = []
    broken: set[str] = set()  # rejected by the quick check below, never sent to the model
    for iid, ref in zip(ids, refs):
        if iid in absent_set or iid in done:
            continue
        # checked before any model is built: a DataLoader error would hang DDP ranks
        error = _check_image(ref, iid, _ZERO_HINT if missing == "error" else "")
        if error is None:
            pending.append((iid, ref))
        elif missing == "error":
            raise error
        else:
            log.warning("%s; its features become a zero vector", error)
            broken.add(iid)
    is_zero = True
    if pending:
        log.info(
            "extracting %s features for %d images (%d cached in partials)", enc.cache_stem, len(pending), len(done)
        )
        trainer = _run_predict(pending, enc, partial_dir, batch_size, num_workers, trainer_kwargs, missing)
        trainer.strategy.barrier("image-features-written")
        is_zero = trainer.is_global_zero
        if is_zero:
            done = _read_partials(partial_dir)
    if is_zero:
        _assemble(ids, absent_set, broken, done, enc, normalize, npy, side, partial_dir)
    if pending:
        trainer.strategy.barrier("image-features-assembled")
    feats = ImageFeatures.load(npy)
    if feats.missing or feats.unreadable:
        log.warning("%s: %s", npy, feats.report())
    return feats


def _assemble(
    ids: list[str],
    absent: set[str],
    broken: set[str],
    done: dict[str, tuple[np.ndarray, bool, bool]],
    enc: ClipEncoder,
    normalize: bool,
    npy: Path,
    side: Path,
    partial_dir: Path,
) -> None:
    """Rank 0: partial rows + zero rows -> the final matrix (atomic), then drop the partials."""
    lost = [i for i in ids if i not in absent and i not in broken and i not in done]
    if lost:
        raise RuntimeError(f"{partial_dir}: no features were written for {len(lost)} items (first: {lost[:3]})")
    unreadable = [i for i in ids if i not in absent and (i in broken or not done[i][2])]
    zero = absent | set(unreadable)
    dim = len(next(iter(done.values()))[0]) if done else enc.output_dim()
    matrix = np.zeros((len(ids), dim), dtype=np.float32)
    for n, i in enumerate(ids):
        if i not in zero:
            row, normed, _ = done[i]
            matrix[n] = _normalize(row[None])[0] if normalize and not normed else row
    save_numpy(npy, matrix)
    write_json(
        side,
        {
            "format": _FORMAT,
            "encoder": enc.spec,
            "dim": dim,
            "rows": len(ids),
            "dtype": "float32",
            "normalized": normalize,
            "features": "open_clip encode_image output" + (", L2-normalised" if normalize else ""),
            "missing": [i for i in ids if i in absent],
            "unreadable": unreadable,
            "sha256": _sha256(matrix),
            "item_ids": ids,
        },
    )
    shutil.rmtree(partial_dir, ignore_errors=True)
    log.info("wrote %s (%d x %d, %d without image, %d unreadable)", npy, len(ids), dim, len(absent), len(unreadable))
