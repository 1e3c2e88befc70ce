import pytest
import torch
from torch import nn
from transformers.models.t5.modeling_t5 import eager_attention_forward

from vip5.dropout import ATTENTION, FastDropout, attention, fast_dropout

P = 0.1
Q = round(P * 2**16) / 2**16  # the drop probability a 16-bit mask realises


def test_fast_dropout_drops_at_rate_p_and_keeps_the_mean():
    torch.manual_seed(0)
    y = fast_dropout(torch.ones(1000, 1000), P)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - P) < 0.002  # 6 standard deviations at n = 1e6
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - Q)))
    assert abs(y.mean().item() - 1.0) < 0.003


def test_fast_dropout_draws_independent_elements():
    """Four elements share one 64-bit draw: neighbours must still be dropped independently (joint rate p^2)."""
    torch.manual_seed(1)
    dropped = fast_dropout(torch.ones(2_000_000), P) == 0
    pairs = dropped.view(-1, 4)
    for a, b in ((0, 1), (1, 2), (0, 3)):
        both = (pairs[:, a] & pairs[:, b]).float().mean().item()
        assert abs(both - P * P) < 0.0015
    # consecutive 64-bit draws as well
    across = (pairs[:-1, 3] & pairs[1:, 0]).float().mean().item()
    assert abs(across - P * P) < 0.0015


def test_fast_dropout_in_bfloat16_keeps_the_dtype_and_is_unbiased():
    torch.manual_seed(2)
    x = (torch.rand(1000, 1000) + 1).bfloat16()
    y = fast_dropout(x, P)
    assert y.dtype == torch.bfloat16
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - P)) < 0.002
    # each kept value is x / (1 - q) rounded once: no bias from a scale rounded to bfloat16 (1.109375, -0.16 %)
    scale = (y[kept].float() / x[kept].float()).mean().item()
    assert abs(scale - 1 / (1 - Q)) < 2e-4


def test_fast_dropout_follows_torch_seed_and_differs_between_calls():
    x = torch.randn(64, 33)
    torch.manual_seed(7)
    a, b = fast_dropout(x, P), fast_dropout(x, P)
    torch.manual_seed(7)
    assert torch.equal(fast_dropout(x, P), a)
    assert not torch.equal(a, b)


def test_fast_dropout_identity_outside_training_and_edge_probabilities():
    x = torch.randn(8, 5)
    assert fast_dropout(x, P, training=False) is x
    assert torch.equal(fast_dropout(x, 0.0), x)
    assert torch.equal(fast_dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        fast_dropout(x, 1.5)


def test_fast_dropout_gradient_is_the_same_mask():
    x = torch.randn(300, 200, requires_grad=True)
    y = fast_dropout(x, 0.3)
    y.sum().backward()
    q = round(0.3 * 2**16) / 2**16
    expected = torch.where(y != 0, 1 / (1 - q), 0.0)
    assert torch.allclose(x.grad, expected)


@pytest.mark.parametrize("scaling", [1.0, 0.125])  # T5's 1.0, and a scaled attention
def test_attention_with_dropout_is_eager_t5_attention_on_dropped_probabilities(scaling):
    torch.manual_seed(0)
    module = nn.Module().train()
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    bias = torch.randn(1, 4, 6, 6)
    mask = torch.zeros(2, 1, 6, 6)
    mask[1, :, :, 4:] = torch.finfo(torch.float32).min  # padded keys
    out, probs = attention(module, q, k, v, mask, dropout=0.5, scaling=scaling, position_bias=bias)
    module.eval()
    _, clean = eager_attention_forward(module, q, k, v, mask, scaling=scaling, dropout=0.0, position_bias=bias)
    q5 = round(0.5 * 2**16) / 2**16
    kept = probs != 0
    assert 0.3 < 1 - kept.float().mean().item() < 0.7
    assert torch.allclose(probs, torch.where(kept, clean / (1 - q5), 0.0), atol=1e-6)
    assert torch.allclose(out, (probs @ v).transpose(1, 2), atol=1e-6)
    assert not probs[1, :, :, 4:].any()  # masked keys stay masked


def test_attention_without_dropout_is_sdpa():
    torch.manual_seed(0)
    module = nn.Module().eval()
    module.is_causal = False  # as T5's encoder attention
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    bias = torch.randn(1, 4, 6, 6)
    out, _ = attention(module, q, k, v, None, dropout=0.1, scaling=1.0, position_bias=bias)
    ref, _ = eager_attention_forward(module, q, k, v, None, scaling=1.0, dropout=0.0, position_bias=bias)
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.fixture
def _tiny_vip5(tiny_vip5, tiny_t5_config):
    """``_tiny_vip5(dropout_rate)``: the shared tiny VIP5 on a 64-id vocabulary with one image token."""
    return lambda dropout_rate: tiny_vip5(
        0, backbone_config={**tiny_t5_config, "vocab_size": 64, "dropout_rate": dropout_rate}, n_image_tokens=1,
        image_token_id=63)


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 60, (3, 10), generator=g)
    ids[:, 2] = 63
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0  # one padded prompt
    return dict(input_ids=ids, attention_mask=mask, whole_word_ids=torch.arange(10).expand(3, 10),
                image_feats=torch.randn(3, 1, 16, generator=g), labels=torch.randint(3, 60, (3, 4), generator=g))


def test_vip5_backbone_uses_fast_dropout_and_matches_stock_sdpa_outside_training(_tiny_vip5):
    model = _tiny_vip5(0.1)
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert sum(isinstance(m, FastDropout) for m in model.modules()) == 16  # 2 per stack + 3/4 per block
    assert model.t5.encoder.config._attn_implementation == ATTENTION
    assert model.t5.decoder.config._attn_implementation == ATTENTION
    model.eval()
    ours = model(**_batch()).logits
    model.t5.set_attn_implementation("sdpa")
    assert torch.allclose(ours, model(**_batch()).logits, atol=1e-5)


def test_vip5_training_with_dropout_is_seeded_and_trains_adapters(_tiny_vip5):
    model = _tiny_vip5(0.2).train()
    torch.manual_seed(3)
    first = model(**_batch()).loss
    first.backward()
    torch.manual_seed(3)
    assert torch.equal(model(**_batch()).loss, first)
    model.eval()
    assert not torch.equal(model(**_batch()).loss, first)  # dropout was active in training
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    ups = [g for n, g in grads.items() if ".up.weight" in n]  # adapters start as identity: up gets the gradient
    assert ups and all(g.abs().sum() > 0 for g in ups)
