"""Token store: narrow dtypes, O(1) memory-mapped views, manifest, integrity checks, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pegasus_gsg.cli import main
from pegasus_gsg.core.gsg import num_gap_sentences, rank_sentences
from pegasus_gsg.core.sentences import split_sentences
from pegasus_gsg.data.preparation import PrepareConfig, prepare
from pegasus_gsg.data.store import (
    MANIFEST,
    TokenStore,
    narrowest_uint,
    offsets_dtype,
    token_dtype,
    verify_store,
)
from pegasus_gsg.data.tokenization import (
    load_tokenizer,
    normalize_text,
    tokenizer_fingerprint,
    train_tokenizer,
)
from tests.conftest import read_jsonl_slice


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tok(real_text_tokenizer_dir: Path):
    return load_tokenizer(real_text_tokenizer_dir)


@pytest.fixture(scope="module")
def docs() -> list[str]:
    # English news and Chinese news, mixed in one corpus.
    return read_jsonl_slice("reuters21578_en", 40, "text") + read_jsonl_slice(
        "thucnews_zh_1k", 10, "text"
    )


@pytest.fixture(scope="module")
def pretrain_store(tmp_path_factory, real_text_tokenizer_dir: Path, docs: list[str]) -> Path:
    tmp = tmp_path_factory.mktemp("store_pt")
    source = write_jsonl(tmp / "docs.jsonl", [{"text": d} for d in docs])
    prepare([str(source)], real_text_tokenizer_dir, tmp / "store", PrepareConfig(kind="pretrain"))
    return tmp / "store"


@pytest.fixture(scope="module")
def finetune_store(tmp_path_factory, real_text_tokenizer_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("store_ft")
    source = write_jsonl(tmp / "pairs.jsonl", read_jsonl_slice("lcsts_clge", 30))
    prepare([str(source)], real_text_tokenizer_dir, tmp / "store", PrepareConfig(kind="finetune"))
    return tmp / "store"


def test_sentences_are_the_documents_sentences_and_views(pretrain_store, tok, docs) -> None:
    store = TokenStore.open(pretrain_store, tokenizer=tok)
    assert store.kind == "pretrain" and len(store) == len(docs)
    for i, doc in enumerate(docs):
        sentences = store.sentences(i)
        expected = split_sentences(doc)
        assert len(sentences) == len(expected)
        # The sentences cut the whole-document encoding; nothing is re-tokenized per sentence.
        whole = np.concatenate(sentences)
        assert whole.tolist() == tok(doc, add_special_tokens=False)["input_ids"]
        for ids, text in zip(sentences, expected, strict=True):
            assert tok.decode(ids.tolist()).strip() == normalize_text(tok, text).strip()
            assert ids.dtype == np.uint16
            assert np.shares_memory(ids, store.tokens)  # a view into the memory map
    # Backed by the file's mapped pages (a plain-ndarray view of the np.memmap), not a copy.
    assert isinstance(store.tokens.base, np.memmap)
    assert not store.tokens.flags.writeable


def test_ranking_is_gsg_rank_sentences(pretrain_store, docs) -> None:
    store = TokenStore.open(pretrain_store)
    for i in (0, 7, 45):
        order, scores = store.ranking(i)
        expected = rank_sentences(split_sentences(docs[i]), "ind_orig")
        assert order.tolist() == expected.order
        np.testing.assert_allclose(scores, expected.scores, rtol=1e-6)
        # float32 keeps the order the scores imply (ties: later sentence first).
        assert np.lexsort((-np.arange(len(scores)), -scores)).tolist() == expected.order


def test_lengths_and_target_lengths(pretrain_store, finetune_store, tok) -> None:
    store = TokenStore.open(pretrain_store)
    lengths = store.lengths()
    for gsr in (0.15, 0.3, 0.45):
        targets = store.target_lengths(gsr)
        for i in range(len(store)):
            sentences = store.sentences(i)
            assert lengths[i] == sum(len(s) for s in sentences)
            order, _ = store.ranking(i)
            top = order[: num_gap_sentences(len(order), gsr)]
            assert targets[i] == sum(len(sentences[j]) for j in top)
    assert store.target_lengths(1.0).tolist() == lengths.tolist()

    pairs = read_jsonl_slice("lcsts_clge", 30)
    ft = TokenStore.open(finetune_store, tokenizer=tok)
    for i, record in enumerate(pairs):
        document, summary = ft.pair(i)
        assert tok.decode(document.tolist()) == normalize_text(tok, record["document"])
        assert tok.decode(summary.tolist()) == normalize_text(tok, record["summary"])
        assert ft.lengths()[i] == len(document) and ft.target_lengths()[i] == len(summary)
        assert ft.source_row(i) == i


def test_bytes_on_disk_are_narrow(pretrain_store) -> None:
    manifest = json.loads((pretrain_store / MANIFEST).read_text())
    tokens = manifest["num_tokens"]
    assert manifest["dtype"] == "uint16"
    assert (pretrain_store / "tokens.npy").stat().st_size == 128 + 2 * tokens  # npy header
    files = manifest["files"]
    assert files["sentence_ends.npy"]["dtype"] == "uint16"
    assert files["ranking_order.npy"]["dtype"] == "uint8"
    assert files["record_tokens.npy"]["dtype"] == "uint32"
    total = sum(f["bytes"] for f in files.values())
    assert total / tokens < 2.6  # ~2.3 on real news; the int64 baseline is 8+


def test_dtype_rules() -> None:
    assert token_dtype(65_536) == np.uint16
    assert token_dtype(65_537) == np.uint32
    assert token_dtype(96_103) == np.uint32  # google/pegasus-large
    assert narrowest_uint(255) == np.uint8 and narrowest_uint(256) == np.uint16
    assert offsets_dtype(10) == np.uint32 and offsets_dtype(2**32) == np.int64
    with pytest.raises(ValueError, match="vocab_size"):
        token_dtype(0)


def test_manifest_contents(pretrain_store, tok) -> None:
    m = json.loads((pretrain_store / MANIFEST).read_text())
    assert m["num_records"] == 50 and m["kind"] == "pretrain" and m["format_version"] == 1
    assert m["num_tokens"] == len(np.load(pretrain_store / "tokens.npy"))
    assert m["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tok)
    assert m["gsg"] == {"strategy": "ind_orig", "stopwords": True, "seed": 0}
    assert m["skipped"] == {"bad_json": 0, "empty": 0, "missing_field": 0, "not_text": 0}
    assert len(m["source"]["fingerprint"]) == 64
    assert m["source"]["files"][0]["rows"] == 50
    assert len(m["checksum"]) == 64


def test_verify_detects_a_flipped_byte(pretrain_store, tmp_path, capsys) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(pretrain_store, copy)
    assert verify_store(copy) == []
    assert main(["verify", str(copy)]) == 0
    assert "OK" in capsys.readouterr().out
    path = copy / "tokens.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    problems = verify_store(copy)
    assert len(problems) == 1 and problems[0].startswith("tokens.npy: sha256")
    assert main(["verify", str(copy)]) == 1
    assert "tokens.npy: sha256" in capsys.readouterr().err
    with pytest.raises(ValueError, match="corrupt"):
        TokenStore.open(copy, verify=True)


def test_truncated_or_half_written_stores_are_refused(pretrain_store, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TokenStore.open(tmp_path / "nope")
    half = tmp_path / "half"
    shutil.copytree(pretrain_store, half)
    (half / MANIFEST).unlink()
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json: not a finished token store"):
        TokenStore.open(half)

    truncated = tmp_path / "truncated"
    shutil.copytree(pretrain_store, truncated)
    with (truncated / "tokens.npy").open("r+b") as f:
        f.truncate(1000)
    with pytest.raises(ValueError, match=r"tokens.npy has 1000 bytes.*truncated"):
        TokenStore.open(truncated)
    assert main(["verify", str(truncated)]) == 1

    no_checksum = tmp_path / "no_checksum"
    shutil.copytree(pretrain_store, no_checksum)
    manifest = json.loads((no_checksum / MANIFEST).read_text())
    del manifest["checksum"]
    (no_checksum / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="incomplete: missing checksum"):
        TokenStore.open(no_checksum)


def test_a_store_of_another_tokenizer_is_refused(pretrain_store, tmp_path) -> None:
    other = train_tokenizer(read_jsonl_slice("reuters21578_en", 100, "text"), 600, tmp_path)
    # The in-memory result and its saved directory are the same tokenizer.
    assert tokenizer_fingerprint(other) == tokenizer_fingerprint(load_tokenizer(tmp_path))
    with pytest.raises(ValueError, match="was written with tokenizer") as err:
        TokenStore.open(pretrain_store, tokenizer=other)
    assert str(pretrain_store) in str(err.value)


def test_wrong_kind_and_index_errors(pretrain_store, finetune_store) -> None:
    pt, ft = TokenStore.open(pretrain_store), TokenStore.open(finetune_store)
    with pytest.raises(ValueError, match="pair needs a finetune store"):
        pt.pair(0)
    with pytest.raises(ValueError, match="sentences needs a pretrain store"):
        ft.sentences(0)
    with pytest.raises(IndexError, match="record 50 out of range"):
        pt.sentences(50)
    assert pt.sentences(-1)[0].tolist() == pt.sentences(49)[0].tolist()
