"""PMGLitModule: builds PMGModel once the data side has connected, trains it, generates and scores.

The model (``pmg.model.PMGModel``: soft preference model, conditioning, diffusion loss and weighted generation)
is plain PyTorch; this module owns what Lightning does around it: the optimizer, logging, trainable-only
checkpoints, and the ``pmg predict`` / ``pmg test`` outputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from common.distributed import gather_keyed
from common.hashing import stable_hash
from common.io import write_json
from common.schedule import configure_optimization
from pmg.data import PMGDataConfig, PMGSampleBuilder
from pmg.keywords import KeywordExtractor
from pmg.model import GenerationConfig, PMGModel

log = logging.getLogger(__name__)

ADAMW = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4, "weight_decay": 0.01}}


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
        stable_diffusion: Stable Diffusion folder/name (SD-1.5, or the demo's ``common/demo_weights/diffusion``;
            a relative folder missing here is looked up under the repository); None builds small random
            from-config components.
        image_size: image size of the from-config components (SD-1.5 uses 512 from its own config).
        n_soft_tokens: L, trainable soft tokens (paper 4).
        prefix_length: S, P-Tuning v2 prefix length per layer (paper 4); 0 = without P-Tuning v2.
        use_soft: condition on the soft embedding (False = the "without soft embeddings" ablation).
        use_keywords: condition on preference keywords (False = the "without keywords" ablation).
        data: sample settings (scenario, history length, keyword counts); the keyword extractor takes the
            scenario and keyword counts from here.
        keywords: keyword extractor (``pmg.keywords.TfidfKeywordExtractor`` default, or
            ``pmg.keywords.LLMKeywordExtractor`` with a model name for the paper's LLM keywords).
        generation: weighted generation and selection settings.
        evaluation: test metric settings.
        optimizer: optimizer of soft tokens, prefixes and mapper (default AdamW, lr 3e-4, weight decay 0.01:
            prefix tuning likes 1e-4..1e-3; the PMG-Bench 5e-6 barely moves randomly initialised weights).
        scheduler: learning-rate schedule stepped every optimiser step; None (default) keeps the rate constant.
        llm_dtype: dtype of the frozen LLM when loaded by name (``bfloat16`` for 7B models).
        gradient_checkpointing: recompute LLM layers in backward (for 7B models).
        seed: seed of the from-config components and of the soft-token initialisation.
    """

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
        data: PMGDataConfig = PMGDataConfig(),
        keywords: KeywordExtractor | None = None,
        generation: GenerationConfig | None = None,
        evaluation: EvalConfig | None = None,
        optimizer: OptimizerCallable = ADAMW,
        scheduler: LRSchedulerCallable | None = None,
        llm_dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # How a trained model is used (generation, metrics) is not part of it: not stored with the checkpoint, so
        # `pmg predict/test --ckpt_path` take these settings from their own config and command line.
        self.save_hyperparameters(ignore=["keywords", "generation", "evaluation"])
        self.data_config = data
        self.gen_config = generation or GenerationConfig()
        self.eval_config = evaluation or EvalConfig()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.sample_builder = PMGSampleBuilder(self.data_config, keywords=keywords, llm_tokenizer=llm,
                                               image_size=image_size)
        self.model: PMGModel | None = None  # built in configure_model
        self.strict_loading = False
        self._demo_eval = None  # (attribute probe, demo truth) during `pmg test` with model.evaluation.probe

    # -- construction --------------------------------------------------------------------------
    @property
    def n_soft(self) -> int:
        return self.hparams.n_soft_tokens if self.hparams.use_soft else 0

    def configure_model(self) -> None:
        if self.model is not None:
            return
        from pmg.diffusion import load_sd_components, tiny_sd_components
        from pmg.soft_prompt import SoftPreferenceModel, tiny_llama

        hp = self.hparams
        builder = self.sample_builder
        if builder.tokenizer is None:
            raise RuntimeError("PMGLitModule needs its sample builder connected to data before the model is built")
        if hp.stable_diffusion:
            sd = load_sd_components(hp.stable_diffusion)
        else:
            digest = stable_hash("\n".join(builder.vocabulary_texts()), 12)
            folder = builder.data.cache_dir / f"pmg_clip_tokenizer_{digest}"
            sd = tiny_sd_components(folder, texts=builder.vocabulary_texts(), image_size=hp.image_size, seed=hp.seed)
        builder.image_size = sd.image_size
        if hp.llm:
            llm = hp.llm
        else:
            kwargs = dict(hp.llm_config or {})
            llm = tiny_llama(len(builder.tokenizer), pad_token_id=builder.tokenizer.pad_token_id, seed=hp.seed,
                             **kwargs)
        soft = SoftPreferenceModel(
            llm, text_encoder_dim=sd.text_dim, n_soft_tokens=self.n_soft, prefix_length=hp.prefix_length,
            gradient_checkpointing=hp.gradient_checkpointing, dtype=getattr(torch, hp.llm_dtype), seed=hp.seed,
        )
        self.model = PMGModel(soft, sd, use_keywords=hp.use_keywords, generation=self.gen_config,
                              negative_prompt=builder.prompts.negative)

    def setup(self, stage: str) -> None:
        if stage == "predict":  # before the predict dataloader is built
            self.sample_builder.predict_users = self.gen_config.predict_users
            self.sample_builder.predict_limit = self.gen_config.predict_limit
        if stage == "fit" and not self.n_soft:
            raise ValueError(
                "nothing to train: use_soft is false (or n_soft_tokens is 0), so PMG is keyword-only; "
                "run `pmg predict` / `pmg test` directly"
            )

    def on_fit_start(self) -> None:
        counts = self.model.count_parameters()
        rank_zero_info(f"PMG trainable parameters: {counts['trainable']:,} / {counts['total']:,} "
                       f"({counts['pct']:.3f}%, LLM + Stable Diffusion) {counts['by_part']}")
        for logger in self.loggers:  # self.log is not allowed in on_fit_start
            logger.log_hyperparams({"params/trainable": counts["trainable"], "params/pct": counts["pct"]})

    # -- training ------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        self.model.frozen_to(self.device)
        return self.model(batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["samples"]))
        return loss

    # The validation loss is the mean over the whole validation split, from per-sample losses merged across DDP
    # ranks by sample index (common.distributed), so it does not change with the number of devices.
    def on_validation_epoch_start(self) -> None:
        self._val_losses: dict[int, float] = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.model.frozen_to(self.device)
        for s, loss in zip(batch["samples"], self.model.sample_losses(batch).tolist()):
            self._val_losses[s["index"]] = loss

    def on_validation_epoch_end(self) -> None:
        losses = list(gather_keyed(self._val_losses).values())
        if losses:  # every rank holds the same value; sync_dist only keeps Lightning from warning
            self.log("val/loss", sum(losses) / len(losses), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return configure_optimization(self, params, self.optimizer, self.scheduler)

    # -- checkpoints: trainable weights only ---------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = {f"model.{k}" for k in self.model.trainable_state_dict()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        keep = {f"model.{k}" for k in self.model.trainable_state_dict()}
        missing = [k for k in result.missing_keys if k in keep]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"checkpoint does not match: missing {missing[:5]}, unexpected "
                               f"{result.unexpected_keys[:5]}")
        return result

    # -- generation ----------------------------------------------------------------------------
    @property
    def prediction_dir(self) -> Path:
        """Where ``pmg predict`` writes: ``generation.output_dir``, or ``predictions/`` in the run directory."""
        out = self.gen_config.output_dir
        return Path(out) if out else Path(self.trainer.default_root_dir) / "predictions"

    def generate_batch(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        """For each sample: the grid's candidates, their scores and the chosen image."""
        self.model.frozen_to(self.device)
        return self.model.generate(batch)

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
        out = self.prediction_dir
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
        from pmg.data import history_images
        from pmg.diffusion import load_image_tensor

        corpus = self.sample_builder.data.corpus
        size = self.model.sd.image_size
        for r in self.generate_batch(batch):
            s = r["sample"]
            chosen = r["images"][r["best"]]
            target = (load_image_tensor(corpus.image_path(s["target"]), size) + 1) / 2
            history = history_images(corpus, s["history"], size)
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

