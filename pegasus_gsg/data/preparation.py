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

Store sets (`--engine ray`, or `--rows-per-shard N` with either engine): the unit of work is a
run of at most N rows of one input file (a whole small file, or a fixed slice of a large one).
Each unit becomes one shard store `OUT.partial/shards/NNNNN/` (`prepare_unit`, the same function
whichever engine runs it; its manifest, written last by StoreBuilder, is its completion marker).
`--engine local` runs the units in this process or a pool of `--num-proc` processes; `--engine
ray` runs them as Ray tasks (`ray.init()` starts a local instance; `--ray-address auto` or
HOST:PORT joins a cluster whose nodes share OUT's file system). A unit reads only its own rows
and writes only its own shard, so a task that dies (worker or node lost) is simply run again by
Ray (`max_retries`) and produces the same bytes; a driver that dies leaves finished shards in
OUT.partial, which a rerun of the same command skips. When every shard is there the driver
writes `storeset.json` (store.py) and renames OUT.partial to OUT. The same inputs and options
give byte-identical shards, and so the same set checksum, with either engine.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pegasus_gsg import __version__
from pegasus_gsg.core.gsg import STRATEGIES, check_strategy, example_rng, rank_sentences
from pegasus_gsg.core.sentences import split_sentences
from pegasus_gsg.data.sources import (
    Row,
    Source,
    iter_chunks,
    iter_unit_rows,
    open_sources,
    source_manifest,
)
from pegasus_gsg.data.store import (
    FORMAT,
    FORMAT_VERSION,
    HIGH_BIT,
    KINDS,
    MANIFEST,
    SET_FORMAT,
    SET_FORMAT_VERSION,
    SET_MANIFEST,
    StoreBuilder,
    narrowest_uint,
    offsets_dtype,
    read_manifest,
    read_set_manifest,
    set_checksum,
    token_codec,
    token_dtype,
    write_json_atomic,
    writer_tag,
)

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
SKIP_REASONS = ("bad_json", "missing_field", "not_text", "empty")
"""Why a row was skipped; all but `empty` are errors unless `skip_bad`."""
MAX_SKIP_EXAMPLES = 10
MAX_SPLIT_VALUES = 20
NO_SPLIT = "(no split field)"
DEFAULT_ROWS_PER_SHARD = 50_000
RAY_MAX_RETRIES = 4


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
    engine: str = "local"
    """`local` (this machine) or `ray` (Ray tasks; always writes a store set)."""
    ray_address: str | None = None
    """engine ray: None starts a local Ray instance; `auto` or HOST:PORT joins a cluster."""
    rows_per_shard: int | None = None
    """Write a store set of shards of at most this many rows of one input file (default for
    engine ray: DEFAULT_ROWS_PER_SHARD); None with engine local: one store, as before."""

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
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.ray_address is not None and self.engine != "ray":
            raise ValueError(f"--ray-address {self.ray_address} needs --engine ray")
        if self.engine == "ray" and self.rows_per_shard is None:
            self.rows_per_shard = DEFAULT_ROWS_PER_SHARD
        if self.rows_per_shard is not None:
            if self.rows_per_shard < 1:
                raise ValueError(f"rows_per_shard must be >= 1, got {self.rows_per_shard}")
            if self.num_shards > 1:
                raise ValueError(
                    "--shard I/N splits a single store by hand; a store set (--engine ray or "
                    "--rows-per-shard) is cut into shards by the job itself: use one or the other"
                )

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
    """Set up a worker; `tokenizer` is a loaded tokenizer (in-process) or its directory.

    From a directory only the `tokenizers` backend is loaded (tokenizer.json, what the loaded
    tokenizer's `backend_tokenizer` is): a fresh worker process (a Ray worker) then never
    imports transformers and torch, ~4-15 s of start-up per worker on this machine.
    """
    if not single:
        # One tokenizer thread per process: N processes already use the cores.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if isinstance(tokenizer, str):
        from tokenizers import Tokenizer

        _Worker.backend = Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))
    else:
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


def _open_work_dir(
    work: Path, job: dict[str, Any], config: PrepareConfig, subdir: str = "chunks"
) -> None:
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
    (work / subdir).mkdir(parents=True, exist_ok=True)
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


