"""The work dir `OUT.partial/` that makes a prepare resumable: the job's identity (`job.json`),
finished chunks (`chunks/NNNNNNN.npz`) or shards (`shards/NNNNN/`), the done markers of
hand-started shards (`done-I-of-N.json`); and whether OUT already holds this job's output.

Every file here is written through pegasus_gsg.files (temporary name, fsync, rename, directory
fsync), so a run killed at any instant leaves finished chunks and at most some `.tmp-*`
entries, which the next run of the same job clears (`remove_stale_temps`) before it resumes.
A work dir of a *different* job is discarded (one process) or refused (sharded by hand: another
shard may still be using it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pegasus_gsg.data.preparation.chunks import ChunkArrays
from pegasus_gsg.data.preparation.options import PrepareConfig
from pegasus_gsg.files import atomic_file, remove_stale_temps, remove_tree, write_json_atomic

logger = logging.getLogger(__name__)

JOB = "job.json"


def partial_path(out: Path) -> Path:
    """The work dir of the output `out`: `OUT.partial`, its sibling."""
    return out.with_name(out.name + ".partial")


def chunk_path(work: Path, index: int) -> Path:
    """Where chunk `index` lands once computed; it exists only when complete."""
    return work / "chunks" / f"{index:07d}.npz"


def done_path(work: Path, shard: int, shards: int) -> Path:
    """The marker hand-started shard `shard` of `shards` writes when all its chunks are in."""
    return work / f"done-{shard}-of-{shards}.json"


def write_chunk(work: Path, index: int, arrays: ChunkArrays) -> None:
    """Write a computed chunk durably (all or nothing) to its chunk_path."""
    with atomic_file(chunk_path(work, index)) as tmp:  # `.tmp-HOST-PID-NNNNNNN.npz`
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy stub: kwargs vs allow_pickle


def job_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """What makes two stores the same job: content options and input/tokenizer fingerprints
    (not the paths they were given by, nor the file names)."""
    return {
        "format_version": manifest.get("format_version"),
        "kind": manifest.get("kind"),
        "options": manifest.get("options"),
        "tokenizer": (manifest.get("tokenizer") or {}).get("fingerprint"),
        "source": (manifest.get("source") or {}).get("fingerprint"),
    }


def open_work_dir(
    work: Path, job: dict[str, Any], config: PrepareConfig, subdir: str = "chunks"
) -> None:
    """Create `work` for `job`, or check that an existing one belongs to the same job (and
    clear what killed writers of this host left in it).

    Raises:
        ValueError: sharded by hand, and `work` holds another job's work.
    """
    job_path = work / JOB
    if job_path.exists():
        try:
            existing = json.loads(job_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            existing = None
        if existing == job:
            for directory in (work, work / subdir):
                remove_stale_temps(directory)
            return
        differs = sorted(k for k in job if existing is None or existing.get(k) != job[k])
        if config.num_shards > 1:
            raise ValueError(
                f"{work} holds unfinished work of another prepare job (differs in "
                f"{', '.join(differs)}); remove it, or rerun with that job's options"
            )
        logger.warning(
            "discarding %s: unfinished work of another job (differs in %s)",
            work,
            ", ".join(differs),
        )
        remove_tree(work)
    (work / subdir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(job_path, job)


def existing_output(
    out: Path,
    base: dict[str, Any],
    config: PrepareConfig,
    manifest_name: str,
    read: Callable[[Path], dict[str, Any]],
    what: str,
) -> dict[str, Any] | None:
    """The manifest of a finished `what` (a token store or a store set) at `out` made by this
    very job (same job_identity as `base`), else None.

    Raises:
        ValueError: `out` holds something else and `overwrite` is off.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if (out / manifest_name).is_file():
        manifest = read(out)
        theirs, ours = job_identity(manifest), job_identity(base)
        differs = [k for k in ours if theirs.get(k) != ours[k]]
        if not differs:
            return manifest
        if not config.overwrite:
            raise ValueError(
                f"{out} already holds a {what} made differently (differs in "
                f"{', '.join(differs)}); pass --overwrite to replace it"
            )
    elif any(out.iterdir()) and not config.overwrite:
        raise ValueError(f"output {out} exists, is not empty and is not a {what}")
    return None
