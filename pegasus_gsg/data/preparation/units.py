"""One unit of a store-set job: rows [lo, hi) of one input file -> one shard store
`OUT.partial/shards/NNNNN/`, computed by `prepare_unit` whichever engine runs it.

A unit reads only its own rows and writes only its own shard, built in a temporary directory
and renamed into place with its manifest written last: the manifest is the unit's completion
marker. So a unit run twice (a retried Ray task, a rerun after the driver died) is skipped
once finished, or produces the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pegasus_gsg.data.preparation.assemble import Chunk, assemble_store
from pegasus_gsg.data.preparation.chunks import init_unit_worker, process_chunk
from pegasus_gsg.data.preparation.options import PrepareConfig
from pegasus_gsg.data.sources import Row, Source, iter_unit_rows
from pegasus_gsg.data.store import MANIFEST, read_manifest, token_dtype
from pegasus_gsg.files import temp_path


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
        """The shard's path inside the store set: `shards/NNNNN`."""
        return f"shards/{self.index:05d}"


def units_of(sources: Sequence[Source], total_rows: int, rows_per_shard: int) -> Iterator[Unit]:
    """The job's units in order: each file cut into runs of `rows_per_shard` rows."""
    first = index = 0
    for source in sources:
        rows = min(source.num_rows, total_rows - first)
        for lo in range(0, max(rows, 0), rows_per_shard):
            hi = min(lo + rows_per_shard, rows)
            yield Unit(index, str(source.path), source.format, source.sha256, first + lo, lo, hi)
            index += 1
        first += source.num_rows


def base_dtype(base: dict[str, Any]) -> np.dtype:
    """The token dtype of a job's chunks (uint16/uint32 by vocabulary size)."""
    return token_dtype(int(base["vocab_size"]))


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
        dtype = base_dtype(base)
        single = config.engine == "local" and config.num_proc == 1
        init_unit_worker(tokenizer_dir, config, dtype.name, single=single)
        rows = iter_unit_rows(
            unit.path, unit.format, unit.lo, unit.hi, unit.first_row, config.split
        )
        chunks: list[Chunk] = []
        batch: list[Row] = []
        for row in rows:
            batch.append(row)
            if len(batch) == config.chunk_size:
                chunks.append(process_chunk((len(chunks), batch))[1])
                batch = []
        if batch or not chunks:
            chunks.append(process_chunk((len(chunks), batch))[1])
        shard_config = replace(config, overwrite=False)
        try:
            assemble_store(
                chunks,
                out,
                temp_path(out),  # `.tmp-HOST-PID-NNNNN`: cleared by a rerun or the driver
                _shard_base(base, unit),
                shard_config,
                dtype,
                allow_empty=True,
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
