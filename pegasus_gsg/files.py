"""Durable files: everything this package writes is complete or absent, whenever it is killed.

One home for the rules, used by every writer above it (stores, prepare's work files,
checkpoints, exported models, reports, predictions, the CTranslate2 cache, the commands):

- A file is written under a temporary name in its own directory, flushed (`fsync`), then
  `os.replace`d onto its final name and the directory flushed: a reader sees the old file or
  the new one, never a torn one. The temporary name, `.tmp-HOST-PID-NAME`, is unique per
  process on a shared file system (sharded prepares, several machines writing one `--out`) and
  keeps the extension, so tools that look at suffixes (numpy's `.npz`) behave.
- A directory is built under a staging name beside it and renamed into place whole
  (`replace_dir`); the one it replaces is first renamed to `.trash-NAME` and then deleted, so a
  kill during the deletion never leaves a half-deleted directory under the real name.
- What a killed writer leaves behind is only ever a `.tmp-*` or `.trash-*` entry, which
  `remove_stale_temps` clears (those of this host whose process is gone, and trash).

Only the standard library: this module sits below every part of the package.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
"""Temporary files and staging directories start with this (hidden, never a real output)."""
TRASH_PREFIX = ".trash-"
"""A directory being deleted is renamed to this prefix first."""


def writer_tag() -> str:
    """`HOST-PID`: unique among the processes that may share a file system."""
    return f"{socket.gethostname()}-{os.getpid()}"


def temp_path(path: Path) -> Path:
    """The temporary name `path` is written under: `.tmp-HOST-PID-NAME`, beside it."""
    return path.with_name(f"{TMP_PREFIX}{writer_tag()}-{path.name}")


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk."""
    _fsync(path)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a directory opens read-only too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, then every directory, to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the block has written it, flush it and
    replace `path` with it. An exception or a kill inside the block leaves `path` as it was
    (after an exception the temporary file is removed too)."""
    tmp = temp_path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `path` completely or not at all."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `path` (UTF-8) completely or not at all."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as indented, key-sorted JSON (UTF-8, final newline), all or nothing."""
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    write_text_atomic(path, text)


def remove_tree(path: Path) -> None:
    """Delete a directory so that a kill midway never leaves a partial copy under its name."""
    if not path.exists():
        return
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}")
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(path, trash)
    shutil.rmtree(trash)


def staging_dir(final: Path) -> Path:
    """Where the directory `final` is built before it is complete: `.tmp-NAME` beside it (the
    same name for every process, so the ranks of one job can write into one staging dir)."""
    return final.with_name(f"{TMP_PREFIX}{final.name}")


def fresh_staging_dir(final: Path) -> Path:
    """An empty staging directory for `final` (a stale one from a killed writer is removed)."""
    staging = staging_dir(final)
    if staging.exists():
        logger.warning("removing %s, left by a writer killed while writing it", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def replace_dir(staging: Path, final: Path) -> None:
    """Flush the complete directory `staging` and rename it to `final`, replacing what was
    there. Between the two renames `final` is briefly absent, never partial."""
    fsync_tree(staging)
    if final.exists():
        remove_tree(final)
    os.rename(staging, final)
    fsync_dir(final.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove what killed writers left in `directory` (not below it): `.trash-*` entries, and
    `.tmp-HOST-PID-*` files of this host whose process is gone. Temporary files of other hosts
    or of live processes, and shared staging directories (`.tmp-NAME`, which their owner
    resumes or replaces), are kept. Returns the removed paths."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    host_prefix = f"{TMP_PREFIX}{socket.gethostname()}-"
    for entry in sorted(directory.iterdir()):
        name = entry.name
        stale = name.startswith(TRASH_PREFIX)
        if name.startswith(host_prefix):
            pid_text = name[len(host_prefix) :].split("-", 1)[0]
            stale = pid_text.isdigit() and not _pid_alive(int(pid_text))
        if not stale:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        logger.info("removed %d stale temporary entries in %s", len(removed), directory)
    return removed
