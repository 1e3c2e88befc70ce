"""SoftPreferenceModel on a tiny GQA Llama, and the word tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, DynamicCache

from common.tiny_tokenizer import build_word_tokenizer
from pmg.soft_prompt import SoftPreferenceModel, load_llm, tiny_llama

LLAMA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
TEXTS = [
    "0. red striped shirt 1. blue dotted hat 2. green plain dress",
    "Here are the items the user bought; describe the interests: round, square, yellow!",
]
D_TE = 32


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_word_tokenizer(TEXTS, tmp_path_factory.mktemp("tok") / "llama", LLAMA_SPECIALS)


@pytest.fixture(scope="module")
def llm(tokenizer):
    return tiny_llama(len(tokenizer), pad_token_id=tokenizer.pad_token_id)


def make(llm, **kwargs) -> SoftPreferenceModel:
    kwargs = {"n_soft_tokens": 3, "prefix_length": 2, **kwargs}
    return SoftPreferenceModel(llm, D_TE, **kwargs)


def batch(tokenizer, texts=("red striped shirt, blue hat", "green dress", "yellow")):
    enc = tokenizer(list(texts), padding=True, return_tensors="pt")
    return enc.input_ids, enc.attention_mask


# ------------------------------------------------------------------------------------------------ tokenizer
def test_word_tokenizer_reloads_and_splits_punctuation(tokenizer, tmp_path):
    out = tmp_path / "tok"
    built = build_word_tokenizer(TEXTS, out, LLAMA_SPECIALS)
    again = build_word_tokenizer(TEXTS + ["extra words"], out, LLAMA_SPECIALS, max_vocab=10)  # replaces out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temporary folders left behind
    assert len(again) == 10 and len(built) == len(tokenizer)
    reloaded = AutoTokenizer.from_pretrained(out)
    assert reloaded("Red, hat!").input_ids == again("Red, hat!").input_ids
    ids = tokenizer("Red, HAT!").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", "red", ",", "hat", "!"]
    assert tokenizer("purple").input_ids == [tokenizer.bos_token_id, tokenizer.unk_token_id]
    assert [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id] == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("n_soft", [1, 4])
def test_output_shape(llm, tokenizer, n_soft):
    ids, mask = batch(tokenizer)
    out = make(llm, n_soft_tokens=n_soft)(ids, mask)
    assert out.shape == (3, n_soft, D_TE) and out.dtype == torch.float32


def test_prefix_cache_and_mask_shapes(llm, tokenizer):
    model = make(llm, prefix_length=5)
    cfg = llm.config
    cache = model.prefix_cache(batch_size=3)
    assert len(cache.layers) == cfg.num_hidden_layers
    for layer in cache.layers:  # GQA: kv heads (2), not attention heads (4)
        assert layer.keys.shape == layer.values.shape == (3, cfg.num_key_value_heads, 5, cfg.head_dim)
    ids, mask = batch(tokenizer)
    embeds, full_mask, positions = model.build_inputs(ids, mask)
    assert embeds.shape == (3, ids.shape[1] + 3, cfg.hidden_size)
    assert full_mask.shape == (3, 5 + ids.shape[1] + 3)
    assert full_mask[:, :5].eq(1).all()
    assert full_mask[:, 5:].sum(1).tolist() == (mask.sum(1) + 3).tolist()
    assert positions[:, 0].tolist() == mask.sum(1).tolist()


def test_left_padding_is_rejected(llm, tokenizer):
    ids, mask = batch(tokenizer)
    with pytest.raises(ValueError, match="right-padded"):
        make(llm)(ids, mask.flip(1))


# ---------------------------------------------------------------------------------------------- trainability
def test_only_soft_prefix_mapper_train(llm, tokenizer):
    model = make(llm)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"soft_tokens", "prefix", "mapper.weight", "mapper.bias"}
    model.train()
    assert not model.llm.training  # frozen LLM stays in eval mode

    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model(*batch(tokenizer)).square().mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    opt.step()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, trainable_before[name]), name
        else:
            assert torch.equal(p, frozen_before[name]), name


def test_parameter_count_matches_formula(llm):
    cfg = llm.config
    n_soft, s = 3, 2
    counts = make(llm, n_soft_tokens=n_soft, prefix_length=s).count_parameters()
    prefix = s * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim
    assert counts["prefix"] == prefix == 256
    assert counts["soft_tokens"] == n_soft * cfg.hidden_size
    assert counts["mapper"] == cfg.hidden_size * D_TE + D_TE
    assert counts["trainable"] == counts["prefix"] + counts["soft_tokens"] + counts["mapper"]
    assert counts["frozen"] == sum(p.numel() for p in llm.parameters())


# ----------------------------------------------------------------------------------------------- semantics
def test_padding_invariance(llm, tokenizer):
    model = make(llm)
    ids, mask = batch(tokenizer)
    batched = model(ids, mask)
    for i in range(ids.shape[0]):
        n = int(mask[i].sum())
        alone = model(ids[i : i + 1, :n])
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=0)


def test_prefix_is_the_llm_prefix_of_its_init_tokens(llm, tokenizer):
    """prefix_init="tokens": E_m equals a plain forward over [init tokens; prompt; soft tokens] (positions S..)."""
    init = tokenizer("style image", add_special_tokens=False).input_ids
    model = make(llm, prefix_length=2, init_token_ids=init)
    ids, _ = batch(tokenizer, ["blue dotted hat"])
    embed = llm.get_input_embeddings()
    seq = torch.cat([embed(torch.tensor([init])), embed(ids), model.soft_tokens[None]], dim=1)
    with torch.no_grad():
        hidden = llm.base_model(inputs_embeds=seq).last_hidden_state[:, -3:]
        torch.testing.assert_close(model(ids), model.mapper(hidden), atol=1e-5, rtol=1e-5)


def test_readonly_cache_matches_dynamic_cache_recipe(llm, tokenizer):
    """Our cache == the prefix recipe (fresh DynamicCache filled with cache.update(k, v, layer_idx))."""
    model = make(llm, prefix_init="randn")
    ids, mask = batch(tokenizer)
    embeds, full_mask, positions = model.build_inputs(ids, mask)
    recipe = DynamicCache()
    for i, layer in enumerate(model.prefix_cache(ids.shape[0]).layers):
        recipe.update(layer.keys, layer.values, i)
    with torch.no_grad():
        hidden = llm.base_model(
            inputs_embeds=embeds, attention_mask=full_mask, past_key_values=recipe, use_cache=True
        ).last_hidden_state
        expected = model.mapper(hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1])))
        torch.testing.assert_close(model(ids, mask), expected, atol=1e-6, rtol=1e-6)


def test_prefix_matters_and_zero_prefix_is_plain_forward(llm, tokenizer):
    ids, mask = batch(tokenizer, ["green dress"])
    model = make(llm)
    with torch.no_grad():
        before = model(ids, mask)
        model.prefix.add_(torch.randn_like(model.prefix))
        assert not torch.allclose(model(ids, mask), before, atol=1e-4)

        plain = make(llm, prefix_length=0)
        assert plain.prefix is None and plain.count_parameters()["prefix"] == 0
        seq = torch.cat([llm.get_input_embeddings()(ids), plain.soft_tokens[None]], dim=1)
        hidden = llm.base_model(inputs_embeds=seq).last_hidden_state[:, -3:]
        torch.testing.assert_close(plain(ids, mask), plain.mapper(hidden), atol=1e-6, rtol=1e-6)


def test_soft_token_inits(llm):
    vocab_rows = make(llm, init_token_ids=[5, 6])
    torch.testing.assert_close(vocab_rows.soft_tokens.data, llm.get_input_embeddings().weight[[5, 6, 5]])
    randn = make(llm, n_soft_tokens=64, soft_init="randn")
    assert 0.8 < randn.soft_tokens.std().item() < 1.2  # the reference code's std-1 init, kept as an option
    a, b = make(llm, seed=1), make(llm, seed=1)
    assert all(torch.equal(a.trainable_state_dict()[k], v) for k, v in b.trainable_state_dict().items())


def test_zero_soft_tokens_returns_none_without_loading_an_llm():
    model = SoftPreferenceModel("/nonexistent/llm", D_TE, n_soft_tokens=0)
    assert model.llm is None and model(torch.ones(1, 3, dtype=torch.long)) is None
    assert model.count_parameters()["trainable"] == 0 and model.trainable_state_dict() == {}


def test_trainable_state_dict_round_trip(llm, tokenizer):
    ids, mask = batch(tokenizer)
    src, dst = make(llm, seed=1), make(llm, seed=2)
    state = src.trainable_state_dict()
    assert set(state) == {"soft_tokens", "prefix", "mapper.weight", "mapper.bias"}
    # as PMGLitModule loads a checkpoint: non-strict, and only the frozen LLM may be missing
    result = dst.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("llm.") for k in result.missing_keys)
    with torch.no_grad():
        assert torch.equal(src(ids, mask), dst(ids, mask))


def test_gradient_checkpointing_same_outputs_and_grads(llm, tokenizer):
    ids, mask = batch(tokenizer)
    plain = make(llm)
    ckpt = make(tiny_llama(llm.config.vocab_size, pad_token_id=llm.config.pad_token_id), gradient_checkpointing=True)
    calls = []
    hook = ckpt.llm.base_model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))
    try:
        outs = [m(ids, mask) for m in (plain, ckpt)]
        torch.testing.assert_close(outs[0], outs[1])
        for out in outs:
            out.square().sum().backward()
    finally:
        hook.remove()
    assert len(calls) == 2  # the layer ran again during backward
    for name in ("soft_tokens", "prefix", "mapper.weight"):
        torch.testing.assert_close(plain.get_parameter(name).grad, ckpt.get_parameter(name).grad)


def test_missing_llm_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf download"):
        load_llm(tmp_path / "no-such-model")
