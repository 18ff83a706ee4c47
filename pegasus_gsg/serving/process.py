"""A summarization server in a subprocess, started and stopped the way an orchestrator would.

`ServerProcess(args)` runs `python -m pegasus_gsg.server ARGS` (or another command that speaks
the same protocol and log line) and reads its output on a thread, into memory and optionally a
log file. `wait_until_serving()` learns the bound address from the server's
`listening on HOST:PORT` log line (so `--port 0` works), then polls the standard gRPC health
service until it answers SERVING (the server binds before it loads the model, so a bound port
is not yet a ready one). `stop()` sends SIGTERM and waits for the drain. Whenever the process
does not get where it was asked to -- it exits early, or time runs out -- the RuntimeError
carries the end of its log. Plaintext servers only (health is polled without TLS).

The demo, the benchmarks and the tests start their servers through this one class.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc

from pegasus_gsg.serving.client import SummarizerClient

SERVER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "pegasus_gsg.server")
"""The server as this interpreter runs it; `pegasus-gsg serve` is the same program."""
LISTENING = re.compile(r"listening on (\S+):(\d+)")
"""The log line a server writes once its port is bound."""
LOG_TAIL_LINES = 40
"""Lines of the server's log quoted in an error."""
_POLL_S = 0.2


class ServerProcess:
    """One server subprocess; use as a context manager (leaving it stops the server)."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        command: Sequence[str] = SERVER_COMMAND,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Start `command + args` now; stdout and stderr go to one stream (and to `log`)."""
        self.argv = [*command, *args]
        self.log_path = log
        self.host: str | None = None
        self.port: int | None = None
        self._lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
        self._reader = threading.Thread(target=self._read, name="server-log", daemon=True)
        self._reader.start()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- reading the log ------------------------------------------------------------------------

    def _read(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        log_file = self.log_path.open("w", encoding="utf-8") if self.log_path else None
        try:
            for line in stream:
                if log_file is not None:
                    log_file.write(line)
                    log_file.flush()
                with self._changed:
                    self._lines.append(line)
                    if self.port is None and (match := LISTENING.search(line)):
                        self.host, self.port = match.group(1), int(match.group(2))
                    self._changed.notify_all()
        finally:
            if log_file is not None:
                log_file.close()
            with self._changed:
                self._eof = True
                self._changed.notify_all()

    @property
    def log_text(self) -> str:
        """Everything the server has written so far."""
        with self._changed:
            return "".join(self._lines)

    def _tail(self) -> str:
        with self._changed:
            tail = "".join(self._lines[-LOG_TAIL_LINES:])
        where = f" ({self.log_path})" if self.log_path else ""
        return f"last lines of its log{where}:\n{tail}"

    def wait_for_log(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        """The first log line matching `pattern`, waiting for it up to `timeout` seconds.

        Raises:
            RuntimeError: no such line by then, or the output ended without one.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "its output ended" if self._eof else f"{timeout:.0f} s passed"
                    break
                self._changed.wait(left)
        raise RuntimeError(f"no log line matching {pattern!r}: {why}; {self._tail()}")

    # -- state ----------------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while the server runs."""
        return self.proc.poll()

    @property
    def address(self) -> str:
        """`host:port` to connect to (a wildcard bind is reached on the loopback address)."""
        if self.port is None or self.host is None:
            raise RuntimeError(f"{self._name()} has not reported its port yet")
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def _name(self) -> str:
        return " ".join(self.argv)

    def wait_until_serving(self, timeout: float = 300.0) -> str:
        """Wait for the bound port, then for health SERVING; returns `address`.

        Raises:
            RuntimeError: the server exited first, or `timeout` seconds passed; the message has
                its exit status and the end of its log.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.port is None and not self._eof and time.monotonic() < deadline:
                self._changed.wait(min(_POLL_S, max(0.0, deadline - time.monotonic())))
        if self.port is not None:
            with SummarizerClient(self.address, timeout=5.0, max_attempts=1) as client:
                while self.proc.poll() is None and time.monotonic() < deadline:
                    try:
                        if client.health() == "SERVING":
                            return self.address
                    except grpc.RpcError:
                        pass  # still binding the health service, or overloaded: ask again
                    time.sleep(_POLL_S)
        code = self.proc.poll()
        if code is None and self._eof:  # the output ends just before the exit is reported
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(10.0)
        if code is not None:
            self._reader.join(5.0)  # the rest of its output, for the message
            what = f"exited with {code} before it was SERVING"
        elif self._eof:
            what = "closed its output before it was SERVING"
        else:
            what = f"was not SERVING after {timeout:.0f} s"
        raise RuntimeError(f"{self._name()} {what}; {self._tail()}")

    # -- stopping -------------------------------------------------------------------------------

    def terminate(self) -> None:
        """Send SIGTERM (the server drains: NOT_SERVING, then in-flight requests finish)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit and its output to end; returns the exit status.

        Raises:
            RuntimeError: still running after `timeout` seconds (it is then killed).
        """
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(
                f"{self._name()} did not exit within {timeout:.0f} s and was killed; {self._tail()}"
            ) from None
        finally:
            self._close()
        return code

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then `wait`; returns the exit status (0 after a clean drain)."""
        self.terminate()
        return self.wait(timeout)

    def _close(self) -> None:
        self._reader.join(30.0)  # the pipe ends when the process does
        if self.proc.stdout is not None:
            self.proc.stdout.close()
