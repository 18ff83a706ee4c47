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
- A full disk is one error, `DiskFullError`: ENOSPC (no space), EDQUOT (quota) and EFBIG (over
  the file-size limit, `ulimit -f`) alike, however the writing library reported it (an OSError,
  safetensors' "os error 28" text, torch's errno-less C++ writer failure when the space left is
  measured below what the write needed). `writing_to(path)` turns one met inside its block into
  that error naming `path`, what was needed and what is free; `check_free_space` raises it
  before a write whose size is known. The edges (the CLI, the training entry points) print it as
  one line: `no space left writing PATH (No space left on device; needs ~1.2 GB, 310.0 MB free
  on its file system); free space and rerun the same command`.

Only the standard library: this module sits below every part of the package.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import resource
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
    (after an exception the temporary file is removed too); a full disk raises
    `DiskFullError` naming `path`."""
    tmp = temp_path(path)
    try:
        with writing_to(path):
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


# --- a full disk -----------------------------------------------------------------------------

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""No space left, over the disk quota, over the file-size limit: each means "a full disk"."""
RERUN_HINT = "free space and rerun the same command"
# How libraries that do not raise an OSError word the errno (safetensors: Rust's io::Error,
# `No space left on device (os error 28)`).
_DISK_FULL_TEXT = re.compile(
    "|".join(
        [rf"\(os error {code}\)" for code in sorted(DISK_FULL_ERRNOS)]
        + [re.escape(os.strerror(code)) for code in sorted(DISK_FULL_ERRNOS)]
    )
)


class DiskFullError(OSError):
    """A write met a full disk (see the module docstring); `str()` is the one line to print."""

    def __init__(
        self,
        path: str | Path,
        *,
        needed: int | None = None,
        free: int | None = None,
        reason: str = os.strerror(errno.ENOSPC),
        hint: str = RERUN_HINT,
    ) -> None:
        self.path = Path(path)
        self.needed = needed
        self.free = free if free is not None else free_bytes(self.path)
        self.reason = reason
        self.hint = hint
        super().__init__(errno.ENOSPC, self.message())

    def message(self) -> str:
        needs = f"needs ~{format_bytes(self.needed)}, " if self.needed is not None else ""
        return (
            f"no space left writing {self.path} ({self.reason}; {needs}"
            f"{format_bytes(self.free)} free on its file system); {self.hint}"
        )

    def __str__(self) -> str:
        return self.message()

    def __reduce__(self) -> Any:  # survives pickling (process pools, Ray tasks)
        fields = (self.path, self.needed, self.free, self.reason, self.hint)
        return (_rebuild_disk_full, fields)

    def with_details(self, needed: int | None, hint: str | None) -> DiskFullError:
        """The same error with what an outer writer knows (the bytes its write needs, its
        hint) filled in where this one had none."""
        return DiskFullError(
            self.path,
            needed=self.needed if self.needed is not None else needed,
            free=self.free,
            reason=self.reason,
            hint=hint if hint is not None else self.hint,
        )


def _rebuild_disk_full(
    path: Path, needed: int | None, free: int | None, reason: str, hint: str
) -> DiskFullError:
    return DiskFullError(path, needed=needed, free=free, reason=reason, hint=hint)


def format_bytes(n: int) -> str:
    """`734 bytes`, `12.4 kB`, `1.2 GB` (decimal units, as `df -H` prints them)."""
    if n < 1000:
        return f"{n} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n_units = n / 1000 ** ("kMGT".index(unit[0]) + 1)
        if n_units < 1000 or unit == "TB":
            return f"{n_units:.1f} {unit}"
    raise AssertionError("unreachable")


def free_bytes(path: Path) -> int:
    """Bytes free to this user on the file system that holds `path` (or its nearest existing
    parent: `path` need not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def file_size_limit() -> int | None:
    """This process's file-size limit in bytes (`ulimit -f`, RLIMIT_FSIZE); None: unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else soft


def disk_full_reason(exc: BaseException) -> str | None:
    """Why `exc` (or an exception it was raised from) is a full disk, e.g. `No space left on
    device`; None when it is not one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "errno", None) if isinstance(current, OSError) else None
        if code not in DISK_FULL_ERRNOS:
            match = _DISK_FULL_TEXT.search(str(current))
            code = _errno_of(match.group(0)) if match else None
        if code is not None:
            return _reason(code)
        current = current.__cause__ or current.__context__
    return None


def _errno_of(text: str) -> int:
    for code in DISK_FULL_ERRNOS:
        if text in (f"(os error {code})", os.strerror(code)):
            return code
    raise AssertionError(text)


def _reason(code: int) -> str:
    limit = file_size_limit()
    if code == errno.EFBIG and limit is not None:
        return f"{os.strerror(code)}: over the file-size limit (ulimit -f) of {limit} bytes"
    return os.strerror(code)


def as_disk_full(
    exc: BaseException, path: Path, needed: int | None = None, hint: str | None = None
) -> DiskFullError | None:
    """`exc`, met while writing `path`, as a `DiskFullError`; None when it is another error.

    An errno-less write failure (torch's C++ writer raises a RuntimeError without it) counts as
    a full disk when `needed` is known and the room left, the free space capped by the
    file-size limit, is below it."""
    if isinstance(exc, DiskFullError):
        return exc.with_details(needed, hint)
    reason = disk_full_reason(exc)
    if reason is None and needed is not None and isinstance(exc, (OSError, RuntimeError)):
        limit = file_size_limit()
        room = min(free_bytes(path), limit if limit is not None else free_bytes(path))
        if room < needed:
            reason = f"the write failed with {format_bytes(room)} writable"
            if limit is not None and limit == room:
                reason += f" (file-size limit {limit} bytes, ulimit -f)"
    if reason is None:
        return None
    return DiskFullError(path, needed=needed, reason=reason, hint=hint or RERUN_HINT)


@contextmanager
def writing_to(path: Path, needed: int | None = None, hint: str | None = None) -> Iterator[None]:
    """Raise a full disk met inside the block as `DiskFullError` naming `path` (with the
    `needed` bytes when known); any other error passes unchanged."""
    try:
        yield
    except Exception as exc:
        error = as_disk_full(exc, Path(path), needed, hint)
        if error is None or error is exc:
            raise
        raise error from exc


def disk_full_line(exc: BaseException) -> str | None:
    """The one line an edge prints for a full disk: `DiskFullError`'s own, else (a writer that
    named no path) the errno's reason with the error's file name when it has one; None for any
    other error."""
    if isinstance(exc, DiskFullError):
        return str(exc)
    reason = disk_full_reason(exc)
    if reason is None:
        return None
    filename = getattr(exc, "filename", None)
    if filename is not None:
        return str(DiskFullError(filename, reason=reason))
    return f"no space left ({reason}): {exc}; {RERUN_HINT}"


def check_free_space(path: Path, needed: int, hint: str | None = None) -> None:
    """Raise `DiskFullError` naming `path` before writing it when its file system has fewer
    than `needed` bytes free."""
    free = free_bytes(path)
    if free < needed:
        raise DiskFullError(
            path,
            needed=needed,
            free=free,
            reason="not enough free space, checked before writing",
            hint=hint or RERUN_HINT,
        )
