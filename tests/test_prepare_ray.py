"""`prepare --engine ray` on a real 2-node Ray cluster (tests/_ray_cluster.py): worker processes
of the second node killed mid-run, and still the store set `--engine local` writes, byte for
byte; an unreachable cluster address is one clear error."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

pytest.importorskip("ray")

from pegasus_gsg.cli import main
from pegasus_gsg.data.datasets import ExampleOptions, PretrainingDataset
from pegasus_gsg.data.store import SET_MANIFEST, TokenStore
from tests._ray_cluster import ENV, free_port, ray_cluster
from tests.conftest import REPO_ROOT, read_jsonl_slice


def tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_worker_kills_on_a_2_node_cluster_give_the_local_store_set(tmp_path, tiny_tokenizer_dir):
    source = tmp_path / "reuters.jsonl"
    records = read_jsonl_slice("reuters21578_en", 1200)
    source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    common = [
        "prepare", "pretrain", "--input", str(source), "--tokenizer", str(tiny_tokenizer_dir),
        "--rows-per-shard", "100", "--no-progress",
    ]  # fmt: skip
    local = tmp_path / "local"
    assert main([*common, "--out", str(local), "--num-proc", "2"]) == 0

    out = tmp_path / "ray"
    with ray_cluster() as cluster:
        temp_dir = cluster.temp_dir
        command = [sys.executable, "-m", "pegasus_gsg", *common, "--out", str(out)]
        command += ["--engine", "ray", "--ray-address", cluster.address]
        driver = subprocess.Popen(
            command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        killed = 0
        deadline = time.monotonic() + 300
        shards = tmp_path / "ray.partial" / "shards"
        # Mid-run: once a shard is finished, kill -9 every second-node worker running a unit,
        # three times over (each kill loses that task's work; Ray runs it again).
        while driver.poll() is None and killed < 3 and time.monotonic() < deadline:
            if any(shards.glob("*/manifest.json")):
                for worker in cluster.second_node_task_workers("_call_unit"):
                    worker.kill()
                    killed += 1
            time.sleep(0.02)
        stdout, stderr = driver.communicate(timeout=300)
    assert killed >= 1, "no task ran on the second node while the job ran"
    assert driver.returncode == 0, stderr.decode()[-3000:]
    assert "prepared pretrain store set (12 shards)" in stdout.decode()
    # Every process the cluster started is gone.
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(temp_dir in arg for arg in p.info["cmdline"] or [])
    ]
    assert leftovers == []

    ours, theirs = (
        json.loads((out / SET_MANIFEST).read_text()),
        json.loads((local / SET_MANIFEST).read_text()),
    )
    assert ours["checksum"] == theirs["checksum"]
    assert tree_bytes(out) == tree_bytes(local)  # tokens, rankings, scores, manifests
    a, b = TokenStore.open(out), TokenStore.open(local)
    options = ExampleOptions()
    loader_a = PretrainingDataset(a, options, vocab_size=a.vocab_size, seed=1)
    loader_b = PretrainingDataset(b, options, vocab_size=b.vocab_size, seed=1)
    for i in range(0, 1200, 97):
        for key, value in loader_a[i].items():
            assert np.array_equal(np.asarray(value), np.asarray(loader_b[i][key]))


def test_an_unreachable_ray_address_is_one_clear_error(tmp_path, tiny_tokenizer_dir) -> None:
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl_slice("reuters21578_en", 5)))
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "set"
    done = subprocess.run(
        [sys.executable, "-m", "pegasus_gsg", "prepare", "pretrain", "--input", str(source),
         "--tokenizer", str(tiny_tokenizer_dir), "--out", str(out), "--engine", "ray",
         "--ray-address", address],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(
        f"pegasus-gsg prepare: error: cannot reach the Ray cluster at {address} ("
    )
    assert not out.exists() and not (tmp_path / "set.partial").exists()
