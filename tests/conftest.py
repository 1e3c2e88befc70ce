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


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Every test runs in its own empty working directory: the embedded defaults' relative folders
    (``outputs/vip5-demo/checkpoints``, ``wandb/``) must never touch a user's runs in the repository."""
    monkeypatch.chdir(tmp_path)
