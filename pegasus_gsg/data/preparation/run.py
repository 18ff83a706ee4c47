"""`prepare()`: one job from inputs to OUT. It reads the inputs and the tokenizer, then either
builds one token store from chunks (computed by this run, or by hand-started shards `--shard
I/N` that share OUT.partial, the last to finish assembling) or hands a store set to
storesets.py."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pegasus_gsg import __version__
from pegasus_gsg.data.preparation import workdir
from pegasus_gsg.data.preparation.assemble import assemble_store
from pegasus_gsg.data.preparation.chunks import chunk_rows, map_ordered
from pegasus_gsg.data.preparation.options import PrepareConfig, PrepareResult
from pegasus_gsg.data.preparation.storesets import prepare_set
from pegasus_gsg.data.sources import Source, iter_chunks, open_sources, source_manifest
from pegasus_gsg.data.store import FORMAT, FORMAT_VERSION, MANIFEST, read_manifest, token_dtype
from pegasus_gsg.files import remove_tree, write_json_atomic, writer_tag

logger = logging.getLogger(__name__)


def prepare(
    inputs: Sequence[str],
    tokenizer_dir: str | Path,
    out: str | Path,
    config: PrepareConfig,
) -> PrepareResult:
    """Prepare `inputs` into the token store `out`, or the store set `out` when
    `config.rows_per_shard` is set (engine ray always); see the package docstring.

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
        return prepare_set(sources, total_rows, tokenizer_dir, out, config, base, dtype)
    return _prepare_store(sources, total_rows, tokenizer, tokenizer_dir, out, config, base, dtype)


def _existing_store(
    out: Path, base: dict[str, Any], config: PrepareConfig
) -> dict[str, Any] | None:
    """The manifest of a finished store at `out` made by this very job, else None."""
    return workdir.existing_output(out, base, config, MANIFEST, read_manifest, "token store")


def _prepare_store(
    sources: Sequence[Source],
    total_rows: int,
    tokenizer: Any,
    tokenizer_dir: Path,
    out: Path,
    config: PrepareConfig,
    base: dict[str, Any],
    dtype: np.dtype,
) -> PrepareResult:
    """One token store: this shard's chunks into OUT.partial, then, once every shard's done
    marker is there, all chunks assembled into OUT."""
    work = workdir.partial_path(out)
    num_chunks = max(1, math.ceil(total_rows / config.chunk_size))
    existing = _existing_store(out, base, config)
    if existing is not None:
        logger.info("%s already holds this store (checksum %s)", out, existing["checksum"][:12])
        if work.exists() and config.num_shards == 1:
            remove_tree(work)
        return PrepareResult(out, existing, num_chunks, 0, 0, already_prepared=True)

    job = {
        **workdir.job_identity(base),
        "chunk_size": config.chunk_size,
        "num_shards": config.num_shards,
        "rows": total_rows,
    }
    workdir.open_work_dir(work, job, config)
    mine = [k for k in range(num_chunks) if k % config.num_shards == config.shard_index]
    done = {k for k in mine if workdir.chunk_path(work, k).exists()}
    todo = [k for k in mine if k not in done]
    if done:
        logger.info("resuming: %d of %d chunks already in %s", len(done), len(mine), work)
    rows_todo = sum(min(config.chunk_size, total_rows - k * config.chunk_size) for k in todo)
    tasks = iter_chunks(sources, config.chunk_size, set(todo), limit=total_rows)
    with tqdm(
        total=rows_todo, unit="doc", desc=f"prepare {config.kind}", disable=not config.progress
    ) as bar:
        for index, arrays in map_ordered(tasks, tokenizer, tokenizer_dir, config, dtype):
            # Looked up on the module: tests/stop_after.py stops the run after its K-th chunk.
            workdir.write_chunk(work, index, arrays)
            bar.update(chunk_rows(arrays))
    shard_done = workdir.done_path(work, config.shard_index, config.num_shards)
    write_json_atomic(shard_done, {"chunks": mine})
    waiting = [
        i
        for i in range(config.num_shards)
        if not workdir.done_path(work, i, config.num_shards).exists()
    ]
    if waiting:
        logger.info(
            "shard %d/%d done; waiting for shards %s",
            config.shard_index,
            config.num_shards,
            waiting,
        )
        return PrepareResult(None, None, num_chunks, len(todo), len(done), waiting_for=waiting)
    paths = [workdir.chunk_path(work, k) for k in range(num_chunks)]
    try:
        missing = [k for k, p in enumerate(paths) if not p.exists()]
        if missing:
            raise ValueError(f"{work}: chunks {missing[:10]} are missing; rerun their shards")
        manifest = assemble_store(paths, out, work / f"store-{writer_tag()}", base, config, dtype)
    except (OSError, ValueError):
        # Another shard may have assembled the same store first and removed the work dir.
        finished = _existing_store(out, base, config) if (out / MANIFEST).exists() else None
        if finished is None:
            raise
        manifest = finished
    # A shard that assembled the same store at the same moment may be removing it too.
    with contextlib.suppress(OSError):
        remove_tree(work)
    return PrepareResult(out, manifest, num_chunks, len(todo), len(done))
