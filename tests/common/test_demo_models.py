"""The demo CLIP and the attribute probe (common.demo_models): training, folders, errors, the probe metrics."""

from __future__ import annotations

import json

import pytest
import torch

from common import demo_models as D
from common.clip import create_clip
from common.weights import ModelNotAvailableError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_probe_trains_well_above_chance_and_round_trips(tmp_path):
    """Seconds of training on 4 renders per combination: far above chance (1/6, 1/5, 1/3) held out (measured:
    colour 1.0, shape 0.6, pattern 1.0)."""
    probe, cfg = D.train_probe(tmp_path / "probe", epochs=5, per_combo=4, test_per_combo=1, batch=16, verbose=False)
    acc = cfg["heldout_accuracy"]
    assert acc["colour"] >= 0.9 and acc["shape"] >= 0.45 and acc["pattern"] >= 0.8, acc
    loaded = D.load_probe(tmp_path / "probe")
    a, b = probe.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(4, 3, 40, 40)
    assert all(torch.equal(probe(x)[k], loaded(x)[k]) for k in D.ATTRIBUTES)
    assert json.loads((tmp_path / "probe" / "config.json").read_text())["heldout_accuracy"] == acc


def test_clip_trains_above_chance_and_loads_through_the_folder_path(tmp_path):
    """A short contrastive run (~30 s) is far above chance (1/90) on held-out renders (measured: 0.36); the
    folder loads like a real checkpoint."""
    cfg = D.train_clip(tmp_path / "clip", steps=80, batch=64, per_combo=2, test_per_combo=1, lr=3e-3, log_every=0)
    assert cfg["heldout_image_to_text_top1"] >= 0.2, cfg
    model, _ = create_clip(D.DEMO_CLIP_ARCH, str(tmp_path / "clip"))
    saved = D._load_tensors(tmp_path / "clip" / D.CLIP_FILE, "demo CLIP", "clip")
    state = model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
    images, labels = D.render_set(1, seed=10_000)
    assert D.retrieval_accuracy(model, images, labels) == pytest.approx(cfg["heldout_image_to_text_top1"], abs=1e-4)


def test_missing_and_corrupt_folders_name_the_path(tmp_path):
    with pytest.raises(ModelNotAvailableError, match=str(tmp_path / "nope") + ".*does not exist"):
        D.load_probe(tmp_path / "nope")
    with pytest.raises(ValueError, match=str(tmp_path / "nope") + ".*nor an existing checkpoint file or folder"):
        create_clip(D.DEMO_CLIP_ARCH, str(tmp_path / "nope"))  # not a folder or file: refused, no fallback
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotAvailableError, match=f"{empty} has no {D.CLIP_FILE}.*python -m common.demo_models"):
        create_clip(D.DEMO_CLIP_ARCH, str(empty))
    D.save_probe(D.AttributeProbe(), tmp_path / "probe")
    (tmp_path / "probe" / D.PROBE_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelNotAvailableError, match=str(tmp_path / "probe" / D.PROBE_FILE)):
        D.load_probe(tmp_path / "probe")
    bad = tmp_path / "clip"
    bad.mkdir()
    (bad / D.CLIP_FILE).write_bytes(b"\x00" * 64)
    (bad / D.CONFIG_FILE).write_text("{}")
    with pytest.raises(ModelNotAvailableError, match=str(bad / D.CLIP_FILE)):
        create_clip(D.DEMO_CLIP_ARCH, str(bad))


def test_committed_weights_meet_their_stated_accuracy():
    probe = D.load_probe(D.DEMO_PROBE_DIR)
    cfg = json.loads((D.DEMO_PROBE_DIR / D.CONFIG_FILE).read_text())
    assert min(cfg["heldout_accuracy"].values()) >= 0.95, cfg
    images, labels = D.render_set(1, seed=777)  # renders neither model saw
    assert min(D.probe_accuracies(probe, images, labels).values()) >= 0.9
    clip_cfg = json.loads((D.DEMO_CLIP_DIR / D.CONFIG_FILE).read_text())
    model, _ = create_clip(D.DEMO_CLIP_ARCH, str(D.DEMO_CLIP_DIR))
    assert D.retrieval_accuracy(model, images, labels) >= 0.5 and clip_cfg["heldout_image_to_text_top1"] >= 0.5