Chunk = Path | dict[str, np.ndarray]
"""A computed chunk: its .npz file in the work dir, or its arrays in memory (a store-set unit)."""


@contextlib.contextmanager
def _open_chunk(chunk: Chunk) -> Iterator[Any]:
    if isinstance(chunk, Path):
        with np.load(chunk) as loaded:
            yield loaded
    else:
        yield chunk


def _assemble(
    chunks: Sequence[Chunk],
    out: Path,
    tmp: Path,
    base_manifest: dict[str, Any],
    config: PrepareConfig,
    dtype: np.dtype,
    *,
    allow_empty: bool = False,
) -> dict[str, Any]:
    """Concatenate `chunks`, in order, into the store at `out` (built in `tmp`, atomically)."""
    sizes = {"records": 0, "tokens": 0, "sentences": 0, "max_record": 0, "max_sentences": 0}
    skipped: Counter[str] = Counter({reason: 0 for reason in SKIP_REASONS})
    examples: list[str] = []
    filtered = rows = 0
    splits: Counter[str] = Counter()
    vocab_size = int(base_manifest["vocab_size"])
    codec = token_codec(vocab_size)
    num_high = 0  # split17: tokens with an id >= HIGH_BIT
    last_row = 0  # the largest source row (the single-store case: rows - 1)
    for chunk_ref in chunks:
        with _open_chunk(chunk_ref) as chunk:
            meta = json.loads(chunk["meta"].tobytes().decode())
            lengths = chunk["record_lengths"]
            sizes["records"] += len(lengths)
            sizes["tokens"] += int(lengths.sum())
            sizes["max_record"] = max(sizes["max_record"], int(lengths.max(initial=0)))
            last_row = max(last_row, int(chunk["source_rows"].max(initial=0)))
            if config.kind == "pretrain":
                sentence_counts = chunk["sentence_counts"]
                sizes["sentences"] += int(sentence_counts.sum())
                sizes["max_sentences"] = max(
                    sizes["max_sentences"], int(sentence_counts.max(initial=0))
                )
            if codec:
                num_high += int(np.count_nonzero(chunk["tokens"] >= HIGH_BIT))
        skipped.update(meta["skipped"])
        examples.extend(meta["skipped_examples"][: MAX_SKIP_EXAMPLES - len(examples)])
        filtered += meta["filtered"]
        rows += meta["rows"]
        splits.update(meta["splits"])
    if not allow_empty:
        _warn_about_splits(splits, config.split)
    if sizes["records"] == 0 and not allow_empty:
        raise ValueError(
            f"no usable records in {rows} input rows (skipped: {dict(skipped)}, outside split "
            f"{config.split!r}: {filtered}); nothing to prepare"
        )
    r, t, s = sizes["records"], sizes["tokens"], sizes["sentences"]
    builder = StoreBuilder(out, tmp)
    try:
        extra: dict[str, Any] = {}
        arrays = {"tokens.npy": builder.create("tokens.npy", np.uint16 if codec else dtype, t)}
        if codec:
            extra = {"token_codec": codec, "num_high_tokens": num_high}
            arrays["high_tokens.npy"] = builder.create(
                "high_tokens.npy", offsets_dtype(max(t - 1, 0)), num_high
            )
            arrays["record_high.npy"] = builder.create(
                "record_high.npy", offsets_dtype(num_high), r + 1
            )
        arrays["record_tokens.npy"] = builder.create("record_tokens.npy", offsets_dtype(t), r + 1)
        arrays["source_rows.npy"] = builder.create("source_rows.npy", offsets_dtype(last_row), r)
        if config.kind == "pretrain":
            arrays["record_sentences.npy"] = builder.create(
                "record_sentences.npy", offsets_dtype(s), r + 1
            )
            arrays["sentence_ends.npy"] = builder.create(
                "sentence_ends.npy", narrowest_uint(sizes["max_record"], np.uint16), s
            )
            arrays["ranking_order.npy"] = builder.create(
                "ranking_order.npy", narrowest_uint(max(sizes["max_sentences"] - 1, 0)), s
            )
            arrays["ranking_scores.npy"] = builder.create("ranking_scores.npy", np.float32, s)
        else:
            arrays["source_lengths.npy"] = builder.create(
                "source_lengths.npy", narrowest_uint(sizes["max_record"], np.uint16), r
            )
        _fill(arrays, chunks, config.kind, codec is not None)
        manifest = {
            **base_manifest,
            "num_records": r,
            "num_tokens": t,
            **({"num_sentences": s} if config.kind == "pretrain" else {}),
            "dtype": dtype.name,
            **extra,
            "rows_read": rows,
            "skipped": dict(sorted(skipped.items())),
            "skipped_examples": examples,
            "filtered_other_split": filtered,
            "split_values": dict(sorted(splits.most_common(MAX_SPLIT_VALUES))),
        }
        replace_existing = config.overwrite and out.exists()
        return builder.commit(manifest, replace=replace_existing)
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


