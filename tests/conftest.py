"""Shared test set-up: offline, few threads (2-core machines), tiny models, generated data."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(2)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small generated shop in the three real formats (Amazon/P5, POG, MovieLens), shared by tests."""
    from common.data.demo import generate_demo

    out = tmp_path_factory.mktemp("demo")
    generate_demo(out, n_users=40, n_items=120, seed=0)
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): small models gain
    nothing from a second thread, and on a busy 2-core machine it made a training step ~10x slower (0.15 s vs
    0.9-3.8 s measured); it also makes the small demo models' results bit-exact. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own empty working directory: the embedded defaults' relative folders
    (``outputs/vip5-demo/checkpoints``, ``wandb/``) must never touch a user's runs in the repository."""
    monkeypatch.chdir(tmp_path)


TINY_T5 = dict(vocab_size=200, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8,
               dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


@pytest.fixture
def tiny_t5_config() -> dict:
    """``T5Config`` keyword arguments of a tiny T5 (d_model 32, 2 + 2 layers, 200 ids, no dropout)."""
    return dict(TINY_T5)


@pytest.fixture
def tiny_vip5():
    """Factory of small from-config VIP5 models: ``tiny_vip5(seed=0, **kwargs)``.

    ``kwargs`` mixes :class:`vip5.model.VIP5Config` fields and ``VIP5Model`` arguments; by default the backbone is
    the tiny T5, with 16-d image features and the last id (199) as the image slot. ``adapter=None`` builds no
    adapters (a fully trainable model).
    """
    import dataclasses

    from vip5.model import VIP5Config, VIP5Model

    fields = {f.name for f in dataclasses.fields(VIP5Config)}

    def build(seed: int = 0, **kwargs):
        kwargs = {"backbone_config": TINY_T5, "feature_dim": 16, "image_token_id": 199, **kwargs}
        if "adapter" in kwargs and kwargs["adapter"] is None:
            kwargs.pop("adapter")
            kwargs.update(use_adapters=False, training_mode=kwargs.get("training_mode", "full"))
        config = VIP5Config(**{k: v for k, v in kwargs.items() if k in fields})
        torch.manual_seed(seed)
        return VIP5Model(config, **{k: v for k, v in kwargs.items() if k not in fields})

    return build
