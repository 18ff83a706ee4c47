"""A NaN or infinite loss never reaches the weights (pegasus_gsg/training/loop.py).

The poison is patched in from here (`_helpers_train.poison_loss`: chosen training micro-batches
return NaN loss sums, whose gradients are NaN too), never through a hook in the library. The
records a message must name are computed independently, from the sampler the loop uses: the
k-th micro-batch of epoch 0 is `TokenBudgetBatchSampler(...)`'s k-th batch.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _helpers_train import (
    TINY_MODEL,
    aeslc_pairs,
    entry_argv,
    launch_two_ranks,
    poison_loss,
    prepare_store,
    write_jsonl,
)

pytestmark = pytest.mark.slow

TINY = [
    *TINY_MODEL,
    "data.max_tokens=1024",
    "schedule.warmup_steps=0",
    "schedule.max_steps=8",
    "checkpoint.log_with=none",
    "checkpoint.log_every=1",
    "eval.every=0",
]
RESUME_HINT = "(--max-nonfinite-steps N skips up to N such steps)"


@pytest.fixture(scope="module")
def stores(tiny_tokenizer_dir, shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nonfinite_stores")
    train = write_jsonl(tmp / "train.jsonl", aeslc_pairs(160, "train"))
    return {
        "train": prepare_store("finetune", train, tiny_tokenizer_dir, tmp / "ft"),
        "tokenizer": tiny_tokenizer_dir,
    }


def epoch0_batches(store: Path, max_tokens: int, replicas: int = 1, rank: int = 0):
    """The record lists this rank's loader yields in epoch 0, in order (seed 0)."""
    from pegasus_gsg.data.datasets import FinetuneDataset
    from pegasus_gsg.data.sampler import TokenBudgetBatchSampler
    from pegasus_gsg.data.store import TokenStore

    dataset = FinetuneDataset(TokenStore.open(store), max_input_len=128, max_target_len=32)
    sampler = TokenBudgetBatchSampler(
        dataset.lengths(),
        max_tokens=max_tokens,
        seed=0,
        num_replicas=replicas,
        rank=rank,
        drop_last=replicas > 1,
    )
    sampler.set_epoch(0)
    return list(sampler)


def finetune(stores, out: Path, *extra: str, resume: str | None = None):
    from pegasus_gsg import finetune as entry

    argv = entry_argv(stores["train"], stores["tokenizer"], out, *TINY, *extra)
    return entry.main(argv + (["--resume", resume] if resume else []))


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def poison(monkeypatch, calls: set[int], models: list | None = None) -> None:
    from pegasus_gsg.training.model import Seq2SeqLossModel

    monkeypatch.setattr(Seq2SeqLossModel, "forward", poison_loss(calls, models))


def test_a_nan_loss_stops_before_the_update_and_resume_continues(
    stores, tmp_path, monkeypatch, capsys
):
    from safetensors.torch import load_file

    from pegasus_gsg import finetune as entry
    from pegasus_gsg.training.entry import run_cli

    out = tmp_path / "run"
    models: list = []
    with monkeypatch.context() as patch:
        poison(patch, {5}, models)
        argv = entry_argv(stores["train"], stores["tokenizer"], out, *TINY)
        patch.setattr(sys, "argv", ["finetune", *argv, "checkpoint.save_every=2"])
        capsys.readouterr()
        assert run_cli(entry.main, "pegasus_gsg.finetune") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error" in line]
    records = epoch0_batches(stores["train"], 1024)[4]
    assert errors == [
        f"pegasus_gsg.finetune: error: step 5: loss is nan on records {records} (batch of "
        f"{len(records)} examples); stopped before the optimizer step; --resume latest continues "
        f"from the checkpoint of step 4 {RESUME_HINT}"
    ], lines
    assert lines[-1] == errors[0]

    # Nothing of step 5 was written: no checkpoint, no row, no exported model.
    assert checkpoints(out) == ["step_00000002", "step_00000004"]
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]
    assert not (out / "model").exists() and not (out / "train_state.json").exists()
    # The weights in memory when it stopped are exactly those of step 4: the NaN gradients of
    # step 5 never reached the optimizer (one AdamW step on them would make them all NaN).
    saved = load_file(out / "checkpoints" / "step_00000004" / "model.safetensors")
    live = models[0].state_dict()
    assert saved and all(torch.equal(live[name], tensor) for name, tensor in saved.items())

    # The data is fine again (the poison was transient): --resume latest finishes the run.
    resumed = finetune(stores, out, "checkpoint.save_every=2", resume="latest")
    assert resumed.state.step == 8 and resumed.state.nonfinite_skipped == 0
    assert [r["step"] for r in rows(out)] == list(range(1, 9))
    assert checkpoints(out) == ["step_00000004", "step_00000006", "step_00000008"]
    assert all(torch.isfinite(p).all() for p in resumed.model.parameters())


