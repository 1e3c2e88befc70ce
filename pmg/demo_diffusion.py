"""A small text-to-image model of the demo shop, trained by this module and saved as a Stable Diffusion folder.

The embedded offline default cannot download SD-1.5, and random from-config components generate noise, so the
demo would show nothing of what PMG does. This module trains the same three parts SD-1.5 has, at small size,
on renders of the demo shop (:mod:`common.data.demo`: every colour x shape x pattern, three backgrounds):

- **VAE** (diffusers ``AutoencoderKL``): 32x32 images <-> 4x16x16 latents, reconstruction MSE plus a small KL
  term (as SD's VAE, without its perceptual and adversarial losses, which these flat renders do not need);
  ``scaling_factor`` is set to 1/std of the training latents, as SD-1.5's 0.18215 was.
- **Text encoder** (transformers ``CLIPTextModel``, 64 wide) and a word tokenizer of the demo titles' words,
  trained jointly with the UNet (SD-1.5 keeps a pretrained CLIP text encoder frozen; none exists offline).
- **UNet** (diffusers ``UNet2DConditionModel``): epsilon prediction under SD-1.5's noise schedule, with an EMA
  of the weights (diffusers ``EMAModel``).

Captions are keyword lists as PMG writes them ("yellow, triangle, plain, verde") and title-like sentences,
with distractor words (brands, tiers, categories) that the renders do not show, attributes sometimes left out
(the model then draws any value), and 10 % empty or negative prompts for classifier-free guidance. A third of
the captions are encoded as two separate blocks (40 + 37 tokens), the layout in which PMG's weighted
generation places target and preference keywords.

The result is a standard diffusers folder (``model_index.json``, ``vae/``, ``unet/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``) that :func:`pmg.diffusion.load_sd_components` reads exactly as it reads
SD-1.5, so ``pmg fit --model.stable_diffusion common/demo_weights/diffusion`` runs the real-model code path.
The committed folder was made on CPU by::

    python -m pmg.demo_diffusion --out common/demo_weights/diffusion

which prints the attribute accuracy of generated images (the attribute probe of :mod:`common.demo_models`
reading images generated from captions, with fresh noise seeds) and writes it to ``training.json``.
Training saves a resumable state every ``--save_every`` steps next to the output folder; a rerun continues it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from common.data.demo import (
    AMAZON_CATEGORIES,
    BRANDS,
    COLOURS,
    ML_EXTRA_GENRES,
    ML_GENRES,
    PATTERN_ADJ,
    PATTERNS,
    POG_CATEGORIES,
    SHAPE_ADJ,
    SHAPES,
    TIERS,
)
from common.demo_models import RENDER_SIZE, combos, render_pixels, resolve

DEMO_DIFFUSION_DIR = Path("common/demo_weights/diffusion")
TRAINING_FILE = "training.json"
TARGET_TOKENS, PREFERENCE_TOKENS = 40, 37  # the two keyword blocks of PMG's weighted generation
#: Words of the demo titles that the renders do not show (brands, tiers, categories, genres): captions mix them in,
#: and they are part of the tokenizer's vocabulary with the attribute words. Any other word is the unknown token.
DISTRACTORS = (
    [w for b in BRANDS for w in b.lower().split()] + list(TIERS) + ["print", "item", "photo", "product"]
    + [w for c in (*AMAZON_CATEGORIES, *POG_CATEGORIES) for w in c.split()]
    + [g.lower() for g in (*ML_GENRES, *ML_EXTRA_GENRES)]
)


@dataclass
class TrainConfig:
    """Every setting of one training run (written to ``training.json``)."""

    image_size: int = 32
    per_combo: int = 40  # training renders per colour x shape x pattern
    vae_steps: int = 600
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    steps: int = 4000
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 100
    ema_decay: float = 0.999
    text_width: int = 64
    unet_channels: tuple[int, int] = (64, 128)
    uncond_prob: float = 0.1
    two_block_prob: float = 0.33
    drop_attribute_prob: float = 0.1
    seed: int = 0


# -- data ---------------------------------------------------------------------------------------------
def render_images(per_combo: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_combo`` renders of every combination, read as PMG reads item images (PNG at the demo's size, centre
    crop and bicubic resize to ``size``): ``[N, 3, size, size]`` in [-1, 1] and labels ``[N, 3]``."""
    pixels, labels = render_pixels(per_combo, seed, RENDER_SIZE, fit_to=size)
    return torch.from_numpy(pixels.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0, labels


def vocabulary_texts() -> list[str]:
    """Texts whose words form the tokenizer: attribute words in every form the demo titles use, distractors."""
    attributes = [*COLOURS, *SHAPES, *SHAPE_ADJ.values(), *PATTERNS, *PATTERN_ADJ.values(), "a", "an", "of", "the"]
    return [" ".join(attributes), " ".join(DISTRACTORS)]


def negative_prompts() -> list[str]:
    """The scenarios' negative prompts (pmg/prompts.yaml) and PMG's default one: the unconditional branch."""
    import yaml

    from pmg.generator import DEFAULT_NEGATIVE_PROMPT

    spec = yaml.safe_load((Path(__file__).parent / "prompts.yaml").read_text())
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "negative" and isinstance(v, str):
                    found.append(" ".join(v.split()))
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return sorted(set(found)) + [DEFAULT_NEGATIVE_PROMPT]


def attribute_words(rng: np.random.Generator, c: int, s: int, p: int, drop: float) -> list[str]:
    """The words naming a render's colour, shape and pattern (each left out with probability ``drop``)."""
    colour, shape, pattern = list(COLOURS)[c], SHAPES[s], PATTERNS[p]
    words = []
    if rng.random() >= drop:
        words.append(colour)
    if rng.random() >= drop:
        words.append(PATTERN_ADJ[pattern] if rng.random() < 0.75 else pattern)  # "striped" or "stripes"
    if rng.random() >= drop:
        words.append(shape if rng.random() < 0.75 else SHAPE_ADJ[shape])
    return words


def make_caption(rng: np.random.Generator, c: int, s: int, p: int, drop: float = 0.1) -> str:
    """A keyword list ("yellow, verde, triangle, plain") or a title-like phrase ("classic yellow plain triangle
    print top") naming the render's attributes among 0-4 distractor words."""
    words = attribute_words(rng, c, s, p, drop)
    extra = [DISTRACTORS[i] for i in rng.choice(len(DISTRACTORS), int(rng.integers(0, 5)), replace=False)]
    if rng.random() < 0.5:  # keyword list, any order
        tokens = words + extra
        rng.shuffle(tokens)
        return ", ".join(tokens)
    head = "a " if rng.random() < 0.3 else ""
    return head + " ".join(extra[:2] + words + extra[2:])


def split_blocks(rng: np.random.Generator, caption: str) -> tuple[str, str]:
    """A caption's keywords split at random into two prompts (PMG's target and preference blocks)."""
    parts = [w.strip() for w in caption.replace(",", " ").split() if w.strip()]
    rng.shuffle(parts)
    cut = int(rng.integers(0, len(parts) + 1))
    return ", ".join(parts[:cut]), ", ".join(parts[cut:])


# -- models -------------------------------------------------------------------------------------------
def build_components(tokenizer, config: TrainConfig):
    """Untrained VAE, UNet and text encoder of the demo size, and SD-1.5's noise schedule."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(config.seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_width, intermediate_size=2 * config.text_width,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32,
        sample_size=config.image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=config.image_size // 2, in_channels=4, out_channels=4,
        block_out_channels=tuple(config.unet_channels), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=config.text_width, attention_head_dim=8, norm_num_groups=32,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)
    return vae, unet, text_encoder, scheduler


def encode_captions(text_encoder, tokenizer, captions: Sequence[str | tuple[str, str]]) -> torch.Tensor:
    """Text states ``[B, 77, D]`` with gradients: a string is one 77-token prompt, a pair two blocks (40 + 37)."""
    ones = [i for i, c in enumerate(captions) if isinstance(c, str)]
    pairs = [i for i, c in enumerate(captions) if not isinstance(c, str)]
    out = [None] * len(captions)

    def states(texts: list[str], length: int) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        return text_encoder(ids.input_ids).last_hidden_state

    if ones:
        for i, s in zip(ones, states([captions[i] for i in ones], 77)):
            out[i] = s
    if pairs:
        first = states([captions[i][0] for i in pairs], TARGET_TOKENS)
        second = states([captions[i][1] for i in pairs], PREFERENCE_TOKENS)
        for k, i in enumerate(pairs):
            out[i] = torch.cat([first[k], second[k]])
    return torch.stack(out)


# -- training -----------------------------------------------------------------------------------------
def _state_path(out: Path) -> Path:
    return out.parent / f".{out.name}.train_state.pt"


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_vae(vae, images: torch.Tensor, config: TrainConfig, log_every: int = 100) -> float:
    """Fit the VAE on ``images`` in [-1, 1]; set and return its latent scaling factor."""
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.vae_lr, total_steps=config.vae_steps,
                                                pct_start=0.1)
    vae.train()
    for step in range(config.vae_steps):
        idx = torch.randint(0, len(images), (config.vae_batch,), generator=gen)
        x = images[idx]
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + config.kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"vae step {step + 1}/{config.vae_steps} loss {loss.item():.5f}", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means = torch.cat([vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)])
    scale = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)
    return scale


def train(out: str | Path, config: TrainConfig | None = None, save_every: int = 250, log_every: int = 50,
          eval_per_combo: int = 2, eval_steps: int = 20) -> dict[str, Any]:
    """Train VAE, text encoder and UNet; write the diffusers folder ``out`` with ``training.json``.

    A resumable state is saved every ``save_every`` steps beside ``out``; a later call with the same config
    continues from it (and deletes it once ``out`` is written). ``eval_per_combo`` images per combination,
    ``eval_steps`` DDIM steps each, measure the attribute accuracy of the result.
    """
    from diffusers.training_utils import EMAModel

    from common.demo_models import DEMO_PROBE_DIR, load_probe
    from common.tiny_tokenizer import build_word_tokenizer
    from pmg.diffusion import CLIP_SPECIAL_TOKENS, SDComponents, _from_parts, freeze, save_components

    config = config or TrainConfig()
    out = Path(out)
    t0 = time.time()
    images, labels = render_images(config.per_combo, seed=config.seed, size=config.image_size)
    state_path = _state_path(out)
    tok_dir = out.parent / f".{out.name}.tokenizer"
    tokenizer = build_word_tokenizer(vocabulary_texts(), tok_dir, CLIP_SPECIAL_TOKENS, add_eos=True,
                                     model_max_length=77)
    vae, unet, text_encoder, scheduler = build_components(tokenizer, config)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    ema = EMAModel(params, decay=config.ema_decay)
    start = 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if state["config"] != asdict(config):
            raise ValueError(f"{state_path} holds a run with other settings; delete it to start over")
        vae.load_state_dict(state["vae"])
        vae.register_to_config(scaling_factor=state["scale"])
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        ema.load_state_dict(state["ema"])
        start = state["step"]
        rng_state = state["rng"]
        print(f"resuming from step {start} ({state_path})", flush=True)
    else:
        train_vae(vae, images, config)
        rng_state = None
    vae.eval().requires_grad_(False)
    scale = float(vae.config.scaling_factor)
    with torch.no_grad():
        dists = [vae.encode(images[i : i + 256]).latent_dist for i in range(0, len(images), 256)]
        means = torch.cat([d.mean for d in dists])
        stds = torch.cat([d.std for d in dists])
    negatives = negative_prompts()
    gen = torch.Generator().manual_seed(config.seed + 1)
    rng = np.random.default_rng(config.seed + 1)
    if rng_state is not None:
        gen.set_state(rng_state["torch"])
        rng.bit_generator.state = rng_state["numpy"]
    unet.train()
    text_encoder.train()
    n_steps = scheduler.config.num_train_timesteps
    for step in range(start, config.steps):
        for group in opt.param_groups:
            group["lr"] = config.lr * _lr_factor(step, config)
        idx = torch.randint(0, len(images), (config.batch,), generator=gen)
        captions: list[str | tuple[str, str]] = []
        for c, s, p in labels[idx].tolist():
            r = rng.random()
            if r < config.uncond_prob * 0.5:
                captions.append("")
            elif r < config.uncond_prob:
                captions.append(negatives[int(rng.integers(len(negatives)))])
            else:
                text = make_caption(rng, c, s, p, config.drop_attribute_prob)
                captions.append(split_blocks(rng, text) if rng.random() < config.two_block_prob else text)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, n_steps, (config.batch,), generator=gen)
        noisy = scheduler.add_noise(latents, noise, t)
        cond = encode_captions(text_encoder, tokenizer, captions)
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=cond).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        if log_every and (step + 1) % log_every == 0:
            print(f"unet step {step + 1}/{config.steps} loss {loss.item():.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        if save_every and (step + 1) % save_every == 0 and step + 1 < config.steps:
            state = {"config": asdict(config), "step": step + 1, "scale": scale, "vae": vae.state_dict(),
                     "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "opt": opt.state_dict(),
                     "ema": ema.state_dict(), "rng": {"torch": gen.get_state(), "numpy": rng.bit_generator.state}}
            tmp = state_path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(state_path)
    ema.copy_to(params)
    components: SDComponents = freeze(_from_parts(vae, unet, text_encoder, tokenizer, scheduler))
    accuracy = generation_accuracy(components, load_probe(DEMO_PROBE_DIR), per_combo=eval_per_combo,
                                   seed=config.seed + 10_000, steps=eval_steps)
    report = {
        "config": asdict(config),
        "trained_on": "renders of common.data.demo (every colour x shape x pattern, three backgrounds)",
        "heldout_generation_accuracy": {k: round(v, 4) for k, v in accuracy.items()},
        "evaluated": f"{eval_per_combo} images per combination from the caption 'a <colour> <pattern> <shape>', "
                     f"fresh noise seeds, DDIM {eval_steps} steps, guidance 6, read by common/demo_weights/probe",
        "train_seconds": round(time.time() - t0, 1),
        "command": f"python -m pmg.demo_diffusion --out {out}",
    }
    save_components(components, out)
    (out / TRAINING_FILE).write_text(json.dumps(report, indent=1) + "\n")
    state_path.unlink(missing_ok=True)
    shutil.rmtree(tok_dir, ignore_errors=True)
    return report


# -- evaluation ---------------------------------------------------------------------------------------
@torch.no_grad()
def generation_accuracy(components, probe, per_combo: int = 2, seed: int = 10_000, steps: int = 20,
                        guidance_scale: float = 6.0, batch: int = 90) -> dict[str, float]:
    """Per-attribute accuracy of the probe on images generated from "a <colour> <pattern> <shape>" captions of
    every combination (``per_combo`` noise seeds each, never used in training)."""
    from pmg.conditioning import encode_text
    from pmg.generator import WeightedGenerator

    gen = WeightedGenerator(components, scheduler="ddim", steps=steps, guidance_scale=guidance_scale)
    names = (list(COLOURS), list(SHAPES), list(PATTERNS))
    jobs = [(c, s, p, k) for k in range(per_combo) for c, s, p in combos()]
    hits = {a: 0 for a in probe.attributes}
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        texts = [f"a {names[0][c]} {PATTERN_ADJ[names[2][p]]} {names[1][s]}" for c, s, p, _ in chunk]
        cond = encode_text(components.text_encoder, components.tokenizer, texts, components.text_length)
        images = gen.generate_from_embeds(cond, [seed + 1000 * k + j for j, (*_, k) in enumerate(chunk)])
        seen = probe.predict(images)
        for (c, s, p, _), pred in zip(chunk, seen):
            for a, truth in zip(probe.attributes, (names[0][c], names[1][s], names[2][p])):
                hits[a] += int(pred[a] == truth)
    return {a: h / len(jobs) for a, h in hits.items()}


def load_report(folder: str | Path) -> dict[str, Any]:
    """``training.json`` of a trained folder (its settings and measured accuracy)."""
    return json.loads((resolve(folder) / TRAINING_FILE).read_text())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pmg.demo_diffusion", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEMO_DIFFUSION_DIR), help="diffusers folder to write")
    p.add_argument("--steps", type=int, default=TrainConfig.steps, help="UNet + text encoder steps")
    p.add_argument("--vae_steps", type=int, default=TrainConfig.vae_steps)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (results are close, not bitwise, across "
                                                          "thread counts)")
    p.add_argument("--save_every", type=int, default=250, help="steps between resumable states")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = TrainConfig(steps=args.steps, vae_steps=args.vae_steps, seed=args.seed)
    report = train(args.out, config, save_every=args.save_every)
    accs = ", ".join(f"{k} {v:.3f}" for k, v in report["heldout_generation_accuracy"].items())
    print(f"demo diffusion -> {args.out}: generated-image attribute accuracy {accs}; {report['train_seconds']} s")


if __name__ == "__main__":
    main()
