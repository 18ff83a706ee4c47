"""Assembly: computed chunks, in order, -> one token store (store.StoreBuilder: arrays built in
a temporary directory, fsynced, manifest written last, renamed to OUT).

Two passes over the chunks: the first sums the sizes (records, tokens, sentences, largest
record and source row), so every array is created once at its final length with the narrowest
dtype that holds it; the second fills them. Token ids of a vocabulary over 65,536 are stored
split17 (store.token_codec): the low 16 bits in `tokens.npy`, the positions of ids >= HIGH_BIT
in `high_tokens.npy`. The same chunks give the same bytes, whichever process computed them.
With every size known after the first pass, a disk without room for the store stops before any
array is made (one `no space left writing OUT` line, pegasus_gsg/files.py); the arrays'
blocks are allocated when made, so a disk filled meanwhile fails there too, never halfway.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pegasus_gsg.data.preparation.chunks import (
    MAX_SKIP_EXAMPLES,
    NO_SPLIT,
    SKIP_REASONS,
    ChunkArrays,
)
from pegasus_gsg.data.preparation.options import PrepareConfig
from pegasus_gsg.data.store import (
    HIGH_BIT,
    StoreBuilder,
    narrowest_uint,
    offsets_dtype,
    token_codec,
)
from pegasus_gsg.files import check_free_space, writing_to

logger = logging.getLogger(__name__)

MAX_SPLIT_VALUES = 20
"""`split` values kept in a manifest's counts (the most common)."""
_NPY_HEADER_BYTES = 128
"""What numpy writes before an array's data (format 1.0: a multiple of 64 bytes, 128 here)."""


Chunk = Path | ChunkArrays
"""A computed chunk: its .npz file in the work dir, or its arrays in memory (a store-set unit)."""


@contextlib.contextmanager
def _open_chunk(chunk: Chunk) -> Iterator[Any]:
    if isinstance(chunk, Path):
        with np.load(chunk) as loaded:
            yield loaded
    else:
        yield chunk


def assemble_store(
    chunks: Sequence[Chunk],
    out: Path,
    tmp: Path,
    base_manifest: dict[str, Any],
    config: PrepareConfig,
    dtype: np.dtype,
    *,
    allow_empty: bool = False,
) -> dict[str, Any]:
    """Concatenate `chunks`, in order, into the store at `out` (built in `tmp`, atomically);
    returns its manifest. `allow_empty` (a store-set shard): no records is no error, and the
    split warnings wait for the whole set.

    Raises:
        ValueError: no usable record in all the chunks (unless `allow_empty`).
        OSError: the store could not be written or moved into place (e.g. `out` appeared
            meanwhile without `overwrite`).
    """
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
        warn_about_splits(splits, config.split)
    if sizes["records"] == 0 and not allow_empty:
        raise ValueError(
            f"no usable records in {rows} input rows (skipped: {dict(skipped)}, outside split "
            f"{config.split!r}: {filtered}); nothing to prepare"
        )
    r, t, s = sizes["records"], sizes["tokens"], sizes["sentences"]
    specs: dict[str, tuple[Any, int]] = {"tokens.npy": (np.uint16 if codec else dtype, t)}
    extra: dict[str, Any] = {}
    if codec:
        extra = {"token_codec": codec, "num_high_tokens": num_high}
        specs["high_tokens.npy"] = (offsets_dtype(max(t - 1, 0)), num_high)
        specs["record_high.npy"] = (offsets_dtype(num_high), r + 1)
    specs["record_tokens.npy"] = (offsets_dtype(t), r + 1)
    specs["source_rows.npy"] = (offsets_dtype(last_row), r)
    if config.kind == "pretrain":
        specs["record_sentences.npy"] = (offsets_dtype(s), r + 1)
        specs["sentence_ends.npy"] = (narrowest_uint(sizes["max_record"], np.uint16), s)
        specs["ranking_order.npy"] = (narrowest_uint(max(sizes["max_sentences"] - 1, 0)), s)
        specs["ranking_scores.npy"] = (np.float32, s)
    else:
        specs["source_lengths.npy"] = (narrowest_uint(sizes["max_record"], np.uint16), r)
    # Every array's size is known: a disk without room for them all stops before one is made.
    needed = sum(_NPY_HEADER_BYTES + np.dtype(dt).itemsize * n for dt, n in specs.values())
    check_free_space(out, needed)
    builder = StoreBuilder(out, tmp)
    try:
        with writing_to(out, needed):
            arrays = {name: builder.create(name, dt, n) for name, (dt, n) in specs.items()}
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


def warn_about_splits(splits: Counter[str], split: str | None) -> None:
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