def test_demo_tiny_encoder_uses_the_trained_folder():
    from common.data.features import ENCODERS, ClipEncoder

    arch, pretrained = ENCODERS["demo-tiny"]
    assert pretrained == str(D.DEMO_CLIP_DIR)
    visual, _ = ClipEncoder.preset("demo-tiny").build()
    model, _ = create_clip(arch, pretrained)
    assert all(torch.equal(a, b) for a, b in zip(visual.state_dict().values(), model.visual.state_dict().values()))
    assert ENCODERS["demo-random"][1] is None


def test_target_and_pref_acc_on_constructed_images():
    """Renders of known attributes: 1.0 where the truth matches what is drawn, 0.0 where it does not."""
    probe = D.load_probe(D.DEMO_PROBE_DIR)
    names = {k: list(v) for k, v in D.ATTRIBUTES.items()}
    images, labels = D.render_set(1, seed=4242)
    pick = list(range(0, len(images), 7))  # 13 combinations
    images, labels = images[pick], labels[pick]
    drawn = [{k: names[k][int(v)] for k, v in zip(names, row)} for row in labels.tolist()]
    assert probe.predict(images) == drawn  # the probe reads these renders correctly
    targets = [{"shape": d["shape"], "colour": "nope", "category": "top"} for d in drawn]
    tastes = [{"colour": d["colour"], "shape": "nope", "category": "top"} for d in drawn]
    acc = D.probe_accuracy(probe, images, targets, tastes)
    assert acc == {"target_acc": [1.0] * len(pick), "pref_acc": [1.0] * len(pick)}
    other_shape = [{"shape": names["shape"][(names["shape"].index(d["shape"]) + 1) % 5]} for d in drawn]
    other_colour = [{"colour": names["colour"][(names["colour"].index(d["colour"]) + 1) % 6]} for d in drawn]
    acc = D.probe_accuracy(probe, images, other_shape, other_colour)
    assert acc == {"target_acc": [0.0] * len(pick), "pref_acc": [0.0] * len(pick)}
    with pytest.raises(ValueError, match="2 images"):
        D.probe_accuracy(probe, images[:2], targets, tastes)


def test_demo_truth_reads_the_generated_shop(demo_data):
    truth = D.DemoTruth(demo_data / "truth.json", "pog")
    item_id, item = next(iter(truth.items.items()))
    assert truth.item(item_id) == item and set(item) >= {"colour", "shape", "pattern", "category"}
    user_id = next(iter(truth.users))
    assert set(truth.user(user_id)) == {"colour", "shape", "category"}
    with pytest.raises(KeyError, match="missing-item"):
        truth.item("missing-item")
    with pytest.raises(ValueError, match="no demo format 'beauty'"):
        D.DemoTruth(demo_data / "truth.json", "beauty")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        D.DemoTruth(demo_data / "nope.json", "pog")


def test_relative_weight_folders_resolve_from_any_working_directory(tmp_path, monkeypatch):
    """Configs name `common/demo_weights/...`; outside the repository that path is taken from its root."""
    monkeypatch.chdir(tmp_path)
    assert D.load_probe("common/demo_weights/probe").config() == D.load_probe(D.DEMO_PROBE_DIR).config()
    a, _ = create_clip(D.DEMO_CLIP_ARCH, "common/demo_weights/clip")
    b, _ = create_clip(D.DEMO_CLIP_ARCH, str(D.DEMO_CLIP_DIR / D.CLIP_FILE))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    (tmp_path / "common" / "demo_weights" / "probe").mkdir(parents=True)  # a local folder wins, here empty
    with pytest.raises(ModelNotAvailableError, match="has no probe.safetensors"):
        D.load_probe("common/demo_weights/probe")
