"""Corrupt inputs (an interrupted copy of a .gz/.bz2/.xz, a parquet file with a damaged footer,
a non-UTF-8 line, a NUL byte in JSON Lines) through `prepare pretrain|finetune` and `tokenizer
train`, on both engines: one `FILE[:LINE]: reason` line and exit 1, nothing that looks finished
left behind, the same command completing once the file is fixed; a bad record (non-UTF-8, NUL)
skipped and counted with --skip-bad, a bad file failing even with --skip-bad."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import datasets
import pytest

from pegasus_gsg.cli import main
from pegasus_gsg.data.store import MANIFEST, SET_MANIFEST
from tests.conftest import REPO_ROOT, read_jsonl_slice

ROWS = 12
BAD_LINES = (4, 9)
"""Line numbers of the record-level corruptions (one each in the NUL + non-UTF-8 file)."""


def _records() -> list[dict]:
    return [
        {"text": r["text"], "title": r["title"]} for r in read_jsonl_slice("reuters21578_en", ROWS)
    ]


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _parquet(records: list[dict], tmp: Path) -> bytes:
    path = tmp / "good.parquet"
    datasets.Dataset.from_list(records).to_parquet(path)
    return path.read_bytes()


def _csv(records: list[dict], tmp: Path) -> bytes:
    path = tmp / "good.csv"
    datasets.Dataset.from_list(records).to_csv(path, index=False)
    return path.read_bytes()


def _truncated(compress: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def cut(data: bytes) -> bytes:  # an interrupted copy: the first 60% of the bytes
        blob = compress(data)
        return blob[: len(blob) * 3 // 5]

    return cut


def _garbled_gzip(data: bytes) -> bytes:
    blob = gzip.compress(data)  # bytes 30-60 of the deflate stream flipped: a bad sector
    return blob[:30] + bytes(b ^ 0x5A for b in blob[30:60]) + blob[60:]


def _damaged_footer(data: bytes) -> bytes:
    # Parquet ends with <footer><footer length: 4 bytes>PAR1; a garbled length and footer.
    return data[:-40] + b"\xff" * 36 + data[-4:]


def _replace_line(line: int, raw: bytes) -> Callable[[bytes], bytes]:
    def corrupt(data: bytes) -> bytes:
        lines = data.split(b"\n")
        lines[line - 1] = raw
        return b"\n".join(lines)

    return corrupt


NON_UTF8 = b'{"text": "Caf\xe9 prices rose.", "title": "Caf\xe9"}'  # Latin-1, not UTF-8
NUL = b'{"text": "Prices rose.\x00\x00", "title": "Prices"}'  # a NUL byte, unescaped

# name: (file name, how the good bytes become bad, the reason (after `FILE[:LINE]: `), file-level)
CORRUPTIONS: dict[str, tuple[str, Callable[[bytes], bytes], str, bool]] = {
    "truncated gzip": (
        "docs.jsonl.gz",
        _truncated(gzip.compress),
        r":\d+: the gzip data ends before its end-of-stream marker: the file is truncated",
        True,
    ),
    "truncated bzip2": (
        "docs.jsonl.bz2",
        _truncated(bz2.compress),
        r":\d+: the bzip2 data ends before its end-of-stream marker: the file is truncated",
        True,
    ),
    "truncated xz": (
        "docs.jsonl.xz",
        _truncated(lzma.compress),
        r":\d+: the xz data ends before its end-of-stream marker: the file is truncated",
        True,
    ),
    "truncated csv.gz": (  # read by `datasets`, not line by line: no line number
        "docs.csv.gz",
        _truncated(gzip.compress),
        r": the gzip data ends before its end-of-stream marker: the file is truncated",
        True,
    ),
    "damaged gzip": (
        "docs.jsonl.gz",
        _garbled_gzip,
        r":\d+: the gzip data is damaged or not gzip \(",
        True,
    ),
    "parquet footer": (
        "docs.parquet",
        _damaged_footer,
        r": not a readable parquet file: its footer is damaged or missing \(",
        True,
    ),
    "non-UTF-8 line": (
        "docs.jsonl",
        _replace_line(BAD_LINES[0], NON_UTF8),
        rf":{BAD_LINES[0]}: invalid UTF-8 at byte 13 of the line \(b'\\xe9 pr'\); expected UTF-8",
        False,
    ),
    "NUL byte": (
        "docs.jsonl",
        _replace_line(BAD_LINES[1], NUL),
        rf":{BAD_LINES[1]}: NUL byte at column 23; expected one JSON object per line of text",
        False,
    ),
}


def _good_bytes(name: str, tmp: Path) -> bytes:
    records = _records()
    if name.endswith(".parquet"):
        return _parquet(records, tmp)
    data = _jsonl(records)
    if ".csv" in name:
        data = _csv(records, tmp)
    suffix = Path(name).suffix
    compress = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}.get(suffix)
    return compress(data) if compress else data


def _commands(source: Path, tokenizer: Path, tmp: Path) -> dict[str, tuple[list[str], Path]]:
    """The commands under test, each with the output that must not exist after a failure."""
    prepare = ["--input", str(source), "--tokenizer", str(tokenizer), "--no-progress"]
    finetune = [*prepare, "--text-field", "text", "--summary-field", "title"]
    shards = ["--rows-per-shard", "5"]
    return {
        "pretrain store": (["prepare", "pretrain", *prepare, "--out", str(tmp / "store")],
                           tmp / "store"),
        "pretrain set": (["prepare", "pretrain", *prepare, "--out", str(tmp / "set"), *shards],
                         tmp / "set"),
        "finetune set": (["prepare", "finetune", *finetune, "--out", str(tmp / "ft"), *shards],
                         tmp / "ft"),
        "tokenizer": (["tokenizer", "train", "--input", str(source), "--out", str(tmp / "tok"),
                       "--vocab-size", "500"], tmp / "tok"),
    }  # fmt: skip


def _one_error_line(err: str, command: str, path: Path, reason: str) -> str:
    # `datasets`' own progress bar ("Generating train split: ...") may come first (csv, text).
    lines = [line for line in err.strip().splitlines() if "Generating train split" not in line]
    assert len(lines) == 1, err
    prefix = f"pegasus-gsg {command}: error: {path}"
    assert lines[0].startswith(prefix), lines[0]
    rest = lines[0][len(prefix) :]
    assert re.match(reason, rest), (reason, rest)
    return lines[0]


def _nothing_finished(out: Path) -> None:
    """No OUT (or nothing in it that looks finished), and no storeset.json anywhere."""
    assert not out.exists()
    partial = out.with_name(out.name + ".partial")
    assert not (partial / SET_MANIFEST).exists() and not (partial / MANIFEST).exists()


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_input_is_one_clear_error_and_the_fixed_input_completes(
    corruption, tmp_path, tiny_tokenizer_dir, capsys
) -> None:
    name, corrupt, reason, file_level = CORRUPTIONS[corruption]
    source = tmp_path / name
    good = _good_bytes(name, tmp_path)
    source.write_bytes(corrupt(good))
    commands = _commands(source, tiny_tokenizer_dir, tmp_path)
    for what, (args, out) in commands.items():
        capsys.readouterr()
        assert main(args) == 1, what
        _one_error_line(capsys.readouterr().err, args[0], source, reason)
        _nothing_finished(out)
    if file_level:  # not one record to skip: the rest of the file is unreadable
        args, out = commands["pretrain set"]
        assert main([*args, "--skip-bad"]) == 1
        line = _one_error_line(capsys.readouterr().err, "prepare", source, reason)
        assert "fails the job even with --skip-bad" in line
        _nothing_finished(out)

    source.write_bytes(good)  # the file fetched again: the same commands complete
    for what, (args, out) in commands.items():
        assert main(args) == 0, what
        finished = out / ("tokenizer.json" if what == "tokenizer" else MANIFEST)
        if what.endswith("set"):
            finished = out / SET_MANIFEST
            assert json.loads(finished.read_text())["rows_read"] == ROWS
        assert finished.is_file(), what
        assert not out.with_name(out.name + ".partial").exists()


def _bad_records_file(tmp: Path) -> Path:
    """12 rows, a non-UTF-8 line at 4 and a NUL at 9 (shards of 5 rows: shards 0 and 1)."""
    data = _replace_line(BAD_LINES[1], NUL)(
        _replace_line(BAD_LINES[0], NON_UTF8)(_jsonl(_records()))
    )
    path = tmp / "bad.jsonl"
    path.write_bytes(data)
    return path


def test_skip_bad_counts_non_utf8_and_nul_records_per_shard_and_in_manifests(
    tmp_path, tiny_tokenizer_dir, capsys
) -> None:
    source = _bad_records_file(tmp_path)
    common = ["--input", str(source), "--tokenizer", str(tiny_tokenizer_dir), "--no-progress"]
    common += ["--skip-bad"]
    store, store_set = tmp_path / "store", tmp_path / "set"
    assert main(["prepare", "pretrain", *common, "--out", str(store)]) == 0
    assert "skipped: 2 bad_json" in capsys.readouterr().out
    m = json.loads((store / MANIFEST).read_text())
    assert m["skipped"]["bad_json"] == 2 and m["num_records"] == ROWS - 2
    assert [e.split(": ", 1)[0] for e in m["skipped_examples"]] == [
        f"{source}:{line}" for line in BAD_LINES
    ]
    assert "invalid UTF-8" in m["skipped_examples"][0] and "NUL byte" in m["skipped_examples"][1]

    assert (
        main(["prepare", "pretrain", *common, "--out", str(store_set), "--rows-per-shard", "5"])
        == 0
    )
    s = json.loads((store_set / SET_MANIFEST).read_text())
    assert s["skipped"]["bad_json"] == 2 and s["num_records"] == ROWS - 2
    assert [shard["skipped"] for shard in s["shards"]] == [{"bad_json": 1}, {"bad_json": 1}, {}]
    for shard in s["shards"]:  # each shard's own manifest agrees
        own = json.loads((store_set / shard["path"] / MANIFEST).read_text())
        assert own["skipped"].get("bad_json", 0) == shard["skipped"].get("bad_json", 0)
    assert s["skipped_examples"] == m["skipped_examples"]


RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_engine_reports_counts_and_refuses_corrupt_inputs_like_local(
    tmp_path, tiny_tokenizer_dir
) -> None:
    """One Ray case for all: a bad record stops the job from inside a Ray task; --skip-bad
    counts it per shard as the local engine does (the same store set, byte for byte); a
    truncated .gz fails before any task runs, --skip-bad or not."""
    pytest.importorskip("ray")
    env = {**os.environ, **RAY_ENV}

    def ray_run(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pegasus_gsg", "prepare", "pretrain", "--input", str(source),
             "--tokenizer", str(tiny_tokenizer_dir), "--out", str(out), "--rows-per-shard", "5",
             "--no-progress", "--engine", "ray", "--num-proc", "1", *extra],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    source = _bad_records_file(tmp_path)
    out = tmp_path / "ray"
    failed = ray_run(source, out)
    assert failed.returncode == 1, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert last.startswith(
        f"pegasus-gsg prepare: error: {source}:{BAD_LINES[0]}: invalid UTF-8"
    ) or (last.startswith(f"pegasus-gsg prepare: error: {source}:{BAD_LINES[1]}: NUL byte")), last
    assert "--skip-bad" in last
    _nothing_finished(out)

    counted = ray_run(source, out, "--skip-bad")
    assert counted.returncode == 0, counted.stderr[-3000:]
    local = tmp_path / "local"
    args = ["prepare", "pretrain", "--input", str(source), "--tokenizer", str(tiny_tokenizer_dir)]
    assert (
        main([*args, "--out", str(local), "--rows-per-shard", "5", "--no-progress", "--skip-bad"])
        == 0
    )
    ours = json.loads((out / SET_MANIFEST).read_text())
    theirs = json.loads((local / SET_MANIFEST).read_text())
    assert [s["skipped"] for s in ours["shards"]] == [{"bad_json": 1}, {"bad_json": 1}, {}]
    assert ours["skipped"]["bad_json"] == 2 and ours["checksum"] == theirs["checksum"]

    name, corrupt, reason, _ = CORRUPTIONS["truncated gzip"]
    truncated = tmp_path / name
    truncated.write_bytes(corrupt(_jsonl(_records())))
    for extra in ((), ("--skip-bad",)):
        refused = ray_run(truncated, tmp_path / "gz", *extra)
        assert refused.returncode == 1
        _one_error_line(refused.stderr, "prepare", truncated, reason)
        _nothing_finished(tmp_path / "gz")
