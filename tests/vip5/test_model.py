"""VIP5Model on a stock HF T5: parameter arithmetic, trainability, encoder input, routing, decoding."""

from __future__ import annotations

import pytest
import torch

from vip5.adapters import AdapterConfig, is_adapter_parameter
from vip5.model import VIP5Config, VIP5Model, load_backbone

IMG = 199  # image placeholder id of the tiny vocabulary (the last id, as 32099 in the P5 tokenizer)
T5_SMALL_SHAPE = dict(
    vocab_size=32100, d_model=512, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64,
    feed_forward_proj="relu", tie_word_embeddings=True,
)


@pytest.fixture
def tiny(tiny_vip5):
    """``tiny(seed=0, **kwargs)``: the shared tiny VIP5 with 2 image tokens, in eval mode."""
    return lambda seed=0, **kwargs: tiny_vip5(seed, **{"n_image_tokens": 2, **kwargs}).eval()


def batch():
    # row 0: two items with 2 slots each; row 1: one item (its second feature row is padding); row 2: no image
    ids = torch.tensor([
        [5, 6, IMG, IMG, 7, 8, IMG, IMG, 1],
        [9, IMG, IMG, 10, 11, 12, 1, 0, 0],
        [5, 6, 7, 8, 9, 10, 11, 12, 1],
    ])
    ww = torch.tensor([[1, 1, 2, 3, 4, 4, 5, 6, 0], [1, 2, 3, 4, 4, 5, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8, 0]])
    feats = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(1))
    feats[1, 1] = 0
    feats[2] = 0
    labels = torch.tensor([[3, 4, 1], [5, 1, -100], [6, 7, 1]])
    return dict(input_ids=ids, attention_mask=(ids != 0).long(), whole_word_ids=ww, image_feats=feats), labels


# ----------------------------------------------------------------------------------- parameter arithmetic
@pytest.mark.parametrize(
    ("n", "trainable", "total", "pct", "visual"),
    [(1, 2_263_168, 63_271_552, "3.58", 263_424), (2, 2_788_736, 63_797_120, "4.37", 788_992)],
)
def test_parameter_arithmetic_t5_small_shape(n, trainable, total, pct, visual):
    # Built on the meta device: same modules and parameter sharing, no memory or init time.
    with torch.device("meta"):
        model = VIP5Model(VIP5Config(backbone_config=T5_SMALL_SHAPE, n_image_tokens=n), feature_dim=512)
    counts = model.count_parameters()
    assert (counts["trainable"], counts["total"]) == (trainable, total)
    assert f"{counts['pct']:.2f}" == pct
    assert counts["trainable_by_group"] == {
        "adapters": 1_983_360, "layer_norms": 16_384, "visual": visual, "embeddings": 0, "item_tokens": 0,
        "backbone": 0,
    }
    assert counts["by_group"]["embeddings"] == 32100 * 512 + 1024 * 512 + 16 * 512
    assert sum(1 for n_, _ in model.named_parameters() if n_.endswith("adapter.shared.down.weight")) == 30
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_training_modes(tiny):
    model = tiny(training_mode="adapters_self_attn_only")
    hosts = {n.split(".adapter.")[0] for n, _ in model.named_parameters() if is_adapter_parameter(n)}
    assert hosts and all(h.endswith("SelfAttention") for h in hosts)
    assert len(hosts) == 4
    full = tiny(training_mode="full")
    assert all(p.requires_grad for p in full.parameters())
    words = tiny(train_word_embeddings=True)
    assert words.whole_word_embeddings.weight.requires_grad and words.category_embeddings.weight.requires_grad
    frozen = tiny()
    assert not frozen.whole_word_embeddings.weight.requires_grad and not frozen.t5.shared.weight.requires_grad
    assert frozen.t5.lm_head.weight is frozen.t5.shared.weight


def test_frozen_weights_get_no_grad_and_do_not_move(tiny):
    model = tiny(adapter=AdapterConfig(init="default")).train()
    inputs, labels = batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2, weight_decay=0.01)
    model(**inputs, labels=labels).loss.backward()
    opt.step()
    assert len(opt.state) == sum(1 for p in model.parameters() if p.requires_grad)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and not torch.equal(p, before[n]), n
        else:
            assert p.grad is None and torch.equal(p, before[n]), n
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(is_adapter_parameter(n) for n in trained) and any(n.startswith("visual.") for n in trained)
    assert all(is_adapter_parameter(n) or n.startswith("visual.") or "layer_norm" in n for n in trained)


