"""Two real processes (gloo on CPU) through `accelerate launch`: DDP training as users run it.

Each rank writes into its own `--out BASE/rank<N>` (tests/_helpers_train.py), so the test sees
exactly which process wrote which file, and records which examples it loaded and a digest of
its final parameters.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _helpers_train import aeslc_pairs, param_digest, prepare_store, write_jsonl

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_disjoint_data_identical_parameters_rank0_writes(
    tiny_tokenizer_dir, shared_data, tmp_path
):
    store = prepare_store(
        "finetune",
        write_jsonl(tmp_path / "pairs.jsonl", aeslc_pairs(160)),
        tiny_tokenizer_dir,
        tmp_path / "store",
    )
    base, audit = tmp_path / "out", tmp_path / "audit"
    cmd = [
        sys.executable,  # `accelerate launch`, without relying on the console script's path
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(REPO / "tests" / "_helpers_train.py"),
        str(audit),
        "finetune",
        "--train",
        str(store),
        "--tokenizer",
        str(tiny_tokenizer_dir),
        "--out",
        str(base),
        "model.d_model=32",
        "model.encoder_layers=1",
        "model.decoder_layers=1",
        "model.attention_heads=2",
        "model.ffn_dim=64",
        "model.max_position_embeddings=256",
        "data.max_input_len=128",
        "data.max_target_len=32",
        "data.max_tokens=256",
        "schedule.max_steps=6",
        "optim.grad_accum=2",
        "checkpoint.save_every=3",
        "checkpoint.log_every=2",
        "checkpoint.log_with=tensorboard",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    ranks = [json.loads((audit / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 6 steps x 2 micro-batches each, on each rank.
    assert all(r["steps"] == 6 for r in ranks)
    seen0, seen1 = set(ranks[0]["indices"]), set(ranks[1]["indices"])
    assert seen0 and seen1
    # Still in the first epoch, so no example may have been seen by both ranks.
    assert json.loads((base / "rank0" / "train_state.json").read_text())["epoch"] == 0
    assert not seen0 & seen1
    # Parameters identical on both ranks after 6 DDP steps, and equal to the exported model.
    assert ranks[0]["digest"] == ranks[1]["digest"]
    from transformers import AutoModelForSeq2SeqLM

    exported = AutoModelForSeq2SeqLM.from_pretrained(base / "rank0" / "model")
    assert param_digest(exported) == ranks[0]["digest"]

    # Rank 0 wrote the run's files; rank 1 only its own RNG state inside each checkpoint.
    rank1_files = sorted(
        p.relative_to(base / "rank1").as_posix() for p in (base / "rank1").rglob("*") if p.is_file()
    )
    assert rank1_files == [
        "checkpoints/step_00000003/random_states_1.pkl",
        "checkpoints/step_00000006/random_states_1.pkl",
    ]
    rank0 = base / "rank0"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "model/model.safetensors",
        "model/tokenizer.json",
        "checkpoints/step_00000006/model.safetensors",
        "checkpoints/step_00000006/random_states_0.pkl",
    ):
        assert (rank0 / name).is_file(), name
    assert list((rank0 / "tensorboard").rglob("events.out.tfevents.*"))
    # One row per log interval, written by rank 0 only.
    rows = [json.loads(line) for line in (rank0 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
