"""Weighted grid generation on tiny random SD components (32 px, 2 steps)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from pmg.conditioning import encode_text  # noqa: E402
from pmg.diffusion import tiny_sd_components  # noqa: E402
from pmg.generator import WeightedGenerator  # noqa: E402

TARGET = ["red", "hat"]
PREF = ["striped", "dotted", "plain"]
GRID = [(1.0, 1.0), (2.0, 1.0), (1.0, 2.0)]


@pytest.fixture(scope="module")
def components():
    return tiny_sd_components(image_size=16, seed=0)  # 8x8 latents: the cheapest valid size


@pytest.fixture(scope="module")
def soft():
    return torch.randn(2, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("weighting", "scheduler"), [("scale", "ddim"), ("repeat", "ddim"), ("scale", "ddpm")])
def test_batched_grid_equals_sequential_calls(components, soft, weighting, scheduler):
    gen = WeightedGenerator(components, scheduler=scheduler, steps=2, weighting=weighting)
    batched = gen.generate(TARGET, PREF, soft, grid=GRID, seed=5)
    sequential = gen.generate_sequential(TARGET, PREF, soft, grid=GRID, seed=5)
    assert batched.shape == (len(GRID), 3, components.image_size, components.image_size)
    assert 0.0 <= batched.min() and batched.max() <= 1.0
    torch.testing.assert_close(batched, sequential, atol=1e-4, rtol=0)
    # the weights alone make the images differ
    for i in range(1, len(GRID)):
        assert (batched[0] - batched[i]).abs().max() > 1e-3


def test_shared_noise_per_sample_and_generate_many(components, soft):
    gen = WeightedGenerator(components, steps=2)
    grid = [(1.5, 1.0), (1.5, 1.0)]
    many = gen.generate_many([(TARGET, PREF, soft), (TARGET, PREF, soft)], seeds=[3, 4], grid=grid)
    assert many.shape == (2, 2, 3, components.image_size, components.image_size)
    torch.testing.assert_close(many[0, 0], many[0, 1], atol=1e-5, rtol=0)  # equal weights: same image
    assert (many[1, 0] - many[0, 0]).abs().max() > 1e-3  # another sample seed: other noise
    torch.testing.assert_close(many[1], gen.generate(TARGET, PREF, soft, grid=grid, seed=4), atol=1e-4, rtol=0)


def test_scale_conditions_layout(components, soft):
    c = components
    gen = WeightedGenerator(c, steps=1, weighting="scale", target_tokens=30)
    cond = gen.conditions(TARGET, PREF, soft, grid=[(1.0, 1.0), (2.0, 3.0)])
    assert cond.shape == (2, 77, c.text_dim)
    e_t = encode_text(c.text_encoder, c.tokenizer, ["red, hat"], 30)
    e_p = encode_text(c.text_encoder, c.tokenizer, ["striped, dotted, plain"], 77 - 30 - 2)
    plain = torch.cat([e_t, e_p, soft[None]], dim=1)
    torch.testing.assert_close(cond[0:1], plain)  # weights 1 = plain concatenation
    w = cond[1:2]
    torch.testing.assert_close(w[:, 0], e_t[:, 0])  # start tokens are not scaled
    torch.testing.assert_close(w[:, 30], e_p[:, 0])
    torch.testing.assert_close(w[:, 1:30], 3.0 * e_t[:, 1:])
    torch.testing.assert_close(w[:, 31:75], 2.0 * e_p[:, 1:])
    torch.testing.assert_close(w[:, 75:], 2.0 * soft[None])
    # precomputed states give the same conditions as keyword text
    torch.testing.assert_close(gen.conditions(e_t[0], e_p[0], soft, grid=[(2.0, 3.0)]), w)


def test_repeat_conditions_and_no_soft(components, soft):
    c = components
    gen = WeightedGenerator(c, steps=1, weighting="repeat")
    cond = gen.conditions(TARGET, PREF, soft, grid=[(2.0, 1.0)])
    text = "red, hat, striped, dotted, plain, striped, dotted, plain"  # target once, preference twice
    expected = encode_text(c.text_encoder, c.tokenizer, [text], 75)
    torch.testing.assert_close(cond, torch.cat([expected, soft[None]], dim=1))
    assert gen.conditions(TARGET, PREF, None, grid=[(1.0, 1.0)]).shape == (1, 77, c.text_dim)
    with pytest.raises(ValueError, match="keyword text"):
        gen.conditions(torch.zeros(40, 32), PREF, soft)


def test_rejects_bad_arguments(components):
    with pytest.raises(ValueError, match="scheduler"):
        WeightedGenerator(components, scheduler="euler-a")
    with pytest.raises(ValueError, match="weighting"):
        WeightedGenerator(components, weighting="both")
    with pytest.raises(ValueError, match="empty"):
        WeightedGenerator(components, steps=1).conditions(TARGET, PREF, None, grid=[])
