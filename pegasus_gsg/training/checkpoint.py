"""Files a training run leaves are complete or absent, whenever the run is killed.

A job on a shared cluster or a spot machine can be killed at any instant (preemption, the OOM
killer, a time limit), including in the middle of writing a checkpoint. The rules, all here:

- A checkpoint is written into `checkpoints/.tmp-step_NNNNNNNN` (by every rank) and renamed to
  `checkpoints/step_NNNNNNNN` only after every rank's files and `run_config.json` are written
  and flushed to disk. A rename within one directory is atomic, so a `step_*` directory with
  `run_config.json` is always complete; anything else is partial and stepped over (and named
  in a warning) by `latest_checkpoint`.
- Old checkpoints are pruned only after the new one is in place, and each is first renamed to
  `.trash-*` so that a kill during the deletion never leaves a half-deleted `step_*` behind.
- Whole output directories (the exported `model/`, `best/`) are written under a temporary name
  and swapped into place (`replace_dir`); single files (`train_state.json`, reports) are written
  to a temporary file and `os.replace`d (`write_text_atomic`). Those mechanics live in
  `pegasus_gsg.files`; this module holds what is particular to checkpoints.
- Logs (`metrics.jsonl`, `eval.jsonl`) are appended one whole line per `write` call. On resume
  they are cut back to the rows up to the checkpoint's step (`truncate_log`), which drops a
  torn last line and the rows the killed run wrote after its last checkpoint, so the resumed
  run's rows follow without gaps or duplicates.

A full disk stops the run with one line (pegasus_gsg.files.DiskFullError), never with a partial
checkpoint: a save that fails removes its staging directory, and before each save, and right
after one for the next, the main process compares the free space with what a checkpoint needs
(`next_checkpoint_bytes`: the newest one's measured size, else an estimate from the model), so
a run that would not have room for its next checkpoint stops at once, with nothing lost since
the last one.

Only the main process calls these, except that every rank writes its own files into the
staging directory (accelerate's `save_state`) between `start_checkpoint` and
`publish_checkpoint`, with a barrier on each side.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from pegasus_gsg.files import (
    TMP_PREFIX,
    TRASH_PREFIX,
    fresh_staging_dir,
    remove_tree,
    replace_dir,
    write_text_atomic,
    writing_to,
)

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"
RUN_CONFIG_FILE = "run_config.json"
"""Written into every checkpoint, last: the fingerprinted config a resume must match."""
_CHECKPOINT_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d{{8}})$")


def checkpoint_name(step: int) -> str:
    """`step_00000042` for step 42 (names sort in step order)."""
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def append_line(path: Path, row: dict[str, Any]) -> None:
    """Append `row` as one JSON line with a single `write` (a kill leaves it whole or torn
    at the end, where `truncate_log` finds it)."""
    data = (json.dumps(row) + "\n").encode("utf-8")
    with writing_to(path, len(data), RESUME_HINT):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:  # a short write is retried, so that a full disk raises its errno
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def truncate_log(path: Path, last_step: int) -> int:
    """Keep the whole rows of the JSON Lines log `path` with `step <= last_step`; return how
    many lines were dropped (the rewrite is atomic; a missing file drops nothing).

    Rows after `last_step` were written by a run killed after its last checkpoint; the resumed
    run writes them again. A last line without its newline is a torn write.

    Raises:
        ValueError: a line before the last that is not a JSON object with a `step` (the file
            was not written by this trainer; it is left as it is).
    """
    if not path.is_file():
        return 0
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    kept: list[bytes] = []
    for n, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, TypeError, KeyError):
            raise ValueError(
                f"{path}:{n}: expected a JSON object with a 'step' (a row this trainer "
                f"wrote), got {line[:60]!r}; move the file away to resume"
            ) from None
        if step <= last_step:
            kept.append(line)
    dropped = len(lines) - len(kept) + (1 if torn else 0)
    if dropped:
        write_text_atomic(path, "".join(line.decode("utf-8") + "\n" for line in kept))
        logger.info(
            "%s: dropped %d row(s) after step %d (written after the last checkpoint)",
            path,
            dropped,
            last_step,
        )
    return dropped


RESUME_HINT = "free space and rerun with --resume latest"
_STATE_BYTES_PER_PARAM_BYTE = {"adamw": 3, "adafactor": 2}
"""A checkpoint's size over its weights': AdamW keeps two moments per weight; Adafactor's
factored second moments are small (2 is generous)."""


def resume_hint(saved_step: int | None) -> str:
    """What to do after a full disk stopped training with the newest checkpoint at
    `saved_step` (None: no checkpoint yet)."""
    if saved_step is None:
        return f"{RESUME_HINT} (no checkpoint yet: it starts from step 0)"
    return f"{RESUME_HINT} (it continues from the checkpoint of step {saved_step})"


def tree_bytes(path: Path) -> int:
    """Bytes in the files under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def next_checkpoint_bytes(root: Path, weight_bytes: int, optimizer: str) -> int:
    """What the next checkpoint under `root` will take: the newest complete one's size when
    there is one (it holds the same tensors), else `weight_bytes` times the optimizer's factor
    (fp32 weights + AdamW's two moments: 3x)."""
    complete = complete_checkpoints(root, warn=False)
    if complete:
        return tree_bytes(complete[-1])
    return weight_bytes * _STATE_BYTES_PER_PARAM_BYTE.get(optimizer, 3)


