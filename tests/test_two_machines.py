"""Two machines on one host, launched as users launch them: one `accelerate launch` per machine
(`--num_machines 2 --machine_rank R --main_process_ip 127.0.0.1 --main_process_port P
--num_processes 2`), one gloo process on each, one shared `--out`.

- Both run to the end with weights byte-identical to 2 processes on one machine over the same
  global batches, and every file under `--out` is written by exactly one process (machine 1's
  local main process writes only its own RNG state into each checkpoint).
- Machine 1 SIGKILLed mid-run (its launcher and its process): machine 0 fails at its next
  collective (gloo: "Connection closed by peer"), within a second or two; both restarted with
  `--resume latest` end byte-identical to the undisturbed run, even when machine 1's view of
  `--out` lags and finds no checkpoint (every process loads the main process's choice).
- Machine 1 frozen (SIGSTOP: gone without closing its connections): machine 0 fails once a
  collective has waited `collective_timeout_s`.
- Per-machine local `--out` directories are refused before the first step, on both machines.

Faults are injected by tests/_helpers_train.py (the launched script), never by the library.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _helpers_train import (
    FAULT_ENV,
    SHARED_OUT_WAIT_ENV,
    STALE_VIEW_ENV,
    aeslc_pairs,
    entry_argv,
    free_port,
    multi_rank_run,
    prepare_store,
    rows,
    write_jsonl,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 6
RUN = multi_rank_run(MAX_STEPS)
"""6 steps of one micro-batch per process; checkpoints at 2, 4, 6; validation at 3 and 6."""
KILLED_FAILS_WITHIN_S = 10.0
"""Machine 0 must exit this soon after machine 1 is SIGKILLed (measured: 0.2-2 s)."""
TIMEOUT_S = 15
"""collective_timeout_s of the frozen-machine run."""


@pytest.fixture(scope="module")
def stores(tiny_tokenizer_dir, shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two_machine_stores")
    train = write_jsonl(tmp / "train.jsonl", aeslc_pairs(160))
    dev = write_jsonl(tmp / "dev.jsonl", aeslc_pairs(12, "dev"))
    return {
        "train": prepare_store("finetune", train, tiny_tokenizer_dir, tmp / "train"),
        "validation": prepare_store("finetune", dev, tiny_tokenizer_dir, tmp / "dev"),
        "tokenizer": tiny_tokenizer_dir,
    }


class Job:
    """The `accelerate launch` of every machine of one run, their output in files."""

    def __init__(self, stores, base: Path, outs: list[Path], *extra: str, env: dict | None = None):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.audit = base / "audit"
        port = str(free_port())
        machines = len(outs)
        self.procs: list[subprocess.Popen] = []
        self.logs = [base / f"machine{m}.log" for m in range(machines)]
        for m, out in enumerate(outs):
            cmd = [
                sys.executable,
                "-m",
                "accelerate.commands.launch",
                "--multi_gpu",  # with Accelerator(cpu=True): gloo processes (MULTI_CPU)
                "--num_machines",
                str(machines),
                "--machine_rank",
                str(m),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                port,
                "--num_processes",
                "2",  # in all, over every machine
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
                str(REPO / "tests" / "_helpers_train.py"),
                str(self.audit),
                "finetune",
                *entry_argv(stores["train"], stores["tokenizer"], out, *RUN, *extra),
                "--validation",
                str(stores["validation"]),
            ]
            full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
            full_env.pop(FAULT_ENV, None)
            full_env.update(env or {})
            with self.logs[m].open("w") as log:
                self.procs.append(
                    subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
                )

    def output(self, machine: int) -> str:
        return self.logs[machine].read_text(errors="replace")

    def wait(self, timeout: float = 300) -> list[int]:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(
                    f"a machine did not finish in {timeout:.0f} s:\n{self.output(0)[-3000:]}"
                )
        return [proc.returncode for proc in self.procs]

    def kill(self, machine: int | None = None) -> None:
        """SIGKILL a machine's launcher and its processes (all machines by default)."""
        for m, proc in enumerate(self.procs):
            if machine in (None, m):
                _kill_tree(proc.pid)
                proc.wait()


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        children = parent.children(recursive=True)
        parent.kill()
    except psutil.NoSuchProcess:
        return
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def audits(job: Job) -> list[dict]:
    return [json.loads((job.audit / f"rank{r}.json").read_text()) for r in (0, 1)]


