"""prompts.target_items > 1: sequential training targets continue with the user's later items, and evaluation
scores an item id by its own tokens (the ``</s>`` after it is no part of it)."""

from __future__ import annotations

import pytest
import torch

from vip5.cli import DEFAULT_CONFIG, main
from vip5.data import model_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def continued(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("continued")
    cli = main(["--config", str(DEFAULT_CONFIG), "--trainer.logger", "false", "--trainer.default_root_dir", str(out),
                "--data.init_args.data_dir", str(demo_data / "amazon"), "--data.init_args.generate_demo", "false",
                "--data.init_args.image_encoder", "null", "--data.init_args.n_negatives", "19",
                "--data.init_args.cache_dir", str(out / "cache"), "--model.net.n_image_tokens", "0",
                "--model.net.item_token_init", "normal", "--model.tokenizer_vocab_size", "400",
                "--model.prompts.families", "[sequential]", "--model.prompts.target_items", "3",
                "--model.prompts.train_templates", "[A-1, A-2, A-3, A-7]"], run_cli=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    cli.model.configure_model()
    return cli.model


def test_training_targets_continue_with_the_users_later_items(continued):
    builder = continued.sample_builder
    to_item = builder.data.index.to_item
    ds = builder.dataset("train")
    lengths = set()
    for i in range(len(ds)):
        s = ds[i]
        if s["template"] == "A-7":  # a yes/no answer is never continued
            assert s["target"] in ("yes", "no")
            continue
        items = [to_item[t] for t in s["target"].split()]
        train = builder.data.split.train[s["user"]]
        # the target item, then the items that followed it in the user's training sequence (2 at most)
        assert items[0] == s["target_item"] and 1 <= len(items) <= 3
        starts = [k for k in range(len(train)) if train[k: k + len(items)] == items]
        assert starts
        if len(items) < 3:  # shorter only where the sequence ends
            assert any(k + len(items) == len(train) for k in starts)
        lengths.add(len(items))
    assert lengths == {1, 2, 3}
    val = builder.dataset("val")[0]
    assert len(val["target"].split()) == 1  # validation and test targets are the next item alone


def test_ids_rank_by_their_own_tokens(continued):
    evaluator, builder, model = continued.evaluator, continued.sample_builder, continued.model
    eos = builder.tokenizer.eos_token_id
    assert evaluator.continues_items
    assert all(tokens and tokens[-1] != eos for tokens in evaluator.item_tokens.values())
    batch = builder.collate([builder.dataset("test", "A-3")[i] for i in range(4)])
    model.eval()
    beams = evaluator._beam_items(batch, 6, evaluator.trie)
    with torch.no_grad():
        start = torch.full((4, 1), model.t5.config.decoder_start_token_id)
        logits = model(**model_inputs(batch), decoder_input_ids=start).logits[:, 0]
    base = builder.base_vocab_size
    token_item = {tokens[0]: item for item, tokens in evaluator.item_tokens.items()}
    for row, ranked in zip(logits, beams):
        best = (row[base:].topk(6).indices + base).tolist()
        # one token per item: beam search over the trie returns exactly the most likely first tokens, in order
        assert ranked == [token_item[t] for t in best]


def test_free_decoding_of_a_continuing_model_is_a_clear_error(continued):
    import dataclasses

    from vip5.evaluation import Evaluator

    builder = continued.sample_builder
    evaluator = Evaluator(continued.model, builder, dataclasses.replace(continued.eval_config, decoding="free"))
    batch = builder.collate([builder.dataset("test", "A-3")[0]])
    with pytest.raises(ValueError, match="target_items"):
        evaluator.update(batch)
