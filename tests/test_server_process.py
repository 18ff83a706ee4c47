"""The server as a real process (pegasus_gsg.serving.process): health over its life, SIGTERM
drain, the healthcheck CLI, `pegasus-gsg serve`, and failures that surface the server's log."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from pegasus_gsg.server import healthcheck

from pegasus_gsg import cli
from pegasus_gsg.serving.client import SummarizerClient
from pegasus_gsg.serving.process import ServerProcess
from tests._server_helpers import MAX_INPUT_TOKENS, fitting_docs, running_server, wait_for

# The console script beside this interpreter (the venv's, as installed by `pip install`).
PEGASUS_GSG = Path(sys.executable).with_name("pegasus-gsg")


@pytest.mark.slow
def test_sigterm_reports_not_serving_then_exits_cleanly(tiny_summarizer_dir, tmp_path):
    doc = fitting_docs(tiny_summarizer_dir, 1)[0]
    log = tmp_path / "server.log"
    with ServerProcess(
        ["--model", str(tiny_summarizer_dir), "--port", "0", "--max-input-tokens", "128",
         "--drain-delay", "10", "--grace", "5", "--torch-threads", "1"],
        log=log,
    ) as server:  # fmt: skip
        target = server.wait_until_serving()
        assert server.host == "127.0.0.1" and target == f"127.0.0.1:{server.port}"
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
        assert server.wait(60) == 0
        assert server.wait_for_log(r"\bstopped\b")
    assert "serving " in log.read_text()  # the log file got the whole output


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
    with ServerProcess(["--model", str(model_dir), "--port", "0"]) as server:
        with pytest.raises(RuntimeError, match="exited with 1 before it was SERVING"):
            server.wait_until_serving()
        assert server.returncode == 1
    errors = [line for line in server.log_text.splitlines() if " ERROR " in line]
    assert len(errors) == 1, server.log_text
    assert f"could not load {model_dir}: model directory {model_dir} {message}" in errors[0]
    assert "Traceback" not in server.log_text


def test_a_command_that_never_listens_fails_quoting_its_output():
    script = "import sys; print('cannot start: no GPU here', file=sys.stderr); sys.exit(3)"
    server = ServerProcess([], command=[sys.executable, "-c", script])
    with server, pytest.raises(RuntimeError, match="exited with 3") as info:
        server.wait_until_serving(timeout=60)
    assert "cannot start: no GPU here" in str(info.value)
    with pytest.raises(RuntimeError, match="has not reported its port"):
        _ = server.address


def test_a_server_that_does_not_drain_is_killed_and_reported():
    script = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('listening on 127.0.0.1:1 (plaintext)', file=sys.stderr, flush=True); "
        "time.sleep(120)"
    )
    server = ServerProcess([], command=[sys.executable, "-c", script])
    server.wait_for_log("listening on")
    assert server.address == "127.0.0.1:1"
    with pytest.raises(RuntimeError, match="did not exit within 1 s and was killed") as info:
        server.stop(timeout=1)
    assert "listening on 127.0.0.1:1" in str(info.value)
    assert server.returncode == -signal.SIGKILL


def test_serve_help_lists_the_server_options(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pegasus-gsg serve ")
    assert "--max-batch-size" in out and "--backend" in out and "--drain-delay" in out


def test_serve_refuses_bad_settings_before_binding(tmp_path, capsys):
    code = cli.main(["serve", "--model", str(tmp_path), "--port", "70000"])
    assert code == 2
    assert (
        "pegasus-gsg serve: error: port must be in 0..65535, got 70000" in capsys.readouterr().err
    )


@pytest.mark.slow
def test_pegasus_gsg_serve_answers_like_the_in_process_server(tiny_summarizer_dir):
    docs = fitting_docs(tiny_summarizer_dir, 2)
    with running_server(tiny_summarizer_dir) as app, SummarizerClient(app.address) as client:
        expected = [client.summarize(d).summary for d in docs]
    args = ["serve", "--model", str(tiny_summarizer_dir), "--port", "0",
            "--max-input-tokens", str(MAX_INPUT_TOKENS), "--torch-threads", "1"]  # fmt: skip
    with ServerProcess(args, command=[str(PEGASUS_GSG)]) as server:
        with SummarizerClient(server.wait_until_serving(), max_attempts=1) as client:
            assert [client.summarize(d).summary for d in docs] == expected
            assert client.model_info().max_input_tokens == MAX_INPUT_TOKENS
        assert server.stop() == 0
    assert "stopped" in server.log_text
