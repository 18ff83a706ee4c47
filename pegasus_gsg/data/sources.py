"""Input corpora for `prepare` and `tokenizer train`: files, globs and saved datasets as rows.

Formats, chosen by file suffix (a trailing .gz/.bz2/.xz is looked through):

- `.jsonl` / `.ndjson`, and `.json` files that do not start with `[`: JSON Lines, read here line
  by line. `datasets`' JSON loader reports a bad line as a pyarrow parse error without file or
  line and cannot skip it; this reader reports `FILE:LINE: reason` (the pegasus_gsg.data.jsonl
  wording) and, for --skip-bad, hands the bad row on as an error so it can be counted.
- `.json` starting with `[` (an array of objects), `.csv`, `.parquet`: `datasets.load_dataset`.
- `.txt`: `datasets`' text loader with `sample_by="paragraph"`: documents separated by blank
  lines, each in a `text` field.
- a directory of such files (C4's layout: `en/c4-train.00000-of-01024.json.gz` ...): every file
  with a known suffix under it, in path order;
- a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`: `load_from_disk`
  (a DatasetDict needs a split).

Rows are numbered 0.. across all inputs in order; `iter_chunks` cuts that sequence into fixed
chunks of `chunk_size` rows and yields only the chunks asked for, so a shard of a sharded
prepare parses only its own rows. Every input is hashed (sha256 of its bytes; of every file of a
saved dataset) into the source fingerprint recorded in the store's manifest.

Damage is reported as one line naming the file, and the line where there is one. A bad *record*
(invalid UTF-8, a NUL byte, not JSON) is a Row with an error, which `--skip-bad` skips and
counts. A bad *file* (a truncated or corrupt .gz/.bz2/.xz, a parquet file whose footer cannot
be read) raises ValueError even with `--skip-bad`: nothing after the damage can be read, so it
is not one record to skip. Such files are found while counting rows, before any output exists.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import json
import lzma
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

_COMPRESSED: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_COMPRESSION_NAMES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}
_DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (EOFError, OSError, zlib.error, lzma.LZMAError)
"""What reading a damaged compressed file raises: EOFError (truncated), gzip.BadGzipFile and
bz2's OSError (not that format, CRC mismatch), zlib.error, lzma.LZMAError (corrupt data)."""
_FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_HASH_BLOCK = 1 << 22


@dataclass(frozen=True)
class Row:
    """One input row: its global index, where it is (`FILE:LINE` or `FILE: row N`), and either
    the record or why it could not be read."""

    index: int
    location: str
    record: dict[str, Any] | None
    error: str | None = None


@dataclass
class Source:
    """One resolved input: a JSON Lines file read here, or a `datasets.Dataset`."""

    path: Path
    format: str
    num_rows: int
    sha256: str
    dataset: Any = field(default=None, repr=False)

    @property
    def columns(self) -> list[str] | None:
        return None if self.dataset is None else list(self.dataset.column_names)