def _fill(
    arrays: dict[str, np.memmap],
    chunks: Sequence[Chunk],
    kind: str,
    split17: bool,
) -> None:
    r = t = s = h = 0
    arrays["record_tokens.npy"][0] = 0
    if kind == "pretrain":
        arrays["record_sentences.npy"][0] = 0
    for chunk_ref in chunks:
        with _open_chunk(chunk_ref) as chunk:
            lengths = chunk["record_lengths"]
            n, tokens = len(lengths), chunk["tokens"]
            if split17:
                is_high = tokens >= HIGH_BIT
                high = np.flatnonzero(is_high)
                before = np.concatenate([[0], np.cumsum(is_high)])
                arrays["record_high.npy"][r : r + n + 1] = h + before[np.cumsum([0, *lengths])]
                arrays["high_tokens.npy"][h : h + len(high)] = t + high
                h += len(high)
                arrays["tokens.npy"][t : t + len(tokens)] = tokens & (HIGH_BIT - 1)
            else:
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


def _existing_output(
    out: Path,
    base: dict[str, Any],
    config: PrepareConfig,
    manifest_name: str,
    read: Callable[[Path], dict[str, Any]],
    what: str,
) -> dict[str, Any] | None:
    """The manifest of a finished `what` (a token store or a store set) at `out` made by this
    very job, else None.

    Raises ValueError when `out` holds something else and `overwrite` is off.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if (out / manifest_name).is_file():
        manifest = read(out)
        theirs, ours = _identity(manifest), _identity(base)
        differs = [k for k in ours if theirs.get(k) != ours[k]]
        if not differs:
            return manifest
        if not config.overwrite:
            raise ValueError(
                f"{out} already holds a {what} made differently (differs in "
                f"{', '.join(differs)}); pass --overwrite to replace it"
            )
    elif any(out.iterdir()) and not config.overwrite:
        raise ValueError(f"output {out} exists, is not empty and is not a {what}")
    return None


def _existing_store(
    out: Path, base: dict[str, Any], config: PrepareConfig
) -> dict[str, Any] | None:
    """The manifest of a finished store at `out` made by this very job, else None."""
    return _existing_output(out, base, config, MANIFEST, read_manifest, "token store")


def prepare(
    inputs: Sequence[str],
    tokenizer_dir: str | Path,
    out: str | Path,
    config: PrepareConfig,
) -> PrepareResult:
    """Prepare `inputs` into the token store `out`, or the store set `out` when
    `config.rows_per_shard` is set (engine ray always); see the module docstring.

    Raises:
        FileNotFoundError: an input or the tokenizer directory does not exist.
        ValueError: a malformed row (`FILE:LINE: reason`) without `skip_bad`, a missing
            column, a conflicting existing store or partial directory, no usable record, or
            (engine ray) Ray missing or its cluster unreachable.
    """
    from pegasus_gsg.data.tokenization import load_tokenizer, tokenizer_fingerprint

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
    if config.rows_per_shard is not None:
        return _prepare_set(sources, total_rows, tokenizer_dir, out, config, base, dtype)
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
    rows_todo = sum(min(config.chunk_size, total_rows - k * config.chunk_size) for k in todo)
    tasks = iter_chunks(sources, config.chunk_size, set(todo), limit=total_rows)
    with tqdm(
        total=rows_todo, unit="doc", desc=f"prepare {config.kind}", disable=not config.progress
    ) as bar:
        for index, arrays in _map_ordered(tasks, tokenizer, tokenizer_dir, config, dtype):
            _write_chunk(work, index, arrays)
            bar.update(_read_rows(arrays))
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
    paths = [_chunk_path(work, k) for k in range(num_chunks)]
    try:
        missing = [k for k, p in enumerate(paths) if not p.exists()]
        if missing:
            raise ValueError(f"{work}: chunks {missing[:10]} are missing; rerun their shards")
        manifest = _assemble(paths, out, work / f"store-{writer_tag()}", base, config, dtype)
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


# ----------------------------------------------------------------------------- store sets


@dataclass(frozen=True)
class Unit:
    """One unit of a store-set job: rows [lo, hi) of one input file -> shard store `index`."""

    index: int
    path: str
    format: str
    sha256: str
    first_row: int
    """Global index (across all inputs) of the file's row `lo`."""
    lo: int
    hi: int

    @property
    def name(self) -> str:
        return f"shards/{self.index:05d}"