def test_adapter_step_skips_exactly_the_frozen_weight_gradient_matmuls(tiny, tiny_t5_config):
    """The compute the adapter mode saves: every frozen Linear's weight-gradient matmul (2 x rows x in x out FLOPs),
    and nothing else. Its forward and its input gradients through the frozen layers are the full model's."""
    from torch.utils.flop_counter import FlopCounterMode

    inputs, labels = batch()
    flops = {}
    for mode in ("adapters", "full"):
        # With dropout, CPU training runs the same eager attention in both modes. Without it SDPA may pick a
        # different kernel per mode (the relative position bias requires grad only in ``full``), which the
        # counter prices differently.
        model = tiny(training_mode=mode, backbone_config={**tiny_t5_config, "dropout_rate": 0.1}).train()
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        rows: dict[str, int] = {}  # input rows each Linear saw in the forward

        def count_rows(name):
            def hook(module, args, out):
                rows[name] = rows.get(name, 0) + args[0].numel() // module.in_features

            return hook

        hooks = [m.register_forward_hook(count_rows(n)) for n, m in linears.items()]
        with FlopCounterMode(display=False) as forward:
            loss = model(**inputs, labels=labels).loss
        with FlopCounterMode(display=False) as backward:
            loss.backward()
        for h in hooks:
            h.remove()
        flops[mode] = forward.get_total_flops(), backward.get_total_flops()
        if mode == "adapters":
            frozen = {n: m for n, m in linears.items() if not m.weight.requires_grad}
            weight_grads = sum(2 * rows[n] * m.in_features * m.out_features for n, m in frozen.items())
    assert {n.split(".")[-1] for n in frozen} == {"q", "k", "v", "o", "wi", "wo", "lm_head"}
    assert rows["t5.lm_head"] == 9 and rows["t5.encoder.block.0.layer.1.DenseReluDense.wi"] == 27
    assert flops["adapters"][0] == flops["full"][0] > 0
    assert flops["full"][1] - flops["adapters"][1] == weight_grads > 0


def test_near_identity_adapters_equal_plain_backbone(tiny):
    inputs, labels = batch()
    plain = tiny(adapter=None)(**inputs, labels=labels).logits
    adapted = tiny(adapter=AdapterConfig(init="near_identity"))(**inputs, labels=labels).logits
    assert torch.allclose(adapted, plain, atol=1e-6)
    changed = tiny(adapter=AdapterConfig(init="default"))(**inputs, labels=labels).logits
    assert not torch.allclose(changed, plain, atol=1e-3)


