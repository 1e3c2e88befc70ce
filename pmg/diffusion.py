"""Frozen Stable Diffusion components and the diffusion loss that trains PMG's soft embedding.

Components come either from a Stable Diffusion folder / hub name (``load_sd_components``) or from small configs
with random weights (``tiny_sd_components``, the offline default and tests); both give
an :class:`SDComponents` that ``save_components`` writes in the standard diffusers layout (``vae/``, ``unet/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``, ``model_index.json``), so a from-config run reloads offline.

VAE encodings are split into :func:`encode_images` (latent-distribution mean/std, cacheable once per item,
since the VAE is frozen) and :func:`sample_latents` (a fresh sample per step, as PMG-Bench's ``latent_dist.sample()``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image, ImageOps
from torch import Tensor
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

from common.data.corpus import DataError
from common.io import atomic_dir
from common.tiny_tokenizer import build_word_tokenizer
from common.weights import model_not_available

#: SD-1.5's special tokens; it pads with its end token.
CLIP_SPECIAL_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}
#: Vocabulary of the tiny tokenizer when no corpus text is given (tests, smoke runs).
DEFAULT_TINY_TEXTS = (
    "a photo of a red blue green yellow black white round square striped dotted plain item",
    "shirt dress hat shoe bag poster movie costume sticker style colour shape pattern",
)


@dataclass
class SDComponents:
    """The frozen parts of Stable Diffusion that PMG conditions and trains through.

    Attributes:
        vae: image <-> latent autoencoder.
        unet: epsilon (or v) predictor conditioned on ``[B, 77, d_te]`` text states.
        text_encoder: CLIP text model (keywords -> states).
        tokenizer: its tokenizer (pads to the text length with the end token).
        noise_scheduler: DDPM training scheduler (forward noising, ``num_train_timesteps`` T).
        image_size: pixel size the UNet was trained for (512 for SD-1.5).
        latent_scale: ``vae.config.scaling_factor`` (0.18215 for SD-1.5).
    """

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: PreTrainedTokenizerBase
    noise_scheduler: DDPMScheduler
    image_size: int
    latent_scale: float

    @property
    def text_dim(self) -> int:
        """Width d_te of the text states the UNet cross-attends to (768 for SD-1.5)."""
        return self.text_encoder.config.hidden_size

    @property
    def text_length(self) -> int:
        """Number of conditioning tokens (77 for SD-1.5)."""
        return self.text_encoder.config.max_position_embeddings


def _from_parts(vae, unet, text_encoder, tokenizer, scheduler) -> SDComponents:
    downsample = 2 ** (len(vae.config.block_out_channels) - 1)
    return SDComponents(
        vae=vae,
        unet=unet,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=scheduler,
        image_size=int(unet.config.sample_size) * downsample,
        latent_scale=float(vae.config.scaling_factor),
    )


def load_sd_components(name_or_path: str | os.PathLike, dtype: torch.dtype | None = None) -> SDComponents:
    """Load vae/unet/text_encoder/tokenizer/scheduler from a Stable Diffusion folder (or hub name, when online).

    The scheduler is always a :class:`DDPMScheduler` built from the folder's scheduler config (SD-1.5 ships a PNDM
    config; training uses DDPM noising with the same betas). Offline, a missing model raises FileNotFoundError
    saying what to download.
    """
    from common.demo_models import resolve

    if resolve(name_or_path).is_dir():  # a relative folder is also looked up under the repository (demo weights)
        name_or_path = str(resolve(name_or_path))
    try:
        vae = AutoencoderKL.from_pretrained(name_or_path, subfolder="vae", torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(name_or_path, subfolder="unet", torch_dtype=dtype)
        text_encoder = CLIPTextModel.from_pretrained(name_or_path, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, subfolder="tokenizer")
        scheduler = DDPMScheduler.from_pretrained(name_or_path, subfolder="scheduler")
    except OSError as err:
        raise model_not_available(
            str(name_or_path), "Stable Diffusion model (a diffusers folder with vae/ unet/ text_encoder/ tokenizer/ "
            "scheduler/)", "stable-diffusion-v1-5/stable-diffusion-v1-5", err, where="`model.stable_diffusion`"
        ) from err
    return freeze(_from_parts(vae, unet, text_encoder, tokenizer, scheduler))


def tiny_sd_components(
    tokenizer_dir: str | os.PathLike | None = None,
    texts: Iterable[str] = DEFAULT_TINY_TEXTS,
    image_size: int = 32,
    seed: int = 0,
) -> SDComponents:
    """Small random SD components: 32x32 images <-> 4x16x16 latents, 32-wide text states.

    Args:
        tokenizer_dir: where the word tokenizer built from ``texts`` is saved; None keeps it in memory only.
        texts: corpus text whose words form the tokenizer vocabulary.
        image_size: pixel size (the VAE halves it once).
        seed: the weights are a function of the seed alone.
    """
    if tokenizer_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = _tiny_clip_tokenizer(texts, Path(tmp) / "tokenizer")
    else:
        tokenizer = _tiny_clip_tokenizer(texts, tokenizer_dir)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(text_config)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=image_size,
        )
        unet = UNet2DConditionModel(
            sample_size=image_size // 2,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=32,
        )
    # SD-1.5's noise schedule (steps_offset/clip_sample as its scheduler config, so pipelines need not patch it).
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        clip_sample=False,
    )
    return freeze(_from_parts(vae, unet, text_encoder, tokenizer, scheduler))


def _tiny_clip_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike) -> PreTrainedTokenizerBase:
    return build_word_tokenizer(texts, out_dir, CLIP_SPECIAL_TOKENS, add_eos=True, model_max_length=77)


def as_pipeline(c: SDComponents, scheduler=None):
    """The stock ``StableDiffusionPipeline`` over these components (no safety checker, feature extractor or image
    encoder); ``scheduler`` defaults to the training noise scheduler."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        unet=c.unet,
        scheduler=c.noise_scheduler if scheduler is None else scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def save_components(c: SDComponents, out_dir: str | os.PathLike) -> Path:
    """Write ``c`` as a diffusers Stable Diffusion folder (atomically); reload with :func:`load_sd_components`.

    The folder is also a valid ``StableDiffusionPipeline`` checkpoint (no safety checker or feature extractor).
    """
    pipe = as_pipeline(c)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(tmp)
    return Path(out_dir)


