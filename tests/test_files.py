"""pegasus_gsg.files: a written file or directory is complete or absent, even after a kill."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pegasus_gsg.files import (
    atomic_file,
    remove_stale_temps,
    replace_dir,
    temp_path,
    write_json_atomic,
)

HOST = socket.gethostname()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    code = "import os; print(os.getpid())"
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(proc.stdout)


def test_atomic_file_keeps_the_old_content_when_the_block_raises(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="midway"), atomic_file(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("midway")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_file_replaces_the_target_and_removes_its_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_temp_name_carries_host_and_pid_and_keeps_the_extension(tmp_path: Path) -> None:
    tmp = temp_path(tmp_path / "scores.npz")
    assert tmp.parent == tmp_path
    assert tmp.name == f".tmp-{HOST}-{os.getpid()}-scores.npz"
    assert tmp.suffix == ".npz"


def test_write_json_atomic_writes_sorted_indented_utf8_with_a_final_newline(
    tmp_path: Path,
) -> None:
    target = tmp_path / "m.json"
    write_json_atomic(target, {"b": 1, "a": "é"})
    assert target.read_bytes() == '{\n  "a": "é",\n  "b": 1\n}\n'.encode()
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é", "b": 1}


def test_replace_dir_replaces_a_directory_whole(tmp_path: Path) -> None:
    final = tmp_path / "model"
    final.mkdir()
    (final / "old_only.bin").write_text("old")
    (final / "shared.txt").write_text("old")
    staging = tmp_path / ".tmp-model"
    staging.mkdir()
    (staging / "shared.txt").write_text("new")
    (staging / "sub").mkdir()
    (staging / "sub" / "new.txt").write_text("new")
    replace_dir(staging, final)
    assert sorted(str(p.relative_to(final)) for p in final.rglob("*")) == [
        "shared.txt",
        "sub",
        "sub/new.txt",
    ]
    assert (final / "shared.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging, no trash


def test_remove_stale_temps_removes_only_what_dead_writers_left(tmp_path: Path) -> None:
    dead = _dead_pid()
    trash = tmp_path / ".trash-step_00000010"
    trash.mkdir()
    (trash / "weights.bin").write_text("x")
    dead_file = tmp_path / f".tmp-{HOST}-{dead}-out.json"
    dead_file.write_text("torn")
    dead_dir = tmp_path / f".tmp-{HOST}-{dead}-float32-abc"
    dead_dir.mkdir()
    (dead_dir / "model.bin").write_text("x")
    live = tmp_path / f".tmp-{HOST}-{os.getpid()}-out.json"
    live.write_text("being written")
    other_host = tmp_path / f".tmp-not-{HOST}-{dead}-out.json"
    other_host.write_text("another machine's")
    shared_staging = tmp_path / ".tmp-model"
    shared_staging.mkdir()
    real = tmp_path / "out.json"
    real.write_text("{}")

    removed = remove_stale_temps(tmp_path)

    assert sorted(removed) == sorted([trash, dead_file, dead_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other_host.name, shared_staging.name, real.name]
    )


_KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from pegasus_gsg.files import atomic_file

    with atomic_file(Path(sys.argv[1])) as tmp:
        with tmp.open("w") as f:
            f.write("the first half of the new content")
            f.flush()
            os.fsync(f.fileno())
            print(tmp.name, flush=True)
            time.sleep(60)
            f.write(" and the second half")
    """
)


def test_a_writer_killed_inside_atomic_file_leaves_the_old_file_and_a_stale_temp(
    tmp_path: Path,
) -> None:
    target = tmp_path / "results.json"
    target.write_text("old, complete")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        tmp_name = proc.stdout.readline().strip()  # the temp is half written now
        assert tmp_name == f".tmp-{HOST}-{proc.pid}-results.json"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "old, complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([tmp_name, target.name])
    assert (tmp_path / tmp_name).read_text() == "the first half of the new content"

    assert remove_stale_temps(tmp_path) == [tmp_path / tmp_name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    assert target.read_text() == "old, complete"


def test_remove_stale_temps_of_a_missing_directory_removes_nothing(tmp_path: Path) -> None:
    assert remove_stale_temps(tmp_path / "absent") == []
