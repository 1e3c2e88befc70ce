"""Weighted generation: the whole (w_p, w_t) grid of one sample in ONE batched diffusion call.

For each weight pair a condition ``[77, d_te]`` is built:

- ``weighting="scale"``: ``[w_t * E(target keywords, T_t tokens); w_p * E(preference keywords, T_p tokens);
  w_p * E_m (L tokens)]`` with ``T_t + T_p + L = 77``. Each keyword block keeps its start-token state
  unscaled (its norm is huge and the same for every prompt, :func:`pmg.conditioning.scale_tokens`).
- ``weighting="repeat"`` (MindSpore demo): the prompt repeats the target keywords ``round(w_t)`` times and
  the preference keywords ``round(w_p)`` times (half rounds up), encoded to ``77 - L`` tokens, then E_m.

The K conditions go through the stock ``StableDiffusionPipeline`` as ``prompt_embeds``; the negative prompt
is encoded once and repeated, so the UNet sees a batch of 2K per step ([negative x K; conditions x K]) with
classifier-free guidance. Every pair starts from the same noise: the pipeline gets K CPU generators seeded
identically, one per batch row (diffusers draws row i from generator i), so the initial latents — and, for
the ancestral DDPM sampler, the per-step noise — are identical across pairs and independent of the batch
size. Differences between the K images therefore come from the weights only, and the batched grid equals K
sequential calls up to float round-off (tested). Using the stock pipeline rather than a hand-written loop
keeps scheduler details (scaling, timesteps, DPM-Solver state) upstream's.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from pmg.conditioning import assemble_condition, encode_text, repeat_keywords, scale_tokens
from pmg.diffusion import SDComponents, as_pipeline

Weighting = Literal["scale", "repeat"]
SchedulerName = Literal["ddim", "ddpm", "dpmsolver"]
Keywords = str | Sequence[str]
#: PMG-Bench's negative prompt.
DEFAULT_NEGATIVE_PROMPT = "lowres, text, error, cropped, worst quality, low quality"
#: Default (w_p, w_t) grid: integers, so "repeat" and "scale" use the same pairs.
DEFAULT_GRID: tuple[tuple[float, float], ...] = ((1.0, 1.0), (2.0, 1.0), (1.0, 2.0), (2.0, 2.0))
#: Inference schedulers by name; each is built from the training scheduler's config (same betas).
SCHEDULERS = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "dpmsolver": "DPMSolverMultistepScheduler"}


def _round_half_up(w: float) -> int:
    return int(math.floor(w + 0.5))


def _as_list(keywords: Keywords) -> list[str]:
    return [keywords] if isinstance(keywords, str) else list(keywords)


class WeightedGenerator:
    """Generate one image per (w_p, w_t) weight pair, all pairs in one batched pipeline call.

    Args:
        components: frozen SD parts (:func:`pmg.diffusion.tiny_sd_components` or ``load_sd_components``).
        scheduler: sampler name, one of :data:`SCHEDULERS` (``ddim``: deterministic, eta 0).
        steps: denoising steps.
        guidance_scale: classifier-free guidance scale (PMG-Bench 6.0).
        negative_prompt: text of the shared negative branch, encoded to the full 77 tokens.
        weighting: ``"scale"`` (embedding scaling) or ``"repeat"`` (keyword repetition).
        target_tokens: T_t, tokens of the target-keyword block in "scale" mode (PMG-Bench: 40); the preference
            block gets the rest, ``77 - T_t - L``.
        sep: separator joining keyword lists into a prompt.
    """

    def __init__(
        self,
        components: SDComponents,
        scheduler: SchedulerName = "ddim",
        steps: int = 50,
        guidance_scale: float = 6.0,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        weighting: Weighting = "scale",
        target_tokens: int = 40,
        sep: str = ", ",
    ) -> None:
        import diffusers

        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {sorted(SCHEDULERS)}")
        if weighting not in ("scale", "repeat"):
            raise ValueError(f"weighting must be 'scale' or 'repeat', got {weighting!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if abs(components.latent_scale - components.vae.config.scaling_factor) > 1e-9:
            # the stock pipeline decodes with vae.config.scaling_factor; a different latent_scale would mean the
            # UNet was trained on differently scaled latents
            raise ValueError(
                f"latent_scale {components.latent_scale} != vae.config.scaling_factor "
                f"{components.vae.config.scaling_factor}"
            )
        self.components = components
        self.steps, self.guidance_scale = steps, guidance_scale
        self.negative_prompt, self.weighting, self.sep = negative_prompt, weighting, sep
        self.total = components.text_length
        if not 2 <= target_tokens <= self.total - 2:
            raise ValueError(f"target_tokens must leave room for the preference block, got {target_tokens}")
        self.target_tokens = target_tokens
        sched_cls = getattr(diffusers, SCHEDULERS[scheduler])
        # steps_offset=1 / clip_sample=False are what StableDiffusionPipeline enforces (with a deprecation
        # warning) for SD schedulers; set them up front.
        accepted = inspect.signature(sched_cls.__init__).parameters
        overrides = {k: v for k, v in (("steps_offset", 1), ("clip_sample", False)) if k in accepted}
        self.scheduler = sched_cls.from_config(components.noise_scheduler.config, **overrides)
        self.pipe = as_pipeline(components, self.scheduler)
        self.pipe.set_progress_bar_config(disable=True)
        self._negative: Tensor | None = None

    # -- conditions -------------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str], length: int) -> Tensor:
        c = self.components
        return encode_text(c.text_encoder, c.tokenizer, list(texts), length)

    @property
    def negative_embeds(self) -> Tensor:
        """The negative prompt's states ``[1, 77, d_te]`` (encoded once)."""
        if self._negative is None:
            self._negative = self._encode([self.negative_prompt], self.total)
        return self._negative

    @staticmethod
    def _soft(soft: Tensor | None) -> Tensor | None:
        if soft is None:
            return None
        soft = soft.unsqueeze(0) if soft.dim() == 2 else soft
        if soft.dim() != 3 or soft.shape[0] != 1:
            raise ValueError(f"soft must be [L, D] or [1, L, D] for one sample, got {tuple(soft.shape)}")
        return soft

    def _states(self, block: Keywords | Tensor, length: int) -> Tensor:
        if isinstance(block, Tensor):
            states = block.unsqueeze(0) if block.dim() == 2 else block
            if states.dim() != 3 or states.shape[0] != 1:
                raise ValueError(f"precomputed states must be [T, D] or [1, T, D], got {tuple(block.shape)}")
            return states
        return self._encode([self.sep.join(_as_list(block))], length)

    @torch.no_grad()
    def conditions(
        self,
        target: Keywords | Tensor,
        pref: Keywords | Tensor,
        soft: Tensor | None,
        grid: Sequence[tuple[float, float]] = DEFAULT_GRID,
    ) -> Tensor:
        """The K conditions ``[K, 77, d_te]`` of one sample, in grid order.

        Args:
            target: target keywords (list or string), or — "scale" mode only — their precomputed states
                ``[T_t, D]`` (cached CLIP-text states: the text encoder is frozen).
            pref: preference keywords, or their precomputed states ``[T_p, D]``.
            soft: E_m ``[L, D]`` / ``[1, L, D]``, or None (keywords only).
            grid: (w_p, w_t) pairs.
        """
        if not grid:
            raise ValueError("empty weight grid")
        soft = self._soft(soft)
        n_soft = 0 if soft is None else soft.shape[1]
        if self.weighting == "repeat":
            if isinstance(target, Tensor) or isinstance(pref, Tensor):
                raise ValueError("'repeat' weighting re-tokenises the keywords: pass keyword text, not states")
            texts = [
                repeat_keywords(_as_list(target), _as_list(pref), _round_half_up(w_t), _round_half_up(w_p), self.sep)
                for w_p, w_t in grid
            ]
            states = self._encode(texts, self.total - n_soft)
            softs = None if soft is None else soft.expand(len(grid), -1, -1)
            return assemble_condition(states, softs, total=self.total)
        e_t = self._states(target, self.target_tokens)
        e_p = self._states(pref, self.total - e_t.shape[1] - n_soft)
        out = []
        for w_p, w_t in grid:
            keywords = torch.cat([scale_tokens(e_t, w_t), scale_tokens(e_p, w_p)], dim=1)
            scaled_soft = None if soft is None else scale_tokens(soft, w_p, skip_first=False)
            out.append(assemble_condition(keywords, scaled_soft, total=self.total))
        return torch.cat(out)

    # -- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_from_embeds(self, prompt_embeds: Tensor, seeds: Sequence[int]) -> Tensor:
        """One pipeline call over ``prompt_embeds [N, 77, D]``; row i starts from the noise of ``seeds[i]``.

        Returns images ``[N, 3, H, W]`` in [0, 1].
        """
        if len(seeds) != prompt_embeds.shape[0]:
            raise ValueError(f"{prompt_embeds.shape[0]} conditions but {len(seeds)} seeds")
        n = prompt_embeds.shape[0]
        # CPU generators: the same noise on any device; one per row so rows do not depend on the batch size
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        size = self.components.image_size
        out = self.pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=self.negative_embeds.expand(n, -1, -1),
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            generator=generators,
            height=size,
            width=size,
            output_type="pt",
        )
        return out.images.float().clamp(0.0, 1.0)

    def generate(
        self,
        target: Keywords | Tensor,
        pref: Keywords | Tensor,
        soft: Tensor | None = None,
        grid: Sequence[tuple[float, float]] = DEFAULT_GRID,
        seed: int = 0,
    ) -> Tensor:
        """All K weight pairs of one (user, target) sample in one batched call -> ``[K, 3, H, W]`` in [0, 1].

        ``seed`` is the sample's seed (e.g. derived from user and target ids); every pair uses it.
        """
        cond = self.conditions(target, pref, soft, grid)
        return self.generate_from_embeds(cond, [seed] * cond.shape[0])

    def generate_sequential(
        self,
        target: Keywords | Tensor,
        pref: Keywords | Tensor,
        soft: Tensor | None = None,
        grid: Sequence[tuple[float, float]] = DEFAULT_GRID,
        seed: int = 0,
    ) -> Tensor:
        """Same images as :meth:`generate`, one pipeline call per pair (benchmark and equality test)."""
        cond = self.conditions(target, pref, soft, grid)
        return torch.cat([self.generate_from_embeds(cond[i : i + 1], [seed]) for i in range(cond.shape[0])])

    def generate_many(
        self,
        samples: Sequence[tuple[Keywords | Tensor, Keywords | Tensor, Tensor | None]],
        seeds: Sequence[int],
        grid: Sequence[tuple[float, float]] = DEFAULT_GRID,
    ) -> Tensor:
        """Several samples' grids in one call (UNet batch 2·N·K) -> ``[N, K, 3, H, W]``.

        Args:
            samples: ``(target, pref, soft)`` per sample, as for :meth:`generate`.
            seeds: one seed per sample.
        """
        if len(samples) != len(seeds):
            raise ValueError(f"{len(samples)} samples but {len(seeds)} seeds")
        cond = torch.cat([self.conditions(t, p, s, grid) for t, p, s in samples])
        k = len(grid)
        images = self.generate_from_embeds(cond, [s for s in seeds for _ in range(k)])
        return images.view(len(samples), k, *images.shape[1:])
