"""Tiny Stable Diffusion components, VAE latents and the diffusion loss."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from common.data.corpus import DataError
from pmg.conditioning import assemble_condition, encode_text
from pmg.diffusion import (
    diffusion_loss,
    encode_images,
    load_image_tensor,
    load_sd_components,
    sample_latents,
    save_components,
    tiny_sd_components,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd():
    return tiny_sd_components(image_size=16)  # 16x16 images <-> 4x8x8 latents: fast on CPU


def test_tiny_components_sizes_frozen_and_seeded(sd):
    big = tiny_sd_components(image_size=32)
    assert big.image_size == 32 and big.latent_scale == pytest.approx(0.18215)
    mean, std = encode_images(big, torch.zeros(1, 3, 32, 32))
    assert mean.shape == std.shape == (1, 4, 16, 16)
    assert sd.text_dim == sd.unet.config.cross_attention_dim == 32 and sd.text_length == 77
    for module in (sd.vae, sd.unet, sd.text_encoder):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    same, other = tiny_sd_components(image_size=16), tiny_sd_components(image_size=16, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(sd.unet.parameters(), same.unet.parameters()))
    assert not torch.equal(sd.unet.conv_in.weight, other.unet.conv_in.weight)


def test_latents_sampling(sd):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    mean, std = encode_images(sd, images)
    assert mean.shape == (2, 4, 8, 8) and (std > 0).all()
    a = sample_latents(mean, std, sd.latent_scale, torch.Generator().manual_seed(3))
    b = sample_latents(mean, std, sd.latent_scale, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, mean * sd.latent_scale)
    torch.testing.assert_close(sample_latents(mean, torch.zeros_like(std), 0.5), mean * 0.5)


def test_unet_ignores_token_order_but_not_token_count(sd):
    torch.manual_seed(0)
    latents, cond, t = torch.randn(1, 4, 8, 8), torch.randn(1, 77, sd.text_dim), torch.tensor([500])
    with torch.no_grad():
        out = sd.unet(latents, t, encoder_hidden_states=cond).sample
        permuted = sd.unet(latents, t, encoder_hidden_states=cond[:, torch.randperm(77)]).sample
        dropped = sd.unet(latents, t, encoder_hidden_states=cond[:, :70]).sample
    torch.testing.assert_close(out, permuted, atol=1e-5, rtol=0)
    assert (out - dropped).abs().max() > 1e-4


def test_loss_is_finite_and_near_one_at_init(sd):
    torch.manual_seed(0)
    latents, cond = torch.randn(8, 4, 8, 8), torch.randn(8, 77, sd.text_dim)
    with torch.no_grad():
        loss = diffusion_loss(sd, latents, cond, generator=torch.Generator().manual_seed(0))
        fixed_t = diffusion_loss(sd, latents, cond, timesteps=torch.full((8,), 999))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert torch.isfinite(loss) and 0.8 < loss.item() < 1.6
    assert torch.isfinite(fixed_t)


def test_v_prediction_target(sd):
    from dataclasses import replace

    from diffusers import DDPMScheduler

    v_sd = replace(
        sd, noise_scheduler=DDPMScheduler.from_config(sd.noise_scheduler.config, prediction_type="v_prediction")
    )
    with torch.no_grad():
        assert torch.isfinite(diffusion_loss(v_sd, torch.randn(2, 4, 8, 8), torch.randn(2, 77, sd.text_dim)))


def test_overfitting_one_pair_with_soft_tokens_and_mapper(sd):
    """Only a soft-token tensor and a mapper train; the loss on a fixed (noise, t) draw goes down."""
    torch.manual_seed(0)
    mean, _ = encode_images(sd, torch.rand(1, 3, 16, 16) * 2 - 1)
    latents = (mean * sd.latent_scale).expand(2, -1, -1, -1)  # two (noise, t) draws of the same image
    keywords = encode_text(sd.text_encoder, sd.tokenizer, ["red hat"], max_length=73).expand(2, -1, -1)
    soft = torch.nn.Parameter(torch.randn(1, 4, 8))
    mapper = torch.nn.Linear(8, sd.text_dim)
    opt = torch.optim.Adam([soft, *mapper.parameters()], lr=0.1)
    unet_before = [p.detach().clone() for p in sd.unet.parameters()]

    def loss() -> torch.Tensor:
        cond = assemble_condition(keywords, mapper(soft).expand(2, -1, -1))
        return diffusion_loss(sd, latents, cond, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        start = loss().item()
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        end = loss().item()
    assert end < 0.95 * start, (start, end)
    assert all(p.grad is None for p in sd.unet.parameters())
    assert all(torch.equal(a, b) for a, b in zip(unet_before, sd.unet.parameters()))


def test_save_and_reload_round_trip(sd, tmp_path):
    out = save_components(sd, tmp_path / "sd")
    save_components(sd, out)  # overwriting an existing folder works and leaves no temporary folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd"]
    back = load_sd_components(out)
    assert back.image_size == sd.image_size and back.latent_scale == sd.latent_scale
    texts = ["red striped hat", ""]
    ids = sd.tokenizer(texts, padding="max_length", max_length=77).input_ids
    assert back.tokenizer(texts, padding="max_length", max_length=77).input_ids == ids
    torch.testing.assert_close(
        encode_text(back.text_encoder, back.tokenizer, texts, 77),
        encode_text(sd.text_encoder, sd.tokenizer, texts, 77),
        atol=0,
        rtol=0,
    )
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    for a, b in zip(encode_images(back, images), encode_images(sd, images)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    latents, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 77, sd.text_dim)
    with torch.no_grad():
        losses = [diffusion_loss(c, latents, cond, generator=torch.Generator().manual_seed(1)) for c in (sd, back)]
    assert torch.equal(*losses)


def test_missing_sd_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf download stable-diffusion-v1-5"):
        load_sd_components(tmp_path / "missing")


def test_load_image_centre_crops_instead_of_squashing(tmp_path):
    img = Image.new("RGB", (60, 20), (255, 0, 0))  # wide: red | white | blue thirds
    img.paste((255, 255, 255), (20, 0, 40, 20))
    img.paste((0, 0, 255), (40, 0, 60, 20))
    img.save(tmp_path / "wide.png")
    x = load_image_tensor(tmp_path / "wide.png", 8)
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    # Only the white centre square survives (the border columns feel a little of the bicubic kernel's reach);
    # a squash would give a red and a blue third, i.e. channels at -1.
    torch.testing.assert_close(x[:, :, 1:-1], torch.ones(3, 8, 6), atol=1e-2, rtol=0)
    assert x.min() > 0.5
    Image.new("L", (5, 5), 0).save(tmp_path / "grey.png")
    assert load_image_tensor(tmp_path / "grey.png", 4).eq(-1).all()


def test_unreadable_images_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="nope.png"):
        load_image_tensor(tmp_path / "nope.png", 8)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        load_image_tensor(tmp_path / "bad.jpg", 8)
