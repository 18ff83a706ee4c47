"""Reading a store: memory-mapped, O(1) per record, checked against its manifest on open.

`TokenStore.open` maps every array (`np.load(mmap_mode="r")`): DataLoader workers map the same
files, so N workers share one copy of the pages in the OS page cache instead of N copies.
Access is a few offset look-ups and views into the memory map; no scan, no copy (a `split17`
record with high ids is decoded into a copy, format.py).

Opening checks the manifest and each file's size (cheap: it catches a half-written or
truncated store); `verify_store` re-hashes every byte and checks the structure a correct writer
guarantees (`pegasus-gsg verify DIR`).

A pretraining record's tokens are the tokenization of the whole document, cut at sentence
boundaries (preparation.py), so the concatenated sentences are exactly what the tokenizer gives
for the document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pegasus_gsg.core.gsg import check_gsr, gap_sentence_counts
from pegasus_gsg.data.store.format import (
    CODEC_FILES,
    FORMAT,
    FORMAT_VERSION,
    HIGH_BIT,
    KINDS,
    MANIFEST,
    REQUIRED_KEYS,
    SET_MANIFEST,
    SPLIT17,
    content_checksum,
    load_manifest,
    sha256_file,
    split17_decode,
    store_files,
)


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
    manifest = load_manifest(manifest_path, REQUIRED_KEYS, FORMAT, FORMAT_VERSION)
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
    """Read-only, memory-mapped access to a prepared store (see the module docstring);
    `TokenStore.open` opens a store or a store set."""

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
        # A store set's class subclasses this one, so it is imported here, not at the top.
        from pegasus_gsg.data.store.storeset import StoreSet, read_set_manifest

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
        from pegasus_gsg.data.store.storeset import verify_set

        return verify_set(path)
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
