"""`prepare`: split, rank and tokenize a corpus once, in parallel, into a token store.

Per pretraining document (shared/GSG.md): `split_sentences`, `gsg.rank_sentences` with the
chosen strategy (the whole ranking and its scores are stored, so any gsr, mixed/stochastic
selection or mask probability can be drawn later without preparing again), and the token ids of
every sentence. Tokens come from encoding the *whole document* once (with character offsets)
and cutting the ids where the sentences end: a token belongs to the sentence holding its last
character. So the sentences concatenate to exactly the ids the tokenizer gives for the
document, and a word is never split differently because it starts a sentence. (The tokenizer
trained here never lets a piece cross a sentence end; for other tokenizers a piece that does
goes with the later sentence.) Per fine-tuning record: document ids and summary ids.

How the work is cut, and why runs are deterministic and resumable:

- Input rows (all input files in order, sources.py) are cut into chunks of `chunk_size` rows.
  A chunk's output depends only on its rows, so it is the same whichever process computes it.
- `--num-proc N` maps chunks over N processes (at most 2N chunks in flight), results in order.
- `--shard I/N` computes chunks k with k mod N == I (round robin, so shards get similar work
  even when the corpus is sorted by length).
- Finished chunks land in `OUT.partial/chunks/` (written to a temporary name, fsynced,
  renamed), next to `job.json`, the identity of the job (tokenizer and source fingerprints,
  options, chunk size, shard count). A rerun of the same job skips finished chunks, so a run
  killed at any point (kill -9 included) resumes; a partial directory of a *different* job is
  discarded (single process) or refused (sharded: another shard may still be using it).
- When a shard finishes it writes `OUT.partial/done-I-of-N.json`; the shard that finds all N
  markers assembles every chunk in order into the store (store.StoreBuilder: temporary
  directory, fsync, rename to OUT) and removes OUT.partial. Nothing appears under OUT before
  that, and OUT is byte-identical (same checksum) whatever the number of processes, shards or
  interruptions. If two shards finish at the same moment, both may assemble; the first rename
  wins and the other, finding an identical store in place, stops.

Records that cannot be used are never dropped silently. Blank documents (or summaries) are
always skipped and counted (`empty`: pretraining needs at least one sentence). Malformed JSON,
a missing field or a non-string field stop the run with `FILE:LINE: reason`, or with
`skip_bad` are skipped and counted (`bad_json`, `missing_field`, `not_text`); the manifest
keeps the counts and the first few messages. Records outside `--split` are counted as filtered;
the manifest also counts the `split` values seen, and preparing a corpus that mixes several
splits without `--split` (test data in a training set) logs a warning.

Fault injection for tests: with `PEGASUS_GSG_STOP_AFTER_CHUNKS=k` in the environment the run
stops itself (SIGSTOP) after writing k chunks, so a test can kill -9 it at a known point.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pegasus_gsg import __version__
from pegasus_gsg.gsg import STRATEGIES, check_strategy, example_rng, rank_sentences
from pegasus_gsg.sentences import split_sentences
from pegasus_gsg.sources import Row, Source, iter_chunks, open_sources, source_manifest
from pegasus_gsg.store import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    StoreBuilder,
    narrowest_uint,
    offsets_dtype,
    read_manifest,
    token_dtype,
    write_json_atomic,
    writer_tag,
)
from pegasus_gsg.tokenizer import load_tokenizer, tokenizer_fingerprint

logger = logging.getLogger(__name__)

KINDS = ("pretrain", "finetune")
SKIP_REASONS = ("bad_json", "missing_field", "not_text", "empty")
"""Why a row was skipped; all but `empty` are errors unless `skip_bad`."""
MAX_SKIP_EXAMPLES = 10
MAX_SPLIT_VALUES = 20
NO_SPLIT = "(no split field)"
STOP_AFTER_ENV = "PEGASUS_GSG_STOP_AFTER_CHUNKS"


@dataclass
class PrepareConfig:
    """Options of one `prepare` run (what to read and how; not where)."""

    kind: str
    """`pretrain` (sentences + GSG ranking) or `finetune` (document/summary pairs)."""
    text_field: str | None = None
    """Field with the document text; default `text` (pretrain) or `document` (finetune)."""
    summary_field: str = "summary"
    """finetune: field with the reference summary."""
    strategy: str = "ind_orig"
    """pretrain: GSG ranking strategy, one of gsg.STRATEGIES."""
    stopwords: bool = True
    """pretrain: drop the 127 English stopwords when scoring (GSG.md §2)."""
    seed: int = 0
    """pretrain, strategy `random`: record r is ranked with gsg.example_rng(seed, r, 0)."""
    split: str | None = None
    """Keep only records whose `split` field equals this (records without one are kept);
    also picks the split of a saved DatasetDict."""
    skip_bad: bool = False
    """Skip and count malformed rows instead of stopping at the first."""
    max_records: int | None = None
    """Read only the first N input rows."""
    chunk_size: int = 1000
    """Rows per unit of work and of resume; does not change the store's content."""
    num_proc: int = 1
    """Worker processes."""
    shard_index: int = 0
    num_shards: int = 1
    """This run computes part `shard_index` of `num_shards` (see the module docstring)."""
    overwrite: bool = False
    """Replace an existing store at the output path made from other inputs or options."""
    progress: bool = False
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.text_field is None:
            self.text_field = "text" if self.kind == "pretrain" else "document"
        check_strategy(self.strategy)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.max_records is not None and self.max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {self.max_records}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be >= 1, got {self.num_proc}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ValueError(
                f"shard must be I/N with 0 <= I < N, got {self.shard_index}/{self.num_shards}"
            )
        if self.kind == "finetune" and self.summary_field == self.text_field:
            raise ValueError(f"text and summary fields are both {self.text_field!r}")

    @property
    def fields(self) -> list[str]:
        assert self.text_field is not None
        if self.kind == "finetune":
            return [self.text_field, self.summary_field]
        return [self.text_field]

    def content_options(self) -> dict[str, Any]:
        """The options that decide the store's content (recorded in its manifest)."""
        gsg = None
        if self.kind == "pretrain":
            gsg = {"strategy": self.strategy, "stopwords": self.stopwords, "seed": self.seed}
        return {
            "kind": self.kind,
            "fields": self.fields,
            "gsg": gsg,
            "split": self.split,
            "skip_bad": self.skip_bad,
            "max_records": self.max_records,
        }