def _units(sources: Sequence[Source], total_rows: int, rows_per_shard: int) -> Iterator[Unit]:
    """The job's units in order: each file cut into runs of `rows_per_shard` rows."""
    first = index = 0
    for source in sources:
        rows = min(source.num_rows, total_rows - first)
        for lo in range(0, max(rows, 0), rows_per_shard):
            hi = min(lo + rows_per_shard, rows)
            yield Unit(index, str(source.path), source.format, source.sha256, first + lo, lo, hi)
            index += 1
        first += source.num_rows


def _shard_base(base: dict[str, Any], unit: Unit) -> dict[str, Any]:
    files = [
        {
            "name": Path(unit.path).name,
            "format": unit.format,
            "sha256": unit.sha256,
            "rows": [unit.lo, unit.hi],
        }
    ]
    fingerprint = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {**base, "source": {"files": files, "fingerprint": fingerprint}}


_UNIT_WORKER: dict[str, Any] = {}


def prepare_unit(
    unit: Unit, tokenizer_dir: str, config: PrepareConfig, work: str, base: dict[str, Any]
) -> dict[str, Any]:
    """Compute one unit into its shard store under `work` (idempotent: a finished shard, found
    by its manifest, is kept). Runs in whichever process the engine chose; returns the shard's
    entry of storeset.json.

    Raises:
        FileNotFoundError: the input file disappeared since the job started.
        ValueError: a malformed row without `skip_bad` (`FILE:LINE: reason`).
    """
    out = Path(work) / unit.name
    if not (out / MANIFEST).is_file():
        if _UNIT_WORKER.get("dir") != tokenizer_dir:
            single = config.engine == "local" and config.num_proc == 1
            _init_worker(tokenizer_dir, config, base_dtype(base).name, single=single)
            _UNIT_WORKER["dir"] = tokenizer_dir
        _Worker.config = config
        dtype = base_dtype(base)
        rows = iter_unit_rows(
            unit.path, unit.format, unit.lo, unit.hi, unit.first_row, config.split
        )
        chunks: list[Chunk] = []
        batch: list[Row] = []
        for row in rows:
            batch.append(row)
            if len(batch) == config.chunk_size:
                chunks.append(_process_chunk((len(chunks), batch))[1])
                batch = []
        if batch or not chunks:
            chunks.append(_process_chunk((len(chunks), batch))[1])
        shard_config = replace(config, overwrite=False)
        tmp = out.with_name(f".{out.name}.tmp-{writer_tag()}")
        try:
            _assemble(
                chunks, out, tmp, _shard_base(base, unit), shard_config, dtype, allow_empty=True
            )
        except OSError:
            # Another attempt of this unit (a retried task) finished first: same bytes.
            if not (out / MANIFEST).is_file():
                raise
    manifest = read_manifest(out)
    return {
        "path": unit.name,
        "source": f"{Path(unit.path).name} rows {unit.lo}-{unit.hi}",
        "rows": unit.hi - unit.lo,
        "num_records": manifest["num_records"],
        "num_tokens": manifest["num_tokens"],
        **({"num_sentences": manifest["num_sentences"]} if "num_sentences" in manifest else {}),
        "checksum": manifest["checksum"],
        "skipped": manifest["skipped"],
        "skipped_examples": manifest["skipped_examples"],
        "filtered_other_split": manifest["filtered_other_split"],
        "split_values": manifest["split_values"],
    }


