"""One chunk of input rows -> its arrays: check each row, split sentences, rank them (GSG) and
tokenize (pretrain), or tokenize document and summary (finetune); and the mapping of chunks
over worker processes.

A chunk's arrays depend only on its rows (and the options), so they are the same whichever
process computes them. The token ids of a document come from encoding the whole document once
with character offsets and cutting where the sentences end: a token belongs to the sentence
holding its last character.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pegasus_gsg.core.gsg import example_rng, rank_sentences
from pegasus_gsg.core.sentences import split_sentences
from pegasus_gsg.data.preparation.options import PrepareConfig
from pegasus_gsg.data.sources import Row

SKIP_REASONS = ("bad_json", "missing_field", "not_text", "empty")
"""Why a row was skipped; all but `empty` are errors unless `skip_bad`."""
MAX_SKIP_EXAMPLES = 10
"""Messages of skipped rows kept (per chunk, and in a manifest)."""
NO_SPLIT = "(no split field)"
"""The `split` value counted for records without a `split` field."""

ChunkArrays = dict[str, np.ndarray]
"""A computed chunk: tokens, per-record lengths and rows, rankings (pretrain) or summary
offsets (finetune), and `meta` (row, skip, filter and split counts as UTF-8 JSON bytes)."""


class _Worker:
    """Per-process state: the tokenizer backend and the config."""

    backend: Any = None
    config: PrepareConfig | None = None
    dtype: np.dtype | None = None
    tokenizer_dir: str | None = None
    """Set by init_unit_worker: the directory the backend was loaded from."""


def init_worker(tokenizer: str | Any, config: PrepareConfig, dtype: str, single: bool) -> None:
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
    _Worker.tokenizer_dir = None


def init_unit_worker(tokenizer_dir: str, config: PrepareConfig, dtype: str, single: bool) -> None:
    """Set up this process for a store-set unit: the tokenizer is loaded once per process (a
    pool or Ray worker runs many units), the config is the unit's."""
    if _Worker.tokenizer_dir != tokenizer_dir:
        init_worker(tokenizer_dir, config, dtype, single=single)
        _Worker.tokenizer_dir = tokenizer_dir
    _Worker.config = config


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


def process_chunk(task: tuple[int, list[Row]]) -> tuple[int, ChunkArrays]:
    """(chunk index, rows) -> (chunk index, its arrays), in a process set up by init_worker.

    Raises:
        ValueError: a malformed row without `skip_bad` (`FILE:LINE: reason`).
    """
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


def chunk_rows(arrays: ChunkArrays) -> int:
    """The number of input rows a computed chunk covers (from its `meta`)."""
    return int(json.loads(arrays["meta"].tobytes().decode())["rows"])


def _pretrain_arrays(
    kept: list[tuple[Row, list[str]]],
    encodings: list[Any],
    config: PrepareConfig,
    dtype: np.dtype,
    skip: _Skips,
) -> ChunkArrays:
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
) -> ChunkArrays:
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


def map_ordered(
    tasks: Iterable[tuple[int, list[Row]]],
    tokenizer: Any,
    tokenizer_dir: Path,
    config: PrepareConfig,
    dtype: np.dtype,
) -> Iterator[tuple[int, ChunkArrays]]:
    """process_chunk over tasks, in order, in-process or in a process pool (at most
    2 * num_proc chunks in flight)."""
    if config.num_proc == 1:
        init_worker(tokenizer, config, dtype.name, single=True)
        yield from map(process_chunk, tasks)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    initargs = (str(tokenizer_dir), config, dtype.name, False)
    with ctx.Pool(config.num_proc, initializer=init_worker, initargs=initargs) as pool:
        pending: collections.deque[Any] = collections.deque()
        for task in tasks:
            pending.append(pool.apply_async(process_chunk, (task,)))
            if len(pending) >= 2 * config.num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
