"""The token store's on-disk format, in one place: what each file holds and how it is encoded.

Arrays (R records, S sentences, T tokens), one `.npy` file each:

| file | shape | meaning |
|---|---|---|
| tokens.npy | T | all token ids, record after record, no `</s>` |
| record_tokens.npy | R+1 | token offset of each record |
| source_rows.npy | R | the record's row in the input (0-based, across all input files) |
| record_sentences.npy | R+1 | pretrain: sentence offset of each record |
| sentence_ends.npy | S | pretrain: end of each sentence, in tokens from its record's start |
| ranking_order.npy | S | pretrain: the record's `gsg.Ranking.order` (sentence indices) |
| ranking_scores.npy | S | pretrain: `Ranking.scores` (by sentence index) as float32 |
| source_lengths.npy | R | finetune: document tokens; the summary is the rest of the record |

Every integer array uses the narrowest unsigned dtype that holds its values: token ids are
uint16 when the vocabulary has at most 65,536 ids (uint32 otherwise, never int64); offsets are
uint32 until they pass 2**32 - 1, then int64.

Vocabularies over 65,536 ids (google/pegasus-large has 96,103) are stored with the `split17`
token codec instead of uint32: `tokens.npy` holds the low 16 bits of every id (uint16, one entry
per token, so every offset keeps counting tokens) and `high_tokens.npy` the sorted positions of
the tokens whose id has bit 16 set. SentencePiece/Unigram ids are ordered by piece score, so
those are rare: 0.85% of Reuters' tokens with a 96,103-id tokenizer, 2.03 bytes per id against 4
for uint32 (benchmarks/bench_store_bytes.py also measured in-band escapes, 2.04 with their
per-record code offsets but 6x the decode cost, a frequency remap, 2.14 with its rank->id table,
and 17-bit packing, 2.125). Access stays O(1) per record: a record without high ids is a view of
the memory map; otherwise `record_high.npy` (R+1 offsets into the positions) gives its high
positions and a uint32 copy gets bit 16 set there.

Scores are float32: `Ranking` scores are 2a/b with integer a, b, and float32 rounding keeps
distinct values distinct and equal ones equal while b < 2**23, so the order the scores imply is
the stored one (gsg.importance relies on that); float64 would add 4 bytes per sentence (~0.14
bytes per token on news) for digits no sampler uses.

`manifest.json` (MANIFEST) holds the counts, dtypes, tokenizer fingerprint, options and source
fingerprint, and per file its size and sha256; `checksum` is the sha256 of those per-file
hashes, so two stores with the same content have the same checksum. A store set's
`storeset.json` (SET_MANIFEST) lists its shard stores (storeset.py). `load_manifest` checks
either against the keys it must hold and this code's format version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "pegasus-gsg-token-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("pretrain", "finetune")
"""Store kinds: `pretrain` (sentences + GSG ranking) or `finetune` (document/summary pairs)."""

COMMON_FILES = ("tokens.npy", "record_tokens.npy", "source_rows.npy")
KIND_FILES = {
    "pretrain": (
        "record_sentences.npy",
        "sentence_ends.npy",
        "ranking_order.npy",
        "ranking_scores.npy",
    ),
    "finetune": ("source_lengths.npy",),
}
SPLIT17 = "split17"
HIGH_BIT = 1 << 16
"""split17: ids >= HIGH_BIT are stored as id - HIGH_BIT, their positions in high_tokens.npy."""
CODEC_FILES = {SPLIT17: ("high_tokens.npy", "record_high.npy")}

SET_FORMAT = "pegasus-gsg-store-set"
SET_FORMAT_VERSION = 1
SET_MANIFEST = "storeset.json"
_HEADER_KEYS = (
    "format",
    "format_version",
    "kind",
    "num_records",
    "num_tokens",
    "dtype",
    "vocab_size",
    "tokenizer",
)
"""What a store's and a store set's manifest both hold."""
REQUIRED_KEYS = (*_HEADER_KEYS, "source", "skipped", "files", "checksum")
SET_REQUIRED_KEYS = (*_HEADER_KEYS, "options", "shards", "checksum")
_HASH_BLOCK = 1 << 22


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65,536), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token ids")


def token_codec(vocab_size: int) -> str | None:
    """`split17` for 65,536 < vocab_size <= 131,072 (2 bytes for nearly every token), else None
    (the plain `token_dtype`)."""
    return SPLIT17 if HIGH_BIT < vocab_size <= 2 * HIGH_BIT else None


def store_files(kind: str, codec: str | None) -> tuple[str, ...]:
    """The data files of a store of `kind` written with token codec `codec`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return COMMON_FILES + KIND_FILES[kind] + (CODEC_FILES[codec] if codec else ())


def split17_decode(low: np.ndarray, high_positions: np.ndarray) -> np.ndarray:
    """Ids from their low 16 bits and the positions (in `low`) of the ids with bit 16 set:
    `low` itself (a view) when there are none, else a new uint32 array."""
    if not len(high_positions):
        return low
    ids = low.astype(np.uint32)
    ids[high_positions] += HIGH_BIT
    return ids


def narrowest_uint(max_value: int, smallest: type = np.uint8) -> np.dtype:
    """The narrowest of uint8/16/32 (not below `smallest`) holding `max_value`, else int64."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if (
            np.dtype(dtype).itemsize >= np.dtype(smallest).itemsize
            and max_value <= np.iinfo(dtype).max
        ):
            return np.dtype(dtype)
    return np.dtype(np.int64)


def offsets_dtype(max_value: int) -> np.dtype:
    """uint32 offsets while they fit, int64 beyond (never uint64: numpy indexes with int64)."""
    return narrowest_uint(max_value, smallest=np.uint32)


def sha256_file(path: Path) -> str:
    """The sha256 of file `path` (hex), read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def content_checksum(files: dict[str, dict[str, Any]]) -> str:
    """sha256 over `name:sha256` lines of every data file, in name order."""
    lines = "".join(f"{name}:{files[name]['sha256']}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def load_manifest(
    manifest_path: Path, required: Sequence[str], fmt: str, version: int
) -> dict[str, Any]:
    """A store's or a store set's manifest: a JSON object with every `required` key, written in
    format `fmt` version `version`.

    Raises:
        ValueError: not JSON, not an object, a key missing, or another format or version.
    """
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{manifest_path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"{manifest_path} must hold a JSON object")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise ValueError(f"{manifest_path} is incomplete: missing {', '.join(missing)}")
    if manifest["format"] != fmt or manifest["format_version"] != version:
        raise ValueError(
            f"{manifest_path}: format {manifest['format']!r} version "
            f"{manifest['format_version']!r}; this code reads {fmt!r} version {version}"
        )
    return manifest
