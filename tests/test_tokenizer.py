"""Tokenizer: PEGASUS id layout, AutoTokenizer round trip, lossless decode on real EN/ZH text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PegasusTokenizer, PreTrainedTokenizerFast

from pegasus_gsg.data import vocab
from pegasus_gsg.data.tokenization import (
    SPECIAL_TOKENS,
    load_tokenizer,
    normalize_text,
    tokenizer_fingerprint,
    train_tokenizer,
)
from tests.conftest import read_jsonl_slice


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir: Path):
    return load_tokenizer(tiny_tokenizer_dir)


def test_ids_follow_the_pegasus_layout(tok) -> None:
    assert tok.convert_ids_to_tokens(list(range(4))) == ["<pad>", "</s>", "<mask_1>", "<mask_2>"]
    assert tok.convert_ids_to_tokens([4, 104, 105]) == ["<unk_2>", "<unk_102>", "<unk>"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 105)
    assert tok.mask_token == "<mask_2>" and tok.mask_token_id == vocab.MASK2_ID
    assert len(tok) == 1000
    # Ordinary pieces (never special) start at 106: the byte pieces come first.
    assert tok.convert_ids_to_tokens(vocab.FIRST_PIECE_ID) == "<0x00>"
    assert "\n" in tok.get_vocab()
    ordinary = tok("The cocoa harvest.")["input_ids"]
    assert ordinary[-1] == vocab.EOS_ID
    assert all(i >= vocab.FIRST_PIECE_ID for i in ordinary[:-1])


def test_autotokenizer_loads_the_same_tokenizer(tiny_tokenizer_dir: Path, tok) -> None:
    auto = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    text = read_jsonl_slice("reuters21578_en", 1, "text")[0]
    assert auto(text)["input_ids"] == tok(text)["input_ids"]
    assert auto.convert_tokens_to_ids(["<mask_1>", "<mask_2>"]) == [2, 3]
    assert tokenizer_fingerprint(auto) == tokenizer_fingerprint(tok)


def test_round_trip_on_unseen_english_with_newlines(tok) -> None:
    texts = read_jsonl_slice("reuters21578_en", 1040, "text")[1000:]
    newline_id = tok.convert_tokens_to_ids("\n")
    assert any("\n" in t for t in texts)
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == normalize_text(tok, text)
        assert ids.count(newline_id) == normalize_text(tok, text).count("\n")
        assert vocab.UNK_ID not in ids


@pytest.mark.parametrize(
    ("name", "field", "skip"),
    [("lcsts_clge", "summary", 0), ("thucnews_zh_1k", "text", 500), ("dialogsum", "summary", 0)],
)
def test_round_trip_on_unseen_chinese_and_multiline_text(tok, name, field, skip) -> None:
    for text in read_jsonl_slice(name, skip + 20, field)[skip:]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == normalize_text(tok, text)
        assert vocab.UNK_ID not in ids


def test_multiline_summary_keeps_its_lines(tok) -> None:
    summary = "Cocoa rains help Bahia.\nArrivals are late.\n可可产量上升。"
    decoded = tok.decode(tok(summary)["input_ids"], skip_special_tokens=True)
    assert decoded.split("\n") == [
        "Cocoa rains help Bahia.",
        "Arrivals are late.",
        "可可产量上升。",
    ]


def test_rare_characters_fall_back_to_bytes_not_unk(tok) -> None:
    text = "𠀀龘 rare"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert vocab.UNK_ID not in ids
    assert tok.convert_ids_to_tokens(ids[1]).startswith("<0x")
    assert tok.decode(ids) == text


def test_no_piece_straddles_a_chinese_sentence_end(tok) -> None:
    text = "比赛结束了。他说：“我们赢了！”然后离开。"
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = {text.index("。") + 1, text.index("”") + 1}
    for start, end in enc["offset_mapping"]:
        assert not any(start < e < end for e in ends), (start, end)


def test_a_pegasus_large_style_directory_is_accepted(tmp_path: Path, tok) -> None:
    pieces = [("▁the", -1.0), ("▁a", -2.0), ("▁", -3.0), ("t", -4.0), ("h", -5.0), ("e", -6.0)]
    PegasusTokenizer(vocab=[(t, 0.0) for t in SPECIAL_TOKENS] + pieces).save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert type(loaded).__name__ == "PegasusTokenizer"
    assert loaded("the")["input_ids"] == [106, 1]
    assert tokenizer_fingerprint(loaded) != tokenizer_fingerprint(tok)


def test_another_layout_is_refused_with_the_path(tmp_path: Path) -> None:
    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<unk>", "<pad>", "</s>"], unk_token="<unk>"
    )
    backend.train_from_iterator(read_jsonl_slice("reuters21578_en", 50, "text"), trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"does not use the PEGASUS vocabulary layout") as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value) and "<pad> has id 1, expected 0" in str(err.value)


def test_missing_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(ValueError, match="no loadable tokenizer"):
        load_tokenizer(tmp_path)


def test_fingerprint_ignores_runtime_padding_settings(tok) -> None:
    before = tokenizer_fingerprint(tok)
    tok.backend_tokenizer.enable_padding(pad_id=0, pad_token="<pad>", length=64)
    try:
        assert tokenizer_fingerprint(tok) == before
    finally:
        tok.backend_tokenizer.no_padding()


def test_too_small_vocab_and_empty_corpus_are_refused() -> None:
    with pytest.raises(ValueError, match="vocab_size must be at least 427"):
        train_tokenizer(["some text"], vocab_size=300)
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(["", "  "], vocab_size=1000)


def test_cli_trains_on_several_fields(tmp_path: Path, capsys) -> None:
    from pegasus_gsg.cli import main

    source = tmp_path / "pairs.jsonl"
    records = read_jsonl_slice("dialogsum", 80)
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--input", str(source), "--vocab-size", "700", "--out", str(out)]
    assert main([*args, "--text-field", "document", "summary"]) == 0
    assert "on 160 texts" in capsys.readouterr().out
    tok = load_tokenizer(out)
    summary = records[0]["summary"]
    assert tok.decode(tok(summary)["input_ids"], skip_special_tokens=True) == normalize_text(
        tok, summary
    )
    assert main([*args, "--text-field", "dialogue"]) == 1
    assert f"{source}:1: missing field 'dialogue'" in capsys.readouterr().err


def test_cli_reports_a_bad_line(tmp_path: Path, capsys) -> None:
    from pegasus_gsg.cli import main

    source = tmp_path / "docs.jsonl"
    source.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    args = ["tokenizer", "train", "--input", str(source), "--vocab-size", "700"]
    assert main([*args, "--out", str(tmp_path / "tok")]) == 1
    assert f"{source}:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "tok").exists()