def test_only_the_poisoned_micro_batch_of_a_window_is_named(stores, tmp_path, monkeypatch):
    from pegasus_gsg.training.loop import NonFiniteLossError

    poison(monkeypatch, {3})  # the first micro-batch of step 2's window
    with pytest.raises(NonFiniteLossError) as err:
        finetune(stores, tmp_path / "run", "optim.grad_accum=2")
    records = epoch0_batches(stores["train"], 1024)[2]
    assert str(err.value) == (
        f"step 2: loss is nan on records {records} (batch of {len(records)} examples); stopped "
        f"before the optimizer step; no checkpoint yet, --resume latest starts from step 0 "
        f"{RESUME_HINT}"
    )
    assert [r["step"] for r in rows(tmp_path / "run")] == [1]


def test_max_nonfinite_steps_skips_and_counts_then_fails_on_one_more(
    stores, tmp_path, monkeypatch, caplog
):
    from pegasus_gsg.training.loop import NonFiniteLossError

    batches = epoch0_batches(stores["train"], 1024)
    clean = rows(finetune(stores, tmp_path / "clean").out_dir)
    with monkeypatch.context() as patch:
        poison(patch, {3, 6})
        with caplog.at_level("INFO", logger="pegasus_gsg.training.loop"):
            result = finetune(stores, tmp_path / "skip", "--max-nonfinite-steps", "2")
    # Skipped steps are not optimizer steps: 8 steps took 10 micro-batches, the lr schedule
    # did not advance on the skipped ones, and their NaN gradients were dropped.
    assert result.state.step == 8 and result.state.nonfinite_skipped == 2
    assert result.state.epoch == 0 and result.state.batch_in_epoch == 10
    skipped = rows(tmp_path / "skip")
    assert [(r["step"], r["nonfinite_skipped"]) for r in skipped] == [
        (1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2), (7, 2), (8, 2)
    ]  # fmt: skip
    assert [r["lr"] for r in skipped] == [r["lr"] for r in clean]
    assert [r["loss"] for r in skipped[:2]] == [r["loss"] for r in clean[:2]]
    assert all(math.isfinite(r["loss"]) for r in skipped)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    messages = [r.getMessage() for r in caplog.records]
    warnings = [m for m in messages if "skipped: no optimizer step" in m]
    assert warnings == [
        f"step 3: loss is nan on records {batches[2]} (batch of {len(batches[2])} examples); "
        "skipped: no optimizer step (1 of optim.max_nonfinite_steps=2)",
        f"step 5: loss is nan on records {batches[5]} (batch of {len(batches[5])} examples); "
        "skipped: no optimizer step (2 of optim.max_nonfinite_steps=2)",
    ]
    log_lines = [m for m in messages if m.startswith("step ") and " | " in m]
    assert log_lines[1].startswith("step 2/8 |") and "skipped" not in log_lines[1]
    assert log_lines[2].startswith("step 3/8 |")
    assert log_lines[2].endswith(" | skipped 1 non-finite")
    assert log_lines[-1].endswith(" | skipped 2 non-finite")

    # A third one is one too many.
    poison(monkeypatch, {3, 6, 9})
    with pytest.raises(NonFiniteLossError) as err:
        finetune(stores, tmp_path / "fail", "--max-nonfinite-steps", "2")
    assert str(err.value).startswith(
        f"step 7: loss is nan on records {batches[8]} (batch of {len(batches[8])} examples); "
        "stopped before the optimizer step: more than optim.max_nonfinite_steps=2; "
    )
    assert [r["step"] for r in rows(tmp_path / "fail")] == [1, 2, 3, 4, 5, 6]


def test_two_processes_a_nan_on_rank_1_stops_both(stores, tmp_path):
    """Only rank 1's third micro-batch is NaN; both ranks must stop at step 3 (had rank 0 gone
    on to its optimizer step, it would wait forever in the next all-reduce)."""
    out, audit = tmp_path / "out", tmp_path / "audit"
    argv = entry_argv(
        stores["train"],
        stores["tokenizer"],
        out,
        *TINY,
        "data.max_tokens=256",
        "checkpoint.save_every=2",
    )
    proc = launch_two_ranks(audit, "finetune", argv, fault="nan_loss:3:1", timeout=300)
    assert proc.returncode != 0
    records = epoch0_batches(stores["train"], 256, replicas=2, rank=1)[2]
    expected = (
        f"step 3: loss is nan on records {records} (batch of {len(records)} examples on rank 1); "
        "stopped before the optimizer step; --resume latest continues from the checkpoint of "
        f"step 2 {RESUME_HINT}"
    )
    for rank in (0, 1):
        got = json.loads((audit / f"rank{rank}.json").read_text())
        assert got == {"error": f"NonFiniteLossError: {expected}"}, rank
    assert f"pegasus_gsg.finetune: error: {expected}" in proc.stderr.splitlines()
    assert checkpoints(out) == ["step_00000002"]
    assert [r["step"] for r in rows(out)] == [1, 2]
