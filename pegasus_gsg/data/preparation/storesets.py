"""Store sets: the driver of a job whose output is a set of shard stores (`--engine ray`, or
`--rows-per-shard N` with either engine).

The inputs are cut into units (units.py), each computed into `OUT.partial/shards/NNNNN/` by an
engine (engines.py); finished shards are skipped on a rerun of the same job. When every shard
is there the driver writes `storeset.json` (store.py: totals, per-shard entries and checksums,
the set checksum) and renames OUT.partial to OUT (files.replace_dir).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pegasus_gsg.data.preparation.assemble import MAX_SPLIT_VALUES, warn_about_splits
from pegasus_gsg.data.preparation.chunks import MAX_SKIP_EXAMPLES, SKIP_REASONS
from pegasus_gsg.data.preparation.engines import ray_init, run_local, run_ray
from pegasus_gsg.data.preparation.options import PrepareConfig, PrepareResult
from pegasus_gsg.data.preparation.units import Unit, prepare_unit, units_of
from pegasus_gsg.data.preparation.workdir import (
    JOB,
    existing_output,
    job_identity,
    open_work_dir,
    partial_path,
)
from pegasus_gsg.data.sources import Source
from pegasus_gsg.data.store import (
    MANIFEST,
    SET_FORMAT,
    SET_FORMAT_VERSION,
    SET_MANIFEST,
    read_set_manifest,
    set_checksum,
    token_codec,
)
from pegasus_gsg.files import TMP_PREFIX, TRASH_PREFIX, remove_tree, replace_dir, write_json_atomic

logger = logging.getLogger(__name__)


def _existing_set(out: Path, base: dict[str, Any], config: PrepareConfig) -> dict[str, Any] | None:
    """The manifest of a finished store set at `out` made by this very job, else None."""
    return existing_output(out, base, config, SET_MANIFEST, read_set_manifest, "store set")


def prepare_set(
    sources: Sequence[Source],
    total_rows: int,
    tokenizer_dir: Path,
    out: Path,
    config: PrepareConfig,
    base: dict[str, Any],
    dtype: np.dtype,
) -> PrepareResult:
    """Prepare the store set `out` (units of `config.rows_per_shard` rows), or find it made.

    Raises:
        ValueError: `out` holds something else (without `overwrite`), Ray missing or its
            cluster unreachable, a malformed row without `skip_bad`, no usable record.
        FileNotFoundError: an input disappeared since the job started.
    """
    assert config.rows_per_shard is not None
    work = partial_path(out)
    units = list(units_of(sources, total_rows, config.rows_per_shard))
    existing = _existing_set(out, base, config)
    if existing is not None:
        logger.info("%s already holds this store set (checksum %s)", out, existing["checksum"])
        return PrepareResult(out, existing, len(units), 0, 0, already_prepared=True)
    # Ray starts (or connects) first: an unreachable cluster leaves nothing behind, and the
    # progress bar's documents/s counts only the work. A Ray session the caller started
    # (ray.init before prepare) is used as it is and left running.
    ray, ours = ray_init(config) if config.engine == "ray" else (None, False)
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
        **job_identity(base),
        "rows_per_shard": config.rows_per_shard,
        "rows": sum(u.hi - u.lo for u in units),
    }
    open_work_dir(work, job, config, subdir="shards")
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
        done = run_local(todo, args, config) if ray is None else run_ray(ray, todo, args)
        for unit in done:
            finished += 1
            _unit_done(bar, unit, finished, len(units))
    entries = [prepare_unit(u, *args) for u in units]  # all finished: reads their manifests
    manifest = _set_manifest(entries, base, config, dtype)
    write_json_atomic(work / SET_MANIFEST, manifest)
    _remove_leftovers(work)
    replace_dir(work, out)  # an existing `out` only with --overwrite (see _existing_set)
    return PrepareResult(out, manifest, len(units), len(todo), resumed)


def _remove_leftovers(work: Path) -> None:
    """Remove job.json and every temporary entry (any host's, any process's: every unit is
    finished, so these are attempts that died) before `work` becomes the store set."""
    (work / JOB).unlink(missing_ok=True)
    for directory in (work, work / "shards"):
        for entry in directory.iterdir():
            if not entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                continue
            if entry.is_dir() and not entry.is_symlink():
                remove_tree(entry)
            else:
                entry.unlink(missing_ok=True)


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
    warn_about_splits(splits, config.split)
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