def parse_shard(text: str) -> tuple[int, int]:
    """`"I/N"` -> (I, N), with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return index, count


@dataclass
class PrepareResult:
    """What a run did. `store` is None when this shard finished but others have not."""

    store: Path | None
    manifest: dict[str, Any] | None
    chunks_total: int
    chunks_computed: int
    chunks_resumed: int
    already_prepared: bool = False
    waiting_for: list[int] | None = None


# ----------------------------------------------------------------------------- per chunk


class _Worker:
    """Per-process state: the tokenizer backend and the config."""

    backend: Any = None
    config: PrepareConfig | None = None
    dtype: np.dtype | None = None


def _init_worker(tokenizer: str | Any, config: PrepareConfig, dtype: str, single: bool) -> None:
    """Set up a worker; `tokenizer` is a loaded tokenizer (in-process) or its directory."""
    if not single:
        # One tokenizer thread per process: N processes already use the cores.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    _Worker.backend = tokenizer.backend_tokenizer
    _Worker.config = config
    _Worker.dtype = np.dtype(dtype)


class _Skips:
    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []

    def __call__(self, reason: str, message: str) -> None:
        if reason != "empty" and not self.skip_bad:
            raise ValueError(f"{message} (pass --skip-bad to skip and count such records)")
        self.counts[reason] += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(message)


def _usable(row: Row, config: PrepareConfig, skip: _Skips) -> list[str] | None:
    """The row's field texts, or None when it is skipped or filtered (counted by the caller)."""
    if row.error is not None:
        skip("bad_json", row.error)
        return None
    record = row.record
    assert record is not None
    values = []
    for name in config.fields:
        if name not in record:
            skip(
                "missing_field",
                f"{row.location}: missing field {name!r}; the record has "
                f"{sorted(record) or 'no fields'} (choose the field with "
                f"--{'summary' if name == config.summary_field else 'text'}-field)",
            )
            return None
        value = record[name]
        if value is None:  # JSON null, an empty CSV cell
            value = ""
        if not isinstance(value, str):
            skip(
                "not_text",
                f"{row.location}: field {name!r} is {type(value).__name__}, expected a string",
            )
            return None
        values.append(value)
    for name, value in zip(config.fields, values, strict=True):
        if not value.strip():
            skip("empty", f"{row.location}: field {name!r} is empty")
            return None
    return values