def _glob_chars(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def resolve_inputs(patterns: Sequence[str]) -> list[Path]:
    """Expand globs (`**` included) in order; every pattern must match something."""
    if not patterns:
        raise ValueError("no input given; expected at least one FILE, glob or dataset directory")
    paths: list[Path] = []
    for pattern in patterns:
        if _glob_chars(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no input matches {pattern!r}")
            paths.extend(Path(m) for m in matches if not Path(m).is_dir() or _is_saved(Path(m)))
        else:
            path = Path(pattern)
            if not path.exists():
                raise FileNotFoundError(f"input {path} does not exist")
            if path.is_dir() and not _is_saved(path):
                paths.extend(_corpus_files(path))
            else:
                paths.append(path)
    return paths


def _corpus_files(directory: Path) -> list[Path]:
    """Every input file under `directory` (recursively, sorted by path; C4's
    `c4-train.00000-of-01024.json.gz` ... in shard order), hidden files left out."""
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        and _suffixes(p)[0] in _FORMATS
    )
    if not files:
        raise FileNotFoundError(
            f"input directory {directory} holds no {', '.join(_FORMATS)} files (optionally "
            ".gz/.bz2/.xz) and is not a saved dataset"
        )
    return files


def _is_saved(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in _SAVED_MARKERS)


def _suffixes(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression suffix or None), e.g. data.jsonl.gz -> (.jsonl, .gz)."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSED else None
    if compression:
        suffixes = suffixes[:-1]
    return (suffixes[-1] if suffixes else ""), compression


def _open_binary(path: Path) -> BinaryIO:
    _, compression = _suffixes(path)
    opener = _COMPRESSED.get(compression) if compression else None
    handle: BinaryIO = opener(path, "rb") if opener else path.open("rb")
    return handle


def _damaged_file_error(path: Path, line: int | None, err: BaseException) -> ValueError:
    """`FILE:LINE: reason` for a compressed file that cannot be decompressed (past `line`)."""
    _, compression = _suffixes(path)
    kind = _COMPRESSION_NAMES.get(compression or "", "compressed")
    if isinstance(err, EOFError):
        reason = (
            f"the {kind} data ends before its end-of-stream marker: the file is truncated "
            "(an interrupted copy or download?)"
        )
    else:
        reason = f"the {kind} data is damaged or not {kind} ({err})"
    where = str(path) if line is None else f"{path}:{line}"
    return ValueError(
        f"{where}: {reason}; fetch or compress it again (a damaged file fails the job even "
        "with --skip-bad: the rows after the damage cannot be read)"
    )


def _read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of every line of a file, decompressed on the fly.

    Raises:
        ValueError: the compressed data is truncated or damaged (`FILE:LINE: ...`, LINE the
            first line that could not be read).
    """
    _, compression = _suffixes(path)
    errors = _DECOMPRESSION_ERRORS if compression else ()
    line_no = 0
    with _open_binary(path) as f:
        try:
            for line_no, raw in enumerate(f, start=1):
                yield line_no, raw
        except errors as err:
            raise _damaged_file_error(path, line_no + 1, err) from None


def _hash_path(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def _count_jsonl_rows(path: Path) -> int:
    return sum(1 for _, raw in _read_lines(path) if raw.strip())


def _starts_with_bracket(path: Path) -> bool:
    _, compression = _suffixes(path)
    errors = _DECOMPRESSION_ERRORS if compression else ()
    with _open_binary(path) as f:
        try:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        except errors as err:
            raise _damaged_file_error(path, 1, err) from None
    return head.startswith(b"[")


def _check_parquet_footer(path: Path) -> None:
    """Read a parquet file's footer (its schema and row groups: a few KB at its end), so that a
    truncated or damaged file is one clear error rather than `datasets`' logged traceback."""
    import pyarrow
    import pyarrow.parquet

    try:
        pyarrow.parquet.read_metadata(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise ValueError(
            f"{path}: not a readable parquet file: its footer is damaged or missing ({err}); "
            "the file is truncated or corrupt (an interrupted copy?): write or fetch it again "
            "(a damaged file fails the job even with --skip-bad)"
        ) from None


def _load_with_datasets(path: Path, fmt: str) -> Any:
    import datasets

    _, compression = _suffixes(path)
    if fmt == "parquet" and compression is None:
        _check_parquet_footer(path)
    kwargs: dict[str, Any] = {"sample_by": "paragraph"} if fmt == "text" else {}
    try:
        return datasets.load_dataset(fmt, data_files=[str(path)], split="train", **kwargs)
    except Exception as err:  # datasets/pyarrow raise many types; name the file either way
        cause: BaseException | None = err
        while compression and cause is not None:
            if isinstance(cause, _DECOMPRESSION_ERRORS):
                raise _damaged_file_error(path, None, cause) from None
            cause = cause.__cause__ or cause.__context__
        raise ValueError(f"{path}: cannot be read as {fmt}: {err}") from err


def _load_saved(path: Path, split: str | None) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise ValueError(f"{path}: cannot be loaded with datasets.load_from_disk: {err}") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            raise ValueError(
                f"{path} is a DatasetDict with splits {', '.join(loaded)}; choose one with --split"
            )
        if split not in loaded:
            raise ValueError(f"{path} has no split {split!r}; it has {', '.join(loaded)}")
        return loaded[split]
    return loaded


def open_sources(
    patterns: Sequence[str], *, required_columns: Sequence[str] = (), split: str | None = None
) -> list[Source]:
    """Resolve, hash and count every input; datasets-backed inputs are loaded (lazily mapped).

    `required_columns` are checked for datasets-backed inputs, whose columns are uniform (JSON
    Lines records are checked one by one when read). `split` picks a DatasetDict's split.

    Raises:
        FileNotFoundError: a path or glob matches nothing.
        ValueError: an unsupported suffix, an unreadable file, or a missing column.
    """
    sources = []
    for path in resolve_inputs(patterns):
        if path.is_dir():
            if not _is_saved(path):
                raise ValueError(
                    f"{path} is a directory but not a saved dataset (no "
                    f"{' / '.join(_SAVED_MARKERS)}); give files or a save_to_disk directory"
                )
            dataset = _load_saved(path, split)
            source = Source(path, "saved", len(dataset), _hash_path(path), dataset)
        else:
            suffix, _ = _suffixes(path)
            fmt = _FORMATS.get(suffix)
            if fmt is None:
                raise ValueError(
                    f"{path}: unsupported input type {suffix or '(no suffix)'!r}; expected "
                    f"{', '.join(_FORMATS)} (optionally .gz/.bz2/.xz) or a saved dataset directory"
                )
            if fmt == "json" and not _starts_with_bracket(path):
                fmt = "jsonl"
            if fmt == "jsonl":
                source = Source(path, "jsonl", _count_jsonl_rows(path), _hash_path(path))
            else:
                dataset = _load_with_datasets(path, fmt)
                source = Source(path, fmt, len(dataset), _hash_path(path), dataset)
        columns = source.columns
        if columns is not None:
            missing = [c for c in required_columns if c not in columns]
            if missing:
                raise ValueError(
                    f"{path} has no column {', '.join(map(repr, missing))} (columns: "
                    f"{', '.join(columns)}); choose the field with --text-field"
                    + ("/--summary-field" if len(required_columns) > 1 else "")
                )
        sources.append(source)
    return sources


def source_manifest(sources: Sequence[Source]) -> dict[str, Any]:
    """What the store's manifest records about its inputs, with their combined fingerprint.

    File names (not directories) are recorded, so moving the corpus keeps the fingerprint.
    """
    files = [
        {"name": s.path.name, "format": s.format, "rows": s.num_rows, "sha256": s.sha256}
        for s in sources
    ]
    blob = json.dumps([(f["format"], f["sha256"]) for f in files]).encode()
    return {"files": files, "fingerprint": hashlib.sha256(blob).hexdigest()}


def parse_jsonl_line(raw: bytes, where: str) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) for a good line, (None, "FILE:LINE: reason") for a bad one."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, (
            f"{where}: invalid UTF-8 at byte {err.start} of the line "
            f"({raw[err.start : err.start + 4]!r}); expected UTF-8 text"
        )
    nul = line.find("\0")  # never valid JSON (a NUL in a string is written \u0000)
    if nul >= 0:
        return None, (
            f"{where}: NUL byte at column {nul + 1}; expected one JSON object per line of text "
            "(is the file binary or damaged?)"
        )
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return None, (
            f"{where}: not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno}); "
            "expected one JSON object per line"
        )
    if not isinstance(record, dict):
        return None, f"{where}: expected a JSON object, got {type(record).__name__}"
    return record, None


