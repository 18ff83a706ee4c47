"""A full disk is one clear line, leaves nothing that looks complete, and the same command run
again once there is space finishes with the bytes of an undisturbed run (pegasus_gsg/files.py).

The disk is made full by the kernel: the failing command runs in a subprocess whose file-size
limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes a write past it fail with EFBIG, which the
package treats as ENOSPC. Where this machine lets the test mount a small tmpfs, a real ENOSPC
and the free-space check before a checkpoint are tested on it too; elsewhere the check is tested
with the free space faked in-process (`pegasus_gsg.files.free_bytes`). Reference runs and the
reruns after the failure run in-process (the same commands, `pegasus_gsg.cli.main` and the
entry points' `main`).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _helpers_train import TINY_MODEL, entry_argv
from conftest import REPO_ROOT, synthetic_texts

from pegasus_gsg.cli import main as cli

TRAIN = [
    *TINY_MODEL,
    "data.max_tokens=1024",
    "schedule.warmup_steps=0",
    "schedule.max_steps=4",
    "checkpoint.log_with=none",
    "checkpoint.log_every=1",
    "checkpoint.keep=1",
    "eval.every=0",
]
LINE = re.compile(
    r"^(?P<prog>\S+(?: \S+)?): error: no space left writing (?P<path>\S+) \((?P<reason>[^;]+); "
    r"(?:needs ~(?P<needed>[\d.]+ \w+), )?(?P<free>[\d.]+ \w+) free on its file system\); "
    r"(?P<hint>.+)$"
)
EFBIG = "File too large: over the file-size limit (ulimit -f) of {} bytes"


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def run_limited(limit: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m ARGV...` with every file it writes limited to `limit` bytes."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: _limit_file_size(limit),
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> re.Match[str]:
    """The failed command's only error line (the last line of stderr, no traceback)."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    match = LINE.match(errors[0])
    assert match, errors[0]
    return match


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by relative path, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((".tmp-", ".trash-"))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 made-up documents, each with a summary (its first line)."""
    path = tmp_path_factory.mktemp("disk_full") / "docs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for text in synthetic_texts(200, seed=1):
            row = {"text": text, "document": text, "summary": text.split("\n")[0]}
            f.write(json.dumps(row) + "\n")
    return path


def prepare_args(corpus: Path, tokenizer: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "pretrain", "--input", str(corpus), "--tokenizer", str(tokenizer),
            "--out", str(out), "--no-progress", "--chunk-size", "20", *extra]  # fmt: skip


# --- prepare -----------------------------------------------------------------------------------

SET = ["--rows-per-shard", "50"]


@pytest.fixture(scope="module")
def prepared(corpus: Path, tiny_tokenizer_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Undisturbed prepares: a store and a store set (50-row shards) of `corpus`."""
    root = tmp_path_factory.mktemp("disk_full_prepared")
    assert cli(prepare_args(corpus, tiny_tokenizer_dir, root / "store")) == 0
    assert cli(prepare_args(corpus, tiny_tokenizer_dir, root / "set", *SET)) == 0
    return {"store": root / "store", "set": root / "set"}


PREPARE_CASES = {
    # (file-size limit, extra args, what fails): a 20-row chunk is ~6.5 kB, the store's
    # tokens.npy ~26 kB, a 50-row shard's ~6.6 kB.
    "chunk": (2_000, [], "chunks/0000000.npz"),
    "store": (10_000, [], ""),
    "store set shard": (3_000, SET, None),
}