def base_dtype(base: dict[str, Any]) -> np.dtype:
    """The token dtype of a job's chunks (uint16/uint32 by vocabulary size)."""
    return token_dtype(int(base["vocab_size"]))


def _existing_set(out: Path, base: dict[str, Any], config: PrepareConfig) -> dict[str, Any] | None:
    """The manifest of a finished store set at `out` made by this very job, else None."""
    return _existing_output(out, base, config, SET_MANIFEST, read_set_manifest, "store set")


def _prepare_set(
    sources: Sequence[Source],
    total_rows: int,
    tokenizer_dir: Path,
    out: Path,
    config: PrepareConfig,
    base: dict[str, Any],
    dtype: np.dtype,
) -> PrepareResult:
    assert config.rows_per_shard is not None
    work = out.with_name(out.name + ".partial")
    units = list(_units(sources, total_rows, config.rows_per_shard))
    existing = _existing_set(out, base, config)
    if existing is not None:
        logger.info("%s already holds this store set (checksum %s)", out, existing["checksum"])
        return PrepareResult(out, existing, len(units), 0, 0, already_prepared=True)
    # Ray starts (or connects) first: an unreachable cluster leaves nothing behind, and the
    # progress bar's documents/s counts only the work. A Ray session the caller started
    # (ray.init before prepare) is used as it is and left running.
    ray, ours = _ray_init(config) if config.engine == "ray" else (None, False)
    try:
        return _run_set(units, tokenizer_dir, work, out, config, base, dtype, ray)
    finally:
        if ours and ray is not None:
            ray.shutdown()


def _run_set(
    units: list[Unit],
    tokenizer_dir: Path,
    work: Path,
    out: Path,
    config: PrepareConfig,
    base: dict[str, Any],
    dtype: np.dtype,
    ray: Any,
) -> PrepareResult:
    job = {
        **_identity(base),
        "rows_per_shard": config.rows_per_shard,
        "rows": sum(u.hi - u.lo for u in units),
    }
    _open_work_dir(work, job, config, subdir="shards")
    todo = [u for u in units if not (work / u.name / MANIFEST).is_file()]
    resumed = len(units) - len(todo)
    if resumed:
        logger.info("resuming: %d of %d shards already in %s", resumed, len(units), work)
    args = (str(tokenizer_dir.absolute()), config, str(work), base)
    bar = tqdm(
        total=sum(u.hi - u.lo for u in todo),
        unit="doc",
        desc=f"prepare {config.kind} ({config.engine})",
        disable=not config.progress,
    )
    with bar:
        bar.set_postfix_str(f"tasks {resumed}/{len(units)}")
        finished = resumed
        done = _run_local(todo, args, config) if ray is None else _run_ray(ray, todo, args)
        for unit in done:
            finished += 1
            _unit_done(bar, unit, finished, len(units))
    entries = [prepare_unit(u, *args) for u in units]  # all finished: reads their manifests
    manifest = _set_manifest(entries, base, config, dtype)
    write_json_atomic(work / SET_MANIFEST, manifest)
    for leftover in [*work.glob("shards/.*.tmp-*"), work / "job.json"]:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    if out.exists():  # --overwrite, checked by _existing_set
        shutil.rmtree(out)
    os.rename(work, out)
    return PrepareResult(out, manifest, len(units), len(todo), resumed)


def _unit_done(bar: Any, unit: Unit, finished: int, total: int) -> None:
    """The driver's bookkeeping when a unit's shard is finished (a test seam, too)."""
    bar.update(unit.hi - unit.lo)
    bar.set_postfix_str(f"tasks {finished}/{total}")


