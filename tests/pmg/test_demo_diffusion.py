"""The demo's text-to-image model (pmg.demo_diffusion): the committed folder loads through the same path as
SD-1.5 and draws what its captions ask for; training writes such a folder and resumes where it stopped."""

from __future__ import annotations

import json

import pytest
import torch

from common.demo_models import DEMO_PROBE_DIR, load_probe
from pmg import demo_diffusion as D
from pmg.conditioning import encode_text
from pmg.diffusion import load_sd_components
from pmg.generator import WeightedGenerator

pytestmark = pytest.mark.usefixtures("one_thread")


def test_committed_model_loads_from_a_relative_folder_and_draws_the_asked_attributes():
    # each test runs in an empty working directory: the config's relative path is found under the repository
    sd = load_sd_components(str(D.DEMO_DIFFUSION_DIR))
    assert sd.image_size == 32 and sd.text_dim == 64 and sd.text_length == 77
    assert not any(p.requires_grad for m in (sd.vae, sd.unet, sd.text_encoder) for p in m.parameters())
    asked = [("red", "plain", "circle"), ("blue", "striped", "square"), ("green", "dotted", "triangle"),
             ("yellow", "plain", "star"), ("purple", "striped", "diamond"), ("orange", "dotted", "circle")]
    cond = encode_text(sd.text_encoder, sd.tokenizer, [f"a {c} {p} {s}" for c, p, s in asked], 77)
    gen = WeightedGenerator(sd, steps=10, guidance_scale=6.0)
    images = gen.generate_from_embeds(cond, list(range(len(asked))))
    assert images.shape == (6, 3, 32, 32)
    seen = load_probe(DEMO_PROBE_DIR).predict(images)
    colours = sum(s["colour"] == a[0] for s, a in zip(seen, asked))
    shapes = sum(s["shape"] == a[2] for s, a in zip(seen, asked))
    patterns = sum(s["pattern"] == {"plain": "plain", "striped": "stripes", "dotted": "dots"}[a[1]]
                   for s, a in zip(seen, asked))
    # measured: 6 of 6 for each; random weights give about 1 colour, 1 shape and 2 patterns of 6
    assert colours >= 5 and shapes >= 4 and patterns >= 5, seen
    report = D.load_report(D.DEMO_DIFFUSION_DIR)
    assert min(report["heldout_generation_accuracy"].values()) >= 0.8, report


def test_captions_name_the_attributes_among_distractors():
    import numpy as np

    rng = np.random.default_rng(0)
    texts = [D.make_caption(rng, 4, 3, 1, drop=0.0) for _ in range(50)]
    assert all("blue" in t and "star" in t and ("striped" in t or "stripes" in t) for t in texts)
    assert len(set(texts)) > 40  # orders, forms and distractors vary
    first, second = D.split_blocks(rng, "blue, verde, star, striped")
    assert sorted((first + ", " + second).replace(",", " ").split()) == ["blue", "star", "striped", "verde"]


def test_training_writes_a_loadable_folder_and_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    config = D.TrainConfig(per_combo=1, vae_steps=2, vae_batch=4, steps=4, batch=4, warmup=1)
    kwargs = dict(save_every=2, log_every=0, eval_per_combo=1, eval_steps=1)
    report = D.train(tmp_path / "full", config, **kwargs)
    assert set(report["heldout_generation_accuracy"]) == {"colour", "shape", "pattern"}
    assert json.loads((tmp_path / "full" / D.TRAINING_FILE).read_text())["config"]["steps"] == 4
    full = load_sd_components(tmp_path / "full")
    assert not D._state_path(tmp_path / "full").exists()

    def stop(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(D, "generation_accuracy", stop)  # interrupted after the last step, before writing
    with pytest.raises(KeyboardInterrupt):
        D.train(tmp_path / "resumed", config, **kwargs)
    assert D._state_path(tmp_path / "resumed").exists() and not (tmp_path / "resumed").exists()
    monkeypatch.undo()
    capsys.readouterr()
    D.train(tmp_path / "resumed", config, **kwargs)
    assert "resuming from step 2" in capsys.readouterr().out
    resumed = load_sd_components(tmp_path / "resumed")
    for part in ("unet", "text_encoder", "vae"):
        a, b = getattr(full, part).state_dict(), getattr(resumed, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    with pytest.raises(ValueError, match="other settings"):
        torch.save({"config": {}}, D._state_path(tmp_path / "other"))
        D.train(tmp_path / "other", config, **kwargs)
