"""Image features extracted by 2 DDP processes (gloo, CPU), as `vip5-data features --devices 2` runs it: each
item encoded once, one complete feature file, the same rows as one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ddp_run import REPO

pytestmark = pytest.mark.slow


def test_feature_extraction_with_two_processes(odd_demo, tmp_path):
    from common.data.features import ENCODERS, ImageFeatures, extract_features
    from common.data.readers import read_corpus

    root = tmp_path / "amazon"
    shutil.copytree(odd_demo / "amazon", root, ignore=shutil.ignore_patterns("features", "cache"))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-m", "common.data.cli", "features", str(root), "--encoder", "demo-tiny",
                           "--batch_size", "4", "--devices", "2", "--accelerator", "cpu"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    corpus = read_corpus("amazon", root)
    assert len(corpus.item_ids) % 8 != 0  # the last batch is uneven across the two ranks
    two = ImageFeatures.load(root / "features", encoder=ENCODERS["demo-tiny"])
    assert two.item_ids == corpus.item_ids  # every item once, in catalogue order
    assert not list((root / "features").glob("*.partial"))  # the per-rank partial files were merged and removed
    items = [(i, corpus.image_path(i)) for i in corpus.item_ids]
    one = extract_features(items, ENCODERS["demo-tiny"], tmp_path / "one", batch_size=4)
    assert np.allclose(two.align(corpus.item_ids).numpy(), one.align(corpus.item_ids).numpy(), atol=1e-5)
