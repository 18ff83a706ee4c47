"""Helpers for the training tests: small real stores, and an instrumented training launcher.

As a script it is what the 2-process tests launch with `accelerate launch`, exactly as users
run an entry point (one shared `--out`):

    accelerate launch --multi_gpu --num_processes 2 tests/_helpers_train.py AUDIT_DIR \\
        finetune --config ... --out OUT ...

Each rank records the dataset indices it loaded (per store), a digest of its final parameters
and every path it wrote (`_record_writes`) in `AUDIT_DIR/rank<N>.json`.

Fault injection lives here, in the test seam, never in the library: `PEGASUS_TEST_FAULT`
(read only by this script) names an instant, and the script patches the library function that
reaches it so that, there, the whole job (the launcher and every rank) is SIGKILLed, or the
launcher is sent SIGTERM as a scheduler would, or one rank's loss turns NaN (`poison_loss`,
which in-process tests patch in themselves). See `FAULTS` and `_arm`. A rank whose entry point
fails records the error message instead of the digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PEGASUS_GSG_DATA", REPO.parent / "shared" / "data"))
FAULT_ENV = "PEGASUS_TEST_FAULT"
SHARED_OUT_WAIT_ENV = "PEGASUS_TEST_SHARED_OUT_WAIT_S"
"""Seconds a process waits to see the shared-out marker (machines.SHARED_OUT_WAIT_S)."""
STALE_VIEW_ENV = "PEGASUS_TEST_STALE_VIEW"
"""The rank whose `--resume latest` finds no checkpoint (a machine whose view lags)."""
TINY_MODEL = [
    "model.d_model=32",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "model.attention_heads=2",
    "model.ffn_dim=64",
    "model.max_position_embeddings=256",
    "data.max_input_len=128",
    "data.max_target_len=32",
]
"""Overrides for a ~0.1M-parameter PEGASUS that trains in milliseconds per step on a CPU."""


def multi_rank_run(max_steps: int) -> list[str]:
    """Overrides of the multi-process runs: one micro-batch per rank and step, checkpoints every
    2 steps (2 kept), validation with generation every 3 and at the end, a log row each step.
    No dropout: each rank draws its own masks, which a 1-process run cannot match."""
    return [
        *TINY_MODEL,
        "model.dropout=0",
        "model.attention_dropout=0",
        "data.max_tokens=256",
        f"schedule.max_steps={max_steps}",
        "schedule.warmup_steps=2",
        "optim.lr=3e-3",
        "checkpoint.save_every=2",
        "checkpoint.keep=2",
        "checkpoint.log_every=1",
        "checkpoint.log_with=tensorboard",
        "eval.every=3",
        "eval.generate_samples=4",
        "eval.max_new_tokens=6",
    ]


FAULTS = {
    "after_step": "SIGKILL right after optimizer step N (before its log row, eval and save)",
    "torn_metrics": "SIGKILL halfway through writing the metrics row of step N",
    "after_eval_row": "SIGKILL right after the eval.jsonl row of step N",
    "in_best_export": "SIGKILL after best/ of step N is written to staging, before the swap",
    "after_rank_save": "SIGKILL once rank R has saved its part of checkpoint N (others not)",
    "before_publish": "SIGKILL with checkpoint N complete in staging, before the rename",
    "in_prune": "SIGKILL while pruning after checkpoint N (old one renamed, not deleted)",
    "in_export": "SIGKILL with the final model/ in staging, before the swap",
    "sigterm": "SIGTERM to the launcher right after optimizer step N (mid-step)",
    "nan_loss": "the loss of training micro-batch N (1-based, of rank R) is NaN",
    "freeze": "SIGSTOP rank R right after optimizer step N (a machine gone, connections open)",
}
"""Fault kinds for `PEGASUS_TEST_FAULT=KIND:N[:RANK]` (RANK defaults to 0)."""


def aeslc_pairs(limit: int, split: str = "train", skip: int = 0) -> list[dict]:
    """First `limit` AESLC pairs of `split` with distinct email bodies (after `skip` of them)."""
    from conftest import missing_data, skip_or_fail

    path = SHARED_DATA / "aeslc" / "data.jsonl"
    if not path.is_file():
        skip_or_fail(missing_data(path))
    seen: set[str] = set()
    out: list[dict] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["split"] != split or record["document"] in seen:
                continue
            seen.add(record["document"])
            if len(seen) > skip:
                out.append({"document": record["document"], "summary": record["summary"]})
            if len(out) >= limit:
                break
    return out


def entry_argv(train: Path, tokenizer: Path, out: Path, *extra: str) -> list[str]:
    """Arguments of `pegasus_gsg.finetune` / `.pretrain` for one store, tokenizer and --out."""
    return ["--train", str(train), "--tokenizer", str(tokenizer), "--out", str(out), *extra]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def prepare_store(kind: str, input_file: Path, tokenizer_dir: Path, out: Path) -> Path:
    """A real store, written by pegasus_gsg.data.preparation (`pegasus-gsg prepare KIND`)."""
    from pegasus_gsg.data.preparation import PrepareConfig, prepare

    prepare([str(input_file)], tokenizer_dir, out, PrepareConfig(kind=kind))
    return out


def param_digest(model: Any) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows(path: Path, *keys: str) -> list[tuple[Any, ...]]:
    """The deterministic part of each row of a jsonl log (timings differ from run to run)."""
    return [tuple(json.loads(line)[k] for k in keys) for line in path.read_text().splitlines()]


def launch_two_ranks(
    audit_dir: Path, entry: str, argv: list[str], *, fault: str | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """`accelerate launch --multi_gpu --num_processes 2` of this script running `entry`
    (finetune/pretrain) with `argv`; the job is killed, and the test failed, after `timeout`
    seconds (a hang)."""
    import psutil
    import pytest

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *("--multi_gpu", "--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(port)),
        str(Path(__file__).resolve()),
        str(audit_dir),
        entry,
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):  # the ranks too
            child.kill()
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"accelerate launch did not finish in {timeout} s:\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def poison_loss(calls: Collection[int], models: list[Any] | None = None) -> Callable[..., Any]:
    """A stand-in for `Seq2SeqLossModel.forward` whose training micro-batches number `calls`
    (1-based, counted in this process; validation forwards are not counted) return NaN loss
    sums. They stay on the autograd graph, so the gradients are NaN too, as an overflow's are:
    an optimizer step on them would turn the weights NaN. The first model it runs is appended to
    `models` (its weights can be read after the run stopped)."""
    from pegasus_gsg.training.model import Seq2SeqLossModel

    original = Seq2SeqLossModel.forward
    made = {"calls": 0}

    def forward(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        sums = original(self, *args, **kwargs)
        if not self.training:
            return sums
        made["calls"] += 1
        if models is not None and not models:
            models.append(self)
        if made["calls"] in calls:
            return {k: v * float("nan") for k, v in sums.items()}
        return sums

    return forward


# --- fault injection (this script only) ----------------------------------------------------


def _kill_job() -> None:
    """SIGKILL the launcher and every process it started, this one last: the whole job dies at
    this instant, as when a node is lost or the OOM killer strikes."""
    import psutil

    me = psutil.Process()
    launcher = me.parent()
    others = [p for p in launcher.children(recursive=True) if p.pid != me.pid]
    launcher.kill()  # first, so that it never sees a rank die and reacts
    for proc in others:
        proc.kill()
    me.kill()


def _sigterm_launcher_and_wait() -> None:
    """Send SIGTERM to the launcher, which forwards it to every rank, and wait until this rank
    has it: the run is then certainly told to stop within this step, on every rank (they agree
    on it before the next one)."""
    import time

    got: list[int] = []
    handler = signal.getsignal(signal.SIGTERM)  # the one train() installed
    assert callable(handler)

    def recording(signum: int, frame: Any) -> None:
        got.append(signum)
        handler(signum, frame)

    signal.signal(signal.SIGTERM, recording)
    os.kill(os.getppid(), signal.SIGTERM)
    deadline = time.monotonic() + 120
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)


def _wrap(owner: Any, name: str, around: Callable[..., Any]) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return around(original, *args, **kwargs)

    setattr(owner, name, wrapper)


def _wrap_where_defined(modules: tuple[Any, ...], name: str, around: Callable[..., Any]) -> None:
    """Wrap `name` in each of `modules` that has it: the loop exports model/ and best/ through
    pegasus_gsg.files, and checkpoint.py saves and prunes through the name it has for the same
    writer (a copy or an import), so both are patched to fault at the same instant."""
    for module in modules:
        if hasattr(module, name):
            _wrap(module, name, around)


def _arm(spec: str, rank: int) -> None:
    """Patch the library so that the fault `spec` (`KIND:N[:RANK]`) happens on `rank`."""
    import torch

    from pegasus_gsg import files
    from pegasus_gsg.training import checkpoint as ckpt
    from pegasus_gsg.training import loop, model, validate

    kind, step_text, *rest = spec.split(":")
    step, fault_rank = int(step_text), int(rest[0]) if rest else 0
    if kind not in FAULTS:
        raise ValueError(f"{FAULT_ENV}={spec}: unknown fault {kind!r}; one of {sorted(FAULTS)}")
    if rank != fault_rank:
        return
    if kind == "nan_loss":
        from pegasus_gsg.training.model import Seq2SeqLossModel

        Seq2SeqLossModel.forward = poison_loss({step})  # type: ignore[method-assign]
        return
    at = {"step": -1}  # the optimizer step the run is at, from the scheduler

    def scheduler_step(original: Callable[..., Any], self: Any, *a: Any, **k: Any) -> Any:
        out = original(self, *a, **k)
        at["step"] = self.last_epoch
        if self.last_epoch == step and kind == "after_step":
            _kill_job()
        if self.last_epoch == step and kind == "sigterm":
            _sigterm_launcher_and_wait()
        if self.last_epoch == step and kind == "freeze":
            os.kill(os.getpid(), signal.SIGSTOP)
        return out

    _wrap(torch.optim.lr_scheduler.LambdaLR, "step", scheduler_step)

    def append_line(original: Callable[..., Any], path: Path, row: dict) -> Any:
        if row.get("step") == step and path.name == "metrics.jsonl" and kind == "torn_metrics":
            data = (json.dumps(row) + "\n").encode()
            with path.open("ab") as f:
                f.write(data[: len(data) // 2])
            _kill_job()
        out = original(path, row)
        if row.get("step") == step and path.name == "eval.jsonl" and kind == "after_eval_row":
            _kill_job()
        return out

    _wrap(ckpt, "append_line", append_line)

    def replace_dir(original: Callable[..., Any], staging: Path, final: Path) -> Any:
        if at["step"] == step and (
            (kind == "in_best_export" and final.name == "best")
            or (kind == "in_export" and final.name == "model")
            or (kind == "before_publish" and final.name == ckpt.checkpoint_name(step))
        ):
            _kill_job()
        return original(staging, final)

    _wrap_where_defined((files, ckpt), "replace_dir", replace_dir)

    def remove_tree(original: Callable[..., Any], path: Path) -> Any:
        if kind == "in_prune" and at["step"] == step and path.name.startswith("step_"):
            os.rename(path, path.with_name(files.TRASH_PREFIX + path.name))
            _kill_job()
        return original(path)

    _wrap_where_defined((files, ckpt), "remove_tree", remove_tree)

    def save_state(original: Callable[..., Any], self: Any, *a: Any, **k: Any) -> Any:
        out = original(self, *a, **k)
        if kind == "after_rank_save" and at["step"] == step:
            _kill_job()
        return out

    from accelerate import Accelerator

    _wrap(Accelerator, "save_state", save_state)
    # The loop calls these through the modules (`files.replace_dir`, `ckpt.append_line`; the
    # exports of model/ and best/ in model.export_whole), so the patches apply.
    assert loop.files is files and model.files is files
    assert loop.ckpt is ckpt and validate.ckpt is ckpt


def _record_writes() -> set[str]:
    """Patch the ways this process can write a file, and return the set of absolute paths it
    writes from then on: files opened for writing (Python's `open`, `os.open`), rename and
    replace targets, safetensors and `torch.save` files (written from Rust and C++, past
    Python's `open`)."""
    import builtins
    import io

    import safetensors.torch
    import torch.serialization

    written: set[str] = set()

    def note(path: Any) -> None:
        if isinstance(path, (str, bytes, os.PathLike)):  # TensorBoard opens bytes paths
            written.add(os.path.abspath(os.fsdecode(path)))

    def opening(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
            if any(c in mode for c in "wax+"):
                note(file)
            return original(file, mode, *a, **k)

        return wrapper

    builtins.open = io.open = opening(io.open)  # type: ignore[assignment]
    raw_open, rename, replace = os.open, os.rename, os.replace
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def os_open(path: Any, flags: int, *a: Any, **k: Any) -> int:
        if flags & writing:
            note(path)
        return raw_open(path, flags, *a, **k)

    def renaming(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(src: Any, dst: Any, *a: Any, **k: Any) -> Any:
            note(dst)
            return original(src, dst, *a, **k)

        return wrapper

    os.open, os.rename, os.replace = os_open, renaming(rename), renaming(replace)  # type: ignore[assignment]
    serialize = safetensors.torch.serialize_file

    def serialize_file(tensors: Any, filename: Any, *a: Any, **k: Any) -> Any:
        note(filename)
        return serialize(tensors, filename, *a, **k)

    safetensors.torch.serialize_file = serialize_file
    zip_writer = torch.serialization._open_zipfile_writer

    def open_zipfile_writer(name_or_buffer: Any) -> Any:
        note(name_or_buffer)
        return zip_writer(name_or_buffer)

    torch.serialization._open_zipfile_writer = open_zipfile_writer
    return written


def _launch(audit_dir: Path, entry: str, argv: list[str]) -> int:
    import importlib

    from pegasus_gsg.data import datasets as data
    from pegasus_gsg.training import machines
    from pegasus_gsg.training.entry import run_cli

    rank = int(os.environ.get("RANK", "0"))
    if os.environ.get(FAULT_ENV):
        _arm(os.environ[FAULT_ENV], rank)
    if os.environ.get(SHARED_OUT_WAIT_ENV):  # the refusal test need not wait a minute
        machines.SHARED_OUT_WAIT_S = float(os.environ[SHARED_OUT_WAIT_ENV])
    if os.environ.get(STALE_VIEW_ENV) == str(rank):  # sees no checkpoint, as a lagging NFS
        from pegasus_gsg.training import checkpoint as ckpt

        ckpt.latest_checkpoint = lambda root: None
    written = _record_writes()
    seen: dict[str, list[int]] = {}  # store path -> indices loaded from it
    for cls in (data.FinetuneDataset, data.PretrainingDataset):
        original = cls.__getitem__

        def recording(self, i, _original=original):
            seen.setdefault(str(self.store.path), []).append(int(i))
            return _original(self, i)

        cls.__getitem__ = recording
    module = importlib.import_module(f"pegasus_gsg.{entry}")
    results = []

    def main(_: Any) -> Any:
        try:
            results.append(module.main(argv))
        except Exception as err:
            # Written at once: when one rank exits with an error, the launcher stops the others.
            audit_dir.mkdir(parents=True, exist_ok=True)
            (audit_dir / f"rank{rank}.json").write_text(
                json.dumps({"error": f"{type(err).__name__}: {err}"})
            )
            raise
        return results[-1]

    code = run_cli(main, f"pegasus_gsg.{entry}")
    if results:
        audit_dir.mkdir(parents=True, exist_ok=True)
        (audit_dir / f"rank{rank}.json").write_text(
            json.dumps(
                {
                    "indices": seen,
                    "digest": param_digest(results[0].model),
                    "steps": results[0].state.step,
                    "exit": code,
                    "writes": sorted(written),
                    "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
                    "machine": int(os.environ.get("GROUP_RANK", "0")),
                }
            )
        )
    return code


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pegasus_gsg.training.entry import exit_process

    exit_process(_launch(Path(sys.argv[1]), sys.argv[2], sys.argv[3:]))
