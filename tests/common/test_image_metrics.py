"""Streaming LPIPS / SSIM to target and history images."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from common.metrics.image import ImageSimilarity


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _smooth(seed: int) -> torch.Tensor:
    """A smooth 32 px image (SSIM of smooth unrelated images is well away from 0 and 1)."""
    return torch.nn.functional.interpolate(_rand(1, 3, 4, 4, seed=seed), size=32, mode="bilinear")[0]


@pytest.fixture(scope="module")
def metric_with_lpips():
    pytest.importorskip("lpips")
    return ImageSimilarity(net="vgg", allow_random_trunk=True)


def test_identical_images_give_lpips_0_and_ssim_1(metric_with_lpips):
    m = metric_with_lpips
    m.reset()
    x = _rand(2, 3, 32, 32)
    values = m.update(x, x.clone(), [x[:1].repeat(2, 1, 1, 1), x[1:]])
    torch.testing.assert_close(values["lpips_target"], torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(values["ssim_target"], torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    out = m.compute()
    assert out["lpips_history"] == pytest.approx(0.0, abs=1e-6) and out["ssim_history"] == pytest.approx(1.0)
    assert out["n_ssim_target"] == 2 and out["ssim_target_std"] == pytest.approx(0.0, abs=1e-9)
    assert m.lpips_label.startswith("LPIPS") and out["lpips_is_random"] == m.lpips_is_random
    if m.lpips_is_random:
        assert m.lpips_label == "LPIPS (random trunk: plumbing only)"


def test_ssim_matches_torchmetrics_direct_call():
    a, b = _smooth(1), _smooth(2)
    m = ImageSimilarity(use_lpips=False)
    got = m.update(a[None], b[None])["ssim_target"].item()
    direct = structural_similarity_index_measure(
        a[None], b[None], data_range=1.0, gaussian_kernel=True, sigma=1.5, kernel_size=11
    ).item()
    assert got == pytest.approx(direct, abs=1e-5)
    assert 0.05 < got < 0.95


def test_history_average_is_mean_over_own_history_then_over_samples(metric_with_lpips):
    m = metric_with_lpips
    m.reset()
    gen = torch.stack([_smooth(10), _smooth(11)])
    hist = [torch.stack([_smooth(20), _smooth(21), _smooth(22)]), torch.stack([_smooth(23)])]
    # two batches, plus a sample with an empty history that must not count
    m.update(gen[:1], None, hist[:1])
    m.update(torch.cat([gen[1:], gen[:1]]), None, [hist[1], []])
    out = m.compute()

    def ssim(x, y):
        return structural_similarity_index_measure(x[None], y[None], data_range=1.0).item()

    per_sample = [sum(ssim(gen[0], h) for h in hist[0]) / 3, ssim(gen[1], hist[1][0])]
    assert out["n_ssim_history"] == 2 and "ssim_target" not in out
    assert out["ssim_history"] == pytest.approx(sum(per_sample) / 2, abs=1e-5)
    assert out["ssim_history_std"] == pytest.approx(abs(per_sample[0] - per_sample[1]) / 2, abs=1e-5)
    lp = [m.lpips(gen[0:1].expand(3, -1, -1, -1), hist[0]).mean().item(), m.lpips(gen[1:2], hist[1]).item()]
    assert out["lpips_history"] == pytest.approx(sum(lp) / 2, abs=1e-5)


def test_ssim_data_range_is_one_for_unit_images():
    black, white = torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)
    # constant images: SSIM = (2*mu_x*mu_y + C1) / (mu_x^2 + mu_y^2 + C1) with C1 = (0.01 * data_range)^2
    for data_range in (1.0, 2.0):
        c1 = (0.01 * data_range) ** 2
        got = ImageSimilarity(use_lpips=False, ssim_data_range=data_range).ssim(black, white).item()
        assert got == pytest.approx(c1 / (1 + c1), rel=1e-3)
    # uint8 input is mapped to [0, 1] first, so it scores like the float image
    m = ImageSimilarity(use_lpips=False)
    assert m.update((white * 255).to(torch.uint8), white)["ssim_target"].item() == pytest.approx(1.0)


def test_resize_and_missing_trunk_error(tmp_path, monkeypatch):
    m = ImageSimilarity(use_lpips=False, resize=16)
    values = m.update([_smooth(1), _smooth(1)[:, :24]], torch.stack([_smooth(1), _smooth(1)]))
    assert values["ssim_target"][0].item() == pytest.approx(1.0) and not math.isnan(values["ssim_target"][1])
    pytest.importorskip("lpips")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache: trunk missing
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        ImageSimilarity(net="vgg")


def test_size_mismatch_without_resize_is_an_error():
    with pytest.raises(ValueError, match="resize"):
        ImageSimilarity(use_lpips=False).update(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 24, 24))
