"""A store set: shard stores written independently, read as one store.

`prepare --engine ray` (or `--rows-per-shard N`) writes a directory of shard stores
`shards/NNNNN/` plus `storeset.json` (SET_MANIFEST), written last: the shards in order with
their input file, rows, counts and checksums, the tokenizer fingerprint and options, and a
checksum over the shard checksums. `TokenStore.open` on a store set returns a `StoreSet`, which
reads as one store (global record i is record i - start of the shard holding it) and opens a
shard's files only when a record of that shard (or the length arrays, for bucketing) is read.
Every shard must agree with the set on tokenizer, vocabulary, codec and options
(`check_same_job`): mixing them would train on ids of two vocabularies or two selection rules.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from pegasus_gsg.data.store.format import (
    MANIFEST,
    SET_FORMAT,
    SET_FORMAT_VERSION,
    SET_MANIFEST,
    SET_REQUIRED_KEYS,
    load_manifest,
)
from pegasus_gsg.data.store.reader import TokenStore, read_manifest, verify_store


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
    manifest = load_manifest(manifest_path, SET_REQUIRED_KEYS, SET_FORMAT, SET_FORMAT_VERSION)
    if set_checksum(manifest["shards"]) != manifest["checksum"]:
        raise ValueError(f"{manifest_path}: checksum does not match the listed shard checksums")
    for shard in manifest["shards"]:
        where = path / shard["path"]
        if not (where / MANIFEST).is_file():
            raise ValueError(
                f"store set {path}: shard {shard['path']} is missing (listed in "
                f"{SET_MANIFEST}; {shard['num_records']} records of {shard['source']})"
            )
        theirs = read_manifest(where)
        check_same_job(theirs, str(where), manifest, str(manifest_path))
        if theirs["checksum"] != shard["checksum"]:
            raise ValueError(
                f"store set {path}: shard {shard['path']} has checksum "
                f"{theirs['checksum'][:12]}, {SET_MANIFEST} lists "
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


def verify_set(path: Path) -> list[str]:
    """Re-hash and check every shard of store set `path`, and the set's totals; the problems
    found (each shard's prefixed with its path)."""
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
