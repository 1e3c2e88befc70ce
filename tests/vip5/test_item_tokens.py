"""Item-id tokens in the model: separate trainable rows, logits over them, constrained decoding, checkpoints."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from vip5.adapters import AdapterConfig
from vip5.item_embeddings import ItemTokenEmbedding, ItemTokenHead
from vip5.trie import ItemTrie, TrieLogitsProcessor

IMG = 199
N_ITEMS = 30


@pytest.fixture
def tiny(tiny_vip5):
    """``tiny(**kwargs)``: the shared tiny VIP5, text only, with N_ITEMS item-id tokens."""
    return lambda **kwargs: tiny_vip5(0, **{"n_image_tokens": 0, "n_item_tokens": N_ITEMS,
                                           "adapter": AdapterConfig(init="default"), **kwargs})


def inputs():
    ids = torch.tensor([[5, 6, 200, 7, 215, 1], [9, 229, 10, 11, 1, 0]])  # item tokens 200, 215, 229 in the prompt
    labels = torch.tensor([[203, 1], [228, 1]])
    return dict(input_ids=ids, attention_mask=(ids != 0).long()), labels


def test_embedding_routes_ids_to_base_or_item_rows():
    base = torch.nn.Embedding(10, 4)
    emb = ItemTokenEmbedding(base, 3)
    ids = torch.tensor([[0, 9, 10, 12]])
    out = emb(ids)
    assert torch.equal(out[0, 1], base.weight[9]) and torch.equal(out[0, 2], emb.item.weight[0])
    assert torch.equal(out[0, 3], emb.item.weight[2]) and emb.num_embeddings == 13
    assert emb.weight.shape == (13, 4)
    # the new rows start at the scale of the base table; "mean" starts them near the average word
    mean = ItemTokenEmbedding(base, 3, init="mean")
    assert torch.allclose(mean.item.weight, base.weight.mean(0).expand(3, 4), atol=0.1)


@pytest.mark.parametrize("init", ["normal", "content"])
def test_item_token_scale_sets_the_rows_std_relative_to_the_base_table(init):
    torch.manual_seed(0)
    base = torch.nn.Embedding(500, 64)
    content = torch.randn(400, 20) if init == "content" else None
    ref = ItemTokenEmbedding(base, 400, init=init, content=content).item.weight
    big = ItemTokenEmbedding(base, 400, init=init, content=content, scale=3.0).item.weight
    assert ref.std().item() == pytest.approx(base.weight.std().item(), rel=0.05)
    assert big.std().item() == pytest.approx(3 * base.weight.std().item(), rel=0.05)
    assert torch.allclose(big, 3 * ref, atol=1e-5)  # same draw, same directions: only the size differs
    with pytest.raises(ValueError, match="scale"):
        ItemTokenEmbedding(base, 4, scale=0.0)


def test_frozen_backbone_trains_only_adapters_and_item_rows(tiny):
    model = tiny(training_mode="adapters").train()
    x, labels = inputs()
    out = model(**x, labels=labels)
    assert out.logits.shape[-1] == 200 + N_ITEMS
    out.loss.backward()
    emb, head = model.t5.get_input_embeddings(), model.t5.lm_head
    assert isinstance(emb, ItemTokenEmbedding) and isinstance(head, ItemTokenHead)
    assert emb.base.weight.grad is None and not emb.base.weight.requires_grad
    grad = emb.item.weight.grad
    # every item row gets gradient through the (tied) output softmax, the targets' rows the most
    assert grad is not None and (grad.abs().sum(1) > 0).all()
    assert grad[3].abs().sum() > grad[4].abs().sum() and grad[28].abs().sum() > grad[4].abs().sum()
    counts = model.count_parameters()
    expected = N_ITEMS * 32
    assert counts["by_group"]["item_tokens"] == counts["trainable_by_group"]["item_tokens"] == expected
    assert counts["trainable_by_group"]["embeddings"] == 0  # the base vocabulary stays frozen
    assert counts["trainable"] == sum(counts["trainable_by_group"].values())


def test_optimizer_moves_item_rows_not_the_base_table(tiny):
    model = tiny(training_mode="adapters").train()
    emb = model.t5.get_input_embeddings()
    base_before, item_before = emb.base.weight.detach().clone(), emb.item.weight.detach().clone()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    x, labels = inputs()
    for _ in range(3):
        opt.zero_grad()
        model(**x, labels=labels).loss.backward()
        opt.step()
    assert torch.equal(emb.base.weight, base_before)
    assert not torch.equal(emb.item.weight, item_before)
    assert all(p is not emb.base.weight for group in opt.param_groups for p in group["params"])


def test_trie_constrained_generation_returns_item_tokens_only(tiny):
    model = tiny(training_mode="full").eval()
    x, _ = inputs()
    items = {f"i{k}": [200 + k, 1] for k in range(N_ITEMS)}
    trie = ItemTrie(items)
    out = model.generate(**x, num_beams=4, num_return_sequences=4, max_length=trie.max_new_tokens + 1,
                         logits_processor=[TrieLogitsProcessor(trie, num_beams=4, exclude=[{"i0"}, set()])])
    seqs = out.sequences if hasattr(out, "sequences") else out
    decoded = [trie.item_of(s.tolist()[1:]) for s in seqs]
    assert all(d is not None for d in decoded)
    assert "i0" not in decoded[:4] and len(set(decoded[:4])) == 4


# ---------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_semantic_ids_fit_predict_and_travel_with_the_checkpoint(demo_data, tmp_path, caplog):
    from test_vip5_fit import _args, _default, _fit

    from common.data.indexing import ItemIndex
    from vip5.cli import main

    out = tmp_path / "sem"
    extra = ("--data.init_args.indexing", "semantic", "--data.init_args.indexing_options", '{"levels": 2}')
    cli = _fit(demo_data / "amazon", out, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
               "--trainer.limit_val_batches", "1", *extra)
    builder = cli.model.sample_builder
    index = builder.data.index
    assert index.name == "semantic" and builder.n_item_tokens == len(index.vocabulary) > 0
    assert len(builder.tokenizer) == builder.base_vocab_size + builder.n_item_tokens
    ckpt = out / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert saved["vip5"]["index"]["to_id"] == index.to_id
    assert any(".item." in k for k in saved["state_dict"])

    # predict with a data folder whose fitted ids differ (another seed): the checkpoint's ids are used
    users = list(builder.data.split.test)[:2]
    cli2 = main(["--config", str(_default()), *_args(demo_data / "amazon", out, *extra,
                                                     "--data.init_args.seed", "7",
                                                     "--model.evaluation.predict_users", json.dumps(users),
                                                     "--model.evaluation.top_k", "4")], run_cli=False)
    cli2.model.checkpoint_hint = str(ckpt)
    with caplog.at_level(logging.WARNING):
        cli2.trainer.predict(cli2.model, cli2.datamodule, ckpt_path=str(ckpt))
    assert "using the checkpoint's" in caplog.text
    assert cli2.model.sample_builder.data.index.to_id == index.to_id
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["user"] for r in rows] == users
    for r in rows:
        recs = r["recommendations"]
        assert len({x["item"] for x in recs}) == 4
        assert all(index.to_id[x["item"]] == x["id"] and x["id"].startswith("<s0_") for x in recs)
    assert ItemIndex.from_dict(saved["vip5"]["index"]).vocabulary == index.vocabulary


def test_content_init_starts_similar_items_close():
    base = torch.nn.Embedding(10, 16)
    content = torch.cat([torch.tensor([[1.0, 0, 0]]).repeat(3, 1), torch.tensor([[0, 0, 1.0]]).repeat(3, 1)])
    content = content + 0.05 * torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    emb = ItemTokenEmbedding(base, 6, init="content", content=content)
    rows = torch.nn.functional.normalize(emb.item.weight, dim=1)
    sim = rows @ rows.T
    assert sim[:3, :3].min() > sim[:3, 3:].max() and sim[3:, 3:].min() > sim[3:, :3].max()
    with pytest.raises(ValueError, match="one content row per item token"):
        ItemTokenEmbedding(base, 5, init="content", content=content)


@pytest.mark.slow
def test_content_init_is_a_no_op_for_text_ids(demo_data, tmp_path):
    from test_vip5_fit import _fit

    cli = _fit(demo_data / "amazon", tmp_path / "txt", "--trainer.max_epochs", "1", "--trainer.limit_train_batches",
               "1", "--trainer.limit_val_batches", "0", "--data.init_args.indexing", "random",
               "--model.net.item_token_init", "content")
    assert cli.model.model.item_tokens is None and cli.model.sample_builder.n_item_tokens == 0


def test_item_token_bias_starts_neutral_and_trains_with_a_frozen_backbone(tiny):
    plain, biased = tiny(training_mode="adapters"), tiny(training_mode="adapters", item_token_bias=True)
    x, labels = inputs()
    head = biased.t5.lm_head
    assert head.bias.shape == (N_ITEMS,) and not head.bias.any()
    assert torch.allclose(plain(**x, labels=labels).logits, biased(**x, labels=labels).logits, atol=1e-6)
    biased(**x, labels=labels).loss.backward()
    grad = head.bias.grad
    # the softmax pushes the targets' biases (items 3 and 28) up and every other item's down
    assert grad[3] < 0 and grad[28] < 0 and (grad[[k for k in range(N_ITEMS) if k not in (3, 28)]] > 0).all()
    assert biased.count_parameters()["trainable_by_group"]["item_tokens"] == N_ITEMS * 32 + N_ITEMS
    with torch.no_grad():
        head.bias[7] = 5.0
    logits = biased(**x, labels=labels).logits
    assert torch.allclose(logits[..., 207] - plain(**x, labels=labels).logits[..., 207], torch.tensor(5.0))
