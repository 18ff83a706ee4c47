"""A run over several machines: one `--out` that every machine sees, and no endless wait.

Users launch one `accelerate launch` per machine (`--num_machines 2 --machine_rank R
--main_process_ip HOST --main_process_port P --num_processes N`), each with the same
arguments; the processes form one process group (NCCL on GPUs, gloo on CPUs).

- `--out` must be one directory shared by every machine (NFS, Lustre, a mounted bucket): only
  the global main process (`is_main_process`, never each machine's `is_local_main_process`)
  writes the run's files, every rank writes its own RNG state into each checkpoint, and every
  rank reads the checkpoint back on `--resume`. Per-machine local directories would leave each
  machine a different run (machine 1 would find no checkpoint and start again from step 0), so
  `check_shared_out` refuses them before the first step: the main process writes a marker with
  a fresh token, and every process must read that token there within `SHARED_OUT_WAIT_S`
  (a network file system may show a new file to another machine a little late).
- `--resume latest` loads the checkpoint the main process found (`same_checkpoint`): another
  machine's view of the shared directory may lag behind (NFS attribute caching) and name an
  older one, and ranks at different steps would train out of step.
- A machine whose processes die (killed, the OOM killer, a crash) has its connections closed
  by its kernel, so the others fail at their next collective: gloo raises "Connection closed
  by peer" at once, and the entry point exits without tearing down the broken process group
  (entry.py; the teardown alone took ~4 s). Measured on one host with a process per machine:
  machine 0's process exits 0.2 s after machine 1 is SIGKILLed, its launcher ~2 s after.
  The loop has a collective every step; work the main process does alone (a checkpoint, an
  export) delays it by its own length.
- A machine that vanishes without closing them (power loss, a network partition, a frozen
  process) is noticed only when a collective has waited `collective_timeout_s` (config;
  torch's default without it: 30 min for gloo, 10 min for NCCL; gloo then raises "Timed out
  waiting ... for recv"). It must exceed the longest work the main process does while the
  others wait for it at a barrier (saving a checkpoint, exporting the model).
- Either way the launchers exit non-zero; restart every machine with `--resume latest`.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from datetime import timedelta
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, gather_object

from pegasus_gsg import files

logger = logging.getLogger(__name__)

SHARED_OUT_MARKER = ".shared-out-check"
"""Written by the main process into `--out` at start-up, read by every process, removed."""
SHARED_OUT_WAIT_S = 60.0
"""How long a process waits to see the marker (NFS may cache a directory's listing ~30-60 s)."""


def process_group_kwargs(collective_timeout_s: float | None) -> list[InitProcessGroupKwargs]:
    """The Accelerator's `kwargs_handlers` for a collective timeout (none: torch's default)."""
    if collective_timeout_s is None:
        return []
    return [InitProcessGroupKwargs(timeout=timedelta(seconds=collective_timeout_s))]


def check_shared_out(accelerator: Accelerator, out_dir: Path) -> None:
    """Refuse an `out_dir` that is not one directory shared by every process (every process
    raises together, so none is left waiting in a collective).

    Raises:
        ValueError: a process did not see the main process's marker in `out_dir` within
            `SHARED_OUT_WAIT_S` seconds; the message names its host and rank.
    """
    if accelerator.num_processes == 1:
        return
    marker = out_dir / SHARED_OUT_MARKER
    token = [""]
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        token = [f"{files.writer_tag()}-{secrets.token_hex(8)}"]
        files.write_text_atomic(marker, token[0])
    broadcast_object_list(token)  # after the write: a process that gets the token may look
    seen = accelerator.is_main_process or _appears(marker, token[0], SHARED_OUT_WAIT_S)
    verdicts = gather_object([(accelerator.process_index, socket.gethostname(), seen)])
    if accelerator.is_main_process:
        marker.unlink(missing_ok=True)  # every process has looked (gather_object waited)
    blind = [f"rank {rank} on {host}" for rank, host, ok in verdicts if not ok]
    if blind:
        main_host = next(host for rank, host, _ in verdicts if rank == 0)
        raise ValueError(
            f"--out {out_dir} is not shared by every machine: {', '.join(blind)} did not see "
            f"the file {SHARED_OUT_MARKER} that the main process (rank 0 on {main_host}) "
            f"wrote there within {SHARED_OUT_WAIT_S:.0f} s. A multi-machine run needs one "
            "--out on a file system every machine mounts (NFS, Lustre, ...); per-machine "
            "local directories are not supported"
        )


def same_checkpoint(accelerator: Accelerator, checkpoint: Path | None) -> Path | None:
    """The main process's `checkpoint` on every process (a differing local choice is named)."""
    if accelerator.num_processes == 1:
        return checkpoint
    chosen = [None if checkpoint is None else str(checkpoint)]
    broadcast_object_list(chosen)
    main = None if chosen[0] is None else Path(chosen[0])
    if main != checkpoint:
        logger.warning(
            "rank %d found checkpoint %s, the main process %s; loading the main process's "
            "(this machine's view of --out lags behind)",
            accelerator.process_index,
            checkpoint,
            main,
        )
    return main


def _appears(marker: Path, token: str, wait_s: float) -> bool:
    """True once `marker` holds `token` (polled until `wait_s` seconds have passed)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if marker.read_text(encoding="utf-8") == token:
                return True
        except OSError:  # not there (yet)
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
