"""A real 2-node Ray cluster on this machine for tests: `ray start --head` and a second
`ray start --address` node, each with 1 CPU, an 80 MB object store and ports of its own, in a
temporary directory of its own; every process they started is stopped on exit (also on failure).

Processes are found by that temporary directory in their command line, so a test never touches
another Ray instance on the machine (no `ray stop`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's minimum is 75 MiB
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RayCluster:
    address: str
    temp_dir: str
    head: subprocess.Popen | None
    second: subprocess.Popen | None

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster (found by its temp dir, plus the `ray start`s)."""
        found = {}
        for proc in psutil.process_iter(["cmdline"]):
            if any(self.temp_dir in arg for arg in proc.info["cmdline"] or []):
                found[proc.pid] = proc
        for starter in (self.head, self.second):
            if starter is None:
                continue
            try:
                parent = psutil.Process(starter.pid)
                for proc in [parent, *parent.children(recursive=True)]:
                    found[proc.pid] = proc
            except psutil.NoSuchProcess:
                pass
        return list(found.values())

    def second_node_task_workers(self, function: str) -> list[psutil.Process]:
        """Worker processes of the second node now running `function` (`ray::NAME` title)."""
        try:
            assert self.second is not None
            tree = psutil.Process(self.second.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for proc in tree:
            try:
                if " ".join(proc.cmdline()).startswith(f"ray::{function}"):
                    out.append(proc)
            except psutil.NoSuchProcess:
                pass
        return out


def _node_args(temp_dir: str) -> list[str]:
    return [
        "--num-cpus=1",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--temp-dir={temp_dir}",
        "--node-ip-address=127.0.0.1",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        "--disable-usage-stats",
        "--block",
    ]


def _wait_for_nodes(address: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    script = (
        f"import ray; ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120
        )
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not reach {count} nodes")


@contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    temp_dir = tempfile.mkdtemp(prefix="pgray", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = Path(temp_dir) / "start.log"
    head: subprocess.Popen | None = None
    second: subprocess.Popen | None = None
    try:
        with log.open("ab") as out:
            head = subprocess.Popen(
                [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                 f"--ray-client-server-port={free_port()}", *_node_args(temp_dir)],
                env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            _wait_for_nodes(address, 1, 120)
            second = subprocess.Popen(
                [RAY, "start", f"--address={address}", *_node_args(temp_dir)],
                env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            _wait_for_nodes(address, 2, 120)
        yield RayCluster(address, temp_dir, head, second)
    finally:
        _stop(RayCluster(address, temp_dir, head, second))


def _stop(cluster: RayCluster) -> None:
    left = cluster.processes()
    starters = [p for p in (cluster.second, cluster.head) if p is not None]
    for starter in starters:  # `ray start --block` stops its node's processes on SIGTERM
        starter.terminate()
    for starter in starters:
        try:
            starter.wait(30)
        except subprocess.TimeoutExpired:
            starter.kill()
            starter.wait()
    _, alive = psutil.wait_procs(left, timeout=10)
    for proc in [*alive, *cluster.processes()]:
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)
