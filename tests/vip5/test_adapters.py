"""Bottleneck adapters on a stock HF T5 (as in VIP5): sites, placement, init, per-sample task routing."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from vip5.adapters import (
    SITES,
    AdapterConfig,
    AdapterController,
    BottleneckAdapter,
    adapter_tasks,
    inject_adapters,
    is_adapter_parameter,
)

TINY = dict(
    vocab_size=120, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=8, dropout_rate=0.0
)


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    t5 = T5ForConditionalGeneration(T5Config(**TINY))
    t5.config.decoder_start_token_id = 0
    return t5.eval()


def logits(t5, ids, labels, tasks=None):
    with adapter_tasks(t5, tasks), torch.no_grad():
        return t5(input_ids=ids, labels=labels).logits


IDS = torch.tensor([[5, 6, 7, 8, 1], [9, 10, 11, 12, 1], [13, 14, 15, 16, 1], [5, 6, 7, 8, 1]])
LABELS = torch.tensor([[3, 4, 1], [5, 6, 1], [7, 8, 1], [3, 4, 1]])


def test_adapter_shape_and_size():
    a = BottleneckAdapter(512, 8, init="default")
    assert sum(p.numel() for p in a.parameters()) == (512 * 64 + 64) + (64 * 512 + 512) == 66_112  # d=512, r=8
    x = torch.randn(2, 3, 512)
    assert a(x).shape == x.shape
    z = BottleneckAdapter(512, 8, init="near_identity")
    assert torch.equal(z(x), x)


def test_sites_and_names():
    t5 = tiny_t5()
    stock = set(t5.state_dict())
    controllers = inject_adapters(t5, AdapterConfig())
    assert len(controllers) == 2 * 2 + 2 * 3  # encoder: self-attn + FFN; decoder: self, cross, FFN (30 for 6+6)
    names = {n for n, _ in t5.named_parameters()}
    assert stock <= set(t5.state_dict())  # stock names untouched: a t5 checkpoint still loads
    new = {n for n in names if n not in stock}
    assert new and all(is_adapter_parameter(n) and ".adapter." in n for n in new)
    hosts = {n.split(".adapter.")[0] for n in new}
    assert hosts == {
        *(f"encoder.block.{b}.layer.0.SelfAttention" for b in range(2)),
        *(f"encoder.block.{b}.layer.1.DenseReluDense" for b in range(2)),
        *(f"decoder.block.{b}.layer.0.SelfAttention" for b in range(2)),
        *(f"decoder.block.{b}.layer.1.EncDecAttention" for b in range(2)),
        *(f"decoder.block.{b}.layer.2.DenseReluDense" for b in range(2)),
    }


def test_only_targeted_sites():
    t5 = tiny_t5()
    inject_adapters(t5, AdapterConfig(sites=("encoder_self_attn", "decoder_cross_attn")))
    hosts = {n.split(".adapter.")[0] for n, _ in t5.named_parameters() if is_adapter_parameter(n)}
    assert hosts == {"encoder.block.0.layer.0.SelfAttention", "encoder.block.1.layer.0.SelfAttention",
                     "decoder.block.0.layer.1.EncDecAttention", "decoder.block.1.layer.1.EncDecAttention"}
    with pytest.raises(ValueError, match="already has an adapter"):
        inject_adapters(t5, AdapterConfig(sites=("encoder_self_attn",)))


def test_config_validation():
    with pytest.raises(ValueError):
        AdapterConfig(sites=("encoder_attn",))
    with pytest.raises(ValueError):
        AdapterConfig(reduction_factor=0)
    with pytest.raises(ValueError):
        AdapterConfig(activation="nope")
    assert AdapterConfig(sites=["encoder_ffn"]).sites == ("encoder_ffn",)
    assert AdapterConfig().sites == SITES


def test_near_identity_equals_backbone_and_default_does_not():
    base = logits(tiny_t5(), IDS, LABELS)
    t5 = tiny_t5()
    inject_adapters(t5, AdapterConfig(init="near_identity"))
    assert torch.allclose(logits(t5, IDS, LABELS), base, atol=1e-6)
    t5 = tiny_t5()
    inject_adapters(t5, AdapterConfig(init="default"))
    assert not torch.allclose(logits(t5, IDS, LABELS), base, atol=1e-3)


def test_placement_is_on_sublayer_output():
    """y + Adapter(y) on the FFN output, before the block residual: check against a manual computation."""
    t5 = tiny_t5()
    inject_adapters(t5, AdapterConfig(sites=("encoder_ffn",), init="default"))
    layer_ff = t5.encoder.block[0].layer[1]
    x = torch.randn(2, 3, 32)
    with torch.no_grad():
        y = layer_ff.DenseReluDense.wo(torch.relu(layer_ff.DenseReluDense.wi(layer_ff.layer_norm(x))))
        adapter = layer_ff.DenseReluDense.adapter.shared
        expected = x + (y + adapter.up(adapter.act(adapter.down(y))))
        assert torch.allclose(layer_ff(x), expected, atol=1e-6)


def per_task_t5(route="per_sample"):
    t5 = tiny_t5()
    inject_adapters(t5, AdapterConfig(shared=False, init="default", route=route))
    return t5


def test_per_sample_routing_matches_separate_runs():
    t5 = per_task_t5()
    tasks = ["sequential", "direct", "explanation", "direct"]
    batch = logits(t5, IDS, LABELS, tasks)
    for i, task in enumerate(tasks):
        alone = logits(t5, IDS[i : i + 1], LABELS[i : i + 1], [task])
        assert torch.allclose(batch[i : i + 1], alone, atol=1e-5)
    # rows 0 and 3 have the same input: different tasks give different outputs
    other = logits(t5, IDS, LABELS, ["direct", "direct", "explanation", "direct"])
    assert not torch.allclose(other[0], batch[0], atol=1e-4)
    assert torch.allclose(other[3], batch[3], atol=1e-6)
    # task indices and a single broadcast name work too
    assert torch.allclose(logits(t5, IDS, LABELS, torch.tensor([0, 1, 2, 1])), batch)
    assert torch.allclose(logits(t5, IDS, LABELS, "direct")[1], batch[1], atol=1e-6)


def test_route_first_uses_first_task_for_the_whole_batch():
    t5 = per_task_t5(route="first")
    mixed = logits(t5, IDS, LABELS, ["explanation", "direct", "sequential", "direct"])
    assert torch.allclose(mixed, logits(t5, IDS, LABELS, "explanation"), atol=1e-6)


def test_rows_expanded_by_repeat_interleave():
    """k rows per task id (beam search, candidate scoring) follow repeat_interleave order."""
    t5 = per_task_t5()
    ids, labels = IDS[:2].repeat_interleave(3, 0), LABELS[:2].repeat_interleave(3, 0)
    expanded = logits(t5, ids, labels, ["sequential", "direct"])
    direct = logits(t5, ids, labels, ["sequential"] * 3 + ["direct"] * 3)
    assert torch.allclose(expanded, direct, atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        logits(t5, IDS[:3], LABELS[:3], ["sequential", "direct"])


def test_per_task_adapters_need_tasks():
    t5 = per_task_t5()
    with pytest.raises(RuntimeError, match="task ids"):
        logits(t5, IDS, LABELS)
    with pytest.raises(ValueError, match="unknown task"):
        logits(t5, IDS, LABELS, ["sequential", "x", "direct", "direct"])
    # the context restores the previous (unset) state
    with adapter_tasks(t5, "direct"):
        pass
    router = next(m for m in t5.modules() if isinstance(m, AdapterController)).router
    assert router._ids is None and router._broadcast is None


def test_gradients_reach_every_used_task_adapter():
    t5 = per_task_t5()
    for p in t5.parameters():
        p.requires_grad_(False)
    adapters = {n: p for n, p in t5.named_parameters() if is_adapter_parameter(n)}
    for p in adapters.values():
        p.requires_grad_(True)
    with adapter_tasks(t5, ["sequential", "direct", "sequential", "direct"]):
        t5(input_ids=IDS, labels=LABELS).loss.backward()
    for n, p in adapters.items():
        used = ".sequential." in n or ".direct." in n
        assert (p.grad is not None and p.grad.abs().sum() > 0) == used, n
