"""model.embedding_lr_scale: the token embedding tables train at a multiple of the learning rate, through the
schedule, and nothing else does."""

from __future__ import annotations

import pytest
import torch

from vip5.cli import DEFAULT_CONFIG, main

pytestmark = pytest.mark.usefixtures("one_thread")


def _module(demo_data, out, scale):
    cli = main(["--config", str(DEFAULT_CONFIG), "--trainer.logger", "false", "--trainer.default_root_dir", str(out),
                "--trainer.max_steps", "10", "--data.init_args.data_dir", str(demo_data / "amazon"),
                "--data.init_args.generate_demo", "false", "--data.init_args.image_encoder", "null",
                "--data.init_args.n_negatives", "19", "--data.init_args.cache_dir", str(out / "cache"),
                "--model.net.n_image_tokens", "0", "--model.net.item_token_init", "normal",
                "--model.net.item_token_bias", "true", "--model.tokenizer_vocab_size", "400",
                "--model.optimizer.init_args.weight_decay", "0", "--model.embedding_lr_scale", str(scale)],
               run_cli=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    cli.model.configure_model()
    cli.model.trainer = cli.trainer
    return cli.model


def test_embedding_tables_train_at_a_multiple_of_the_rate(demo_data, tmp_path):
    module = _module(demo_data, tmp_path, 8)
    model = module.model
    tables = model.embedding_tables()
    item_rows = model.item_tokens.item.weight
    assert any(p is item_rows for p in tables) and any(p is model.whole_word_embeddings.weight for p in tables)
    assert all(p is not model.t5.lm_head.bias for p in tables)  # the item tokens' output bias keeps the base rate
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    scaled = [g for g in opt.param_groups if g.get("lr_scale")]
    assert len(scaled) == 1 and {id(p) for p in scaled[0]["params"]} == {id(p) for p in tables if p.requires_grad}
    others = [g for g in opt.param_groups if not g.get("lr_scale")]
    assert sum(len(g["params"]) for g in opt.param_groups) == len([p for p in model.parameters() if p.requires_grad])
    rates = []
    for _ in range(3):  # through the warm-up: the ratio stays 8 while the rate moves
        rates.append(others[0]["lr"])
        assert scaled[0]["lr"] == pytest.approx(8 * others[0]["lr"])
        opt.step()
        sched.step()
    assert len(set(rates)) == 3 and max(rates) > 0  # warm-up, then decay
    assert sched.base_lrs[opt.param_groups.index(scaled[0])] == pytest.approx(8 * sched.base_lrs[0])


def test_scale_one_keeps_two_groups_and_a_bad_scale_is_refused(demo_data, tmp_path):
    module = _module(demo_data, tmp_path, 1)
    opt = module.configure_optimizers()["optimizer"]
    assert len(opt.param_groups) == 2 and not any("lr_scale" in g for g in opt.param_groups)
    module.hparams.embedding_lr_scale = 0
    with pytest.raises(ValueError, match="embedding_lr_scale"):
        module.configure_optimizers()


def test_one_step_moves_embeddings_eight_times_as_far(demo_data, tmp_path):
    """Adam's first step moves every weight by about its learning rate: the embedding rows 8x the others."""
    module = _module(demo_data, tmp_path, 8)
    model = module.model
    module.scheduler = None  # a constant rate
    opt = module.configure_optimizers()
    lr = opt.param_groups[0]["lr"]
    assert lr == 1e-3
    batch = module.sample_builder.collate([module.sample_builder.dataset("train")[i] for i in range(8)])
    rows_before = model.item_tokens.item.weight.detach().clone()
    ff = model.t5.decoder.block[0].layer[-1].DenseReluDense.wi.weight
    ff_before = ff.detach().clone()
    module._loss(batch).backward()
    opt.step()
    item_move = (model.item_tokens.item.weight.detach() - rows_before).abs().max().item()
    ff_move = (ff.detach() - ff_before).abs().max().item()
    # Adam's first update is lr * sign(grad): its largest entry is the group's rate
    assert item_move == pytest.approx(8 * lr, rel=0.05) and ff_move == pytest.approx(lr, rel=0.05)
    assert torch.isfinite(model.item_tokens.item.weight).all()