def freeze(c: SDComponents) -> SDComponents:
    """No gradients into and eval mode for vae, unet and text encoder (gradients still flow *through* them)."""
    for module in (c.vae, c.unet, c.text_encoder):
        module.requires_grad_(False)
        module.eval()
    return c


# ----------------------------------------------------------------------------------------------------- latents
@torch.no_grad()
def encode_images(c: SDComponents, images: Tensor) -> tuple[Tensor, Tensor]:
    """Latent-distribution parameters (mean, std), each ``[B, 4, h, w]``, of images ``[B, 3, H, W]`` in [-1, 1]."""
    dist = c.vae.encode(images.to(device=c.vae.device, dtype=c.vae.dtype)).latent_dist
    return dist.mean, dist.std


def sample_latents(mean: Tensor, std: Tensor, scale: float, generator: torch.Generator | None = None) -> Tensor:
    """A sample of N(mean, std^2) times the VAE scaling factor ``scale`` (``SDComponents.latent_scale``)."""
    return (mean + std * _randn(mean, generator)) * scale


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device (so a CPU generator gives the
    same numbers whatever device the model runs on), then moved to ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def diffusion_loss(
    c: SDComponents,
    latents: Tensor,
    condition: Tensor,
    generator: torch.Generator | None = None,
    timesteps: Tensor | None = None,
    noise: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Denoising loss of the frozen UNet: fp32 MSE between its prediction and the target.

    ``latents`` are scaled VAE latents ``[B, 4, h, w]``, ``condition`` the text states ``[B, 77, d_te]``.
    t ~ U{0..T-1} unless ``timesteps`` are given, and the noise is drawn unless ``noise`` is given; drawn values
    come from ``generator``, on its device. The target is the noise (epsilon prediction, SD-1.5) or the velocity
    for v-prediction schedulers. No SNR weighting, no offset noise (as PMG-Bench). ``reduction``: ``mean`` (one
    number) or ``none`` (the MSE of each sample, ``[B]``).
    """
    unet = c.unet
    latents = latents.to(device=unet.device, dtype=unet.dtype)
    noise = _randn(latents, generator) if noise is None else noise.to(latents)
    if timesteps is None:
        n_steps = c.noise_scheduler.config.num_train_timesteps
        device = generator.device if generator is not None else latents.device
        timesteps = torch.randint(0, n_steps, (latents.shape[0],), generator=generator, device=device)
    timesteps = timesteps.to(latents.device).long()
    noisy = c.noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = c.noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = c.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} (epsilon or v_prediction)")
    pred = unet(noisy, timesteps, encoder_hidden_states=condition.to(unet.dtype)).sample
    if reduction == "none":
        return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
    return F.mse_loss(pred.float(), target.float())


# ------------------------------------------------------------------------------------------------------ images
def load_image_tensor(path: str | os.PathLike, size: int) -> Tensor:
    """Read an image as ``[3, size, size]`` in [-1, 1]: centre crop to a square, then resize (no aspect squash).

    Raises:
        DataError: the file is missing or not a readable image (never replaced by noise).
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.fit(img.convert("RGB"), (size, size), method=Image.Resampling.BICUBIC)
    except (OSError, ValueError) as err:  # FileNotFoundError, UnidentifiedImageError, truncated data
        raise DataError(f"cannot read image {os.fspath(path)!r}: {err}") from err
    array = np.asarray(img, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0
