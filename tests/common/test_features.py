"""CLIP image features (common.data.features) with the from-config demo encoder on tiny PNGs, on CPU."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import features as F
from common.data.corpus import DataError
from common.data.features import ClipEncoder, ImageFeatures, extract_features
from common.weights import ModelNotAvailableError

TRAINER = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False}
N = 10


def _write_pngs(folder, n=N):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        path = folder / f"item{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        items.append((f"i{i}", str(path)))
    return items


def _extract(items, cache_dir, **kw):
    kw.setdefault("batch_size", 2)
    return extract_features(items, "demo-random", cache_dir, trainer_kwargs=TRAINER, **kw)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _write_pngs(tmp_path_factory.mktemp("img"))


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """One uninterrupted extraction the other tests compare against."""
    cache = tmp_path_factory.mktemp("ref")
    return _extract(images, cache), cache


def test_shapes_normalisation_zero_policy_and_sidecar(images, reference, tmp_path):
    feats, cache = reference
    assert feats.matrix.shape == (N, 32) and feats.matrix.dtype == torch.float32 and feats.dim == 32
    assert torch.allclose(feats.matrix.norm(dim=1), torch.ones(N), atol=1e-5)
    npy, side = F.cache_paths(cache, "demo-random")
    assert npy.name == "demo-tiny-clip__random.npy" and not (cache / "demo-tiny-clip__random.partial").exists()
    meta = json.loads(side.read_text())
    assert meta["item_ids"] == [i for i, _ in images] and meta["dim"] == 32 and meta["normalized"] is True
    assert meta["encoder"] == {"arch": F.DEMO_ARCH, "pretrained": None} and meta["missing"] == []
    assert meta["sha256"] == F._sha256(np.load(npy))

    holes = [*images[:3], ("none", None), ("gone", str(tmp_path / "gone.png")), ("url", "http://x.invalid/a.jpg")]
    got = _extract(holes, tmp_path / "c", missing="zero")
    assert got.missing == ["none", "gone", "url"]
    assert torch.equal(got.matrix[3:], torch.zeros(3, 32))
    assert torch.allclose(got.matrix[:3], feats.matrix[:3], atol=1e-6)  # same rows (batching changes the last ulp)
    assert json.loads(F.cache_paths(tmp_path / "c", "demo-random")[1].read_text())["missing"] == ["none", "gone", "url"]


def test_deterministic_and_unnormalised_rows(images, reference, tmp_path):
    assert torch.equal(_extract(images, tmp_path / "again").matrix, reference[0].matrix)  # seeded init
    raw = _extract(images, tmp_path, normalize=False)
    assert raw.normalized is False and not torch.allclose(raw.matrix.norm(dim=1), torch.ones(N))
    assert torch.allclose(raw.matrix / raw.matrix.norm(dim=1, keepdim=True), reference[0].matrix, atol=1e-6)


def test_error_policy_and_bad_images(images, tmp_path, monkeypatch):
    monkeypatch.setattr(ClipEncoder, "build", lambda self: pytest.fail("no model may be built"))
    with pytest.raises(DataError, match=r"'gone'.*gone\.png.*missing_images: zero"):
        _extract([*images[:2], ("gone", str(tmp_path / "gone.png"))], tmp_path / "c")  # error is the default
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage, not an image")
    with pytest.raises(DataError, match=r"bad\.png.*'b'"):
        _extract([*images[:2], ("b", str(bad))], tmp_path / "c")
    monkeypatch.undo()
    # a truncated JPEG passes the quick header check and fails while decoding in the loader: still named
    cut = _truncated_jpeg(tmp_path)
    with pytest.raises(DataError, match=r"cut\.jpg.*'c'"):
        _extract([images[0], ("c", str(cut))], tmp_path / "d")
    with pytest.raises(DataError, match="repeated"):
        _extract([images[0], images[0]], tmp_path / "e")


def _truncated_jpeg(folder):
    whole = folder / "whole.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    cut = folder / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return cut


def test_unreadable_images_are_counted_and_zeroed_under_zero(images, reference, tmp_path):
    feats, _ = reference
    rand = tmp_path / "rand.png"
    rand.write_bytes(np.random.default_rng(3).bytes(300))  # random bytes named .png: fails the quick check
    cut = _truncated_jpeg(tmp_path)  # passes the quick check, fails while decoding in the loader
    items = [*images[:3], ("rand", str(rand)), ("none", None), ("cut", str(cut))]
    got = _extract(items, tmp_path / "c", missing="zero")
    assert got.missing == ["none"] and got.unreadable == ["rand", "cut"]
    assert torch.equal(got.matrix[3:], torch.zeros(3, 32))
    assert torch.allclose(got.matrix[:3], feats.matrix[:3], atol=1e-6)
    assert got.report() == "6 items x 32; zero vectors: 1 without an image, 2 with an unreadable image"
    side = json.loads(F.cache_paths(tmp_path / "c", "demo-random")[1].read_text())
    assert side["missing"] == ["none"] and side["unreadable"] == ["rand", "cut"]
    assert ImageFeatures.load(tmp_path / "c").unreadable == ["rand", "cut"]

    # a cache holding zeroed unreadable images is refused under the error policy, naming the file
    readable_or_not = [*images[:3], ("rand", str(rand)), ("cut", str(cut))]
    _extract(readable_or_not, tmp_path / "d", missing="zero")
    with pytest.raises(DataError, match=r"rand\.png: the image of item 'rand' could not be decoded"):
        _extract(readable_or_not, tmp_path / "d", missing="error")
    with pytest.raises(DataError, match=r"rand\.png: the image of item 'rand' cannot be read.*missing_images: zero"):
        _extract(readable_or_not, tmp_path / "e")


def test_error_is_the_default_missing_images_policy():
    from common.data import cli
    from common.data.datamodule import RecDataModule

    assert inspect.signature(extract_features).parameters["missing"].default == "error"
    assert inspect.signature(cli.features).parameters["missing"].default == "error"
    assert inspect.signature(RecDataModule.__init__).parameters["missing_images"].default == "error"


def test_datamodule_and_cli_report_unreadable_images(images, tmp_path, capsys):
    from common.data import AmazonDataModule, cli

    root = tmp_path / "shop"
    (root / "images").mkdir(parents=True)
    (root / "sequential_data.txt").write_text("1 1 2 3\n2 2 3 1\n")
    for n in (1, 2):
        shutil.copy(images[n][1], root / "images" / f"{n}.png")
    bad = root / "images" / "3.png"
    bad.write_bytes(b"random bytes, no PNG")
    with pytest.raises(DataError, match=rf"{re.escape(str(bad))}: the image of item '3' cannot be read"):
        AmazonDataModule(root, image_encoder="demo-random").prepare_data()
    AmazonDataModule(root, image_encoder="demo-random", missing_images="zero").prepare_data()
    feats = ImageFeatures.load(root / "features")
    assert feats.unreadable == ["3"] and feats.missing == []
    assert torch.equal(feats.row("3"), torch.zeros(32)) and feats.row("1").norm() > 0.99
    cli.main(["features", str(root), "--encoder", "demo-random", "--missing", "zero"])
    assert "3 items x 32; zero vectors: 0 without an image, 1 with an unreadable image" in capsys.readouterr().out
    with pytest.raises(DataError, match=re.escape(str(bad))):
        cli.main(["features", str(root), "--encoder", "demo-random"])


def test_complete_cache_is_returned_without_the_model(images, reference, tmp_path, monkeypatch):
    feats, cache = reference
    shutil.copytree(cache, tmp_path / "cache")
    monkeypatch.setattr(ClipEncoder, "build", lambda self: pytest.fail("the cache should have been used"))
    again = _extract(images, tmp_path / "cache")
    assert torch.equal(again.matrix, feats.matrix)
    shuffled = _extract(images[::-1], tmp_path / "cache")  # same items, another order: rows follow the order
    assert shuffled.item_ids == [i for i, _ in images[::-1]] and torch.equal(shuffled.matrix, feats.matrix.flip(0))
    # a grown catalogue reuses the cached rows: only the new item goes through the model
    extra = _write_pngs(tmp_path / "more", N + 1)[-1:]
    seen = []
    monkeypatch.undo()
    real = F.ClipImageModule.predict_step
    monkeypatch.setattr(F.ClipImageModule, "predict_step", lambda s, b, i: seen.append(len(b[0])) or real(s, b, i))
    grown = _extract(images + extra, tmp_path / "cache")
    assert seen == [1] and torch.equal(grown.matrix[:N], feats.matrix)


def test_resume_after_interruption(images, reference, tmp_path, monkeypatch):
    real = F.ClipImageModule.predict_step
    calls = []

    def crash_on_third(self, batch, batch_idx):
        calls.append(batch_idx)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(self, batch, batch_idx)

    monkeypatch.setattr(F.ClipImageModule, "predict_step", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _extract(images, tmp_path)
    partial = tmp_path / "demo-tiny-clip__random.partial"
    assert len(list(partial.glob("part-*.npz"))) == 2 and not (tmp_path / "demo-tiny-clip__random.npy").exists()

    calls.clear()
    monkeypatch.setattr(F.ClipImageModule, "predict_step", lambda s, b, i: calls.append(len(b[0])) or real(s, b, i))
    resumed = _extract(images, tmp_path)
    assert sum(calls) == N - 4  # the 4 images of the two finished batches were not encoded again
    assert torch.allclose(resumed.matrix, reference[0].matrix, atol=1e-6) and not partial.exists()


def test_catalogue_checks_align_and_load(images, reference, tmp_path):
    feats, cache = reference
    ids = [i for i, _ in images]
    loaded = ImageFeatures.load(cache)  # the folder holds one cache
    assert loaded.item_ids == ids and torch.equal(loaded.matrix, feats.matrix)
    assert torch.equal(ImageFeatures.load(cache, encoder=("demo-tiny-clip", None)).matrix, feats.matrix)
    assert torch.equal(loaded.row("i3"), feats.matrix[3])
    assert torch.equal(loaded.align(["i2", "i0"]), feats.matrix[[2, 0]])
    loaded.check_catalogue(ids[:4])
    with pytest.raises(DataError, match=r"demo-tiny-clip__random\.npy.*1 of 11.*new-item"):
        loaded.check_catalogue([*ids, "new-item"])
    with pytest.raises(DataError, match="10 feature rows for a catalogue of 4"):
        loaded.check_catalogue(ids[:4], strict=True)
    with pytest.raises(KeyError, match="nope"):
        loaded.row("nope")

    shutil.copytree(cache, tmp_path / "c")
    npy = tmp_path / "c" / "demo-tiny-clip__random.npy"
    np.save(npy, np.load(npy)[:-1])  # a matrix that lost a row
    with pytest.raises(DataError, match=r"demo-tiny-clip__random\.npy.*shape"):
        ImageFeatures.load(npy)
    np.save(npy, np.load(cache / npy.name) * 2)  # same shape, changed values
    with pytest.raises(DataError, match="sha256"):
        ImageFeatures.load(npy)
    with pytest.raises(DataError, match="extract them first"):
        ImageFeatures.load(tmp_path / "c", encoder="vitb32")


def test_vip5_per_item_files(tmp_path):
    rows = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    for asin, row in zip(["A", "B", "C"], rows):
        np.save(tmp_path / f"{asin}.npy", row / np.linalg.norm(row))
    feats = ImageFeatures.from_npy_dir(tmp_path, ["1", "2", "3"], file_stems={"1": "A", "2": "B", "3": "C"})
    assert feats.matrix.shape == (3, 8) and feats.normalized is True
    with pytest.raises(DataError, match=r"Z\.npy"):
        ImageFeatures.from_npy_dir(tmp_path, ["Z"])


def test_encoder_specs_never_silently_random():
    with pytest.raises(ValueError, match="allow_random_weights"):
        ClipEncoder("ViT-B-32", None)
    assert ClipEncoder("ViT-B-32", None, allow_random_weights=True).cache_stem == "ViT-B-32__random"
    assert ClipEncoder.preset("vitl14") == ClipEncoder("ViT-L-14", "openai")
    with pytest.raises(ValueError, match="vitb32"):
        ClipEncoder.preset("vit-b-32")
    assert set(F.ENCODERS) == {"rn50", "rn101", "vitb32", "vitb16", "vitl14", "demo-tiny", "demo-random"}
    stem = ClipEncoder("ViT-B-32", "/ckpt/dir/clip weights.bin").cache_stem
    assert stem.startswith("ViT-B-32__clip_weights-") and "/" not in stem


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs the hub offline (no network wait)")
def test_unavailable_weights_say_what_to_download(tmp_path):
    try:
        ClipEncoder("RN50", "openai").build()
    except ModelNotAvailableError as e:
        msg = str(e)
    else:  # pragma: no cover - a machine that has the weights cached
        pytest.skip("RN50/openai weights are cached here")
    assert "open_clip.create_model('RN50', pretrained='openai')" in msg and "timm/resnet50_clip.openai" in msg
    with pytest.raises(ValueError, match="neither a known tag"):
        ClipEncoder("RN50", str(tmp_path / "missing.pt")).build()
