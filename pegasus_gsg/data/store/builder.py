"""Writing a store: every array filled in a staging directory, the manifest last, then the
directory renamed into place whole.

A reader never sees a half-written store under the final name: the arrays are flushed to disk
and hashed, `manifest.json` (the completion marker) is written after them, and only then is the
staging directory renamed to the final name (`pegasus_gsg.files.replace_dir`). A writer killed
before that leaves only its staging directory, which the next attempt removes.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pegasus_gsg.data.store.format import MANIFEST, content_checksum, sha256_file
from pegasus_gsg.files import fsync_file, replace_dir, write_json_atomic


class StoreBuilder:
    """Builds a store in `tmp_dir` and moves it to `final_dir` only once it is complete.

    Usage: `create` each array (an `np.memmap` to fill), then `commit(manifest)`: flush and
    fsync every array, hash it, write the manifest last, rename the directory into place.
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
        """A new array file `name` of `length` entries, memory-mapped for the caller to fill.

        Its blocks are allocated here (`posix_fallocate`): on a full disk this raises ENOSPC,
        where filling a sparse memory map would kill the process with SIGBUS instead.
        """
        path = self.tmp_dir / name
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=(length,))
        self._arrays[name] = array
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate: sparse map
                raise
        finally:
            os.close(fd)
        return array

    def commit(self, manifest: dict[str, Any], *, replace: bool = False) -> dict[str, Any]:
        """Finish the store; returns the manifest as written (with `files` and `checksum`).

        Raises:
            FileExistsError: `final_dir` holds something and `replace` is false.
        """
        files: dict[str, dict[str, Any]] = {}
        for name, array in self._arrays.items():
            array.flush()
            path = self.tmp_dir / name
            fsync_file(path)
            files[name] = {
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "dtype": array.dtype.name,
                "length": int(array.shape[0]),
            }
        self._arrays.clear()
        manifest = {**manifest, "files": files, "checksum": content_checksum(files)}
        write_json_atomic(self.tmp_dir / MANIFEST, manifest)
        if self.final_dir.exists() and not replace:
            if any(self.final_dir.iterdir()):
                raise FileExistsError(
                    f"{self.final_dir} already exists and is not empty; the store built in "
                    f"{self.tmp_dir} would replace it (pass replace=True to allow that)"
                )
            self.final_dir.rmdir()
        replace_dir(self.tmp_dir, self.final_dir)
        return manifest

    def abort(self) -> None:
        """Drop the unfinished store (its temporary directory)."""
        self._arrays.clear()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