@pytest.mark.parametrize("case", list(PREPARE_CASES))
def test_prepare_on_a_full_disk_fails_cleanly_and_the_rerun_is_identical(
    case: str, corpus: Path, tiny_tokenizer_dir: Path, prepared, tmp_path: Path, capsys
) -> None:
    limit, extra, failing = PREPARE_CASES[case]
    reference, out = prepared["set" if extra else "store"], tmp_path / "out"

    failed = one_line(
        run_limited(limit, "pegasus_gsg", *prepare_args(corpus, tiny_tokenizer_dir, out, *extra))
    )
    assert failed["prog"] == "pegasus-gsg prepare"
    assert failed["reason"] == EFBIG.format(limit)
    assert failed["hint"] == "free space and rerun the same command"
    partial = out.with_name("out.partial")
    path = Path(failed["path"])
    if failing is None:  # a shard of the set, named by its own path
        assert path.parent == partial / "shards", path
    else:
        assert path == (partial / failing if failing else out), path
    if case == "store":  # the store's size is known before it is written: named in full
        expected = sum(f.stat().st_size for f in reference.iterdir() if f.suffix == ".npy")
        needed = float(failed["needed"].split()[0]) * 1000
        assert abs(needed - expected) < 0.05 * expected, (failed["needed"], expected)
    # Nothing that looks complete: no OUT, no manifest in the work dir, no temporary files.
    assert not out.exists()
    assert not list(partial.rglob("storeset.json")) and not (partial / "manifest.json").exists()
    assert temporaries(partial) == []

    capsys.readouterr()
    assert cli(prepare_args(corpus, tiny_tokenizer_dir, out, *extra)) == 0
    assert tree(out) == tree(reference)
    assert not partial.exists()


# --- evaluate and its CTranslate2 cache --------------------------------------------------------


def evaluate_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(model), "--input", str(corpus), "--max-samples", "8",
            "--bootstrap", "10", "--out", str(out), *extra]  # fmt: skip


@pytest.mark.slow
def test_evaluate_on_a_full_disk_writes_no_predictions_and_the_rerun_is_identical(
    corpus: Path, tiny_summarizer_dir: Path, tmp_path: Path, capsys
) -> None:
    reference, out = tmp_path / "reference.jsonl", tmp_path / "predictions.jsonl"
    assert cli(evaluate_args(tiny_summarizer_dir, corpus, reference)) == 0
    size = reference.stat().st_size
    assert size > 600  # the limit below cuts it

    failed = one_line(
        run_limited(600, "pegasus_gsg", *evaluate_args(tiny_summarizer_dir, corpus, out))
    )
    assert failed["prog"] == "pegasus-gsg evaluate"
    assert Path(failed["path"]) == out
    assert failed["needed"] == format_size(size)
    # No predictions, no scores, no temporary file: only the reference run's two files.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        reference.name,
        reference.name + ".rouge.json",
    ]

    capsys.readouterr()
    assert cli(evaluate_args(tiny_summarizer_dir, corpus, out)) == 0
    assert out.read_bytes() == reference.read_bytes()
    rouge = out.with_name(out.name + ".rouge.json")
    assert rouge.read_bytes() == reference.with_name(reference.name + ".rouge.json").read_bytes()


def format_size(n: int) -> str:
    from pegasus_gsg.files import format_bytes

    return format_bytes(n)


