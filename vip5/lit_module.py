"""VIP5LitModule: training, validation, evaluation and prediction around a plain VIP5Model.

The model (``vip5.model.VIP5Model``) is built in :meth:`configure_model`, once the data side has
connected: the tokenizer (loaded by name, or trained on the corpus for a from-config backbone) and the
image-feature width come from there. Checkpoints of adapter runs hold only what is not in the named
backbone (trainable weights plus the new embedding tables), and reload onto it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info

from common.distributed import gather_keyed
from common.metrics.ranking import hit_at_k
from common.schedule import configure_optimization
from vip5.data import PromptConfig, VIP5SampleBuilder, model_inputs
from vip5.evaluation import EvalConfig, Evaluator
from vip5.model import VIP5Config, VIP5Model

log = logging.getLogger(__name__)


ADAMW = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3, "weight_decay": 0.01, "eps": 1e-6}}
WARMUP_THEN_LINEAR = {"class_path": "common.schedule.BudgetLR",
                      "init_args": {"schedule": "linear", "warmup_ratio": 0.1}}


class VIP5LitModule(L.LightningModule):
    """VIP5 on a frozen T5 with bottleneck adapters and CLIP image tokens (Geng et al. 2023).

    Args:
        net: the model architecture (backbone, image tokens, adapters, training mode, item-id tokens); the sizes
            that come from the tokenizer and the data are filled in when the model is built.
        tokenizer: tokenizer name/folder; None uses ``net.backbone``. ``train`` trains a SentencePiece model on the
            corpus text (offline default; it is stored in every checkpoint).
        tokenizer_vocab_size: vocabulary size when ``tokenizer: train``.
        prompts: prompt sampling settings (templates, samples per user, history length ...). ``n_candidates``
            follows ``data.init_args.n_negatives`` (target + the fixed negatives).
        evaluation: decoding and metric settings for ``vip5 test`` / ``vip5 predict``.
        loss_normalization: ``token`` (mean over target tokens, default) or ``double`` (the original code's
            per-sample mean divided again by the target length).
        label_smoothing: cross-entropy label smoothing (0 = none, the original).
        optimizer: optimizer of the trainable parameters (default AdamW, lr 1e-3, weight decay 0.01, eps 1e-6).
            Biases and layer norms form a second group without weight decay.
        scheduler: learning-rate schedule, stepped every optimiser step; None keeps the rate constant. The default
            ``common.schedule.BudgetLR`` warms up over 10 % of the steps (or ``warmup_steps``), then decays
            linearly to 0 when the step count or ``trainer.max_time`` ends training.
        embedding_lr_scale: learning-rate multiplier of the token embedding tables (words, item ids). A T5 built
            from config starts its embeddings at std 1 and feeds them unscaled, where SASRec-style models start
            them at std d_model^-1/2 and scale the input by d_model^1/2; Adam moves every weight by about the
            learning rate whatever its size, so T5's rows move d_model^1/2 times slower relative to their size.
            d_model^1/2 (8 at width 64) gives them SASRec's pace; 1 (the original) keeps one rate for all.
        decay_norms: also decay layer-norm weights (the original's name-mismatch quirk: its no-decay
            list names ``LayerNorm.weight``, while T5's norms are called ``layer_norm``, so they were decayed).
    """

    def __init__(
        self,
        net: VIP5Config = VIP5Config(),
        tokenizer: str | None = None,
        tokenizer_vocab_size: int = 2000,
        prompts: PromptConfig = PromptConfig(),
        evaluation: EvalConfig | None = None,
        loss_normalization: Literal["token", "double"] = "token",
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = ADAMW,
        scheduler: LRSchedulerCallable | None = WARMUP_THEN_LINEAR,
        embedding_lr_scale: float = 1.0,
        decay_norms: bool = False,
    ) -> None:
        super().__init__()
        # How a trained model is used (decoding, metrics) is not part of it: not stored with the checkpoint, so
        # `vip5 test/predict --ckpt_path` take these settings from their own config and command line.
        self.save_hyperparameters(ignore=["evaluation"])
        self.net_config = net
        self.adapter_config = net.adapter if net.use_adapters else None
        self.prompt_config = prompts
        self.eval_config = evaluation or EvalConfig()
        self.optimizer, self.scheduler = optimizer, scheduler
        self.sample_builder = VIP5SampleBuilder(
            self.prompt_config,
            n_image_tokens=net.n_image_tokens,
            tokenizer=tokenizer or (None if net.backbone_config else net.backbone),
            tokenizer_vocab_size=tokenizer_vocab_size,
        )
        self.model: VIP5Model | None = None  # built in configure_model, once the data side has connected
        self.strict_loading = False  # adapter checkpoints omit the frozen backbone
        self._evaluator: Evaluator | None = None
        # Set by the CLI when a checkpoint will be loaded: the model is then built from the checkpoint's tokenizer
        # and item ids in on_load_checkpoint, which Lightning calls with the checkpoint it has read.
        self.checkpoint_hint: str | None = None

    # -- model construction ---------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is None and not self.checkpoint_hint:
            self._build_model()

    def _build_model(self) -> None:
        builder = self.sample_builder
        if getattr(builder, "tokenizer", None) is None:
            raise RuntimeError("VIP5LitModule needs its sample builder connected to data before the model is built")
        config = self.net_config
        if config.n_image_tokens and builder.feature_dim <= 0:
            log.warning("no image features available: building a text-only model (n_image_tokens=0)")
            config = dataclasses.replace(config, n_image_tokens=0)
        self.model = VIP5Model(
            config,
            vocab_size=builder.base_vocab_size,
            feature_dim=max(builder.feature_dim, 1),
            image_token_id=builder.image_token_id,
            n_item_tokens=builder.n_item_tokens,
            item_token_content=(
                builder.token_content() if config.item_token_init == "content" and builder.n_item_tokens else None
            ),
        )

    def setup(self, stage: str) -> None:
        if stage == "predict":  # before the predict dataloader is built
            self.sample_builder.predict_users = self.eval_config.predict_users
        self.sample_builder.test_users = self.eval_config.test_users

    @property
    def backbone_from_config(self) -> bool:
        return self.net_config.backbone_config is not None

    def on_fit_start(self) -> None:
        counts = self.model.count_parameters()
        groups = ", ".join(f"{k} {v:,}" for k, v in counts.get("by_group", {}).items())
        rank_zero_info(
            f"VIP5 trainable parameters: {counts['trainable']:,} / {counts['total']:,} "
            f"({counts['pct']:.2f}%) [{groups}] mode={self.net_config.training_mode}"
        )
        for logger in self.loggers:  # self.log is not allowed in on_fit_start
            logger.log_hyperparams({"params/trainable": counts["trainable"], "params/pct": counts["pct"]})
        ranked = self.eval_config.validation_ranking and {"sequential", "direct"} & set(self.prompt_config.families)
        for cb in self.trainer.checkpoint_callbacks:
            if getattr(cb, "monitor", None) == "val/hr@10" and not ranked:
                raise ValueError(
                    "a ModelCheckpoint monitors val/hr@10, which is only logged when model.evaluation."
                    "validation_ranking is on and model.prompts.families has sequential or direct prompts; monitor "
                    "the loss instead: --trainer.callbacks.monitor val/loss --trainer.callbacks.mode min")

    # -- checkpoints: only what the named backbone does not provide ------------------------------
    def _saved_keys(self) -> set[str] | None:
        """State-dict keys to keep; None keeps everything (from-config backbone or full finetuning)."""
        if self.backbone_from_config or self.net_config.training_mode == "full":
            return None
        keep = {f"model.{k}" for k in self.model.trainable_state_dict()}
        keep |= {f"model.{k}" for k, _ in self.model.named_parameters() if "word_embeddings" in k or "category" in k}
        return keep

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self._saved_keys()
        if keep is not None:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["vip5"] = self.sample_builder.checkpoint_extras()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extras = checkpoint.get("vip5", {})
        if self.model is not None:
            self.sample_builder.restore_extras(extras)
            return
        # Deferred build (see checkpoint_hint): adopt the checkpoint's tokenizer (a from-config backbone's lives in
        # its checkpoints) and item ids, so the restored model sees the vocabulary it was trained with.
        if extras.get("spiece"):
            self.sample_builder.adopt_tokenizer(extras["spiece"])
        if extras.get("index"):
            from common.data.indexing import ItemIndex

            self.sample_builder.adopt_index(ItemIndex.from_dict(extras["index"]))
        self._build_model()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        allowed = self._saved_keys()
        if allowed is None:
            missing = list(result.missing_keys)
        else:
            missing = [k for k in result.missing_keys if k in allowed]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"checkpoint does not match the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        return result

    # -- loss ----------------------------------------------------------------------------------
    def _token_losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of every target token and the batch row it belongs to."""
        logits, targets, rows = self.model.target_logits(**model_inputs(batch), labels=batch["labels"])
        tok = F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=self.hparams.label_smoothing)
        return tok, rows

    def _loss(self, batch: dict[str, Any]) -> torch.Tensor:
        labels = batch["labels"]
        tok, rows = self._token_losses(batch)
        if self.hparams.loss_normalization == "token":
            return tok.sum() / max(len(tok), 1)
        # faithful: mean over each sample's tokens, times 1/target_length, mean over the batch (the original code)
        length = (labels != -100).sum(1).clamp_min(1).float()
        per_sample = torch.zeros_like(length).index_add(0, rows, tok) / length
        return (per_sample / length).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        return loss

    # Validation metrics are computed over the whole validation split at epoch end, from per-sample values merged
    # across DDP ranks by sample index (common.distributed), so they do not change with the number of devices.
    def on_validation_epoch_start(self) -> None:
        self._val_rows: dict[int, tuple[float, int, int | None]] = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        tok, rows = self._token_losses(batch)
        n = len(batch["samples"])
        sums = torch.zeros(n, dtype=tok.dtype, device=tok.device).index_add(0, rows, tok).tolist()
        counts = (batch["labels"] != -100).sum(1).tolist()
        ranks = self.evaluator.validation_ranks(batch) if self.eval_config.validation_ranking else {}
        for r, s in enumerate(batch["samples"]):
            self._val_rows[s["index"]] = (sums[r], counts[r], ranks.get(r))

    def on_validation_epoch_end(self) -> None:
        rows = list(gather_keyed(self._val_rows).values())
        if not rows:
            return
        sums = torch.tensor([r[0] for r in rows], dtype=torch.float64)
        counts = torch.tensor([r[1] for r in rows], dtype=torch.float64).clamp_min(1)
        if self.hparams.loss_normalization == "token":  # token mean over the split
            loss = sums.sum() / counts.sum()
        else:  # the original's per-sample mean divided again by the target length, averaged over samples
            loss = (sums / counts / counts).mean()
        # every rank holds the same value; sync_dist only keeps Lightning from warning about epoch-level logging
        # (Python floats: Lightning puts them on the module's device, which an NCCL reduction needs)
        self.log("val/loss", float(loss), prog_bar=True, sync_dist=True)
        ranks = [r[2] for r in rows if r[2] is not None]
        if ranks:
            hits = hit_at_k(torch.tensor(ranks), 10).double().mean().item()
            self.log("val/hr@10", hits, prog_bar=True, sync_dist=True)

    # -- evaluation ----------------------------------------------------------------------------
    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = Evaluator(self.model, self.sample_builder, self.eval_config)
        return self._evaluator

    def on_test_epoch_start(self) -> None:
        self.evaluator.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluator.update(batch)

    def on_test_epoch_end(self) -> None:
        table = self.evaluator.compute()  # over every rank's samples, each once
        flat = {f"test/{p}/{k}": float(v) for p, row in table.items() for k, v in row.items()
                if isinstance(v, (int, float))}
        for logger in self.loggers:  # straight to the loggers: Lightning's per-dataloader dump would repeat it 6x
            logger.log_metrics(flat, step=self.global_step)
        self.test_results = table
        if self.trainer.is_global_zero:
            self.evaluator.report(table, self.trainer, indexing=self.sample_builder.indexing_name)

    def on_predict_start(self) -> None:
        self._predictions: dict[int, dict[str, Any]] = {}

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        rows = self.evaluator.predict(batch)
        self._predictions.update((s["index"], r) for s, r in zip(batch["samples"], rows))
        return rows

    def on_predict_end(self) -> None:
        import json

        from common.io import write_text

        rows = list(gather_keyed(self._predictions).values())  # every rank's users, once each, in input order
        path = Path(self.trainer.default_root_dir) / self.eval_config.predictions_file
        if self.trainer.is_global_zero:
            write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        rank_zero_info(f"wrote {len(rows)} users' top-{self.eval_config.top_k} recommendations to {path}")

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        if not self.hparams.embedding_lr_scale > 0:
            raise ValueError(f"model.embedding_lr_scale must be > 0, got {self.hparams.embedding_lr_scale}")
        scaled = {id(p) for p in self.model.embedding_tables()} if self.hparams.embedding_lr_scale != 1 else set()
        decay, no_decay, embeddings = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue  # frozen weights get no optimizer state
            if id(p) in scaled:
                embeddings.append(p)
                continue
            is_norm = "layer_norm" in name or "LayerNorm" in name or name.endswith("norm.weight")
            if name.endswith(".bias") or (is_norm and not self.hparams.decay_norms):
                no_decay.append(p)
            else:
                decay.append(p)
        # the first group takes the optimizer's own weight decay
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
        if embeddings:
            groups.append({"params": embeddings, "lr_scale": self.hparams.embedding_lr_scale})
        return configure_optimization(self, groups, self.optimizer, self.scheduler)

    def extra_repr(self) -> str:
        return f"adapter={dataclasses.asdict(self.adapter_config) if self.adapter_config else None}"
