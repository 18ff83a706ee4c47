"""The on-disk token store: what `prepare` writes once and every training epoch reads.

A store is a directory of `.npy` arrays, memory-mapped on open (`np.load(mmap_mode="r")`), plus
`manifest.json`. Every integer array uses the narrowest unsigned dtype that holds its values:
token ids are uint16 when the vocabulary has at most 65,536 ids (uint32 otherwise, never
int64); offsets are uint32 until they pass 2**32 - 1, then int64. DataLoader workers map the
same files, so N workers share one copy of the pages in the OS page cache instead of N copies.

Arrays (R records, S sentences, T tokens):

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

A store set (`prepare --engine ray`, or `--rows-per-shard N`) is a directory of shard stores
`shards/NNNNN/` plus `storeset.json` (SET_MANIFEST) written last: shards in order with their
input file, rows, counts and checksums, the tokenizer fingerprint and options, and a checksum
over the shard checksums. `TokenStore.open` on a store set returns a `StoreSet`, which reads as
one store (global record i is record i - start of the shard holding it) and opens a shard's
files only when a record of that shard (or the length arrays, for bucketing) is read.

A pretraining record's tokens are the tokenization of the whole document, cut at sentence
boundaries (prepare.py), so the concatenated sentences are exactly what the tokenizer gives for
the document. Scores are float32: `Ranking` scores are 2a/b with integer a, b, and float32
rounding keeps distinct values distinct and equal ones equal while b < 2**23, so the order the
scores imply is the stored one (gsg.importance relies on that); float64 would add 4 bytes per
sentence (~0.14 bytes per token on news) for digits no sampler uses.

Access is O(1) per record: a few offset look-ups and views into the memory map; no scan, no copy.

Integrity. `manifest.json` holds the counts, dtypes, tokenizer fingerprint, options and source
fingerprint, and per file its size and sha256; `checksum` is the sha256 of those per-file hashes,
so two stores with the same content have the same checksum. A store is written into a temporary
directory beside its final name, every file fsynced, the manifest written last, and the
directory renamed into place (`StoreBuilder`): a reader never sees a half-written store under
the final name. `TokenStore.open` checks the manifest and file sizes (cheap); `verify_store`
re-hashes every byte (`pegasus-gsg verify DIR`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pegasus_gsg.core.gsg import check_gsr, gap_sentence_counts

logger = logging.getLogger(__name__)

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
SET_REQUIRED_KEYS = (
    "format",
    "format_version",
    "kind",
    "num_records",
    "num_tokens",
    "dtype",
    "vocab_size",
    "tokenizer",
    "options",
    "shards",
    "checksum",
)
REQUIRED_KEYS = (
    "format",
    "format_version",
    "kind",
    "num_records",
    "num_tokens",
    "dtype",
    "vocab_size",
    "tokenizer",
    "source",
    "skipped",
    "files",
    "checksum",
)
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
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def content_checksum(files: dict[str, dict[str, Any]]) -> str:
    """sha256 over `name:sha256` lines of every data file, in name order."""
    lines = "".join(f"{name}:{files[name]['sha256']}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writer_tag() -> str:
    """host-pid: unique among processes that may share a file system (sharded prepares)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` via a temporary file, fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp-{writer_tag()}")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class StoreBuilder:
    """Builds a store in `tmp_dir` and moves it to `final_dir` only once it is complete.

    Usage: `create` each array (an `np.memmap` to fill), then `commit(manifest)`: flush and
    fsync every array, hash it, write the manifest last, fsync, rename the directory into place.
    `commit(..., replace=True)` swaps out an existing store at `final_dir`. `abort` removes the
    temporary directory.
    """

    def __init__(self, final_dir: str | Path, tmp_dir: str | Path) -> None:
        self.final_dir = Path(final_dir)
        self.tmp_dir = Path(tmp_dir)
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir(parents=True)
        self._arrays: dict[str, np.memmap] = {}

    def create(self, name: str, dtype: np.dtype | type, length: int) -> np.memmap:
        array = np.lib.format.open_memmap(
            self.tmp_dir / name, mode="w+", dtype=np.dtype(dtype), shape=(length,)
        )
        self._arrays[name] = array
        return array

    def commit(self, manifest: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Finish the store; returns the manifest as written (with `files` and `checksum`)."""
        files: dict[str, dict[str, Any]] = {}
        for name, array in self._arrays.items():
            array.flush()
            path = self.tmp_dir / name
            with path.open("rb+") as f:
                os.fsync(f.fileno())
            files[name] = {
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "dtype": array.dtype.name,
                "length": int(array.shape[0]),
            }
        self._arrays.clear()
        manifest = {**manifest, "files": files, "checksum": content_checksum(files)}
        write_json_atomic(self.tmp_dir / MANIFEST, manifest)
        fsync_dir(self.tmp_dir)
        old = None
        if self.final_dir.exists():
            if replace:
                old = self.final_dir.with_name(f".{self.final_dir.name}.old-{writer_tag()}")
                os.rename(self.final_dir, old)
            elif not any(self.final_dir.iterdir()):
                self.final_dir.rmdir()
        os.rename(self.tmp_dir, self.final_dir)
        fsync_dir(self.final_dir.parent)
        if old is not None:
            shutil.rmtree(old)
        return manifest

    def abort(self) -> None:
        self._arrays.clear()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _load_manifest(
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


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed, complete manifest of store `path`.

    Raises:
        FileNotFoundError: `path` or its manifest does not exist.
        ValueError: the manifest is unreadable, incomplete, of another format, or lists files
            that are missing or have the wrong size (a half-written or truncated store).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"token store {path} does not exist")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        hint = ""
        if path.with_name(path.name + ".partial").exists():
            hint = f" ({path.name}.partial beside it holds an unfinished prepare: rerun it)"
        raise FileNotFoundError(f"{path} has no {MANIFEST}: not a finished token store{hint}")
    manifest = _load_manifest(manifest_path, REQUIRED_KEYS, FORMAT, FORMAT_VERSION)
    if manifest["kind"] not in KINDS:
        raise ValueError(f"{manifest_path}: kind must be one of {KINDS}, got {manifest['kind']!r}")
    codec = manifest.get("token_codec")
    if codec is not None and codec not in CODEC_FILES:
        raise ValueError(f"{manifest_path}: unknown token_codec {codec!r}")
    expected = store_files(manifest["kind"], codec)
    files = manifest["files"]
    absent = [name for name in expected if name not in files]
    if absent:
        raise ValueError(f"{manifest_path} does not list {', '.join(absent)}")
    if content_checksum(files) != manifest["checksum"]:
        raise ValueError(f"{manifest_path}: checksum does not match the listed file hashes")
    for name in expected:
        file = path / name
        if not file.is_file():
            raise ValueError(f"{path}: {name} is missing")
        size = file.stat().st_size
        if size != files[name]["bytes"]:
            raise ValueError(
                f"{path}: {name} has {size} bytes, the manifest says {files[name]['bytes']} "
                "(truncated or overwritten)"
            )
    return manifest


class TokenStore:
    """Read-only, memory-mapped access to a prepared store (see the module docstring)."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.kind: str = manifest["kind"]
        self.dtype = np.dtype(manifest["dtype"])
        self.vocab_size: int = manifest["vocab_size"]
        self.codec: str | None = manifest.get("token_codec")
        names = store_files(self.kind, self.codec)
        # Plain ndarray views of the memmaps: still backed by the mapped pages, but slicing skips
        # np.memmap's Python-level __getitem__/__array_finalize__ (~30% of a loader step).
        self._arrays: dict[str, np.ndarray] = {
            name: np.load(path / name, mmap_mode="r").view(np.ndarray) for name in names
        }
        self.tokens: np.ndarray = self._arrays["tokens.npy"]
        self.record_tokens: np.ndarray = self._arrays["record_tokens.npy"]
        self.source_rows: np.ndarray = self._arrays["source_rows.npy"]
        """`tokens` holds the ids, or with the `split17` codec their low 16 bits: read ids
        with `record_ids`, `sentences` or `pair`."""
        self._check_shapes()
        self._target_lengths: dict[float, np.ndarray] = {}

    @classmethod
    def open(
        cls, path: str | Path, *, tokenizer: Any | None = None, verify: bool = False
    ) -> TokenStore:
        """Open store `path`; with `tokenizer`, refuse a store written by another tokenizer.

        `verify=True` also re-hashes every file (as `pegasus-gsg verify` does).

        Raises:
            FileNotFoundError: no store (or no manifest) at `path`.
            ValueError: incomplete or corrupt store, or a tokenizer mismatch.
        """
        path = Path(path)
        is_set = (path / SET_MANIFEST).is_file()
        manifest = read_set_manifest(path) if is_set else read_manifest(path)
        if verify:
            problems = verify_store(path)
            if problems:
                raise ValueError(f"token store {path} is corrupt: " + "; ".join(problems))
        if tokenizer is not None:
            from pegasus_gsg.data.tokenization import tokenizer_fingerprint

            ours = tokenizer_fingerprint(tokenizer)
            theirs = manifest["tokenizer"]["fingerprint"]
            if ours != theirs:
                raise ValueError(
                    f"token store {path} was written with tokenizer {theirs[:12]} "
                    f"({manifest['tokenizer'].get('path')}, {manifest['vocab_size']} ids), not "
                    f"with the given one ({ours[:12]}, {len(tokenizer)} ids); prepare the "
                    "corpus again with this tokenizer"
                )
        return StoreSet(path, manifest) if is_set else cls(path, manifest)

    def _check_shapes(self) -> None:
        m = self.manifest
        r, t = m["num_records"], m["num_tokens"]
        wrong = []
        if self.codec == SPLIT17:
            if self.tokens.dtype != np.uint16 or len(self.tokens) != t:
                wrong.append(f"tokens.npy is {self.tokens.dtype}[{len(self.tokens)}]")
            if len(self._arrays["high_tokens.npy"]) != m["num_high_tokens"]:
                wrong.append("high_tokens.npy does not have num_high_tokens entries")
            if len(self._arrays["record_high.npy"]) != r + 1:
                wrong.append("record_high.npy does not have num_records + 1 entries")
        elif self.tokens.dtype != self.dtype or len(self.tokens) != t:
            wrong.append(f"tokens.npy is {self.tokens.dtype}[{len(self.tokens)}]")
        if len(self.record_tokens) != r + 1:
            wrong.append(f"record_tokens.npy has {len(self.record_tokens)} entries")
        if self.kind == "pretrain":
            s = m["num_sentences"]
            if len(self._arrays["record_sentences.npy"]) != r + 1:
                wrong.append("record_sentences.npy does not have num_records + 1 entries")
            for name in ("sentence_ends.npy", "ranking_order.npy", "ranking_scores.npy"):
                if len(self._arrays[name]) != s:
                    wrong.append(f"{name} does not have num_sentences ({s}) entries")
        elif len(self._arrays["source_lengths.npy"]) != r:
            wrong.append("source_lengths.npy does not have num_records entries")
        if wrong:
            raise ValueError(
                f"token store {self.path} disagrees with its manifest: " + "; ".join(wrong)
            )

    def __len__(self) -> int:
        return int(self.manifest["num_records"])

    def __repr__(self) -> str:
        return (
            f"TokenStore({str(self.path)!r}, kind={self.kind!r}, records={len(self)}, "
            f"tokens={self.manifest['num_tokens']}, dtype={self.dtype.name})"
        )

    def _check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for a store of {n} records")
        return i % n

    def _need(self, kind: str, what: str) -> None:
        if self.kind != kind:
            raise ValueError(f"{what} needs a {kind} store; {self.path} is a {self.kind} store")

    def lengths(self) -> np.ndarray:
        """Per record: source tokens (pretrain: all sentences; finetune: the document)."""
        if self.kind == "finetune":
            return self._arrays["source_lengths.npy"]
        lengths: np.ndarray = np.diff(self.record_tokens.astype(np.int64))
        return lengths

    def target_lengths(self, gsr: float = 0.3) -> np.ndarray:
        """Per record: target tokens, without `</s>` (int64).

        finetune: the summary. pretrain: the tokens of the top m = num_gap_sentences(n, gsr)
        sentences of the stored ranking: exact for a fixed gsr (0.3, the paper's choice, by
        default), the typical draw for mixed/stochastic selection. Vectorised, cached per gsr.
        """
        if self.kind == "finetune":
            return np.diff(self.record_tokens.astype(np.int64)) - self.lengths().astype(np.int64)
        check_gsr(gsr)
        if gsr not in self._target_lengths:
            self._target_lengths[gsr] = self._top_sentence_tokens(gsr)
        return self._target_lengths[gsr]

    def _top_sentence_tokens(self, gsr: float) -> np.ndarray:
        rec_sent = self._arrays["record_sentences.npy"].astype(np.int64)
        counts = np.diff(rec_sent)
        first = np.repeat(rec_sent[:-1], counts)  # each sentence's record's first sentence
        m = gap_sentence_counts(counts, gsr)
        rank = np.arange(len(first)) - first
        picked = rank < np.repeat(m, counts)
        # ranking_order holds sentence indices within the record: make them global.
        chosen = self._arrays["ranking_order.npy"].astype(np.int64)[picked] + first[picked]
        record = np.repeat(np.arange(len(self)), counts)[picked]
        lengths = self.sentence_lengths_flat()
        return np.bincount(record, weights=lengths[chosen], minlength=len(self)).astype(np.int64)

    def sentence_lengths_flat(self) -> np.ndarray:
        """pretrain: every sentence's token count, record after record (int64, one pass)."""
        self._need("pretrain", "sentence_lengths_flat")
        ends = self._arrays["sentence_ends.npy"].astype(np.int64)
        rec_sent = self._arrays["record_sentences.npy"].astype(np.int64)
        starts = np.empty_like(ends)
        if len(ends):
            starts[1:] = ends[:-1]
            starts[rec_sent[:-1][np.diff(rec_sent) > 0]] = 0
        lengths: np.ndarray = ends - starts
        return lengths

    def num_sentences(self, i: int) -> int:
        self._need("pretrain", "num_sentences")
        i = self._check_index(i)
        rec_sent = self._arrays["record_sentences.npy"]
        return int(rec_sent[i + 1]) - int(rec_sent[i])

    def record_ids(self, i: int) -> np.ndarray:
        """Record i's token ids: a view into the memory map, or decoded (split17)."""
        i = self._check_index(i)
        start, end = int(self.record_tokens[i]), int(self.record_tokens[i + 1])
        low = self.tokens[start:end]
        if self.codec is None:
            return low
        record_high = self._arrays["record_high.npy"]
        first, last = int(record_high[i]), int(record_high[i + 1])
        if first == last:
            return low
        return split17_decode(low, self._arrays["high_tokens.npy"][first:last] - start)

    def sentences(self, i: int) -> list[np.ndarray]:
        """pretrain: record i's token ids per sentence (views into the memory map, or into the
        decoded record for split17)."""
        self._need("pretrain", "sentences")
        i = self._check_index(i)
        rec_sent = self._arrays["record_sentences.npy"]
        s0, s1 = int(rec_sent[i]), int(rec_sent[i + 1])
        ids = self.record_ids(i)
        ends = self._arrays["sentence_ends.npy"][s0:s1].tolist()
        out = []
        start = 0
        for end in ends:
            out.append(ids[start:end])
            start = end
        return out

    def ranking(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """pretrain: (order, scores) of record i as `gsg.rank_sentences` returned them.

        order: sentence indices, most important first (int64); scores: by sentence index
        (float64 values of the stored float32).
        """
        self._need("pretrain", "ranking")
        i = self._check_index(i)
        rec_sent = self._arrays["record_sentences.npy"]
        s0, s1 = int(rec_sent[i]), int(rec_sent[i + 1])
        order = self._arrays["ranking_order.npy"][s0:s1].astype(np.int64)
        scores = self._arrays["ranking_scores.npy"][s0:s1].astype(np.float64)
        return order, scores

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """finetune: (document ids, summary ids) of record i, views, no `</s>` appended."""
        self._need("finetune", "pair")
        i = self._check_index(i)
        ids = self.record_ids(i)
        split = int(self._arrays["source_lengths.npy"][i])
        return ids[:split], ids[split:]

    def source_row(self, i: int) -> int:
        """The input row (0-based, across all input files in order) record i came from."""
        return int(self.source_rows[self._check_index(i)])


def verify_store(path: str | Path) -> list[str]:
    """Re-hash every file of store `path` and check its structure; the problems found.

    An empty list means the store is intact. Raises FileNotFoundError/ValueError only when the
    manifest itself is missing or unusable (see `read_manifest`).
    """
    path = Path(path)
    if (path / SET_MANIFEST).is_file():
        return _verify_set(path)
    try:
        manifest = read_manifest(path)
    except ValueError as err:
        return [str(err)]
    problems = []
    files = manifest["files"]
    for name in sorted(files):
        digest = sha256_file(path / name)
        if digest != files[name]["sha256"]:
            problems.append(
                f"{name}: sha256 {digest[:12]}… differs from the manifest's "
                f"{files[name]['sha256'][:12]}…"
            )
    if problems:
        return problems
    try:
        store = TokenStore(path, manifest)
    except ValueError as err:
        return [str(err)]
    problems.extend(_structure_problems(store))
    return problems


def _structure_problems(store: TokenStore) -> list[str]:
    """Invariants a correct writer guarantees (catches a writer bug, not only bit rot)."""
    problems = []
    rec = store.record_tokens.astype(np.int64)
    total = int(store.manifest["num_tokens"])
    if len(rec) and (rec[0] != 0 or rec[-1] != total or np.any(np.diff(rec) < 0)):
        problems.append("record_tokens.npy is not a 0-based increasing offset array")
    if store.codec == SPLIT17:
        high = store._arrays["high_tokens.npy"].astype(np.int64)
        if len(high) and (np.any(np.diff(high) <= 0) or high[0] < 0 or high[-1] >= total):
            problems.append("high_tokens.npy is not increasing positions within tokens.npy")
        elif len(high) and int(store.tokens[high].max()) >= store.vocab_size - HIGH_BIT:
            problems.append(f"a token id is >= the vocabulary size {store.vocab_size}")
        per_record = np.searchsorted(high, rec)
        if not np.array_equal(per_record, store._arrays["record_high.npy"].astype(np.int64)):
            problems.append("record_high.npy does not match high_tokens.npy")
    elif len(store.tokens) and int(store.tokens.max()) >= store.vocab_size:
        problems.append(f"a token id is >= the vocabulary size {store.vocab_size}")
    if store.kind == "pretrain":
        rec_sent = store._arrays["record_sentences.npy"].astype(np.int64)
        lengths = store.sentence_lengths_flat()
        if np.any(np.diff(rec_sent) < 0) or rec_sent[-1] != len(lengths):
            problems.append("record_sentences.npy is not an increasing offset array")
        elif np.any(lengths < 0):
            problems.append("sentence_ends.npy is not increasing within a record")
        else:
            counts = np.diff(rec_sent)
            if np.any(counts == 0):
                problems.append("a record has no sentences")
                return problems
            per_record = np.add.reduceat(lengths, rec_sent[:-1]) if len(lengths) else lengths
            if not np.array_equal(per_record, np.diff(rec)):
                problems.append("sentence_ends.npy does not cover each record's tokens")
            order = store._arrays["ranking_order.npy"].astype(np.int64)
            record = np.repeat(np.arange(len(store)), counts)
            if np.any(order >= np.repeat(counts, counts)) or len(
                np.unique(record * (int(counts.max(initial=0)) + 1) + order)
            ) != len(order):
                problems.append("ranking_order.npy is not a permutation within each record")
    else:
        if np.any(store.lengths().astype(np.int64) > np.diff(rec)):
            problems.append("source_lengths.npy exceeds a record's tokens")
    return problems


# ----------------------------------------------------------------------------- store sets


def set_checksum(shards: list[dict[str, Any]]) -> str:
    """sha256 over `path:checksum` lines of the shards, in order."""
    lines = "".join(f"{s['path']}:{s['checksum']}\n" for s in shards)
    return hashlib.sha256(lines.encode()).hexdigest()


SAME_ACROSS_SHARDS = ("kind", "tokenizer.fingerprint", "vocab_size", "options", "token_codec")
"""What every shard of a set (and the set) must agree on: mixing tokenizers or GSG settings
in one set would train on ids of two vocabularies or two selection rules."""


def _get(manifest: dict[str, Any], key: str) -> Any:
    value: Any = manifest
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def read_set_manifest(path: str | Path) -> dict[str, Any]:
    """The parsed `storeset.json` of store set `path`, every listed shard checked present,
    complete (its manifest) and of the same tokenizer and options as the set.

    Raises:
        FileNotFoundError: `path` or its storeset.json does not exist.
        ValueError: the manifest is unreadable or incomplete, a shard is missing, unfinished,
            changed (checksum) or made with another tokenizer or other options (both named).
    """
    path = Path(path)
    manifest_path = path / SET_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} has no {SET_MANIFEST}: not a finished store set")
    manifest = _load_manifest(manifest_path, SET_REQUIRED_KEYS, SET_FORMAT, SET_FORMAT_VERSION)
    if set_checksum(manifest["shards"]) != manifest["checksum"]:
        raise ValueError(f"{manifest_path}: checksum does not match the listed shard checksums")
    for shard in manifest["shards"]:
        where = path / shard["path"]
        if not (where / MANIFEST).is_file():
            raise ValueError(
                f"store set {path}: shard {shard['path']} is missing (listed in "
                f"{SET_MANIFEST}; {shard['num_records']} records of {shard['source']})"
            )
        check_same_job(read_manifest(where), str(where), manifest, str(manifest_path))
        if read_manifest(where)["checksum"] != shard["checksum"]:
            raise ValueError(
                f"store set {path}: shard {shard['path']} has checksum "
                f"{read_manifest(where)['checksum'][:12]}, {SET_MANIFEST} lists "
                f"{shard['checksum'][:12]} (replaced by another store)"
            )
    return manifest


def check_same_job(
    theirs: dict[str, Any], their_name: str, ours: dict[str, Any], our_name: str
) -> None:
    """Refuse two manifests that differ in tokenizer or options, naming both and the values."""
    for key in SAME_ACROSS_SHARDS:
        a, b = _get(theirs, key), _get(ours, key)
        if a != b:
            raise ValueError(
                f"{their_name} and {our_name} cannot be read as one store set: {key} is "
                f"{json.dumps(a, sort_keys=True)} in {their_name} but "
                f"{json.dumps(b, sort_keys=True)} in {our_name}"
            )


class StoreSet(TokenStore):
    """A store set read as one store: the TokenStore record API over its shards in order."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.kind = manifest["kind"]
        self.dtype = np.dtype(manifest["dtype"])
        self.vocab_size = manifest["vocab_size"]
        self.codec = manifest.get("token_codec")
        shards = manifest["shards"]
        counts = np.asarray([s["num_records"] for s in shards], dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(counts)])
        """Global index of each shard's first record (and the total last)."""
        self._shards: list[TokenStore | None] = [None] * len(shards)
        self._target_lengths = {}

    def shard(self, k: int) -> TokenStore:
        """Shard k, opened (manifest checked, files mapped) on first use."""
        store = self._shards[k]
        if store is None:
            where = self.path / self.manifest["shards"][k]["path"]
            store = self._shards[k] = TokenStore(where, read_manifest(where))
        return store

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, record within it) of global record i."""
        i = self._check_index(i)
        k = int(np.searchsorted(self.shard_starts, i, side="right")) - 1
        return k, i - int(self.shard_starts[k])

    def __repr__(self) -> str:
        return (
            f"StoreSet({str(self.path)!r}, kind={self.kind!r}, shards="
            f"{len(self._shards)}, records={len(self)}, tokens={self.manifest['num_tokens']})"
        )

    def _concat(self, part: str) -> np.ndarray:
        arrays = [getattr(self.shard(k), part)() for k in range(len(self._shards))]
        return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)

    def lengths(self) -> np.ndarray:
        return self._concat("lengths").astype(np.int64)

    def target_lengths(self, gsr: float = 0.3) -> np.ndarray:
        if gsr not in self._target_lengths:
            parts = [self.shard(k).target_lengths(gsr) for k in range(len(self._shards))]
            self._target_lengths[gsr] = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return self._target_lengths[gsr]

    def sentence_lengths_flat(self) -> np.ndarray:
        return self._concat("sentence_lengths_flat")

    def num_sentences(self, i: int) -> int:
        k, j = self.locate(i)
        return self.shard(k).num_sentences(j)

    def record_ids(self, i: int) -> np.ndarray:
        k, j = self.locate(i)
        return self.shard(k).record_ids(j)

    def sentences(self, i: int) -> list[np.ndarray]:
        k, j = self.locate(i)
        return self.shard(k).sentences(j)

    def ranking(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        k, j = self.locate(i)
        return self.shard(k).ranking(j)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        k, j = self.locate(i)
        return self.shard(k).pair(j)

    def source_row(self, i: int) -> int:
        k, j = self.locate(i)
        return self.shard(k).source_row(j)


def _verify_set(path: Path) -> list[str]:
    try:
        manifest = read_set_manifest(path)
    except (ValueError, FileNotFoundError) as err:
        return [str(err)]
    problems: list[str] = []
    for shard in manifest["shards"]:
        problems.extend(f"{shard['path']}: {p}" for p in verify_store(path / shard["path"]))
    totals = {key: sum(s[key] for s in manifest["shards"]) for key in ("num_records", "num_tokens")}
    for key, value in totals.items():
        if value != manifest[key]:
            problems.append(f"{SET_MANIFEST}: {key} is {manifest[key]}, the shards hold {value}")
    return problems
