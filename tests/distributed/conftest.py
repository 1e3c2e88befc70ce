"""DDP test set-up: an odd-sized demo shop."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def odd_demo(tmp_path_factory) -> Path:
    """21 users: every split (test users, test reviews, PMG samples) is odd, so 2 ranks get uneven shards and
    Lightning's sampler pads one of them with a repeated sample."""
    from common.data.demo import generate_demo

    out = tmp_path_factory.mktemp("odd_demo")
    generate_demo(out, n_users=21, n_items=60, seed=0, image_size=16)
    return out
