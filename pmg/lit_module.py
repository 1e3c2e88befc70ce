"""PMGLitModule: trains the soft preference embedding through a frozen diffusion model, generates and scores.

Training (Shen et al. 2024): the frozen LLM reads the behaviour prompt with L trainable soft tokens and
S-long P-Tuning v2 prefixes; a mapper turns the soft positions into E_m; the condition is the frozen
text-encoder states of the preference keywords (77−L tokens) followed by E_m (77 tokens); the loss is the
epsilon-prediction MSE on VAE latents of the target image. Only soft tokens, prefixes and mapper train.
Keyword text states and VAE latent distributions are frozen and reused, so they are cached after the first
epoch. Generation: a (w_p, w_t) grid in one batched call, CLIP-scored selection, images on disk.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from common.distributed import gather_keyed
from common.hashing import stable_hash
from common.io import write_json
from pmg.data import PMGDataConfig, PMGSampleBuilder
from pmg.keywords import KeywordExtractor

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
        output_dir: where ``pmg predict`` writes images, JSON lines and contact sheets.
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
    output_dir: str = "outputs/pmg/predictions"
    save_candidates: bool = False
    seed: int = 42
    predict_users: list[str] | None = None
    predict_limit: int = 8


@dataclass
class EvalConfig:
    """``pmg test`` metrics (LPIPS/SSIM against history and target, as the PMG paper).

    Attributes:
        lpips_net: LPIPS trunk (``vgg`` like PMG-Bench/Pigeon, or ``alex``).
        allow_random_lpips: offline fallback to a random LPIPS trunk (plumbing only; labelled in the table).
        results_file: JSON file (under the trainer's root dir) of the metric table.
        probe: folder of an attribute probe (``common.demo_models``, e.g. ``common/demo_weights/probe``; a relative
            path missing from the working directory is taken from the repository root) for
            demo data: the table then adds ``target_acc`` (the chosen image shows the target item's shape) and
            ``pref_acc`` (it shows the user's preferred colour). None: not reported.
        truth: the demo's ``truth.json`` (default with a probe: ``truth.json`` in the parent of the data folder,
            where ``vip5-data demo`` writes it; the format is the data folder's name).
    """

    lpips_net: Literal["vgg", "alex"] = "vgg"
    allow_random_lpips: bool = False
    results_file: str = "pmg_test_results.json"
    probe: str | None = None
    truth: str | None = None


class PMGLitModule(L.LightningModule):
    """PMG: soft preference embeddings from an LLM conditioning a frozen Stable Diffusion.

    Args:
        llm: causal LM name/folder for the soft preference model (``meta-llama/Llama-2-7b-chat-hf``); None
            builds a small from-config Llama (offline default).
        llm_config: keyword arguments of the small Llama (``pmg.soft_prompt.tiny_llama``) when ``llm`` is None.
        stable_diffusion: Stable Diffusion folder/name (SD-1.5); None builds small from-config components.
        image_size: image size of the from-config components (SD-1.5 uses 512 from its own config).
        n_soft_tokens: L, trainable soft tokens (paper 4).
        prefix_length: S, P-Tuning v2 prefix length per layer (paper 4); 0 = without P-Tuning v2.
        use_soft: condition on the soft embedding (False = the "without soft embeddings" ablation).
        use_keywords: condition on preference keywords (False = the "without keywords" ablation).
        data: sample settings (scenario, history length, keyword counts).
        keywords: keyword extractor (``pmg.keywords.TfidfKeywordExtractor`` default, or
            ``pmg.keywords.LLMKeywordExtractor`` with a model name for the paper's LLM keywords).
        generation: weighted generation and selection settings.
        evaluation: test metric settings.
        lr: AdamW learning rate of soft tokens, prefixes and mapper (prefix tuning likes 1e-4..1e-3; the
            PMG-Bench 5e-6 barely moves randomly initialised weights).
        weight_decay: AdamW weight decay.
        llm_dtype: dtype of the frozen LLM when loaded by name (``bfloat16`` for 7B models).
        gradient_checkpointing: recompute LLM layers in backward (for 7B models).
        seed: seed of the from-config components and of the soft-token initialisation.
    """

    # settings of how a trained model is used, taken from the command line even with --ckpt_path
    RUNTIME_KEYS = ("generation", "evaluation")

    def __init__(
        self,
        llm: str | None = None,
        llm_config: dict[str, Any] | None = None,
        stable_diffusion: str | None = None,
        image_size: int = 32,
        n_soft_tokens: int = 4,
        prefix_length: int = 4,
        use_soft: bool = True,
        use_keywords: bool = True,
        data: PMGDataConfig | None = None,
        keywords: KeywordExtractor | None = None,
        generation: GenerationConfig | None = None,
        evaluation: EvalConfig | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        llm_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["keywords"])
        self.data_config = data or PMGDataConfig()
        self.gen_config = generation or GenerationConfig()
        self.eval_config = evaluation or EvalConfig()
        self.sample_builder = PMGSampleBuilder(self.data_config, keywords=keywords, llm_tokenizer=llm,
                                               image_size=image_size)
        self.soft = None  # SoftPreferenceModel, built in configure_model
        self.sd = None  # SDComponents (frozen, not part of the state dict)
        self.strict_loading = False
        self._text_cache: dict[tuple[str, int], torch.Tensor] = {}
        self._latent_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._generator = None
        self._scorer = None
        self._demo_eval = None  # (attribute probe, demo truth) during `pmg test` with model.evaluation.probe

    # -- construction --------------------------------------------------------------------------
    @property
    def n_soft(self) -> int:
        return self.hparams.n_soft_tokens if self.hparams.use_soft else 0

    def configure_model(self) -> None:
        if self.soft is not None:
            return
        from pmg.diffusion import load_sd_components, tiny_sd_components
        from pmg.soft_prompt import SoftPreferenceModel, tiny_llama

        hp = self.hparams
        builder = self.sample_builder
        if builder.tokenizer is None:
            raise RuntimeError("PMGLitModule needs its sample builder connected to data before the model is built")
        if hp.stable_diffusion:
            self.sd = load_sd_components(hp.stable_diffusion)
        else:
            digest = stable_hash("\n".join(builder.vocabulary_texts()), 12)
            folder = builder.data.cache_dir / f"pmg_clip_tokenizer_{digest}"
            self.sd = tiny_sd_components(folder, texts=builder.vocabulary_texts(), image_size=hp.image_size,
                                         seed=hp.seed)
        builder.image_size = self.sd.image_size
        if hp.llm:
            llm = hp.llm
        else:
            kwargs = dict(hp.llm_config or {})
            llm = tiny_llama(len(builder.tokenizer), pad_token_id=builder.tokenizer.pad_token_id, seed=hp.seed,
                             **kwargs)
        dtype = getattr(torch, hp.llm_dtype)
        self.soft = SoftPreferenceModel(
            llm, text_encoder_dim=self.sd.text_dim, n_soft_tokens=self.n_soft, prefix_length=hp.prefix_length,
            gradient_checkpointing=hp.gradient_checkpointing, dtype=dtype, seed=hp.seed,
        )

    def setup(self, stage: str) -> None:
        if stage == "predict":  # before the predict dataloader is built
            self.sample_builder.predict_users = self.gen_config.predict_users
            self.sample_builder.predict_limit = self.gen_config.predict_limit
        if stage == "fit" and not self.n_soft:
            raise ValueError(
                "nothing to train: use_soft is false (or n_soft_tokens is 0), so PMG is keyword-only; "
                "run `pmg predict` / `pmg test` directly"
            )

    def count_parameters(self) -> dict[str, Any]:
        """Trainable and total parameters of everything a run uses: the soft preference model (frozen LLM plus
        soft tokens, prefixes and mapper) and the frozen Stable Diffusion components (not submodules of this
        module). ``{"trainable", "total", "pct", "by_part"}``; ``by_part`` splits the trainable count."""
        counts = self.soft.count_parameters()
        sd = sum(p.numel() for m in (self.sd.vae, self.sd.unet, self.sd.text_encoder) for p in m.parameters())
        total = counts["trainable"] + counts["frozen"] + sd
        by_part = {k: v for k, v in counts.items() if k not in ("trainable", "frozen")}
        return {"trainable": counts["trainable"], "total": total, "pct": 100.0 * counts["trainable"] / total,
                "by_part": by_part}

    def on_fit_start(self) -> None:
        counts = self.count_parameters()
        rank_zero_info(f"PMG trainable parameters: {counts['trainable']:,} / {counts['total']:,} "
                       f"({counts['pct']:.3f}%, LLM + Stable Diffusion) {counts['by_part']}")
        for logger in self.loggers:  # self.log is not allowed in on_fit_start
            logger.log_hyperparams({"params/trainable": counts["trainable"], "params/pct": counts["pct"]})

    # -- frozen, cached pieces -----------------------------------------------------------------
    def _frozen_to_device(self) -> None:
        sd = self.sd
        for module in (sd.vae, sd.unet, sd.text_encoder):
            if next(module.parameters()).device != self.device:
                module.to(self.device)

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

    def condition(self, batch: dict[str, Any]) -> torch.Tensor:
        """The [B, 77, d_te] training condition: preference-keyword states then the L mapped soft tokens."""
        from pmg.conditioning import assemble_condition

        total = self.sd.text_length
        texts = [", ".join(k) for k in batch["pref_keywords"]] if self.hparams.use_keywords else [""] * len(
            batch["samples"])
        states = self.keyword_states(texts, total - self.n_soft)
        soft = self.soft(batch["prompt_ids"], batch["prompt_mask"]) if self.n_soft else None
        return assemble_condition(states, soft, total=total)

    # -- training ------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        from pmg.diffusion import diffusion_loss, sample_latents

        self._frozen_to_device()
        items = [s["target"] for s in batch["samples"]]
        mean, std = self.latent_params(items, batch["images"])
        latents = sample_latents(mean, std, self.sd.latent_scale)
        return diffusion_loss(self.sd, latents, self.condition(batch))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["samples"]))
        return loss

    @torch.no_grad()
    def sample_losses(self, batch: dict[str, Any]) -> torch.Tensor:
        """Validation loss of each sample, ``[B]``, with the latent sample, noise and timestep drawn from a generator
        seeded by the sample itself: comparable across epochs, and the same however the samples are batched or
        split across devices."""
        from pmg.diffusion import diffusion_loss

        self._frozen_to_device()
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

    # The validation loss is the mean over the whole validation split, from per-sample losses merged across DDP
    # ranks by sample index (common.distributed), so it does not change with the number of devices.
    def on_validation_epoch_start(self) -> None:
        self._val_losses: dict[int, float] = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for s, loss in zip(batch["samples"], self.sample_losses(batch).tolist()):
            self._val_losses[s["index"]] = loss

    def on_validation_epoch_end(self) -> None:
        losses = list(gather_keyed(self._val_losses).values())
        if losses:  # every rank holds the same value; sync_dist only keeps Lightning from warning
            self.log("val/loss", sum(losses) / len(losses), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.soft.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # -- checkpoints: trainable weights only ---------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"soft.{k}" for k in self.soft.trainable_state_dict()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        keep = {f"soft.{k}" for k in self.soft.trainable_state_dict()}
        missing = [k for k in result.missing_keys if k in keep]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint does not match: missing {missing[:5]}, unexpected "
                               f"{result.unexpected_keys[:5]}")
        return result

    # -- generation ----------------------------------------------------------------------------
    @property
    def generator(self):
        if self._generator is None:
            from pmg.generator import WeightedGenerator

            g = self.gen_config
            self._generator = WeightedGenerator(
                self.sd, scheduler=g.scheduler, steps=g.steps, guidance_scale=g.guidance_scale,
                negative_prompt=g.negative_prompt or self.sample_builder.prompts.negative, weighting=g.weighting,
                target_tokens=min(40, (self.sd.text_length - self.n_soft) // 2),
            )
        return self._generator

    @property
    def scorer(self):
        if self._scorer is None:
            from pmg.selection import ClipScorer

            g = self.gen_config
            self._scorer = ClipScorer(g.clip_arch, g.clip_pretrained, allow_random_weights=g.allow_random_clip)
            if g.clip_pretrained is None:
                rank_zero_info("PMG selection: CLIP scorer has random weights (offline default) - scores are "
                               "plumbing only")
        return self._scorer

    @torch.no_grad()
    def generate_batch(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """For each sample: the grid's candidates, their scores and the chosen image."""
        from pmg.selection import select_best

        self._frozen_to_device()
        soft = self.soft(batch["prompt_ids"], batch["prompt_mask"]) if self.n_soft else None
        results = []
        for j, s in enumerate(batch["samples"]):
            pref, target = batch["pref_keywords"][j], batch["target_keywords"][j]
            pref_kw = pref if self.hparams.use_keywords else []
            seed = self.gen_config.seed + int(stable_hash(f"{s['user']}\n{s['target']}", 12), 16) % 100_000
            images = self.generator.generate(target, pref_kw, None if soft is None else soft[j], self.gen_config.grid,
                                             seed=seed)
            best, scores = select_best(images, pref, target, self.scorer, alpha=self.gen_config.alpha)
            results.append({"sample": s, "images": images.cpu(), "best": best, "scores": scores,
                            "pref_keywords": pref, "target_keywords": target})
        return results

    def on_predict_start(self) -> None:
        self._predictions: dict[int, dict[str, Any]] = {}

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        from pmg.predict import write_predictions

        rows = write_predictions(self, self.generate_batch(batch))  # images and sheets, by the rank that made them
        self._predictions.update((s["index"], r) for s, r in zip(batch["samples"], rows))
        return rows

    def on_predict_end(self) -> None:
        from pmg.predict import log_to_wandb, write_jsonl

        rows = list(gather_keyed(self._predictions).values())  # every rank's samples, once each, in input order
        out = Path(self.gen_config.output_dir)
        if self.trainer.is_global_zero:
            write_jsonl(out / "predictions.jsonl", rows)
        rank_zero_info(f"PMG predictions: {len(rows)} samples; contact sheets in {out / 'sheets'}")
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger":
                log_to_wandb(logger, rows)

    # -- evaluation ----------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        from common.metrics.image import ImageSimilarity

        ev = self.eval_config
        self.similarity = ImageSimilarity(net=ev.lpips_net, allow_random_trunk=ev.allow_random_lpips)
        self._test_values: dict[int, dict[str, float]] = {}
        # demo data only: the shop's ground truth says what each image should show. A tuple, so the probe is not
        # a submodule (its weights stay out of checkpoints and state-dict loading)
        self._demo_eval = None
        if ev.probe is not None:
            from common.demo_models import DemoTruth, load_probe

            data_dir = Path(self.sample_builder.data.corpus.root)
            self._demo_eval = (load_probe(ev.probe), DemoTruth(ev.truth or data_dir.parent / "truth.json",
                                                               data_dir.name))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from functools import partial

        from pmg.data import local_image
        from pmg.diffusion import load_image_tensor

        corpus = self.sample_builder.data.corpus
        size = self.sd.image_size
        for r in self.generate_batch(batch):
            s = r["sample"]
            chosen = r["images"][r["best"]]
            target = (load_image_tensor(corpus.image_path(s["target"]), size) + 1) / 2
            history = [(load_image_tensor(path, size) + 1) / 2 for path in map(partial(local_image, corpus),
                                                                                 s["history"]) if path]
            values = self.similarity.update(chosen.unsqueeze(0), target.unsqueeze(0), [torch.stack(history)])
            self._test_values[s["index"]] = {k: float(v[0]) for k, v in values.items()}
            if self._demo_eval is not None:
                from common.demo_models import probe_accuracy

                probe, truth = self._demo_eval
                acc = probe_accuracy(probe, chosen.unsqueeze(0).float().cpu(), [truth.item(s["target"])],
                                     [truth.user(s["user"])])
                self._test_values[s["index"]].update({k: v[0] for k, v in acc.items()})

    def on_test_epoch_end(self) -> None:
        # the table is summarised from every rank's per-sample values, each sample once, in dataset order
        rows = list(gather_keyed(self._test_values).values())
        self.similarity.reset()
        probe_keys = ("target_acc", "pref_acc")
        self.similarity.add({k: [r[k] for r in rows] for k in (rows[0] if rows else {}) if k not in probe_keys})
        table = self.similarity.compute()
        if self._demo_eval is not None:  # fractions of samples (each value 0 or 1)
            table.update({k: sum(r[k] for r in rows) / max(1, len(rows)) for k in probe_keys})
        hp = self.hparams
        meta = {
            "dataset": self.sample_builder.data.corpus.name,
            "use_soft": hp.use_soft, "use_keywords": hp.use_keywords, "n_soft_tokens": hp.n_soft_tokens,
            "prefix_length": hp.prefix_length, "weighting": self.gen_config.weighting,
            "lpips": self.similarity.lpips_label,
        }
        if self._demo_eval is not None:
            meta["probe"] = {"folder": str(self.eval_config.probe), "truth": str(self._demo_eval[1].path),
                             "target_acc": "chosen image shows the target item's shape",
                             "pref_acc": "chosen image shows the user's preferred colour"}
        for k, v in table.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.log(f"test/{k}", float(v), rank_zero_only=True)
        self.test_results = {"meta": meta, "results": table}
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / self.eval_config.results_file
            write_json(path, self.test_results)
            print(json.dumps(self.test_results, indent=2))
            print(f"results written to {path}")

