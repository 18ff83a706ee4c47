"""Datasets over the token store: GSG examples at batch time (GSG.md §4), fine-tuning pairs,
per-epoch re-draws, determinism across processes, and the loader pieces working together."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch.utils.data

from pegasus_gsg.data.datasets import (
    ExampleOptions,
    FinetuneDataset,
    PretrainingDataset,
    Seq2SeqCollator,
    TokenBudgetBatchSampler,
)
from pegasus_gsg.data.preparation import PrepareConfig, prepare
from pegasus_gsg.data.store import TokenStore
from pegasus_gsg.data.tokenization import load_tokenizer
from pegasus_gsg.data.vocab import EOS_ID, MASK1_ID, MASK2_ID
from tests.conftest import read_jsonl_slice

# Hand-checked Ind-Orig ranking (stopwords removed, overlap with the rest of the document):
# S0 {cocoa, prices, bahia} = 3, S1 {week} = 1, S2 {cocoa, prices, bahia, week} = 4, S3 = 0,
# so the order is S2, S0, S1, S3: gsr 0.25 picks S2, gsr 0.5 picks S0 and S2.
HAND_SENTENCES = [
    "Cocoa prices rose in Bahia.",
    "Rain helped the farmers this week.",
    "Exporters said cocoa prices in Bahia may rise next week.",
    "The port was quiet.",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory, tiny_tokenizer_dir, tokenizer) -> TokenStore:
    work = tmp_path_factory.mktemp("hand")
    source = work / "doc.jsonl"
    source.write_text(json.dumps({"text": " ".join(HAND_SENTENCES)}) + "\n", encoding="utf-8")
    prepare([str(source)], tiny_tokenizer_dir, work / "store", PrepareConfig(kind="pretrain"))
    return TokenStore.open(work / "store", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def reuters_store(tmp_path_factory, shared_data, tiny_tokenizer_dir, tokenizer) -> TokenStore:
    out = tmp_path_factory.mktemp("reuters") / "store"
    config = PrepareConfig(kind="pretrain", max_records=120)
    prepare([str(shared_data / "reuters21578_en" / "data.jsonl")], tiny_tokenizer_dir, out, config)
    return TokenStore.open(out, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def aeslc_store(tmp_path_factory, shared_data, tiny_tokenizer_dir, tokenizer) -> TokenStore:
    out = tmp_path_factory.mktemp("aeslc") / "store"
    config = PrepareConfig(kind="finetune", max_records=80)
    prepare([str(shared_data / "aeslc" / "data.jsonl")], tiny_tokenizer_dir, out, config)
    return TokenStore.open(out, tokenizer=tokenizer)


def pretraining(store, tokenizer, seed=0, **options) -> PretrainingDataset:
    return PretrainingDataset(
        store, ExampleOptions(**options), vocab_size=len(tokenizer), seed=seed
    )


def text(tokenizer, ids) -> str:
    """Decoded ids with whitespace runs collapsed (where a space piece goes is the tokenizer's
    business, not the example builder's)."""
    return " ".join(tokenizer.decode(ids).split())


def split_on_mask(tokenizer, ids: list[int]) -> list[str]:
    """The decoded text between <mask_1> tokens; </s> required at the end and only there."""
    assert ids[-1] == EOS_ID and EOS_ID not in ids[:-1]
    pieces, current = [], []
    for token in [*ids[:-1], MASK1_ID]:
        if token == MASK1_ID:
            pieces.append(text(tokenizer, current))
            current = []
        else:
            current.append(token)
    return pieces


def target(tokenizer, ids: list[int]) -> str:
    """The decoded target; </s> required at the end and only there."""
    assert ids[-1] == EOS_ID and EOS_ID not in ids[:-1]
    return text(tokenizer, ids[:-1])


# ------------------------------------------------------------------------------ the example
def test_hand_checked_document_one_gap(hand_store, tokenizer):
    item = pretraining(hand_store, tokenizer, gsr=0.25)[0]
    s0, s1, s2, s3 = HAND_SENTENCES
    assert split_on_mask(tokenizer, item["input_ids"]) == [f"{s0} {s1}", s3]
    assert target(tokenizer, item["labels"]) == s2
    assert "mlm_labels" not in item


def test_hand_checked_document_two_gaps_in_document_order(hand_store, tokenizer):
    item = pretraining(hand_store, tokenizer, gsr=0.5)[0]
    s0, s1, s2, s3 = HAND_SENTENCES
    # One <mask_1> per gap sentence, in place; the target lists S0 before S2 (document order)
    # although S2 ranks first.
    assert item["input_ids"].count(MASK1_ID) == 2
    assert split_on_mask(tokenizer, item["input_ids"]) == ["", s1, s3]
    assert target(tokenizer, item["labels"]) == f"{s0} {s2}"


def test_mask_prob_zero_leaves_gap_sentences_in_the_input(hand_store, tokenizer):
    item = pretraining(hand_store, tokenizer, gsr=0.5, mask_prob=0.0)[0]
    assert split_on_mask(tokenizer, item["input_ids"]) == [" ".join(HAND_SENTENCES)]
    assert target(tokenizer, item["labels"]) == f"{HAND_SENTENCES[0]} {HAND_SENTENCES[2]}"


def test_truncation_keeps_eos_on_both_sides(hand_store, tokenizer):
    full = pretraining(hand_store, tokenizer, gsr=0.5)[0]
    short = pretraining(hand_store, tokenizer, gsr=0.5, max_input_len=6, max_target_len=4)[0]
    assert short["input_ids"] == [*full["input_ids"][:5], EOS_ID]
    assert short["labels"] == [*full["labels"][:3], EOS_ID]


def test_mlm_labels_mark_only_corrupted_unselected_tokens(hand_store, tokenizer):
    plain = pretraining(hand_store, tokenizer, gsr=0.25)[0]
    item = pretraining(hand_store, tokenizer, gsr=0.25, mlm_prob=0.5)[0]
    labels = np.array(item["mlm_labels"])
    inputs, original = np.array(item["input_ids"]), np.array(plain["input_ids"])
    picked = labels != -100
    assert len(labels) == len(inputs) and picked.sum() > 0
    assert np.array_equal(labels[picked], original[picked])  # labels hold the original ids
    assert np.array_equal(inputs[~picked], original[~picked])  # nothing else changed
    assert (inputs[picked] == MASK2_ID).any()
    assert not picked[original == MASK1_ID].any() and not picked[-1]  # specials never picked
    assert item["labels"] == plain["labels"]


def test_length_estimate_is_exact_for_a_fixed_gsr(reuters_store, tokenizer):
    ds = pretraining(reuters_store, tokenizer, gsr=0.3, max_input_len=256)
    actual = np.array([len(ds[i]["input_ids"]) for i in range(len(ds))])
    assert np.array_equal(ds.lengths(), actual)
    assert actual.max() == 256  # some documents were truncated


# ------------------------------------------------------------------------ epochs and seeds
def stochastic(store, tokenizer, seed=0) -> PretrainingDataset:
    return pretraining(
        store, tokenizer, seed=seed, mixed_gsr=(0.15, 0.45), score_noise=0.2, mlm_prob=0.15
    )


def test_epochs_redraw_and_same_seed_epoch_index_repeats(reuters_store, tokenizer):
    a, b = stochastic(reuters_store, tokenizer), stochastic(reuters_store, tokenizer)
    a.set_epoch(3)
    b.set_epoch(3)
    indices = range(0, len(a), 3)
    epoch3 = [a[i] for i in indices]
    assert epoch3 == [b[i] for i in reversed(indices)][::-1]  # order of access is irrelevant
    a.set_epoch(4)
    epoch4 = [a[i] for i in indices]
    changed_labels = sum(x["labels"] != y["labels"] for x, y in zip(epoch3, epoch4, strict=True))
    changed_mlm = sum(
        x["mlm_labels"] != y["mlm_labels"] for x, y in zip(epoch3, epoch4, strict=True)
    )
    assert changed_labels > len(epoch3) // 3  # new gsr / noise: new gap sentences
    assert changed_mlm == len(epoch3)  # new MLM positions everywhere
    a.set_epoch(3)
    assert [a[i] for i in indices] == epoch3
    other_seed = stochastic(reuters_store, tokenizer, seed=1)
    other_seed.set_epoch(3)
    assert [other_seed[i] for i in indices] != epoch3


def test_epoch_lengths_are_exact_for_stochastic_options(reuters_store, tokenizer):
    ds = pretraining(
        reuters_store, tokenizer, mixed_gsr=(0.15, 0.45), score_noise=0.2, mask_prob=0.8,
        mlm_prob=0.15, max_input_len=384,
    )  # fmt: skip
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        actual = np.array([len(ds[i]["input_ids"]) for i in range(len(ds))])
        assert np.array_equal(ds.epoch_lengths(epoch), actual)
    assert not np.array_equal(ds.epoch_lengths(0), ds.epoch_lengths(1))
    assert not np.array_equal(ds.lengths(), actual)  # the estimate is only the typical draw


def test_fixed_gsr_without_mlm_is_the_same_every_epoch(reuters_store, tokenizer):
    ds = pretraining(reuters_store, tokenizer, gsr=0.3)
    first = [ds[i] for i in range(20)]
    ds.set_epoch(5)
    assert [ds[i] for i in range(20)] == first


def test_pickles_without_the_token_arrays_and_reopens(reuters_store, tokenizer):
    ds = stochastic(reuters_store, tokenizer)
    ds.set_epoch(2)
    blob = pickle.dumps(ds)
    assert len(blob) < 4096 < reuters_store.tokens.nbytes
    clone = pickle.loads(blob)
    assert clone.epoch == 2
    assert [clone[i] for i in range(10)] == [ds[i] for i in range(10)]


# ---------------------------------------------------------------------------- fine-tuning
def test_finetune_items_decode_to_the_pair_with_eos(aeslc_store, tokenizer):
    records = read_jsonl_slice("aeslc", 10)
    ds = FinetuneDataset(aeslc_store, max_input_len=1024, max_target_len=64)
    for i in range(3):
        record = records[aeslc_store.source_row(i)]
        item = ds[i]
        assert item["input_ids"][-1] == EOS_ID and item["labels"][-1] == EOS_ID
        summary = tokenizer.decode(item["labels"], skip_special_tokens=True)
        assert " ".join(summary.split()) == " ".join(record["summary"].split())
        document = tokenizer.decode(item["input_ids"], skip_special_tokens=True)
        assert document.split()[:5] == record["document"].split()[:5]
    actual = [len(ds[i]["input_ids"]) for i in range(len(ds))]
    assert ds.lengths().tolist() == actual


def test_finetune_truncation_keeps_eos(aeslc_store):
    ds = FinetuneDataset(aeslc_store, max_input_len=16, max_target_len=3)
    document, summary = aeslc_store.pair(0)
    item = ds[0]
    assert item["input_ids"] == [*document[:15].tolist(), EOS_ID]
    assert item["labels"] == [*summary[:2].tolist(), EOS_ID]
    assert ds.lengths().max() == 16


def test_wrong_store_kind_and_bad_options_are_named(aeslc_store, reuters_store, tokenizer):
    with pytest.raises(ValueError, match="PretrainingDataset needs a 'pretrain' store"):
        PretrainingDataset(aeslc_store, ExampleOptions(), vocab_size=len(tokenizer))
    with pytest.raises(ValueError, match="vocab_size=500 is smaller than the vocabulary of"):
        PretrainingDataset(reuters_store, ExampleOptions(), vocab_size=500)
    with pytest.raises(ValueError, match="epoch must be >= 0, got -1"):
        PretrainingDataset(reuters_store, ExampleOptions(), vocab_size=1000).set_epoch(-1)
    with pytest.raises(ValueError, match="FinetuneDataset needs a 'finetune' store"):
        FinetuneDataset(reuters_store, max_input_len=512, max_target_len=64)
    for bad, message in [
        ({"gsr": 0.0}, r"gsr must be in \(0, 1\], got 0.0"),
        ({"mixed_gsr": (0.5, 0.2)}, r"mixed_gsr must satisfy 0 < low <= high <= 1"),
        ({"score_noise": 1.0}, r"score_noise must be in \[0, 1\)"),
        ({"mask_prob": 1.5}, r"mask_prob must be in \[0, 1\]"),
        ({"mlm_prob": -0.1}, r"mlm_prob must be in \[0, 1\)"),
        ({"max_input_len": 1}, "max_input_len must be >= 2, got 1"),
        ({"max_target_len": 0}, "max_target_len must be >= 2, got 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            ExampleOptions(**bad)


# --------------------------------------------------------------------- through a DataLoader
def epoch_batches(dataset, loader, sampler, epoch) -> list[dict]:
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    return [{k: v.tolist() for k, v in batch.items()} for batch in loader]


@pytest.mark.slow
def test_workers_give_the_same_batches_as_the_main_process(reuters_store, tokenizer):
    dataset = stochastic(reuters_store, tokenizer)
    sampler = TokenBudgetBatchSampler(dataset.epoch_lengths, max_tokens=2048, seed=4)

    def loader(workers: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=Seq2SeqCollator(),
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    main, workers = loader(0), loader(2)
    for epoch in (0, 1):  # persistent workers must see the new epoch
        expected = epoch_batches(dataset, main, sampler, epoch)
        assert epoch_batches(dataset, workers, sampler, epoch) == expected
    assert expected != epoch_batches(dataset, main, sampler, 0)
    seen = sorted(i for batch in sampler for i in batch)
    assert seen == list(range(len(dataset)))


@pytest.mark.slow
def test_spawned_worker_reopens_the_store_and_agrees(reuters_store, tokenizer):
    """spawn (and Python 3.14's default forkserver) pickle the dataset into the worker."""
    dataset = stochastic(reuters_store, tokenizer)
    sampler = TokenBudgetBatchSampler(dataset.epoch_lengths, max_tokens=4096, seed=1)
    main = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=Seq2SeqCollator())
    spawned = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=Seq2SeqCollator(),
        num_workers=1,
        multiprocessing_context="spawn",
    )
    expected = epoch_batches(dataset, main, sampler, 2)
    assert epoch_batches(dataset, spawned, sampler, 2) == expected


@pytest.mark.parametrize("options", [{"gsr": 0.3}, {"mixed_gsr": (0.15, 0.45), "score_noise": 0.2}])
def test_collated_batches_respect_the_budget_and_pad_little(reuters_store, tokenizer, options):
    dataset = pretraining(reuters_store, tokenizer, max_input_len=256, **options)
    sampler = TokenBudgetBatchSampler(dataset.epoch_lengths, max_tokens=1024, seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=Seq2SeqCollator()
    )
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        real = padded = 0
        for batch in loader:
            assert batch["input_ids"].numel() <= 1024
            real += int(batch["attention_mask"].sum())
            padded += batch["input_ids"].numel()
            assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
        # 120 documents are few to bucket; the benchmark's 4000 pad less.
        assert 1 - real / padded < 0.08


def test_store_path_is_what_workers_reopen(reuters_store, tokenizer):
    ds = stochastic(reuters_store, tokenizer)
    assert Path(pickle.loads(pickle.dumps(ds)).store.path) == Path(reuters_store.path)
