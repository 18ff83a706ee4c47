"""Store sets with the local engine: shards, resume after the driver is killed, multi-file and
C4-layout inputs, bad input, refusals; read back as one store by the loader."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import psutil
import pytest

from pegasus_gsg.cli import main
from pegasus_gsg.data.datasets import ExampleOptions, PretrainingDataset
from pegasus_gsg.data.preparation import PrepareConfig, prepare
from pegasus_gsg.data.store import SET_MANIFEST, StoreSet, TokenStore, verify_store
from pegasus_gsg.data.tokenization import train_tokenizer
from tests.conftest import REPO_ROOT, read_jsonl_slice


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def set_manifest(path: Path) -> dict:
    return json.loads((path / SET_MANIFEST).read_text())


def tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return read_jsonl_slice("reuters21578_en", 160)


@pytest.fixture(scope="module")
def reuters(tmp_path_factory, docs) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("set") / "reuters.jsonl", docs[:150])


def pretrain(inputs, tok, out, **options):
    return prepare([str(i) for i in inputs], tok, out, PrepareConfig("pretrain", **options))


def test_a_store_set_reads_as_the_single_store(tmp_path, tiny_tokenizer_dir, reuters) -> None:
    single = tmp_path / "single"
    pretrain([reuters], tiny_tokenizer_dir, single)
    result = pretrain([reuters], tiny_tokenizer_dir, tmp_path / "set", rows_per_shard=40)
    m = set_manifest(tmp_path / "set")
    assert [s["path"] for s in m["shards"]] == [f"shards/0000{k}" for k in range(4)]
    assert [s["rows"] for s in m["shards"]] == [40, 40, 40, 30]
    assert m["shards"][3]["source"] == "reuters.jsonl rows 120-150"
    assert m["num_records"] == 150 and result.chunks_total == 4
    assert m["tokenizer"]["fingerprint"] and len(m["checksum"]) == 64
    one, many = TokenStore.open(single), TokenStore.open(tmp_path / "set")
    assert isinstance(many, StoreSet) and len(many) == len(one) == 150
    assert m["num_tokens"] == one.manifest["num_tokens"]
    for i in range(150):
        assert [s.tolist() for s in many.sentences(i)] == [s.tolist() for s in one.sentences(i)]
        (order_a, scores_a), (order_b, scores_b) = many.ranking(i), one.ranking(i)
        assert np.array_equal(order_a, order_b) and np.array_equal(scores_a, scores_b)
        assert many.source_row(i) == one.source_row(i) == i
    assert np.array_equal(many.lengths(), one.lengths())
    assert np.array_equal(many.target_lengths(0.3), one.target_lengths(0.3))
    # The loader draws the same examples from both.
    options = ExampleOptions()
    a = PretrainingDataset(one, options, vocab_size=one.vocab_size, seed=3)
    b = PretrainingDataset(many, options, vocab_size=one.vocab_size, seed=3)
    for i in (0, 41, 149):
        for key, value in a[i].items():
            assert np.array_equal(np.asarray(value), np.asarray(b[i][key])), key
    assert verify_store(tmp_path / "set") == []
    assert main(["verify", str(tmp_path / "set")]) == 0


def test_the_shards_a_reader_touches_are_the_only_ones_opened(
    tmp_path, tiny_tokenizer_dir, reuters
) -> None:
    pretrain([reuters], tiny_tokenizer_dir, tmp_path / "set", rows_per_shard=40)
    many = TokenStore.open(tmp_path / "set")
    assert isinstance(many, StoreSet)
    many.sentences(85)
    assert [store is not None for store in many._shards] == [False, False, True, False]
    assert many.locate(85) == (2, 5) and many.locate(-1) == (3, 29)


@pytest.mark.slow
def test_driver_killed_mid_run_then_rerun_completes(tmp_path, tiny_tokenizer_dir, reuters):
    out = tmp_path / "set"
    args = [
        "prepare", "pretrain", "--input", str(reuters), "--tokenizer", str(tiny_tokenizer_dir),
        "--out", str(out), "--rows-per-shard", "30", "--num-proc", "2", "--no-progress",
    ]  # fmt: skip
    # The driver stops itself right after its 2nd finished shard; then it is killed -9.
    stopping = [sys.executable, str(REPO_ROOT / "tests" / "stop_after.py"), "2", *args]
    proc = subprocess.Popen(stopping, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    # The driver and its pool workers die together (kill -9), as when its machine goes down.
    workers = psutil.Process(proc.pid).children(recursive=True)
    for process in [psutil.Process(proc.pid), *workers]:
        process.kill()
    proc.wait()
    psutil.wait_procs(workers, timeout=30)
    assert not out.exists()
    partial = tmp_path / "set.partial"
    finished = sorted(p.parent.name for p in partial.glob("shards/*/manifest.json"))
    assert len(finished) >= 2 and not (partial / SET_MANIFEST).exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TokenStore.open(out)

    rerun = subprocess.run(
        [sys.executable, "-m", "pegasus_gsg", *args], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert f"resumed {len(finished)} of 5 shards" in rerun.stdout
    reference = tmp_path / "reference"
    pretrain([reuters], tiny_tokenizer_dir, reference, rows_per_shard=30)
    assert tree_bytes(out) == tree_bytes(reference)
    assert not partial.exists()


def test_a_bad_record_stops_the_job_or_is_counted_per_shard(
    tmp_path, tiny_tokenizer_dir, docs, capsys
) -> None:
    source = write_jsonl(tmp_path / "bad.jsonl", [*docs[:5], '{"text": "not closed', *docs[5:9]])
    out = tmp_path / "set"
    args = ["prepare", "pretrain", "--input", str(source), "--tokenizer", str(tiny_tokenizer_dir)]
    args += ["--out", str(out), "--rows-per-shard", "4", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"error: {source}:6: not valid JSON" in err and "--skip-bad" in err
    assert not out.exists()
    assert not (tmp_path / "set.partial" / SET_MANIFEST).exists()
    assert not (tmp_path / "set.partial" / "shards" / "00001" / "manifest.json").exists()

    assert main([*args, "--skip-bad"]) == 0
    m = set_manifest(out)
    assert m["skipped"]["bad_json"] == 1 and m["num_records"] == 9
    assert [s["skipped"] for s in m["shards"]] == [{}, {"bad_json": 1}, {}]
    assert m["skipped_examples"][0].startswith(f"{source}:6: not valid JSON")


def test_c4_layout_directory_and_mixed_formats(tmp_path, tiny_tokenizer_dir, docs) -> None:
    c4 = tmp_path / "c4" / "en"
    c4.mkdir(parents=True)
    for k in range(3):  # C4's own names and fields: text, timestamp, url
        part = docs[k * 40 : (k + 1) * 40]
        lines = [
            json.dumps({"text": d["text"], "timestamp": "2019-04-25T12:57:54Z", "url": f"u{i}"})
            for i, d in enumerate(part)
        ]
        with gzip.open(c4 / f"c4-train.{k:05d}-of-00003.json.gz", "wt", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    (c4 / ".hidden.json.gz").write_bytes(b"not a corpus file")
    datasets.Dataset.from_list([{"text": d["text"]} for d in docs[120:150]]).to_parquet(
        tmp_path / "c4" / "extra.parquet"
    )
    saved = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([{"text": d["text"]} for d in docs[150:160]])}
    )
    saved.save_to_disk(tmp_path / "saved")
    out = tmp_path / "set"
    inputs = [tmp_path / "c4", tmp_path / "saved"]
    result = pretrain(inputs, tiny_tokenizer_dir, out, rows_per_shard=25, num_proc=2, split="train")
    m = result.manifest
    names = [f["name"] for f in m["source"]["files"]]
    c4_names = [f"c4-train.{k:05d}-of-00003.json.gz" for k in range(3)]
    assert names == [*c4_names, "extra.parquet", "saved"]
    assert [s["rows"] for s in m["shards"]] == [25, 15, 25, 15, 25, 15, 25, 5, 10]
    reference = tmp_path / "reference"
    flat = write_jsonl(tmp_path / "flat.jsonl", [{"text": d["text"]} for d in docs[:160]])
    pretrain([flat], tiny_tokenizer_dir, reference)
    one, many = TokenStore.open(reference), TokenStore.open(out)
    assert len(many) == 160
    for i in range(160):
        assert np.array_equal(many.record_ids(i), one.record_ids(i))
    with pytest.raises(FileNotFoundError, match=r"no input matches '.*nothing-\*.json.gz'"):
        pretrain([tmp_path / "c4" / "nothing-*.json.gz"], tiny_tokenizer_dir, tmp_path / "x")
    assert main(
        ["prepare", "pretrain", "--input", str(tmp_path / "c4" / "nothing-*.json.gz"),
         "--tokenizer", str(tiny_tokenizer_dir), "--out", str(tmp_path / "x"),
         "--rows-per-shard", "5"]
    ) == 1  # fmt: skip
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()


def test_an_input_file_that_disappears_mid_run(tmp_path, tiny_tokenizer_dir, docs) -> None:
    first = write_jsonl(tmp_path / "part-0.jsonl", docs[:20])
    second = write_jsonl(tmp_path / "part-1.jsonl", docs[20:40])
    out = tmp_path / "set"
    args = [
        "prepare", "pretrain", "--input", str(tmp_path / "part-*.jsonl"),
        "--tokenizer", str(tiny_tokenizer_dir), "--out", str(out), "--rows-per-shard", "20",
        "--no-progress",
    ]  # fmt: skip
    stopping = [sys.executable, str(REPO_ROOT / "tests" / "stop_after.py"), "1", *args]
    proc = subprocess.Popen(stopping, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    second.unlink()  # gone after the job listed it, before its shard was computed
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert f"error: input {second} disappeared while the job was running" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "set.partial" / SET_MANIFEST).exists()
    assert first.exists()


def test_a_missing_shard_or_a_shard_of_another_tokenizer_is_refused(
    tmp_path, tiny_tokenizer_dir, reuters, capsys
) -> None:
    out = tmp_path / "set"
    pretrain([reuters], tiny_tokenizer_dir, out, rows_per_shard=50)
    missing = tmp_path / "missing"
    shutil.copytree(out, missing)
    shutil.rmtree(missing / "shards" / "00001")
    with pytest.raises(ValueError, match=r"shard shards/00001 is missing \(listed in storeset"):
        TokenStore.open(missing)
    assert main(["verify", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "shards/00001 is missing" in err and len(err.strip().splitlines()) == 1

    other_tok = tmp_path / "other_tok"
    train_tokenizer(read_jsonl_slice("reuters21578_en", 100, "text"), 700, other_tok)
    other = tmp_path / "other"
    pretrain([reuters], other_tok, other, rows_per_shard=50)
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    shutil.rmtree(mixed / "shards" / "00002")
    shutil.copytree(other / "shards" / "00002", mixed / "shards" / "00002")
    with pytest.raises(ValueError, match=r"tokenizer\.fingerprint is") as err_info:
        TokenStore.open(mixed)
    message = str(err_info.value)
    assert str(mixed / "shards" / "00002") in message and SET_MANIFEST in message
    assert set_manifest(out)["tokenizer"]["fingerprint"] in message
    assert set_manifest(other)["tokenizer"]["fingerprint"] in message
    assert main(["verify", str(mixed)]) == 1


def test_training_entry_points_open_a_store_set(tmp_path, tiny_tokenizer_dir, reuters) -> None:
    from pegasus_gsg.data.tokenization import load_tokenizer
    from pegasus_gsg.training.entry import open_store

    pretrain([reuters], tiny_tokenizer_dir, tmp_path / "set", rows_per_shard=60)
    tok = load_tokenizer(tiny_tokenizer_dir)
    store = open_store(str(tmp_path / "set"), tok, "data.train", "pretrain")
    assert isinstance(store, StoreSet) and len(store) == 150
    with pytest.raises(ValueError, match="is a 'pretrain' store; this entry point needs a"):
        open_store(str(tmp_path / "set"), tok, "data.train", "finetune")
    other = train_tokenizer(read_jsonl_slice("reuters21578_en", 100, "text"), 700, tmp_path / "t")
    with pytest.raises(ValueError, match="was written with tokenizer"):
        open_store(str(tmp_path / "set"), other, "data.train", "pretrain")
