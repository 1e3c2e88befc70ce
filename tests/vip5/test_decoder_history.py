"""prompts.decoder_history: the newest history items go to the decoder, each one a next-item target of the ones
before it in training; evaluation primes the decoder with them (left-padded per batch) before the search."""

from __future__ import annotations

import pytest
import torch

from vip5.cli import DEFAULT_CONFIG, main
from vip5.data import model_inputs

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
WINDOW = 4


def _module(demo_data, out, *extra):
    cli = main(["--config", str(DEFAULT_CONFIG), "--trainer.logger", "false", "--trainer.default_root_dir", str(out),
                "--data.init_args.data_dir", str(demo_data / "amazon"), "--data.init_args.generate_demo", "false",
                "--data.init_args.image_encoder", "null", "--data.init_args.n_negatives", "19",
                "--data.init_args.cache_dir", str(out / "cache"), "--model.net.n_image_tokens", "0",
                "--model.net.item_token_init", "normal", "--model.tokenizer_vocab_size", "400",
                "--model.prompts.families", "[sequential]", "--model.prompts.decoder_history", str(WINDOW),
                "--model.prompts.train_targets", "all", "--model.prompts.train_templates", "[A-1, A-3, A-7]",
                *extra], run_cli=False)
    cli.datamodule.prepare_data()
    cli.datamodule.setup("fit")
    cli.model.configure_model()
    cli.model.model.eval()
    return cli.model


@pytest.fixture(scope="module")
def primed(demo_data, tmp_path_factory):
    return _module(demo_data, tmp_path_factory.mktemp("decoder_history"))


@pytest.fixture(scope="module")
def primed_numbers(demo_data, tmp_path_factory):
    """Item ids written as numbers, several tokens each (the trie then works past the prefix token by token)."""
    return _module(demo_data, tmp_path_factory.mktemp("decoder_history_seq"), "--data.init_args.indexing",
                   "sequential")


def test_training_targets_are_the_window_then_the_next_item(primed):
    builder = primed.sample_builder
    to_item, to_id = builder.data.index.to_item, builder.data.index.to_id
    ds = builder.dataset("train")
    full = 0
    for i in range(len(ds)):
        s = ds[i]
        if s["template"] == "A-7":  # yes/no prompts keep the history in the prompt and answer alone
            assert s["decoder_prefix"] == [] and s["target"] in ("yes", "no")
            continue
        items = [to_item[t] for t in s["target"].split()]
        window = s["decoder_prefix"]
        assert items == [*window, s["target_item"]] and len(window) <= WINDOW
        train = builder.data.split.train[s["user"]]
        # the target's position (an item may recur in a sequence): the window is the items right before it
        t = [k for k in range(len(train)) if train[k] == s["target_item"]
             and [i for i in train[:k] if i != train[k]][-WINDOW:] == window]
        assert t
        before = [i for i in train[: t[0]] if i != train[t[0]]]
        # the prompt lists the items before the window
        older = before[: len(before) - len(window)][-builder.config.max_history:]
        assert all(to_id[i] in s["source"] for i in older)
        full += len(window) == min(WINDOW, len(before))
    assert full == sum(1 for i in range(len(ds)) if ds[i]["template"] != "A-7")  # windows are as full as they can be
    batch = builder.collate([s for s in (ds[i] for i in range(12)) if s["template"] != "A-7"])
    counts = (batch["labels"] != -100).sum(1).tolist()
    assert counts == [len(s["decoder_prefix"]) + 2 for s in batch["samples"]]  # window, next item, </s>


def _shortened(sample, drop):
    """The sample with its window's oldest ``drop`` items left out (a user with a shorter history)."""
    return {**sample, "decoder_prefix": sample["decoder_prefix"][drop:]}


def _greedy_scores(model, batch, prefixes):
    """Next-token logits after [start, *prefix], row by row without padding (the reference)."""
    rows = []
    with torch.no_grad():
        for r, prefix in enumerate(prefixes):
            one = {k: v[r: r + 1] if torch.is_tensor(v) else v[r: r + 1] for k, v in model_inputs(batch).items()}
            dec = torch.tensor([[model.t5.config.decoder_start_token_id, *prefix]])
            rows.append(model(**one, decoder_input_ids=dec).logits[0, -1])
    return torch.stack(rows)


