"""VIP5LitModule: training, validation, evaluation and prediction around a plain VIP5Model.

The model (``vip5.model.VIP5Model``) is built in :meth:`configure_model`, once the data side has
connected: the tokenizer (loaded by name, or trained on the corpus for a from-config backbone) and the
image-feature width come from there. Checkpoints of adapter runs hold only what is not in the named
backbone (trainable weights plus the new embedding tables), and reload onto it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info

from common.distributed import gather_keyed
from common.metrics.ranking import hit_at_k
from vip5.adapters import AdapterConfig
from vip5.data import PromptConfig, VIP5SampleBuilder, model_inputs
from vip5.evaluation import EvalConfig, Evaluator

log = logging.getLogger(__name__)


class VIP5LitModule(L.LightningModule):
    """VIP5 on a frozen T5 with bottleneck adapters and CLIP image tokens (Geng et al. 2023).

    Args:
        backbone: T5 weights by name or folder (``t5-small``, a P5 checkpoint folder). Ignored when
            ``backbone_config`` is given.
        backbone_config: ``transformers.T5Config`` keyword arguments for a from-config (random init) backbone,
            used by the offline default.
        tokenizer: tokenizer name/folder; None uses ``backbone``. ``train`` trains a SentencePiece model on the
            corpus text (offline default; it is stored in every checkpoint).
        tokenizer_vocab_size: vocabulary size when ``tokenizer: train``.
        n_image_tokens: image tokens per item (n); 0 gives a text-only P5-style model.
        adapter: bottleneck adapter settings (sites, reduction factor, shared or per task); None = defaults.
        use_adapters: False builds no adapters (only with ``training_mode: full``: a backbone trained whole, e.g.
            from scratch, needs none; they cost 6 % of the step time of a d_model-128 T5 on a CPU).
        training_mode: ``adapters`` (adapters + layer norms + visual mapper), ``adapters_self_attn_only``, or
            ``full`` finetuning (the paper's RQ2 ablation).
        train_word_embeddings: train the whole-word and category tables (frozen random codes in the original).
        prompts: prompt sampling settings (templates, samples per user, history length ...).
        evaluation: decoding and metric settings for ``vip5 test`` / ``vip5 predict``.
        loss_normalization: ``token`` (mean over target tokens, default) or ``double`` (the original code's
            per-sample mean divided again by the target length).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: share of training steps with linear warmup (when ``warmup_steps`` is None).
        warmup_steps: warm-up length in optimiser steps (set it for ``trainer.max_time`` runs).
        lr_schedule: after warm-up, ``linear`` or ``cosine`` decay to 0 at the end of training, whether the step
            count or ``trainer.max_time`` ends it (``common.schedule``), or ``constant``.
        adam_eps: AdamW epsilon.
        decay_norms: also decay layer-norm weights (the original's name-mismatch quirk: its no-decay
            list names ``LayerNorm.weight``, while T5's norms are called ``layer_norm``, so they were decayed).
        label_smoothing: cross-entropy label smoothing (0 = none, the original).
        item_token_init: initial rows of item-id tokens (``data.indexing`` atomic/collaborative/semantic):
            ``normal``, ``mean``, or ``content`` (each token starts from the image + text content of its items,
            projected to the model width; see ``vip5.item_embeddings``).
        item_token_scale: initial std of the item-token rows relative to the backbone's token table (1 = the
            same). On a small from-scratch backbone, rows larger than the word tokens' let the model find the
            items in a prompt within hundreds of steps instead of plateauing at popularity (docs/vip5.md, "Item
            identifiers"; ``bench/vip5_indexing.py`` uses 3).
        item_token_bias: a trainable output bias per item-id token (token schemes only), which holds each item's
            popularity apart from its embedding row.
    """

    # settings of how a trained model is used, taken from the command line even with --ckpt_path
    RUNTIME_KEYS = ("evaluation",)

    def __init__(
        self,
        backbone: str = "t5-small",
        backbone_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        tokenizer_vocab_size: int = 2000,
        n_image_tokens: int = 2,
        adapter: AdapterConfig | None = None,
        use_adapters: bool = True,
        training_mode: Literal["adapters", "adapters_self_attn_only", "full"] = "adapters",
        train_word_embeddings: bool = False,
        prompts: PromptConfig | None = None,
        evaluation: EvalConfig | None = None,
        loss_normalization: Literal["token", "double"] = "token",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        warmup_steps: int | None = None,
        lr_schedule: Literal["linear", "constant", "cosine"] = "linear",
        adam_eps: float = 1e-6,
        decay_norms: bool = False,
        label_smoothing: float = 0.0,
        item_token_init: Literal["normal", "mean", "content"] = "normal",
        item_token_scale: float = 1.0,
        item_token_bias: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not use_adapters and training_mode != "full":
            raise ValueError(f"use_adapters=False needs training_mode='full' (got {training_mode!r}): with a "
                             "frozen backbone the adapters are what trains")
        self.adapter_config = (adapter or AdapterConfig()) if use_adapters else None
        self.prompt_config = prompts or PromptConfig()
        self.eval_config = evaluation or EvalConfig()
        self.sample_builder = VIP5SampleBuilder(
            self.prompt_config,
            n_image_tokens=n_image_tokens,
            tokenizer=tokenizer or (None if backbone_config else backbone),
            tokenizer_vocab_size=tokenizer_vocab_size,
        )
        self.model = None  # built in configure_model, once the data side has connected
        self.strict_loading = False  # adapter checkpoints omit the frozen backbone
        self._evaluator: Evaluator | None = None
        self.checkpoint_hint: str | None = None  # set by the CLI (or the caller) when a checkpoint will be loaded

    # -- model construction ---------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        from vip5.model import VIP5Model

        builder = self.sample_builder
        if getattr(builder, "tokenizer", None) is None:
            raise RuntimeError("VIP5LitModule needs its sample builder connected to data before the model is built")
        hp = self.hparams
        n_image_tokens = hp.n_image_tokens if builder.feature_dim > 0 else 0
        if hp.n_image_tokens and not n_image_tokens:
            log.warning("no image features available: building a text-only model (n_image_tokens=0)")
        self.model = VIP5Model(
            backbone=hp.backbone,
            backbone_config=hp.backbone_config,
            vocab_size=builder.base_vocab_size,
            n_item_tokens=builder.n_item_tokens,
            item_token_init=hp.item_token_init,
            item_token_scale=hp.item_token_scale,
            item_token_bias=hp.item_token_bias,
            item_token_content=(
                builder.token_content() if hp.item_token_init == "content" and builder.n_item_tokens else None
            ),
            feature_dim=max(builder.feature_dim, 1),
            n_image_tokens=n_image_tokens,
            adapter=self.adapter_config,
            training_mode=hp.training_mode,
            train_word_embeddings=hp.train_word_embeddings,
            image_token_id=builder.image_token_id,
        )

    def setup(self, stage: str) -> None:
        if stage == "predict":  # before the predict dataloader is built
            self.sample_builder.predict_users = self.eval_config.predict_users
        self.sample_builder.test_users = self.eval_config.test_users
        # A from-config backbone's tokenizer lives in its checkpoints: adopt it before the model is built, so a
        # restored model always sees the vocabulary it was trained with.
        ckpt = self.checkpoint_hint
        if ckpt and self.model is None and Path(ckpt).is_file():
            extras = torch.load(ckpt, map_location="cpu", weights_only=False).get("vip5", {})
            if extras.get("spiece"):
                self.sample_builder.adopt_tokenizer(extras["spiece"])
            if extras.get("index"):
                from common.data.indexing import ItemIndex

                self.sample_builder.adopt_index(ItemIndex.from_dict(extras["index"]))

    @property
    def backbone_from_config(self) -> bool:
        return self.hparams.backbone_config is not None

    def on_fit_start(self) -> None:
        counts = self.model.count_parameters()
        groups = ", ".join(f"{k} {v:,}" for k, v in counts.get("by_group", {}).items())
        rank_zero_info(
            f"VIP5 trainable parameters: {counts['trainable']:,} / {counts['total']:,} "
            f"({counts['pct']:.2f}%) [{groups}] mode={self.hparams.training_mode}"
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
        if self.backbone_from_config or self.hparams.training_mode == "full":
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
        self.sample_builder.restore_extras(checkpoint.get("vip5", {}))

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
        from common.schedule import budget_schedule

        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue  # frozen weights get no optimizer state
            is_norm = "layer_norm" in name or "LayerNorm" in name or name.endswith("norm.weight")
            if name.endswith(".bias") or (is_norm and not hp.decay_norms):
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, eps=hp.adam_eps)
        factor = budget_schedule(self.trainer, hp.lr_schedule, hp.warmup_ratio, hp.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def extra_repr(self) -> str:
        return f"adapter={asdict(self.adapter_config) if self.adapter_config else None}"