def _jsonl_rows(source: Source, first_index: int) -> Iterator[tuple[int, str, bytes]]:
    """(global index, location, raw line) of every non-blank line."""
    index = first_index
    for line_no, raw in _read_lines(source.path):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        yield index, f"{source.path}:{line_no}", raw
        index += 1


def iter_chunks(
    sources: Sequence[Source], chunk_size: int, wanted: set[int], limit: int | None = None
) -> Iterator[tuple[int, list[Row]]]:
    """Yield `(chunk index, rows)` for the chunks in `wanted`, in order, each once complete.

    Chunk k holds rows [k·chunk_size, (k+1)·chunk_size) of the inputs in order (of the first
    `limit` rows only, if given); a chunk may span files. Rows of unwanted chunks are not parsed.
    """
    total = sum(s.num_rows for s in sources)
    if limit is not None:
        total = min(total, limit)
    chunk: list[Row] = []

    def complete(index: int) -> bool:  # is row `index` the last of its chunk?
        return index + 1 == min((index // chunk_size + 1) * chunk_size, total)

    first = 0  # global index of the source's first row
    for source in sources:
        end = min(first + source.num_rows, total)
        if first >= end or not any(
            first // chunk_size <= k <= (end - 1) // chunk_size for k in wanted
        ):
            first += source.num_rows
            continue
        if source.dataset is None:
            for index, location, raw in _jsonl_rows(source, first):
                if index >= end:
                    break
                if index // chunk_size in wanted:
                    record, error = parse_jsonl_line(raw, location)
                    chunk.append(Row(index, location, record, error))
                    if complete(index):
                        yield index // chunk_size, chunk
                        chunk = []
        else:
            for k in range(first // chunk_size, (end - 1) // chunk_size + 1):
                if k not in wanted:
                    continue
                lo, hi = max(k * chunk_size, first), min((k + 1) * chunk_size, end)
                columns = source.dataset[lo - first : hi - first]
                for offset in range(hi - lo):
                    record = {name: values[offset] for name, values in columns.items()}
                    row = lo - first + offset
                    chunk.append(Row(lo + offset, f"{source.path}: row {row + 1}", record))
                if complete(hi - 1):
                    yield k, chunk
                    chunk = []
        first += source.num_rows


def iter_texts(
    sources: Sequence[Source], fields: Sequence[str], limit: int | None = None
) -> Iterator[str]:
    """Every non-blank value of `fields` in every row (e.g. to train a tokenizer).

    Raises:
        ValueError: `FILE:LINE: reason` for a malformed row, a missing or non-string field.
    """
    total = sum(s.num_rows for s in sources)
    if limit is not None:
        total = min(total, limit)
    chunk_size = 1000
    wanted = set(range(max(1, -(-total // chunk_size))))
    for _, rows in iter_chunks(sources, chunk_size, wanted, limit=limit):
        for row in rows:
            if row.error is not None:
                raise ValueError(row.error)
            assert row.record is not None
            for name in fields:
                if name not in row.record:
                    raise ValueError(
                        f"{row.location}: missing field {name!r}; the record has "
                        f"{sorted(row.record) or 'no fields'} (choose it with --text-field)"
                    )
                value = row.record[name]
                if not isinstance(value, str):
                    raise ValueError(
                        f"{row.location}: field {name!r} is {type(value).__name__}, "
                        "expected a string"
                    )
                if value.strip():
                    yield value


def iter_unit_rows(
    path: str, fmt: str, lo: int, hi: int, first_index: int, split: str | None = None
) -> Iterator[Row]:
    """Rows [lo, hi) of one input file (a store-set unit), numbered from `first_index`;
    `split` picks a saved DatasetDict's split.

    Reads only this file; JSON Lines are streamed (rows before `lo` are skipped unparsed), other
    formats are loaded with `datasets` and sliced.

    Raises:
        FileNotFoundError: the file disappeared since the job listed it.
        ValueError: the file now has fewer rows than when the job listed it.
    """
    where = Path(path)
    if not where.exists():
        raise FileNotFoundError(
            f"input {where} disappeared while the job was running (it was listed with at least "
            f"{hi} rows); restore it and rerun, or rerun without it"
        )
    count = 0
    if fmt == "jsonl":
        source = Source(where, fmt, hi, "")
        for index, location, raw in _jsonl_rows(source, 0):
            if index >= hi:
                break
            if index >= lo:
                record, error = parse_jsonl_line(raw, location)
                yield Row(first_index + index - lo, location, record, error)
                count += 1
    else:
        dataset = _load_saved(where, split) if fmt == "saved" else _load_with_datasets(where, fmt)
        columns = dataset[lo:hi]
        for offset in range(len(next(iter(columns.values()), []))):
            record = {name: values[offset] for name, values in columns.items()}
            yield Row(first_index + offset, f"{where}: row {lo + offset + 1}", record)
            count += 1
    if count != hi - lo:
        raise ValueError(
            f"input {where} changed while the job was running: rows {lo}-{hi} were listed, "
            f"{count} of them are there now"
        )
