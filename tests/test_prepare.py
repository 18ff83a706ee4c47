"""prepare: inputs via datasets, bad rows, atomicity, resume after kill -9, shards, processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from pegasus_gsg.cli import main
from pegasus_gsg.data.preparation import PrepareConfig, prepare
from pegasus_gsg.data.preparation import assemble as assemble_module
from pegasus_gsg.data.store import MANIFEST, TokenStore
from tests.conftest import REPO_ROOT, read_jsonl_slice


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def manifest(store: Path) -> dict:
    return json.loads((store / MANIFEST).read_text())


def store_bytes(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


@pytest.fixture(scope="module")
def reuters(tmp_path_factory) -> Path:
    """120 real Reuters documents as JSON Lines."""
    path = tmp_path_factory.mktemp("reuters") / "reuters.jsonl"
    return write_jsonl(path, read_jsonl_slice("reuters21578_en", 120))


def pretrain(inputs, tokenizer_dir, out, **options):
    return prepare(
        [str(i) for i in inputs], tokenizer_dir, out, PrepareConfig("pretrain", **options)
    )


def test_every_input_format_gives_the_same_store_content(tmp_path, tiny_tokenizer_dir) -> None:
    records = read_jsonl_slice("lcsts_clge", 20)
    dataset = datasets.Dataset.from_list(records)
    inputs = {
        "jsonl": [write_jsonl(tmp_path / "pairs.jsonl", records)],
        "json array": [tmp_path / "pairs.json"],
        "csv": [tmp_path / "pairs.csv"],
        "parquet": [tmp_path / "pairs.parquet"],
        "saved": [tmp_path / "saved"],
        "glob": [tmp_path / "part-*.jsonl"],
    }
    (tmp_path / "pairs.json").write_text(json.dumps(records, ensure_ascii=False))
    dataset.to_csv(tmp_path / "pairs.csv", index=False)
    dataset.to_parquet(tmp_path / "pairs.parquet")
    dataset.save_to_disk(tmp_path / "saved")
    write_jsonl(tmp_path / "part-1.jsonl", records[:12])
    write_jsonl(tmp_path / "part-2.jsonl", records[12:])
    hashes = {}
    for name, paths in inputs.items():
        out = tmp_path / f"store-{name.replace(' ', '-')}"
        prepare([str(p) for p in paths], tiny_tokenizer_dir, out, PrepareConfig("finetune"))
        files = manifest(out)["files"]
        hashes[name] = {f: files[f]["sha256"] for f in sorted(files)}
        assert manifest(out)["num_records"] == 20
    assert all(h == hashes["jsonl"] for h in hashes.values()), hashes


def test_split_filter_keeps_only_that_split(tmp_path, tiny_tokenizer_dir) -> None:
    records = read_jsonl_slice("aeslc", 20) + read_jsonl_slice("lcsts_clge", 20)
    records = [records[i] for i in range(0, 40, 2)] + [records[i] for i in range(1, 40, 2)]
    source = write_jsonl(tmp_path / "pairs.jsonl", records)
    out = tmp_path / "train"
    prepare([str(source)], tiny_tokenizer_dir, out, PrepareConfig("finetune", split="train"))
    store = TokenStore.open(out)
    train_rows = [i for i, r in enumerate(records) if r["split"] == "train"]
    assert 0 < len(train_rows) < len(records)
    assert [store.source_row(i) for i in range(len(store))] == train_rows
    assert manifest(out)["filtered_other_split"] == len(records) - len(train_rows)
    assert manifest(out)["split_values"] == {"dev": 20, "train": 20}


def test_mixed_splits_without_split_are_warned_about(tmp_path, tiny_tokenizer_dir, caplog):
    records = read_jsonl_slice("aeslc", 5) + read_jsonl_slice("lcsts_clge", 5)
    source = write_jsonl(tmp_path / "pairs.jsonl", records)
    prepare([str(source)], tiny_tokenizer_dir, tmp_path / "all", PrepareConfig("finetune"))
    assert "records carry a `split` field (dev: 5, train: 5)" in caplog.text
    assert manifest(tmp_path / "all")["num_records"] == 10


BAD_LINES = [
    '{"text": "not closed',  # line 3
    '["a", "list"]',  # line 4
    {"title": "no text here"},  # line 5
    {"text": 42},  # line 6
    {"text": "   \n "},  # line 7: empty, always skipped and counted
]


def bad_file(tmp_path: Path) -> Path:
    good = read_jsonl_slice("reuters21578_en", 4)
    return write_jsonl(tmp_path / "bad.jsonl", good[:2] + BAD_LINES + good[2:])


def test_a_bad_line_stops_with_file_and_line(tmp_path, tiny_tokenizer_dir, capsys) -> None:
    source = bad_file(tmp_path)
    out = tmp_path / "store"
    args = ["prepare", "pretrain", "--input", str(source), "--tokenizer", str(tiny_tokenizer_dir)]
    assert main([*args, "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"pegasus-gsg prepare: error: {source}:3: not valid JSON" in err
    assert "--skip-bad" in err
    assert not out.exists()


def test_skip_bad_skips_and_counts_on_screen_and_in_manifest(
    tmp_path, tiny_tokenizer_dir, capsys
) -> None:
    source = bad_file(tmp_path)
    out = tmp_path / "store"
    args = ["prepare", "pretrain", "--input", str(source), "--tokenizer", str(tiny_tokenizer_dir)]
    assert main([*args, "--out", str(out), "--skip-bad", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "skipped: 2 bad_json, 1 empty, 1 missing_field, 1 not_text" in stdout
    assert f"{source}:5: missing field 'text'" in stdout
    m = manifest(out)
    assert m["skipped"] == {"bad_json": 2, "empty": 1, "missing_field": 1, "not_text": 1}
    assert m["num_records"] == 4 and m["rows_read"] == 9
    assert [TokenStore.open(out).source_row(i) for i in range(4)] == [0, 1, 7, 8]
    assert any(f"{source}:4: expected a JSON object, got list" in e for e in m["skipped_examples"])


def test_empty_documents_are_counted_not_fatal(tmp_path, tiny_tokenizer_dir) -> None:
    docs = read_jsonl_slice("reuters21578_en", 3, "text")
    source = write_jsonl(tmp_path / "d.jsonl", [{"text": docs[0]}, {"text": ""}, {"text": docs[1]}])
    result = pretrain([source], tiny_tokenizer_dir, tmp_path / "s")
    assert result.manifest["num_records"] == 2 and result.manifest["skipped"]["empty"] == 1
    only_empty = write_jsonl(tmp_path / "e.jsonl", [{"text": " "}])
    with pytest.raises(ValueError, match="no usable records in 1 input rows"):
        pretrain([only_empty], tiny_tokenizer_dir, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_a_missing_text_field_is_named(tmp_path, tiny_tokenizer_dir, reuters) -> None:
    with pytest.raises(ValueError, match=r"reuters.jsonl:1: missing field 'body'; the record has"):
        pretrain([reuters], tiny_tokenizer_dir, tmp_path / "s", text_field="body")
    csv = tmp_path / "docs.csv"
    datasets.Dataset.from_list(read_jsonl_slice("reuters21578_en", 5)).to_csv(csv)
    with pytest.raises(ValueError, match=r"docs.csv has no column 'body' \(columns: id"):
        pretrain([csv], tiny_tokenizer_dir, tmp_path / "s", text_field="body")
    with pytest.raises(FileNotFoundError, match="no input matches"):
        pretrain([tmp_path / "nothing-*.jsonl"], tiny_tokenizer_dir, tmp_path / "s")


def test_a_failure_leaves_no_store_and_the_rerun_resumes(
    tmp_path, tiny_tokenizer_dir, reuters, monkeypatch
) -> None:
    out = tmp_path / "store"

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(assemble_module, "_fill", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        pretrain([reuters], tiny_tokenizer_dir, out, chunk_size=40)
    assert not out.exists()
    partial = tmp_path / "store.partial"
    assert sorted(p.name for p in (partial / "chunks").iterdir()) == [
        "0000000.npz",
        "0000001.npz",
        "0000002.npz",
    ]
    assert not list(partial.glob("store-*"))  # the half-built store was removed
    monkeypatch.undo()
    result = pretrain([reuters], tiny_tokenizer_dir, out, chunk_size=40)
    assert (result.chunks_resumed, result.chunks_computed) == (3, 0)
    assert not partial.exists()
    reference = tmp_path / "reference"
    pretrain([reuters], tiny_tokenizer_dir, reference, chunk_size=40)
    assert store_bytes(out) == store_bytes(reference)


def test_existing_store_rerun_conflict_and_overwrite(tmp_path, tiny_tokenizer_dir, reuters) -> None:
    out = tmp_path / "store"
    first = pretrain([reuters], tiny_tokenizer_dir, out, max_records=30)
    again = pretrain([reuters], tiny_tokenizer_dir, out, max_records=30)
    assert again.already_prepared and again.manifest["checksum"] == first.manifest["checksum"]
    # The same tokenizer and input given by other paths is the same job.
    relative = Path(os.path.relpath(tiny_tokenizer_dir))
    assert pretrain([reuters], relative, out, max_records=30).already_prepared
    with pytest.raises(ValueError, match=r"already holds a token store made differently"):
        pretrain([reuters], tiny_tokenizer_dir, out, max_records=30, strategy="lead")
    overwritten = pretrain(
        [reuters], tiny_tokenizer_dir, out, max_records=30, strategy="lead", overwrite=True
    )
    assert manifest(out)["gsg"]["strategy"] == "lead"
    assert overwritten.manifest["checksum"] != first.manifest["checksum"]
    store = TokenStore.open(out)
    assert store.ranking(0)[0].tolist() == list(range(store.num_sentences(0)))


def test_random_strategy_is_seeded_per_record(tmp_path, tiny_tokenizer_dir, reuters) -> None:
    a = pretrain([reuters], tiny_tokenizer_dir, tmp_path / "a", strategy="random", seed=1)
    b = pretrain([reuters], tiny_tokenizer_dir, tmp_path / "b", strategy="random", seed=1)
    c = pretrain([reuters], tiny_tokenizer_dir, tmp_path / "c", strategy="random", seed=2)
    assert a.manifest["checksum"] == b.manifest["checksum"] != c.manifest["checksum"]


@pytest.mark.slow
def test_shards_and_processes_give_the_unsharded_store(tmp_path, tiny_tokenizer_dir, reuters):
    reference = tmp_path / "reference"
    pretrain([reuters], tiny_tokenizer_dir, reference, chunk_size=15)
    sharded = tmp_path / "sharded"
    first = pretrain(
        [reuters], tiny_tokenizer_dir, sharded, chunk_size=15, shard_index=1, num_shards=2
    )
    assert first.store is None and first.waiting_for == [0]
    assert not sharded.exists()
    second = pretrain(
        [reuters], tiny_tokenizer_dir, sharded, chunk_size=15, shard_index=0, num_shards=2
    )
    assert second.store == sharded and (first.chunks_computed, second.chunks_computed) == (4, 4)
    assert store_bytes(sharded) == store_bytes(reference)
    parallel = tmp_path / "parallel"
    pretrain([reuters], tiny_tokenizer_dir, parallel, chunk_size=7, num_proc=2)
    assert store_bytes(parallel) == store_bytes(reference)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_equals_uninterrupted(tmp_path, tiny_tokenizer_dir, reuters):
    out = tmp_path / "store"
    args = [
        "prepare", "pretrain", "--input", str(reuters),
        "--tokenizer", str(tiny_tokenizer_dir), "--out", str(out), "--chunk-size", "10",
        "--no-progress",
    ]  # fmt: skip
    command = [sys.executable, "-m", "pegasus_gsg", *args]
    # The run stops itself (SIGSTOP) right after writing its 3rd chunk; then we kill -9 it.
    stopping = [sys.executable, str(REPO_ROOT / "tests" / "stop_after.py"), "3", *args]
    proc = subprocess.Popen(stopping, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert len(list((tmp_path / "store.partial" / "chunks").glob("*.npz"))) == 3

    rerun = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "resumed 3 of 12 chunks" in rerun.stdout
    reference = tmp_path / "reference"
    pretrain([reuters], tiny_tokenizer_dir, reference)
    assert manifest(out)["checksum"] == manifest(reference)["checksum"]
    assert store_bytes(out) == store_bytes(reference)
    assert main(["verify", str(out)]) == 0


def test_text_files_hold_documents_separated_by_blank_lines(tmp_path, tiny_tokenizer_dir):
    docs = [d.strip() for d in read_jsonl_slice("reuters21578_en", 10, "text") if "\n\n" not in d]
    (tmp_path / "docs.txt").write_text("\n\n".join(docs[:3]) + "\n", encoding="utf-8")
    out = tmp_path / "store"
    pretrain([tmp_path / "docs.txt"], tiny_tokenizer_dir, out)
    store = TokenStore.open(out)
    assert len(store) == 3
    from pegasus_gsg.data.tokenization import load_tokenizer, normalize_text

    tok = load_tokenizer(tiny_tokenizer_dir)
    for i in range(3):
        ids = [t for s in store.sentences(i) for t in s.tolist()]
        assert tok.decode(ids).strip() == normalize_text(tok, docs[i]).strip()


def test_csv_empty_cells_are_counted_as_empty(tmp_path, tiny_tokenizer_dir):
    records = read_jsonl_slice("lcsts_clge", 6)
    records[2]["summary"] = None
    datasets.Dataset.from_list(records).to_csv(tmp_path / "pairs.csv", index=False)
    out = tmp_path / "store"
    prepare([str(tmp_path / "pairs.csv")], tiny_tokenizer_dir, out, PrepareConfig("finetune"))
    m = manifest(out)
    assert m["num_records"] == 5 and m["skipped"]["empty"] == 1
    assert m["skipped_examples"] == [f"{tmp_path / 'pairs.csv'}: row 3: field 'summary' is empty"]


def test_chunks_span_files_and_skip_unwanted_rows(tmp_path) -> None:
    from pegasus_gsg.data.sources import iter_chunks, open_sources

    a = write_jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}"} for i in range(10)])
    (tmp_path / "b.jsonl").write_text(
        "".join(json.dumps({"text": f"b{i}"}) + "\n\n" for i in range(9)) + "{bad\n"
    )
    sources = open_sources([str(a), str(tmp_path / "b.jsonl")])
    assert [s.num_rows for s in sources] == [10, 10]  # blank lines are not rows
    chunks = list(iter_chunks(sources, 7, {1, 2}))
    assert [k for k, _ in chunks] == [1, 2]
    assert [r.record["text"] for r in chunks[0][1]] == ["a7", "a8", "a9", "b0", "b1", "b2", "b3"]
    assert [r.location for r in chunks[0][1][3:5]] == [
        f"{tmp_path}/b.jsonl:1",
        f"{tmp_path}/b.jsonl:3",
    ]
    last = chunks[1][1]
    assert [r.index for r in last] == list(range(14, 20))
    assert last[-1].record is None and last[-1].error.startswith(
        f"{tmp_path}/b.jsonl:19: not valid"
    )
    assert [k for k, _ in iter_chunks(sources, 7, {0, 1, 2}, limit=8)] == [0, 1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "summaries"}, "kind must be one of pretrain, finetune, got 'summaries'"),
        ({"strategy": "best"}, "strategy must be one of random, lead, ind_orig, .*, got 'best'"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"max_records": 0}, r"max_records must be >= 1 \(or None: all\), got 0"),
        ({"chunk_size": 0}, "chunk_size must be >= 1 row, got 0"),
        ({"num_proc": 0}, "num_proc must be >= 1, got 0"),
        ({"num_shards": 0}, "num_shards must be >= 1, got 0"),
        ({"shard_index": 4, "num_shards": 4}, r"shard_index must be in 0\.\.3 .*, got 4"),
        ({"engine": "spark"}, "engine must be one of local, ray, got 'spark'"),
        ({"ray_address": "auto"}, "ray_address .* needs engine 'ray' .*, got engine 'local'"),
        ({"rows_per_shard": 0}, r"rows_per_shard must be >= 1 \(or None: one store\), got 0"),
        ({"rows_per_shard": 10, "num_shards": 2}, "num_shards must be 1 for a store set, got 2"),
    ],
)
def test_config_errors_name_the_field_and_the_allowed_values(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        PrepareConfig(**{"kind": "pretrain", **options})


def test_finetune_fields_must_differ() -> None:
    with pytest.raises(ValueError, match="summary_field must differ from text_field, both are 'x'"):
        PrepareConfig("finetune", text_field="x", summary_field="x")


def test_a_resumed_shard_clears_temporary_files_of_dead_writers_only(
    tmp_path, tiny_tokenizer_dir, reuters
) -> None:
    out = tmp_path / "store"
    options = {"max_records": 40, "chunk_size": 10, "shard_index": 0, "num_shards": 2}
    assert pretrain([reuters], tiny_tokenizer_dir, out, **options).waiting_for == [1]
    chunks = tmp_path / "store.partial" / "chunks"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    host = socket.gethostname()
    stale = chunks / f".tmp-{host}-{dead}-0000001.npz"  # a writer killed mid-write
    live = chunks / f".tmp-{host}-{os.getpid()}-0000003.npz"  # a writer still writing
    for path in (stale, live):
        path.write_bytes(b"half a chunk")
    again = pretrain([reuters], tiny_tokenizer_dir, out, **options)
    assert (again.chunks_resumed, again.chunks_computed, again.waiting_for) == (2, 0, [1])
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in chunks.glob("0*.npz")) == ["0000000.npz", "0000002.npz"]