# -------------------------------------------------------------------------------------------- encoder input
def test_image_tokens_land_on_their_slots(tiny):
    model = tiny(embedding_init="zeros")
    inputs, _ = batch()
    ids, feats = inputs["input_ids"], inputs["image_feats"]
    with torch.no_grad():
        embeds = model.embed_inputs(ids, inputs["whole_word_ids"], feats)
        tokens = model.visual(feats)  # [B, V, n, d]
        text = model.t5.shared(ids)
    assert tokens.shape == (3, 2, 2, 32)
    # row 0: item 0 -> slots 2, 3; item 1 -> slots 6, 7
    for pos, (item, k) in zip([2, 3, 6, 7], [(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert torch.allclose(embeds[0, pos], tokens[0, item, k])
    assert torch.allclose(embeds[1, 1], tokens[1, 0, 0]) and torch.allclose(embeds[1, 2], tokens[1, 0, 1])
    slot = ids == IMG
    assert torch.allclose(embeds[~slot], text[~slot])
    # fewer real images than slots: slots past count * n keep the placeholder's own embedding
    with torch.no_grad():
        limited = model.embed_inputs(ids, inputs["whole_word_ids"], feats, image_counts=torch.tensor([1, 1, 0]))
    assert torch.allclose(limited[0, 2], tokens[0, 0, 0]) and torch.allclose(limited[0, 6], text[0, 6])


def test_whole_word_and_category_embeddings_are_added(tiny):
    model = tiny()
    inputs, _ = batch()
    ids, ww = inputs["input_ids"], inputs["whole_word_ids"]
    with torch.no_grad():
        embeds = model.embed_inputs(ids, ww, inputs["image_feats"])
        expected = model.t5.shared(ids) + model.whole_word_embeddings(ww) + model.category_embeddings.weight[0]
    text = ids != IMG
    assert torch.allclose(embeds[text], expected[text], atol=1e-6)
    with torch.no_grad():
        slot_part = embeds[0, 2] - model.whole_word_embeddings.weight[2] - model.category_embeddings.weight[1]
    assert torch.allclose(slot_part, model.visual(inputs["image_feats"])[0, 0, 0], atol=1e-5)


def test_text_only_model_has_no_visual_parameters(tiny):
    model = tiny(n_image_tokens=0)
    assert model.visual is None
    assert not any(n.startswith("visual") for n, _ in model.named_parameters())
    assert model.count_parameters()["by_group"]["visual"] == 0
    inputs, labels = batch()
    out = model(inputs["input_ids"], inputs["attention_mask"], inputs["whole_word_ids"], None, labels=labels)
    assert torch.isfinite(out.loss)


# ---------------------------------------------------------------------------------------- routing and decoding
TASKS = ["sequential", "direct", "explanation"]


def test_per_sample_task_routing_matches_per_row_runs(tiny):
    model = tiny(adapter=AdapterConfig(shared=False, init="default"))
    inputs, labels = batch()
    with torch.no_grad():
        together = model(**inputs, labels=labels, tasks=TASKS).logits
        for i, task in enumerate(TASKS):
            row = {k: v[i : i + 1] for k, v in inputs.items()}
            alone = model(**row, labels=labels[i : i + 1], tasks=[task]).logits
            assert torch.allclose(together[i : i + 1], alone, atol=1e-5)
            for other in TASKS:
                if other != task:
                    elsewise = model(**row, labels=labels[i : i + 1], tasks=[other]).logits
                    assert not torch.allclose(alone, elsewise, atol=1e-4)


def test_encode_once_then_score_candidates(tiny):
    model = tiny(adapter=AdapterConfig(shared=False, init="default"))
    inputs, labels = batch()
    with torch.no_grad():
        direct = model(**inputs, labels=labels, tasks=TASKS).logits
        enc = model.encode(inputs["input_ids"], inputs["attention_mask"], inputs["whole_word_ids"],
                           inputs["image_feats"], tasks=TASKS)
        again = model(attention_mask=inputs["attention_mask"], labels=labels, tasks=TASKS, encoder_outputs=enc).logits
        assert torch.allclose(direct, again, atol=1e-6)
        # k = 2 candidates per sample: rows repeated with repeat_interleave, tasks stay one per sample
        k = 2
        enc_k = type(enc)(last_hidden_state=enc.last_hidden_state.repeat_interleave(k, 0))
        mask_k = inputs["attention_mask"].repeat_interleave(k, 0)
        scored = model(attention_mask=mask_k, labels=labels.repeat_interleave(k, 0), tasks=TASKS,
                       encoder_outputs=enc_k).logits
    assert torch.allclose(scored[::k], direct, atol=1e-6) and torch.allclose(scored[1::k], direct, atol=1e-6)


def test_generate_beam_search_with_routing(tiny):
    model = tiny(adapter=AdapterConfig(shared=False, init="default"))
    inputs, _ = batch()
    kw = dict(num_beams=4, num_return_sequences=2, max_new_tokens=4, output_scores=True, return_dict_in_generate=True)
    out = model.generate(**inputs, tasks=TASKS, **kw)
    assert out.sequences.shape[0] == 3 * 2
    for i, task in enumerate(TASKS):
        row = {k: v[i : i + 1] for k, v in inputs.items()}
        alone = model.generate(**row, tasks=[task], **kw)
        width = alone.sequences.shape[1]
        assert torch.equal(out.sequences[2 * i : 2 * i + 2, :width], alone.sequences)
        assert torch.allclose(out.sequences_scores[2 * i : 2 * i + 2], alone.sequences_scores, atol=1e-5)
    allowed = [0, 1, 20, 21, 22]
    constrained = model.generate(**inputs, tasks=TASKS, num_beams=4, max_new_tokens=4,
                                 prefix_allowed_tokens_fn=lambda b, s: allowed)
    assert set(constrained.flatten().tolist()) <= set(allowed)


# ---------------------------------------------------------------------------------------- checkpoints
def test_trainable_state_dict_round_trip(tiny):
    inputs, labels = batch()
    trained = tiny(seed=0, adapter=AdapterConfig(init="default"), train_word_embeddings=True)
    with torch.no_grad():
        for p in trained.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = trained.trainable_state_dict()
    assert set(sd) == {n for n, p in trained.named_parameters() if p.requires_grad}
    assert not any(n.startswith("t5.shared") or n.endswith(".q.weight") for n in sd)
    # a fresh model with the same frozen backbone (as from_pretrained gives) and other trainable weights
    fresh = tiny(seed=0, adapter=AdapterConfig(init="near_identity"), train_word_embeddings=True)
    want = trained(**inputs, labels=labels).logits
    assert not torch.allclose(fresh(**inputs, labels=labels).logits, want, atol=1e-4)
    # as VIP5LitModule loads an adapter checkpoint: non-strict, and only frozen tensors may be missing
    result = fresh.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys and not set(result.missing_keys) & set(sd)
    assert torch.allclose(fresh(**inputs, labels=labels).logits, want, atol=1e-6)


def test_named_backbone_offline_says_what_to_download():
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("t5-small", "config.json"), str):
        pytest.skip("t5-small is in the local HF cache")
    with pytest.raises(OSError, match="hf download t5-small"):
        load_backbone("t5-small")