def test_search_continues_each_users_window(primed):
    evaluator, builder, model = primed.evaluator, primed.sample_builder, primed.model
    test = builder.dataset("test", "A-3")
    samples = [_shortened(test[i], i % 3) for i in range(8)]
    assert len({len(s["decoder_prefix"]) for s in samples}) > 1  # rows of several widths: left padding is tested
    batch = builder.collate(samples)
    prefixes = evaluator.decoder_prefixes(samples)
    assert all(len(p) == len(s["decoder_prefix"]) for p, s in zip(prefixes, samples))  # one token per item
    beams = evaluator._beam_items(batch, 6, evaluator.trie)
    logits = _greedy_scores(model, batch, prefixes)
    base = builder.base_vocab_size
    token_item = {tokens[0]: item for item, tokens in evaluator.item_tokens.items()}
    for row, ranked in zip(logits, beams):
        best = (row[base:].topk(6).indices + base).tolist()
        assert ranked == [token_item[t] for t in best]


def test_candidate_scores_follow_the_window(primed_numbers):
    evaluator, builder, model = primed_numbers.evaluator, primed_numbers.sample_builder, primed_numbers.model
    samples = [builder.dataset("test", "A-3")[i] for i in range(3)]
    for s in samples:
        s["candidates"] = builder.validation_candidates(s["user"], s["target_item"])[-5:]
    batch = builder.collate(samples)
    assert max(len(t) for t in evaluator.item_tokens.values()) > 1  # several tokens per id
    scores = evaluator.candidate_scores(batch)
    prefixes = evaluator.decoder_prefixes(samples)
    start = model.t5.config.decoder_start_token_id
    with torch.no_grad():
        for r, s in enumerate(samples):
            one = {k: v[r: r + 1] if torch.is_tensor(v) else v[r: r + 1] for k, v in model_inputs(batch).items()}
            for c, cand in enumerate(s["candidates"]):
                tokens = evaluator.item_tokens[cand]
                dec = torch.tensor([[start, *prefixes[r], *tokens[:-1]]])
                logp = model(**one, decoder_input_ids=dec).logits[0, len(prefixes[r]):].log_softmax(-1)
                want = sum(float(logp[j, t]) for j, t in enumerate(tokens))
                assert scores[r][c].item() == pytest.approx(want, abs=1e-4)


def test_search_over_several_token_ids_after_the_window(primed_numbers):
    evaluator, builder = primed_numbers.evaluator, primed_numbers.sample_builder
    samples = [_shortened(builder.dataset("test", "A-3")[i], i % 3) for i in range(6)]
    assert len({len(p) for p in evaluator.decoder_prefixes(samples)}) > 1
    beams = evaluator._beam_items(builder.collate(samples), 5, evaluator.trie)
    for s, ranked in zip(samples, beams):
        assert len(ranked) == 5 and all(item in evaluator.trie for item in ranked)
        # the left-padded batch searches exactly as each user alone
        assert ranked == evaluator._beam_items(builder.collate([s]), 5, evaluator.trie)[0]


def test_cut_targets_are_reported_once(primed, caplog):
    import dataclasses

    builder = primed.sample_builder
    samples = [s for s in (builder.dataset("train")[i] for i in range(12)) if len(s["decoder_prefix"]) == WINDOW]
    config = builder.config
    builder.config = dataclasses.replace(config, max_target_length=3)
    try:
        with caplog.at_level("WARNING", logger="vip5.data"):
            batch = builder.collate(samples)
            builder.collate(samples)
    finally:
        builder.config = config
        builder._warned_cut.discard("target")
    assert batch["labels"].shape[1] == 3
    assert [r.getMessage() for r in caplog.records].count(
        f"targets of {WINDOW + 2} tokens are cut at max_target_length=3 (e.g. {samples[0]['template']}): raise it "
        "or lower decoder_history / target_items") == 1


def test_a_negative_window_is_refused():
    from vip5.data import PromptConfig

    with pytest.raises(ValueError, match="decoder_history must be >= 0, got -1"):
        PromptConfig(decoder_history=-1)
    with pytest.raises(ValueError, match="target_items must be >= 1, got 0"):
        PromptConfig(target_items=0)
