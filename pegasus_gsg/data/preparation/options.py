"""What a prepare run is asked and what it reports: `PrepareConfig` (every option, validated),
`--shard I/N` parsing, and `PrepareResult`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pegasus_gsg.core.gsg import STRATEGIES
from pegasus_gsg.data.store import KINDS

ENGINES = ("local", "ray")
"""Where the work runs: this machine's processes, or Ray tasks."""
DEFAULT_ROWS_PER_SHARD = 50_000
"""Shard size of a store set when engine `ray` is given no `rows_per_shard`."""


@dataclass
class PrepareConfig:
    """Options of one `prepare` run (what to read and how; not where)."""

    kind: str
    """What to build, one of store.KINDS: `pretrain` (sentences + GSG ranking) or `finetune`
    (document/summary pairs)."""
    text_field: str | None = None
    """Name of the record field holding the document text; None picks `text` (pretrain) or
    `document` (finetune)."""
    summary_field: str = "summary"
    """finetune: name of the field holding the reference summary; must differ from
    `text_field`. Unused by pretrain."""
    strategy: str = "ind_orig"
    """pretrain: GSG sentence-ranking strategy, one of gsg.STRATEGIES (`random`, `lead`,
    `ind_orig`, `ind_uniq`, `seq_orig`, `seq_uniq`)."""
    stopwords: bool = True
    """pretrain: drop the 127 English stopwords when scoring sentences (GSG.md §2)."""
    seed: int = 0
    """pretrain, strategy `random`: record r is ranked with gsg.example_rng(seed, r, 0);
    an integer >= 0."""
    split: str | None = None
    """Keep only records whose `split` field equals this string (records without one are
    kept); also picks the split of a saved DatasetDict. None keeps every record."""
    skip_bad: bool = False
    """Skip and count malformed rows (bad JSON, missing or non-string field) instead of
    stopping at the first."""
    max_records: int | None = None
    """Read only the first N input rows (N >= 1); None reads them all."""
    chunk_size: int = 1000
    """Rows per unit of work and of resume (>= 1); does not change the store's content."""
    num_proc: int = 1
    """Worker processes on this machine (>= 1); with engine `ray` and no `ray_address`, the
    CPUs of the local Ray instance."""
    shard_index: int = 0
    """This run computes part `shard_index` of `num_shards`: 0 <= shard_index < num_shards."""
    num_shards: int = 1
    """Hand-started runs (`--shard I/N`) that together compute one store, >= 1 (see the
    package docstring); must be 1 for a store set."""
    overwrite: bool = False
    """Replace an existing store or store set at the output path made from other inputs or
    options (without it such an output is an error)."""
    progress: bool = False
    """Show a tqdm progress bar."""
    engine: str = "local"
    """One of ENGINES: `local` (this machine) or `ray` (Ray tasks; always a store set)."""
    ray_address: str | None = None
    """engine `ray` only: None starts a local Ray instance; `auto` or HOST:PORT (or a
    `ray://` URL) joins a cluster whose nodes share the output's file system."""
    rows_per_shard: int | None = None
    """Write a store set of shards of at most this many rows (>= 1) of one input file;
    engine `ray` defaults to DEFAULT_ROWS_PER_SHARD; None with engine `local`: one store."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.text_field is None:
            self.text_field = "text" if self.kind == "pretrain" else "document"
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.max_records is not None and self.max_records < 1:
            raise ValueError(f"max_records must be >= 1 (or None: all), got {self.max_records}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 row, got {self.chunk_size}")
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be >= 1, got {self.num_proc}")
        if self.num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {self.num_shards}")
        if not 0 <= self.shard_index < self.num_shards:
            raise ValueError(
                f"shard_index must be in 0..{self.num_shards - 1} (num_shards "
                f"{self.num_shards}), got {self.shard_index}"
            )
        if self.kind == "finetune" and self.summary_field == self.text_field:
            raise ValueError(
                f"summary_field must differ from text_field, both are {self.text_field!r}"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.ray_address is not None and self.engine != "ray":
            raise ValueError(
                f"ray_address (--ray-address {self.ray_address}) needs engine 'ray' "
                f"(--engine ray), got engine {self.engine!r}"
            )
        if self.engine == "ray" and self.rows_per_shard is None:
            self.rows_per_shard = DEFAULT_ROWS_PER_SHARD
        if self.rows_per_shard is not None:
            if self.rows_per_shard < 1:
                raise ValueError(
                    f"rows_per_shard must be >= 1 (or None: one store), got {self.rows_per_shard}"
                )
            if self.num_shards > 1:
                raise ValueError(
                    f"num_shards must be 1 for a store set, got {self.num_shards}: --shard I/N "
                    "splits a single store by hand; a store set (--engine ray or "
                    "--rows-per-shard) is cut into shards by the job itself: use one or the other"
                )

    @property
    def fields(self) -> list[str]:
        """The record fields read: [text] or [text, summary]."""
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
    """`"I/N"` -> (I, N), with 0 <= I < N.

    Raises:
        ValueError: `text` is not two integers I/N with 0 <= I < N.
    """
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
    """Chunks of the job (store sets: shards)."""
    chunks_computed: int
    """Computed by this run."""
    chunks_resumed: int
    """Found finished in the work dir from an earlier run."""
    already_prepared: bool = False
    """The output already held this very job's store: nothing was done."""
    waiting_for: list[int] | None = None
    """Sharded by hand: the shards not finished yet (this run then assembled nothing)."""