def weights(out: Path) -> str:
    return hashlib.sha256((out / "model" / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def two_machines(stores, tmp_path_factory):
    """The undisturbed two-machine run."""
    base = tmp_path_factory.mktemp("two_machines")
    job = Job(stores, base, [base / "out", base / "out"])
    assert job.wait() == [0, 0], job.output(0)[-4000:] + job.output(1)[-2000:]
    return job


def test_two_machines_end_byte_identical_to_two_processes_on_one_machine(
    two_machines, stores, tmp_path
):
    out = two_machines.base / "out"
    ranks = audits(two_machines)
    # One process per machine, each its machine's local main process.
    assert [(r["machine"], r["local_rank"]) for r in ranks] == [(0, 0), (1, 0)]
    assert [r["steps"] for r in ranks] == [MAX_STEPS, MAX_STEPS]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    train = str(stores["train"])
    assert not set(ranks[0]["indices"][train]) & set(ranks[1]["indices"][train])

    one = Job(stores, tmp_path, [tmp_path / "out"])  # 2 processes, 1 machine
    assert one.wait() == [0], one.output(0)[-4000:]
    assert weights(out) == weights(tmp_path / "out")
    assert rows(out / "metrics.jsonl", "step", "loss") == rows(
        tmp_path / "out" / "metrics.jsonl", "step", "loss"
    )
    assert rows(out / "eval.jsonl", "step", "val_loss", "rougeLsum") == rows(
        tmp_path / "out" / "eval.jsonl", "step", "val_loss", "rougeLsum"
    )


def test_every_file_of_the_shared_out_has_one_writer(two_machines):
    """Each process records every path it writes (tests/_helpers_train.py); no path under
    --out is written by both, and machine 1 writes nothing but its RNG state files."""
    out = two_machines.base / "out"
    writers: dict[str, list[int]] = defaultdict(list)
    for rank, audit in enumerate(audits(two_machines)):
        for path in audit["writes"]:
            if Path(path).is_relative_to(out):
                writers[str(Path(path).relative_to(out))].append(rank)
    assert {p: w for p, w in writers.items() if len(w) > 1} == {}
    by_rank = {r: {p for p, w in writers.items() if w == [r]} for r in (0, 1)}
    assert by_rank[1] == {f"checkpoints/.tmp-step_{s:08d}/random_states_1.pkl" for s in (2, 4, 6)}
    # The recording sees every kind of writer machine 0 uses (so an absence above means
    # something): appended logs, atomic files, torch.save, safetensors, TensorBoard, renames.
    assert {
        "metrics.jsonl",
        "eval.jsonl",
        "config.yaml",
        "train_state.json",
        "checkpoints/.tmp-step_00000006/random_states_0.pkl",
        "checkpoints/.tmp-step_00000006/optimizer.bin",
        "checkpoints/.tmp-step_00000006/model.safetensors",
        "checkpoints/.tmp-step_00000006/run_config.json",
        "checkpoints/step_00000006",
        ".tmp-model/model.safetensors",
        "model",
        "best",
    } <= by_rank[0]
    assert any(p.startswith("tensorboard/") and ".tfevents." in p for p in by_rank[0])
    assert not (out / ".shared-out-check").exists()


def test_killed_machine_fails_the_other_within_seconds_then_both_resume_exactly(
    two_machines, stores, tmp_path
):
    out = tmp_path / "out"
    # Machine 1 SIGKILLs its launcher and its process right after step 3 (rank 1's fault).
    job = Job(stores, tmp_path / "killed", [out, out], env={FAULT_ENV: "after_step:3:1"})
    killed_at = worker_gone_at = None
    worker = None
    deadline = time.monotonic() + 300
    while job.procs[0].poll() is None and time.monotonic() < deadline:
        if worker is None:
            children = psutil.Process(job.procs[0].pid).children()
            worker = children[0] if children else None
        if killed_at is None and job.procs[1].poll() is not None:
            killed_at = time.monotonic()
        if worker_gone_at is None and worker is not None and not worker.is_running():
            worker_gone_at = time.monotonic()
        time.sleep(0.05)
    failed_at = time.monotonic()
    codes = job.wait()
    assert codes[1] == -9, job.output(1)[-3000:]
    assert codes[0] not in (0, None), job.output(0)[-3000:]
    assert killed_at is not None  # machine 1 was gone first
    print(
        f"machine 1 killed -> machine 0's process exited after "
        f"{(worker_gone_at or failed_at) - killed_at:.1f} s, its launcher after "
        f"{failed_at - killed_at:.1f} s"
    )
    assert failed_at - killed_at < KILLED_FAILS_WITHIN_S
    # gloo's verdict, at once; which socket error it names depends on where the peer's close
    # finds it (reading: closed by peer; writing: reset by peer or a broken pipe)
    assert re.search(r"Connection (closed|reset) by peer|Broken pipe", job.output(0)), job.output(
        0
    )[-3000:]
    # Nobody finished: machine 0's audit, if written, records the error (no digest).
    audit0 = job.audit / "rank0.json"
    assert not audit0.exists() or "error" in json.loads(audit0.read_text(encoding="utf-8"))
    # Step 3's row needs machine 1's losses (an all-reduce): machine 0 failed there.
    assert [r[0] for r in rows(out / "metrics.jsonl", "step")] == [1, 2]

    # Machine 1's view of --out lags (it finds no checkpoint): it loads machine 0's choice.
    resumed = Job(
        stores, tmp_path / "resumed", [out, out], "--resume", "latest", env={STALE_VIEW_ENV: "1"}
    )
    assert resumed.wait() == [0, 0], resumed.output(0)[-4000:]
    assert "resumed from" in resumed.output(0)
    assert "rank 1 found checkpoint None, the main process" in resumed.output(1)
    reference = two_machines.base / "out"
    assert weights(out) == weights(reference)
    for log, keys in (
        ("metrics.jsonl", ("step", "loss", "lr")),
        ("eval.jsonl", ("step", "val_loss", "rougeLsum")),
    ):
        assert rows(out / log, *keys) == rows(reference / log, *keys), log


def test_frozen_machine_fails_the_other_after_the_collective_timeout(stores, tmp_path):
    """SIGSTOP keeps machine 1's connections open, as a power loss or a partition does: only
    the process-group timeout (`collective_timeout_s`) ends machine 0's wait."""
    out = tmp_path / "out"
    job = Job(
        stores,
        tmp_path,
        [out, out],
        f"collective_timeout_s={TIMEOUT_S}",
        env={FAULT_ENV: "freeze:2:1"},
    )
    try:
        frozen_at = None
        deadline = time.monotonic() + 300
        while job.procs[0].poll() is None and time.monotonic() < deadline:
            if frozen_at is None:
                workers = psutil.Process(job.procs[1].pid).children(recursive=True)
                if any(w.status() == psutil.STATUS_STOPPED for w in workers):
                    frozen_at = time.monotonic()
            time.sleep(0.05)
        failed_at = time.monotonic()
        assert job.procs[0].poll() not in (0, None), job.output(0)[-3000:]
    finally:
        job.kill()
    assert frozen_at is not None, job.output(1)[-3000:]
    waited = failed_at - frozen_at
    print(f"machine 0 failed {waited:.1f} s after machine 1 froze (timeout {TIMEOUT_S} s)")
    assert TIMEOUT_S - 2 < waited < TIMEOUT_S + 10, job.output(0)[-3000:]
    assert "Timed out" in job.output(0) or "timed out" in job.output(0), job.output(0)[-3000:]


def test_per_machine_local_out_directories_are_refused(stores, tmp_path):
    """Machine 1 with its own --out (a local disk) never sees what machine 0 writes."""
    outs = [tmp_path / "machine0_out", tmp_path / "machine1_out"]
    job = Job(stores, tmp_path, outs, env={SHARED_OUT_WAIT_ENV: "2"})
    codes = job.wait()
    assert codes[0] != 0 and codes[1] != 0
    message = (
        f"error: --out {outs[0]} is not shared by every machine: rank 1 on "
        f"{os.uname().nodename} did not see the file .shared-out-check"
    )
    assert message in job.output(0), job.output(0)[-3000:]
    assert "per-machine local directories are not supported" in job.output(0)
    # Refused before anything of the run was written, on either machine.
    assert list(outs[0].iterdir()) == []
    assert not outs[1].exists()