def _set_manifest(
    entries: list[dict[str, Any]], base: dict[str, Any], config: PrepareConfig, dtype: np.dtype
) -> dict[str, Any]:
    skipped: Counter[str] = Counter({reason: 0 for reason in SKIP_REASONS})
    splits: Counter[str] = Counter()
    examples: list[str] = []
    for entry in entries:
        skipped.update(entry["skipped"])
        entry["skipped"] = {reason: n for reason, n in entry["skipped"].items() if n}
        splits.update(entry.pop("split_values"))
        examples.extend(entry.pop("skipped_examples")[: MAX_SKIP_EXAMPLES - len(examples)])
    totals = {
        key: sum(e[key] for e in entries)
        for key in ("rows", "num_records", "num_tokens", "filtered_other_split")
    }
    _warn_about_splits(splits, config.split)
    if totals["num_records"] == 0:
        raise ValueError(
            f"no usable records in {totals['rows']} input rows (skipped: {dict(skipped)}, "
            f"outside split {config.split!r}: {totals['filtered_other_split']}); nothing to "
            "prepare"
        )
    sentences = {}
    if config.kind == "pretrain":
        sentences = {"num_sentences": sum(e["num_sentences"] for e in entries)}
    codec = token_codec(int(base["vocab_size"]))
    shards = [{k: v for k, v in e.items() if k != "filtered_other_split"} for e in entries]
    return {
        **base,
        "format": SET_FORMAT,
        "format_version": SET_FORMAT_VERSION,
        "num_records": totals["num_records"],
        "num_tokens": totals["num_tokens"],
        **sentences,
        "dtype": dtype.name,
        **({"token_codec": codec} if codec else {}),
        "rows_read": totals["rows"],
        "rows_per_shard": config.rows_per_shard,
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": examples,
        "filtered_other_split": totals["filtered_other_split"],
        "split_values": dict(sorted(splits.most_common(MAX_SPLIT_VALUES))),
        "shards": shards,
        "checksum": set_checksum(shards),
    }


def _call_unit(task: tuple[Unit, tuple[Any, ...]]) -> Unit:
    unit, args = task
    prepare_unit(unit, *args)
    return unit


def _run_local(units: list[Unit], args: tuple[Any, ...], config: PrepareConfig) -> Iterator[Unit]:
    """Units in this process (num_proc 1) or a process pool, yielded as they finish."""
    tasks = [(u, args) for u in units]
    if config.num_proc == 1 or len(units) <= 1:
        yield from map(_call_unit, tasks)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(config.num_proc, maxtasksperchild=None) as pool:
        yield from pool.imap_unordered(_call_unit, tasks)


def _ray_init(config: PrepareConfig) -> tuple[Any, bool]:
    """Import Ray and connect (or start a local instance): (ray, whether this call initialised
    it). Clear errors for the usual faults."""
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--engine ray needs Ray: pip install 'pegasus-gsg[ray]' (or use --engine local)"
        ) from None
    if ray.is_initialized():
        return ray, False
    address = config.ray_address
    if address is not None and address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--ray-address must be auto or HOST:PORT, got {address!r}")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as err:
            raise ValueError(
                f"cannot reach the Ray cluster at {address} ({err}); start one with "
                "`ray start --head`, or leave out --ray-address for a local Ray instance"
            ) from None
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address is None:
        kwargs["num_cpus"] = config.num_proc
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as err:
        raise ValueError(f"cannot connect to the Ray cluster at {address}: {err}") from None
    return ray, True


def _run_ray(ray: Any, units: list[Unit], args: tuple[Any, ...]) -> Iterator[Unit]:
    """Units as Ray tasks (at most 2 per cluster CPU in flight), yielded as they finish.

    A task whose worker or node dies is retried by Ray (RAY_MAX_RETRIES); an error raised by
    the unit itself (a bad row, a vanished input) is not retried: it stops the job.
    """
    if units:
        remote = ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES, retry_exceptions=False)(
            _call_unit
        )
        in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: dict[Any, Unit] = {}
        queue = collections.deque(units)
        while queue or pending:
            while queue and len(pending) < in_flight:
                unit = queue.popleft()
                pending[remote.remote((unit, args))] = unit
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            try:
                ray.get(ready[0])
            except ray.exceptions.RayTaskError as err:
                cause = err.cause
                if isinstance(cause, (ValueError, FileNotFoundError)):
                    raise type(cause)(str(cause)) from None
                raise
            yield unit


__all__ = [
    "ENGINES",
    "STRATEGIES",
    "PrepareConfig",
    "PrepareResult",
    "Unit",
    "parse_shard",
    "prepare",
    "prepare_unit",
]
