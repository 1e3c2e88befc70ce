"""PMGModel: the soft preference model conditioning a frozen Stable Diffusion, as plain PyTorch.

Training (Shen et al. 2024): the frozen LLM reads the behaviour prompt with L trainable soft tokens and
S-long P-Tuning v2 prefixes; a mapper turns the soft positions into E_m; the condition is the frozen
text-encoder states of the preference keywords (77−L tokens) followed by E_m (77 tokens); the loss is the
epsilon-prediction MSE on VAE latents of the target image. Only soft tokens, prefixes and mapper train.
Keyword text states and VAE latent distributions are frozen and reused, so they are cached after the first
epoch. Generation: a (w_p, w_t) grid in one batched call and a CLIP-scored choice among the candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from common.hashing import stable_hash
from pmg.diffusion import SDComponents
from pmg.soft_prompt import SoftPreferenceModel

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """Weighted generation and selection.

    Attributes:
        grid: (w_p, w_t) weight pairs, one candidate image each, generated in one batch.
        steps: denoising steps.
        guidance_scale: classifier-free guidance scale.
        scheduler: sampler (``ddim``, ``ddpm``, ``dpm``, ...).
        weighting: ``scale`` (embedding scaling, start token excluded) or ``repeat`` (keyword repetition).
        negative_prompt: None uses the scenario's negative prompt.
        alpha: weight of the preference term in the selection score z.
        clip_arch: open_clip architecture of the selection scorer.
        clip_pretrained: its pretrained tag or checkpoint path; None = random weights (offline default only,
            requires ``allow_random_clip``).
        allow_random_clip: accept random CLIP weights (scores are then plumbing only; the output says so).
        output_dir: where ``pmg predict`` writes images, JSON lines and contact sheets; None =
            ``<trainer.default_root_dir>/predictions``.
        save_candidates: also write every candidate image, not only the chosen one.
        seed: base seed; each (user, target) sample derives its own.
        predict_users: users ``pmg predict`` generates for (their test sample); default: the first
            ``predict_limit`` test users.
        predict_limit: number of users when ``predict_users`` is not given.
    """

    grid: list[tuple[float, float]] = field(default_factory=lambda: [(1.0, 1.0), (1.5, 1.0), (2.0, 1.0), (1.0, 1.5)])
    steps: int = 50
    guidance_scale: float = 6.0
    scheduler: str = "ddim"
    weighting: Literal["scale", "repeat"] = "scale"
    negative_prompt: str | None = None
    alpha: float = 0.5
    clip_arch: str = "ViT-B-32"
    clip_pretrained: str | None = "openai"
    allow_random_clip: bool = False
    output_dir: str | None = None
    save_candidates: bool = False
    seed: int = 42
    predict_users: list[str] | None = None
    predict_limit: int = 8


class PMGModel(nn.Module):
    """PMG: soft preference embeddings from an LLM conditioning a frozen Stable Diffusion.

    The Stable Diffusion components are held, not registered as submodules: the state dict is the soft
    preference model's (whose frozen LLM is rebuilt or reloaded by name), and :meth:`frozen_to` moves them.

    Args:
        soft: the soft preference model (frozen LLM, soft tokens, prefixes, mapper); ``n_soft_tokens == 0`` gives
            keyword-only PMG (nothing trains).
        sd: the frozen Stable Diffusion components.
        use_keywords: condition on preference keywords (False = the "without keywords" ablation: E_m after an
            empty prompt, in the same slots as in training).
        generation: grid, sampler and selection settings of :meth:`generate`.
        negative_prompt: the negative prompt when ``generation.negative_prompt`` is None (the scenario's).
    """

    def __init__(
        self,
        soft: SoftPreferenceModel,
        sd: SDComponents,
        use_keywords: bool = True,
        generation: GenerationConfig | None = None,
        negative_prompt: str = "",
    ) -> None:
        super().__init__()
        self.soft = soft
        self.sd = sd
        self.use_keywords = use_keywords
        self.generation = generation or GenerationConfig()
        self.negative_prompt = negative_prompt
        self._text_cache: dict[tuple[str, int], torch.Tensor] = {}
        self._latent_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._generator = None
        self._scorer = None

    @property
    def n_soft(self) -> int:
        """L, the soft tokens of the condition (0 without the soft embedding)."""
        return self.soft.n_soft_tokens

    @property
    def device(self) -> torch.device:
        return next(self.sd.unet.parameters()).device

    def frozen_to(self, device: torch.device) -> None:
        """Move the frozen Stable Diffusion components to ``device`` (they are not submodules)."""
        for module in (self.sd.vae, self.sd.unet, self.sd.text_encoder):
            if next(module.parameters()).device != device:
                module.to(device)

    def count_parameters(self) -> dict[str, Any]:
        """Trainable and total parameters of everything a run uses: the soft preference model (frozen LLM plus
        soft tokens, prefixes and mapper) and the frozen Stable Diffusion components. ``{"trainable", "total",
        "pct", "by_part"}``; ``by_part`` splits the trainable count."""
        counts = self.soft.count_parameters()
        sd = sum(p.numel() for m in (self.sd.vae, self.sd.unet, self.sd.text_encoder) for p in m.parameters())
        total = counts["trainable"] + counts["frozen"] + sd
        by_part = {k: v for k, v in counts.items() if k not in ("trainable", "frozen")}
        return {"trainable": counts["trainable"], "total": total, "pct": 100.0 * counts["trainable"] / total,
                "by_part": by_part}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by their name in this module (``soft.*``): what a checkpoint holds."""
        return {f"soft.{k}": v for k, v in self.soft.trainable_state_dict().items()}

    # -- frozen, cached pieces -----------------------------------------------------------------
    @torch.no_grad()
    def keyword_states(self, texts: list[str], length: int) -> torch.Tensor:
        """Frozen text-encoder states of keyword strings, cached per (text, length)."""
        from pmg.conditioning import encode_text

        missing = [t for t in dict.fromkeys(texts) if (t, length) not in self._text_cache]
        if missing:
            states = encode_text(self.sd.text_encoder, self.sd.tokenizer, missing, length)
            for t, s in zip(missing, states):
                self._text_cache[(t, length)] = s.detach()
        return torch.stack([self._text_cache[(t, length)] for t in texts]).to(self.device)

    @torch.no_grad()
    def latent_params(self, items: list[str], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE latent-distribution (mean, std) of target images, cached per item after the first epoch."""
        from pmg.diffusion import encode_images

        todo = [j for j, i in enumerate(items) if i not in self._latent_cache]
        if todo:
            mean, std = encode_images(self.sd, images[todo].to(self.device))
            for j, m, s in zip(todo, mean, std):
                self._latent_cache[items[j]] = (m.detach(), s.detach())
        means, stds = zip(*(self._latent_cache[i] for i in items))
        return torch.stack(means), torch.stack(stds)

    def soft_embedding(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """E_m ``[B, L, d_te]`` of a batch's behaviour prompts; None without the soft embedding."""
        return self.soft(batch["prompt_ids"], batch["prompt_mask"]) if self.n_soft else None

    def condition(self, batch: dict[str, Any]) -> torch.Tensor:
        """The [B, 77, d_te] training condition: preference-keyword states then the L mapped soft tokens."""
        from pmg.conditioning import assemble_condition

        total = self.sd.text_length
        texts = ([", ".join(k) for k in batch["pref_keywords"]] if self.use_keywords
                 else [""] * len(batch["samples"]))
        states = self.keyword_states(texts, total - self.n_soft)
        return assemble_condition(states, self.soft_embedding(batch), total=total)

    # -- training ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """The denoising loss of a batch: a fresh latent sample of each target image, noise and timestep."""
        from pmg.diffusion import diffusion_loss, sample_latents

        items = [s["target"] for s in batch["samples"]]
        mean, std = self.latent_params(items, batch["images"])
        latents = sample_latents(mean, std, self.sd.latent_scale)
        return diffusion_loss(self.sd, latents, self.condition(batch))

    @torch.no_grad()
    def sample_losses(self, batch: dict[str, Any]) -> torch.Tensor:
        """Validation loss of each sample, ``[B]``, with the latent sample, noise and timestep drawn from a generator
        seeded by the sample itself: comparable across epochs, and the same however the samples are batched or
        split across devices."""
        from pmg.diffusion import diffusion_loss

        samples = batch["samples"]
        mean, std = self.latent_params([s["target"] for s in samples], batch["images"])
        seeds = [int(stable_hash(f"{s['user']}\n{s['split']}\n{s['target']}", 12), 16) for s in samples]
        gens = [torch.Generator().manual_seed(seed) for seed in seeds]
        eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens]).to(mean)
        noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in gens])
        steps = self.sd.noise_scheduler.config.num_train_timesteps
        timesteps = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in gens])
        return diffusion_loss(self.sd, (mean + std * eps) * self.sd.latent_scale, self.condition(batch),
                              timesteps=timesteps, noise=noise, reduction="none")

    # -- generation ----------------------------------------------------------------------------
    @property
    def generator(self):
        if self._generator is None:
            from pmg.generator import WeightedGenerator

            g = self.generation
            self._generator = WeightedGenerator(
                self.sd, scheduler=g.scheduler, steps=g.steps, guidance_scale=g.guidance_scale,
                negative_prompt=g.negative_prompt or self.negative_prompt, weighting=g.weighting,
                target_tokens=min(40, (self.sd.text_length - self.n_soft) // 2),
            )
        return self._generator

    @property
    def scorer(self):
        if self._scorer is None:
            from pmg.selection import ClipScorer

            g = self.generation
            self._scorer = ClipScorer(g.clip_arch, g.clip_pretrained, allow_random_weights=g.allow_random_clip)
            if g.clip_pretrained is None:
                log.warning("PMG selection: CLIP scorer has random weights (offline default) - scores are "
                            "plumbing only")
        return self._scorer

    @torch.no_grad()
    def generate(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """For each sample: the grid's candidate images, their selection scores and the chosen one."""
        from pmg.selection import select_best

        g = self.generation
        soft = self.soft_embedding(batch)
        results = []
        for j, s in enumerate(batch["samples"]):
            pref, target = batch["pref_keywords"][j], batch["target_keywords"][j]
            pref_kw = pref if self.use_keywords else []
            seed = g.seed + int(stable_hash(f"{s['user']}\n{s['target']}", 12), 16) % 100_000
            images = self.generator.generate(target, pref_kw, None if soft is None else soft[j], g.grid, seed=seed)
            best, scores = select_best(images, pref, target, self.scorer, alpha=g.alpha)
            results.append({"sample": s, "images": images.cpu(), "best": best, "scores": scores,
                            "pref_keywords": pref, "target_keywords": target})
        return results
