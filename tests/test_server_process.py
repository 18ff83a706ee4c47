"""`python -m server` as a real process: health over its life, SIGTERM drain, healthcheck CLI."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pegasus_gsg.server import healthcheck

from pegasus_gsg.serving.client import SummarizerClient
from tests._server_helpers import fitting_docs, wait_for

REPO = Path(__file__).resolve().parents[1]


class ServerProcess:
    """`python -m server ...` with its stderr read line by line on a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pegasus_gsg.server", *args],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for_line(self, pattern: str, timeout: float = 120) -> re.Match:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no log line matching {pattern!r}; got {self.log}") from None
            self.log.append(line)
            if match := re.search(pattern, line):
                return match

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._pump_thread.join(30)  # EOF once the process is gone; then the pipe can close
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.mark.slow
def test_sigterm_reports_not_serving_then_exits_cleanly(tiny_summarizer_dir):
    doc = fitting_docs(tiny_summarizer_dir, 1)[0]
    server = ServerProcess(
        "--model", str(tiny_summarizer_dir), "--port", "0", "--max-input-tokens", "128",
        "--drain-delay", "10", "--grace", "5", "--torch-threads", "1",
    )  # fmt: skip
    try:
        port = int(server.wait_for_line(r"listening on 127\.0\.0\.1:(\d+)").group(1))
        server.wait_for_line(r"serving ")
        target = f"127.0.0.1:{port}"
        with SummarizerClient(target, max_attempts=1) as client:
            assert client.health() == "SERVING"
            assert healthcheck.main(["--target", target]) == 0
            assert client.summarize(doc).summary
            server.proc.send_signal(signal.SIGTERM)
            # During the drain delay the server still answers, and says NOT_SERVING: the first
            # status after SERVING must be NOT_SERVING (not UNAVAILABLE: that would mean no
            # drain window). The 10 s window leaves room for a loaded machine.
            seen: list[str] = []
            wait_for(lambda: seen.append(client.health()) or seen[-1] != "SERVING", "SIGTERM")
            assert seen[-1] == "NOT_SERVING", seen
            assert healthcheck.main(["--target", target]) == 1
        assert server.proc.wait(60) == 0
        server.wait_for_line(r"stopped")
    finally:
        server.stop()


def test_healthcheck_fails_when_nothing_listens(capsys):
    assert healthcheck.main(["--target", "127.0.0.1:1", "--timeout", "2"]) == 1
    assert capsys.readouterr().out.strip() == "UNAVAILABLE"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("nope", "does not exist"),
        # what a container run without the model mounted sees: an empty /model volume
        ("empty", "has no config.json: expected a save_pretrained directory"),
    ],
)
def test_unusable_model_dir_fails_with_one_clear_line(tmp_path, name, message):
    model_dir = tmp_path / name
    if name == "empty":
        model_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pegasus_gsg.server", "--model", str(model_dir), "--port", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert f"could not load {model_dir}: model directory {model_dir} {message}" in errors[0]
    assert "Traceback" not in result.stderr