@pytest.mark.slow
def test_the_ctranslate2_cache_on_a_full_disk_is_not_left_half_converted(
    corpus: Path, tiny_summarizer_dir: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("ctranslate2")
    from pegasus_gsg.evaluation import ct2

    # Copies: other tests may have filled the shared model's cache already.
    undisturbed, model = (
        Path(shutil.copytree(tiny_summarizer_dir, tmp_path / name,
                             ignore=shutil.ignore_patterns(".ct2")))
        for name in ("undisturbed", "model")
    )  # fmt: skip
    reference = tmp_path / "reference.jsonl"
    assert cli(evaluate_args(undisturbed, corpus, reference, "--backend", "ctranslate2")) == 0
    (converted,) = (undisturbed / ".ct2").iterdir()
    out = tmp_path / "predictions.jsonl"
    args = evaluate_args(model, corpus, out, "--backend", "ctranslate2")

    limit = (converted / "model.bin").stat().st_size // 2  # the predictions fit, not the weights
    failed = one_line(run_limited(limit, "pegasus_gsg", *args))
    assert failed["prog"] == "pegasus-gsg evaluate"
    assert failed["reason"] == EFBIG.format(limit)
    target = Path(failed["path"])
    assert target == model / ".ct2" / converted.name  # the same key: same model and settings
    assert failed["needed"] == format_size(ct2.conversion_bytes(model, "float32"))
    assert not target.exists() and list((model / ".ct2").iterdir()) == []  # no temp dir either
    assert not out.exists()

    capsys.readouterr()
    assert cli(args) == 0
    assert ct2.is_ct2_dir(target)
    assert (target / "model.bin").read_bytes() == (converted / "model.bin").read_bytes()
    assert out.read_bytes() == reference.read_bytes()


# --- training: checkpoints, the exported model, the free-space check ---------------------------


@pytest.fixture(scope="module")
def finetune_store(corpus: Path, tiny_tokenizer_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disk_full_store") / "ft"
    args = ["prepare", "finetune", "--input", str(corpus), "--tokenizer", str(tiny_tokenizer_dir),
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert cli(args) == 0
    return out


def train_argv(store: Path, tokenizer: Path, out: Path, *extra: str) -> list[str]:
    return entry_argv(store, tokenizer, out, *TRAIN, *extra)


def finetune(argv: list[str], resume: str | None = None):
    from pegasus_gsg import finetune as entry

    return entry.main(argv + (["--resume", resume] if resume else []))


@pytest.fixture(scope="module")
def reference_run(finetune_store: Path, tiny_tokenizer_dir: Path, tmp_path_factory) -> Path:
    """The undisturbed run (4 steps, a checkpoint every 2)."""
    out = tmp_path_factory.mktemp("disk_full_reference") / "run"
    finetune(train_argv(finetune_store, tiny_tokenizer_dir, out, "checkpoint.save_every=2"))
    return out


def weights(run: Path) -> bytes:
    return (run / "model" / "model.safetensors").read_bytes()


def checkpoint_entries(run: Path) -> list[str]:
    root = run / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.mark.slow
@pytest.mark.parametrize("what", ["checkpoint", "model"])
def test_training_on_a_full_disk_stops_cleanly_and_resume_latest_finishes_identically(
    what: str, finetune_store: Path, tiny_tokenizer_dir: Path, reference_run: Path, tmp_path: Path
) -> None:
    model_file = (reference_run / "model" / "model.safetensors").stat().st_size
    optimizer_file = (reference_run / "checkpoints" / "step_00000004" / "optimizer.bin").stat()
    assert optimizer_file.st_size > 1.5 * model_file
    out = tmp_path / "run"
    if what == "checkpoint":  # the weights fit, AdamW's state (2x their size) does not
        limit, extra = int(1.2 * model_file), ["checkpoint.save_every=2"]
        expected = out / "checkpoints" / "step_00000002"
        hint = "(no checkpoint yet: it starts from step 0)"
    else:  # no checkpoints: the exported model is the first big file
        limit, extra = model_file // 2, ["checkpoint.save_every=0"]
        expected = out / "model"
        hint = "(no checkpoint yet: it starts from step 0)"
    argv = train_argv(finetune_store, tiny_tokenizer_dir, out, *extra)

    failed = one_line(run_limited(limit, "pegasus_gsg.finetune", *argv))
    assert failed["prog"] == "pegasus_gsg.finetune"
    assert Path(failed["path"]) == expected
    assert failed["hint"] == f"free space and rerun with --resume latest {hint}"
    # Nothing a resume could take for complete: no step_* or temporary entry, no model/.
    assert checkpoint_entries(out) == []
    assert not (out / "model").exists() and not (out / "train_state.json").exists()
    assert temporaries(out) == []

    finetune(argv, resume="latest")
    assert weights(out) == weights(reference_run)


def test_the_free_space_check_stops_right_after_a_checkpoint_without_room_for_the_next(
    finetune_store: Path, tiny_tokenizer_dir: Path, reference_run: Path, tmp_path: Path,
    monkeypatch, capsys,
) -> None:  # fmt: skip
    from pegasus_gsg import files
    from pegasus_gsg import finetune as entry
    from pegasus_gsg.training.entry import run_cli

    out = tmp_path / "run"
    size = sum(f.stat().st_size for f in (reference_run / "checkpoints").rglob("*") if f.is_file())
    # Room for one checkpoint: once step 2's is written, the space left is half of another.
    room = {"full": True}

    def free_bytes(path: Path) -> int:
        written = [n for n in checkpoint_entries(out) if n.startswith("step_")]
        return size // 2 if room["full"] and written else 100 * size

    monkeypatch.setattr(files, "free_bytes", free_bytes)
    argv = train_argv(finetune_store, tiny_tokenizer_dir, out, "checkpoint.save_every=2")
    monkeypatch.setattr(sys, "argv", ["finetune", *argv])
    capsys.readouterr()
    assert run_cli(entry.main, "pegasus_gsg.finetune") == 1
    err = capsys.readouterr().err.strip().splitlines()
    match = LINE.match(err[-1])
    assert match, err
    assert Path(match["path"]) == out / "checkpoints" / "step_00000004"
    assert match["reason"] == "not enough free space for the next checkpoint, checked in advance"
    assert match["hint"].endswith("(it continues from the checkpoint of step 2)")
    # It stopped right after the checkpoint: no step trained past it was lost.
    rows = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2] and checkpoint_entries(out) == ["step_00000002"]

    room["full"] = False  # space freed
    finetune(argv, resume="latest")
    assert weights(out) == weights(reference_run)


# --- a real full file system (tmpfs), where this machine allows mounting one ------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB tmpfs at TMP/fs (root only); grow it with `grow_tmpfs`."""
    mount = tmp_path / "fs"
    mount.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                              capture_output=True, text=True)  # fmt: skip
    except FileNotFoundError:
        pytest.skip("no mount command on this machine: the real-ENOSPC test needs one")
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def grow_tmpfs(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def test_prepare_on_a_really_full_file_system(
    corpus: Path, tiny_tokenizer_dir: Path, prepared, small_tmpfs: Path, capsys
) -> None:
    reference, out = prepared["store"], small_tmpfs / "store"
    capsys.readouterr()
    assert cli(prepare_args(corpus, tiny_tokenizer_dir, out)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    match = LINE.match(err[-1])
    assert match, err
    assert match["reason"] in ("No space left on device",
                               "not enough free space, checked before writing")  # fmt: skip
    assert Path(match["path"]).is_relative_to(small_tmpfs)
    assert not out.exists() and temporaries(small_tmpfs) == []

    grow_tmpfs(small_tmpfs, "4m")
    assert cli(prepare_args(corpus, tiny_tokenizer_dir, out)) == 0
    assert tree(out) == tree(reference)


# --- recognising a full disk, however the writer reports it -----------------------------------


def test_every_way_a_full_disk_is_reported_becomes_one_error_naming_the_path(tmp_path: Path):
    import errno
    import pickle

    from pegasus_gsg.files import DiskFullError, as_disk_full, disk_full_line

    path = tmp_path / "out"
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "x")
    for exc, reason in [
        (quota, "Disk quota exceeded"),
        (rust, "No space left on device"),
        (wrapped, "No space left on device"),
    ]:
        error = as_disk_full(exc, path)
        assert error is not None and error.path == path and error.reason == reason
        assert str(error).startswith(f"no space left writing {path} ({reason}; ")
    # torch's C++ writer says only that a write failed: a full disk when the space left is
    # short of what the write needed, another error otherwise.
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
    assert as_disk_full(torch_error, path, needed=10**18) is not None
    assert as_disk_full(torch_error, path, needed=1) is None
    assert as_disk_full(ValueError("bad value"), path) is None
    assert disk_full_line(OSError(errno.EPERM, "denied")) is None
    # It crosses process boundaries (a process pool, a Ray task) whole.
    error = DiskFullError(path, needed=1234, free=5, hint="do this")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, DiskFullError) and str(copy) == str(error)
    assert str(error) == (
        f"no space left writing {path} (No space left on device; needs ~1.2 kB, 5 bytes free "
        "on its file system); do this"
    )