def _sentence_of_tokens(offsets: np.ndarray, sentence_ends: np.ndarray) -> np.ndarray:
    """Index of the sentence holding each token's last character (non-decreasing)."""
    last_char = np.maximum(offsets[:, 1] - 1, offsets[:, 0])
    which = np.searchsorted(sentence_ends, last_char, side="right")
    which = np.minimum(which, len(sentence_ends) - 1)
    return np.maximum.accumulate(which) if len(which) else which


def _process_chunk(task: tuple[int, list[Row]]) -> tuple[int, dict[str, np.ndarray]]:
    index, rows = task
    config, dtype = _Worker.config, _Worker.dtype
    assert config is not None and dtype is not None
    skip = _Skips(config.skip_bad)
    filtered = 0
    splits: Counter[str] = Counter()
    kept: list[tuple[Row, list[str]]] = []
    for row in rows:
        record = row.record
        if record is not None:
            splits[str(record["split"]) if "split" in record else NO_SPLIT] += 1
        outside = config.split is not None and record is not None and "split" in record
        if outside and record is not None and record["split"] != config.split:
            filtered += 1
            continue
        values = _usable(row, config, skip)
        if values is not None:
            kept.append((row, values))
    texts = [values[0] for _, values in kept]
    encodings = _Worker.backend.encode_batch(texts, add_special_tokens=False)
    if config.kind == "pretrain":
        arrays = _pretrain_arrays(kept, encodings, config, dtype, skip)
    else:
        summaries = _Worker.backend.encode_batch(
            [values[1] for _, values in kept], add_special_tokens=False
        )
        arrays = _finetune_arrays(kept, encodings, summaries, dtype)
    meta = {
        "rows": len(rows),
        "records": len(arrays["record_lengths"]),
        "skipped": dict(skip.counts),
        "skipped_examples": skip.examples,
        "filtered": filtered,
        "splits": dict(splits),
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return index, arrays


def _pretrain_arrays(
    kept: list[tuple[Row, list[str]]],
    encodings: list[Any],
    config: PrepareConfig,
    dtype: np.dtype,
    skip: _Skips,
) -> dict[str, np.ndarray]:
    tokens, record_lengths, rows, sentence_counts = [], [], [], []
    sentence_lengths, orders, scores = [], [], []
    for (row, (text,)), encoding in zip(kept, encodings, strict=True):
        ids = np.asarray(encoding.ids, dtype=np.int64)
        if len(ids) == 0:
            skip("empty", f"{row.location}: field {config.text_field!r} has no tokens")
            continue
        sentences = split_sentences(text)
        ends = np.cumsum([len(s) for s in sentences])
        which = _sentence_of_tokens(np.asarray(encoding.offsets, dtype=np.int64), ends)
        rng = example_rng(config.seed, row.index, 0) if config.strategy == "random" else None
        ranking = rank_sentences(sentences, config.strategy, stopwords=config.stopwords, rng=rng)
        tokens.append(ids.astype(dtype))
        record_lengths.append(len(ids))
        rows.append(row.index)
        sentence_counts.append(len(sentences))
        sentence_lengths.append(np.bincount(which, minlength=len(sentences)))
        orders.append(np.asarray(ranking.order, dtype=np.int64))
        scores.append(np.asarray(ranking.scores, dtype=np.float32))
    return {
        "tokens": _concat(tokens, dtype),
        "record_lengths": np.asarray(record_lengths, dtype=np.int64),
        "source_rows": np.asarray(rows, dtype=np.int64),
        "sentence_counts": np.asarray(sentence_counts, dtype=np.int64),
        "sentence_lengths": _concat(sentence_lengths, np.int64),
        "order": _concat(orders, np.int64),
        "scores": _concat(scores, np.float32),
    }


def _finetune_arrays(
    kept: list[tuple[Row, list[str]]],
    documents: list[Any],
    summaries: list[Any],
    dtype: np.dtype,
) -> dict[str, np.ndarray]:
    tokens, record_lengths, rows, source_lengths = [], [], [], []
    for (row, _), document, summary in zip(kept, documents, summaries, strict=True):
        tokens.append(np.asarray(document.ids, dtype=dtype))
        tokens.append(np.asarray(summary.ids, dtype=dtype))
        record_lengths.append(len(document.ids) + len(summary.ids))
        source_lengths.append(len(document.ids))
        rows.append(row.index)
    return {
        "tokens": _concat(tokens, dtype),
        "record_lengths": np.asarray(record_lengths, dtype=np.int64),
        "source_rows": np.asarray(rows, dtype=np.int64),
        "source_lengths": np.asarray(source_lengths, dtype=np.int64),
    }


def _concat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


# ----------------------------------------------------------------------------- work dir


def _chunk_path(work: Path, index: int) -> Path:
    return work / "chunks" / f"{index:07d}.npz"


def _done_path(work: Path, shard: int, shards: int) -> Path:
    return work / f"done-{shard}-of-{shards}.json"


def _write_chunk(work: Path, index: int, arrays: dict[str, np.ndarray]) -> None:
    final = _chunk_path(work, index)
    tmp = final.with_name(f".{final.name}.tmp-{writer_tag()}")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy stub: kwargs vs allow_pickle
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _read_meta(path: Path) -> dict[str, Any]:
    with np.load(path) as chunk:
        meta: dict[str, Any] = json.loads(chunk["meta"].tobytes().decode())
        return meta


def _open_work_dir(work: Path, job: dict[str, Any], config: PrepareConfig) -> None:
    """Create `work` for `job`, or check that an existing one belongs to the same job."""
    job_path = work / "job.json"
    if job_path.exists():
        try:
            existing = json.loads(job_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            existing = None
        if existing == job:
            return
        differs = sorted(k for k in job if existing is None or existing.get(k) != job[k])
        if config.num_shards > 1:
            raise ValueError(
                f"{work} holds unfinished work of another prepare job (differs in "
                f"{', '.join(differs)}); remove it, or rerun with that job's options"
            )
        logger.warning(
            "discarding %s: unfinished work of another job (differs in %s)",
            work,
            ", ".join(differs),
        )
        shutil.rmtree(work)
    (work / "chunks").mkdir(parents=True, exist_ok=True)
    write_json_atomic(job_path, job)


def _map_ordered(
    tasks: Iterable[tuple[int, list[Row]]],
    tokenizer: Any,
    tokenizer_dir: Path,
    config: PrepareConfig,
    dtype: np.dtype,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """_process_chunk over tasks, in order, in-process or in a bounded process pool."""
    if config.num_proc == 1:
        _init_worker(tokenizer, config, dtype.name, single=True)
        yield from map(_process_chunk, tasks)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    initargs = (str(tokenizer_dir), config, dtype.name, False)
    with ctx.Pool(config.num_proc, initializer=_init_worker, initargs=initargs) as pool:
        pending: collections.deque[Any] = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(_process_chunk, (task,)))
            if len(pending) >= 2 * config.num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# ----------------------------------------------------------------------------- assembly


def _assemble(
    work: Path,
    out: Path,
    num_chunks: int,
    base_manifest: dict[str, Any],
    config: PrepareConfig,
    dtype: np.dtype,
) -> dict[str, Any]:
    """Concatenate every chunk, in order, into the store at `out` (atomically)."""
    paths = [_chunk_path(work, k) for k in range(num_chunks)]
    missing = [k for k, p in enumerate(paths) if not p.exists()]
    if missing:
        raise ValueError(f"{work}: chunks {missing[:10]} are missing; rerun their shards")
    sizes = {"records": 0, "tokens": 0, "sentences": 0, "max_record": 0, "max_sentences": 0}
    skipped: Counter[str] = Counter({reason: 0 for reason in SKIP_REASONS})
    examples: list[str] = []
    filtered = rows = 0
    splits: Counter[str] = Counter()
    for path in paths:
        with np.load(path) as chunk:
            meta = json.loads(chunk["meta"].tobytes().decode())
            lengths = chunk["record_lengths"]
            sizes["records"] += len(lengths)
            sizes["tokens"] += int(lengths.sum())
            sizes["max_record"] = max(sizes["max_record"], int(lengths.max(initial=0)))
            if config.kind == "pretrain":
                counts = chunk["sentence_counts"]
                sizes["sentences"] += int(counts.sum())
                sizes["max_sentences"] = max(sizes["max_sentences"], int(counts.max(initial=0)))
        skipped.update(meta["skipped"])
        examples.extend(meta["skipped_examples"][: MAX_SKIP_EXAMPLES - len(examples)])
        filtered += meta["filtered"]
        rows += meta["rows"]
        splits.update(meta["splits"])
    _warn_about_splits(splits, config.split)
    if sizes["records"] == 0:
        raise ValueError(
            f"no usable records in {rows} input rows (skipped: {dict(skipped)}, outside split "
            f"{config.split!r}: {filtered}); nothing to prepare"
        )
    r, t, s = sizes["records"], sizes["tokens"], sizes["sentences"]
    builder = StoreBuilder(out, work / f"store-{writer_tag()}")
    try:
        arrays = {
            "tokens.npy": builder.create("tokens.npy", dtype, t),
            "record_tokens.npy": builder.create("record_tokens.npy", offsets_dtype(t), r + 1),
            "source_rows.npy": builder.create(
                "source_rows.npy", offsets_dtype(max(rows - 1, 0)), r
            ),
        }
        if config.kind == "pretrain":
            arrays["record_sentences.npy"] = builder.create(
                "record_sentences.npy", offsets_dtype(s), r + 1
            )
            arrays["sentence_ends.npy"] = builder.create(
                "sentence_ends.npy", narrowest_uint(sizes["max_record"], np.uint16), s
            )
            arrays["ranking_order.npy"] = builder.create(
                "ranking_order.npy", narrowest_uint(sizes["max_sentences"] - 1), s
            )
            arrays["ranking_scores.npy"] = builder.create("ranking_scores.npy", np.float32, s)
        else:
            arrays["source_lengths.npy"] = builder.create(
                "source_lengths.npy", narrowest_uint(sizes["max_record"], np.uint16), r
            )
        _fill(arrays, paths, config.kind)
        manifest = {
            **base_manifest,
            "num_records": r,
            "num_tokens": t,
            **({"num_sentences": s} if config.kind == "pretrain" else {}),
            "dtype": dtype.name,
            "rows_read": rows,
            "skipped": dict(sorted(skipped.items())),
            "skipped_examples": examples,
            "filtered_other_split": filtered,
            "split_values": dict(sorted(splits.most_common(MAX_SPLIT_VALUES))),
        }
        replace = config.overwrite and out.exists()
        return builder.commit(manifest, replace=replace)
    except BaseException:
        builder.abort()
        raise


def _warn_about_splits(splits: Counter[str], split: str | None) -> None:
    """The two ways --split is easy to get wrong: mixing splits, and filtering on nothing."""
    values = {value: n for value, n in splits.items() if value != NO_SPLIT}
    if split is None and len(values) > 1:
        listed = ", ".join(f"{v}: {n}" for v, n in Counter(values).most_common(5))
        logger.warning(
            "records carry a `split` field (%s) and all of them were prepared; "
            "pass --split to keep one",
            listed,
        )
    if split is not None and not values:
        logger.warning("no record has a `split` field; --split %s kept every record", split)


def _fill(arrays: Mapping[str, np.ndarray], paths: list[Path], kind: str) -> None:
    r = t = s = 0
    arrays["record_tokens.npy"][0] = 0
    if kind == "pretrain":
        arrays["record_sentences.npy"][0] = 0
    for path in paths:
        with np.load(path) as chunk:
            lengths = chunk["record_lengths"]
            n, tokens = len(lengths), chunk["tokens"]
            arrays["tokens.npy"][t : t + len(tokens)] = tokens
            arrays["record_tokens.npy"][r + 1 : r + n + 1] = t + np.cumsum(lengths)
            arrays["source_rows.npy"][r : r + n] = chunk["source_rows"]
            if kind == "pretrain":
                counts, sentence_lengths = chunk["sentence_counts"], chunk["sentence_lengths"]
                k = len(sentence_lengths)
                arrays["record_sentences.npy"][r + 1 : r + n + 1] = s + np.cumsum(counts)
                # Sentence ends relative to their record's start.
                record_start = np.repeat(np.cumsum(lengths) - lengths, counts)
                arrays["sentence_ends.npy"][s : s + k] = np.cumsum(sentence_lengths) - record_start
                arrays["ranking_order.npy"][s : s + k] = chunk["order"]
                arrays["ranking_scores.npy"][s : s + k] = chunk["scores"]
                s += k
            else:
                arrays["source_lengths.npy"][r : r + n] = chunk["source_lengths"]
            r += n
            t += len(tokens)


# ----------------------------------------------------------------------------- entry point


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What makes two stores the same job: content options and input/tokenizer fingerprints
    (not the paths they were given by, nor the file names)."""
    return {
        "format_version": manifest.get("format_version"),
        "kind": manifest.get("kind"),
        "options": manifest.get("options"),
        "tokenizer": (manifest.get("tokenizer") or {}).get("fingerprint"),
        "source": (manifest.get("source") or {}).get("fingerprint"),
    }


def _existing_store(
    out: Path, base: dict[str, Any], config: PrepareConfig
) -> dict[str, Any] | None:
    """The manifest of a finished store at `out` made by this very job, else None.

    Raises ValueError when `out` holds something else and `overwrite` is off.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if (out / MANIFEST).exists():
        manifest = read_manifest(out)
        theirs, ours = _identity(manifest), _identity(base)
        differs = [k for k in ours if theirs.get(k) != ours[k]]
        if not differs:
            return manifest
        if not config.overwrite:
            raise ValueError(
                f"{out} already holds a token store made differently (differs in "
                f"{', '.join(differs)}); pass --overwrite to replace it"
            )
    elif any(out.iterdir()) and not config.overwrite:
        raise ValueError(f"output {out} exists, is not empty and is not a token store")
    return None


def prepare(
    inputs: Sequence[str],
    tokenizer_dir: str | Path,
    out: str | Path,
    config: PrepareConfig,
) -> PrepareResult:
    """Prepare `inputs` into the token store `out` (see the module docstring).

    Raises:
        FileNotFoundError: an input or the tokenizer directory does not exist.
        ValueError: a malformed row (`FILE:LINE: reason`) without `skip_bad`, a missing
            column, a conflicting existing store or partial directory, or no usable record.
    """
    out = Path(out).absolute()  # so that OUT.partial is a sibling even for "." or "x/"
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    dtype = token_dtype(len(tokenizer))
    sources: list[Source] = open_sources(inputs, required_columns=config.fields, split=config.split)
    total_rows = sum(s.num_rows for s in sources)
    if total_rows == 0:
        raise ValueError(f"the inputs hold no rows: {', '.join(str(s.path) for s in sources)}")
    if config.max_records is not None:
        total_rows = min(total_rows, config.max_records)
    base = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": config.kind,
        "created_by": f"pegasus-gsg {__version__}",
        "vocab_size": len(tokenizer),
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "path": str(tokenizer_dir)},
        "options": config.content_options(),
        "gsg": config.content_options()["gsg"],
        "source": source_manifest(sources),
    }
    work = out.with_name(out.name + ".partial")
    num_chunks = max(1, math.ceil(total_rows / config.chunk_size))
    existing = _existing_store(out, base, config)
    if existing is not None:
        logger.info("%s already holds this store (checksum %s)", out, existing["checksum"][:12])
        if work.exists() and config.num_shards == 1:
            shutil.rmtree(work)
        return PrepareResult(out, existing, num_chunks, 0, 0, already_prepared=True)

    job = {
        **_identity(base),
        "chunk_size": config.chunk_size,
        "num_shards": config.num_shards,
        "rows": total_rows,
    }
    _open_work_dir(work, job, config)
    mine = [k for k in range(num_chunks) if k % config.num_shards == config.shard_index]
    done = {k for k in mine if _chunk_path(work, k).exists()}
    todo = [k for k in mine if k not in done]
    if done:
        logger.info("resuming: %d of %d chunks already in %s", len(done), len(mine), work)
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    rows_todo = sum(min(config.chunk_size, total_rows - k * config.chunk_size) for k in todo)
    tasks = iter_chunks(sources, config.chunk_size, set(todo), limit=total_rows)
    with tqdm(
        total=rows_todo, unit="doc", desc=f"prepare {config.kind}", disable=not config.progress
    ) as bar:
        for written, (index, arrays) in enumerate(
            _map_ordered(tasks, tokenizer, tokenizer_dir, config, dtype), start=1
        ):
            _write_chunk(work, index, arrays)
            bar.update(_read_rows(arrays))
            if written == stop_after:
                os.kill(os.getpid(), signal.SIGSTOP)
    shard_done = _done_path(work, config.shard_index, config.num_shards)
    write_json_atomic(shard_done, {"chunks": mine})
    waiting = [
        i for i in range(config.num_shards) if not _done_path(work, i, config.num_shards).exists()
    ]
    if waiting:
        logger.info(
            "shard %d/%d done; waiting for shards %s",
            config.shard_index,
            config.num_shards,
            waiting,
        )
        return PrepareResult(None, None, num_chunks, len(todo), len(done), waiting_for=waiting)
    try:
        manifest = _assemble(work, out, num_chunks, base, config, dtype)
    except (OSError, ValueError):
        # Another shard may have assembled the same store first and removed the work dir.
        finished = _existing_store(out, base, config) if (out / MANIFEST).exists() else None
        if finished is None:
            raise
        manifest = finished
    shutil.rmtree(work, ignore_errors=True)
    return PrepareResult(out, manifest, num_chunks, len(todo), len(done))


def _read_rows(arrays: dict[str, np.ndarray]) -> int:
    return int(json.loads(arrays["meta"].tobytes().decode())["rows"])


__all__ = ["STRATEGIES", "PrepareConfig", "PrepareResult", "parse_shard", "prepare"]
