"""CI cannot pass by skipping (tests/conftest.py): each case runs pytest in a subprocess on a
small suite that uses this repository's conftest.py, with and without CI=true."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SUITE = """
import pytest

def test_runs():
    assert 1 + 1 == 2

def test_skips():
    pytest.skip("the frobnicator is not installed")
"""


def run_suite(tmp_path: Path, *, ci: bool, data: Path) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    shutil.copy(TESTS / "conftest.py", suite / "conftest.py")
    (suite / "test_example.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PEGASUS_GSG_DATA"] = str(data)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(suite)],
        capture_output=True,
        text=True,
        cwd=suite,
        env=env,
        timeout=120,
    )


def test_a_skip_not_on_the_allow_list_fails_ci_but_not_a_local_run(tmp_path):
    local = run_suite(tmp_path, ci=False, data=tmp_path)
    assert local.returncode == 0, local.stdout
    assert "1 passed, 1 skipped" in local.stdout

    ci = run_suite(tmp_path, ci=True, data=tmp_path)
    assert ci.returncode == 1, ci.stdout
    assert "CI: 1 test(s) skipped for a reason not on ALLOWED_SKIPS" in ci.stdout
    assert "test_example.py::test_skips: the frobnicator is not installed" in ci.stdout


def test_ci_without_the_data_directory_fails_at_once_naming_it(tmp_path):
    missing = tmp_path / "no-such-data"
    ci = run_suite(tmp_path, ci=True, data=missing)
    assert ci.returncode == pytest.ExitCode.USAGE_ERROR, ci.stdout + ci.stderr
    assert f"CI=true but the shared data directory {missing} is missing" in ci.stderr
    assert "passed" not in ci.stdout  # nothing ran

    local = run_suite(tmp_path, ci=False, data=missing)
    assert local.returncode == 0, local.stdout + local.stderr