def start_checkpoint(root: Path, step: int) -> Path:
    """Main process, before every rank saves: the empty staging directory for `step`."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{TMP_PREFIX}*"):
        logger.warning("removing %s, a checkpoint that a killed run never finished", stale)
        shutil.rmtree(stale)
    for stale in root.glob(f"{TRASH_PREFIX}*"):
        logger.info("removing %s, an old checkpoint a killed run was deleting", stale)
        shutil.rmtree(stale)
    return fresh_staging_dir(root / checkpoint_name(step))


def publish_checkpoint(staging: Path, run_config: dict[str, Any], keep: int) -> Path:
    """Main process, after every rank saved into `staging`: write the run config, rename the
    checkpoint into place, then prune to the newest `keep` complete checkpoints."""
    (staging / RUN_CONFIG_FILE).write_text(json.dumps(run_config, sort_keys=True))
    final = staging.with_name(staging.name.removeprefix(TMP_PREFIX))
    replace_dir(staging, final)
    complete = complete_checkpoints(final.parent, warn=False)
    for old in complete[:-keep] if keep > 0 else []:
        remove_tree(old)
    # Partial step_* directories (written by an older trainer that saved in place) are useless
    # once a complete checkpoint follows them.
    for partial in _partial_checkpoints(final.parent):
        if partial.name < final.name:
            logger.warning("removing partial checkpoint %s", partial)
            remove_tree(partial)
    return final


def _is_complete(path: Path) -> bool:
    return (path / RUN_CONFIG_FILE).is_file()


def _checkpoint_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _CHECKPOINT_NAME.match(p.name) and p.is_dir())


def _partial_checkpoints(root: Path) -> list[Path]:
    return [p for p in _checkpoint_dirs(root) if not _is_complete(p)]


def complete_checkpoints(root: Path, *, warn: bool = True) -> list[Path]:
    """Complete checkpoints under `root`, oldest first; with `warn`, partial ones are named."""
    found = _checkpoint_dirs(root)
    if warn:
        for path in found:
            if not _is_complete(path):
                logger.warning(
                    "skipping %s: no %s, so it is a partial checkpoint (the run was killed "
                    "while writing it)",
                    path,
                    RUN_CONFIG_FILE,
                )
        for path in sorted(root.glob(f"{TMP_PREFIX}*")) if root.is_dir() else []:
            logger.warning("skipping %s: a checkpoint the run was killed before finishing", path)
    return [p for p in found if _is_complete(p)]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, stepping over partial ones (named)."""
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None
