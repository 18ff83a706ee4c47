"""The training loop end to end on CPU with real stores (pegasus_gsg/training/ and entry points).

Tiny model (d_model 32, one layer each side) and tokenizer (`tiny_tokenizer_dir`), real text
from ../shared/data, stores written by the real `pegasus-gsg prepare`.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _helpers_train import TINY_MODEL, aeslc_pairs, entry_argv, prepare_store, write_jsonl
from conftest import read_jsonl_slice

pytestmark = pytest.mark.slow

TINY = [
    *TINY_MODEL,
    "data.max_tokens=1024",
    "schedule.warmup_steps=0",
    "checkpoint.log_with=none",
    "checkpoint.log_every=1",
    "eval.every=0",
]


@pytest.fixture(scope="module")
def stores(tiny_tokenizer_dir, shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stores")
    train = write_jsonl(tmp / "train.jsonl", aeslc_pairs(160, "train"))
    dev = write_jsonl(tmp / "dev.jsonl", aeslc_pairs(24, "dev"))
    docs = write_jsonl(
        tmp / "docs.jsonl", [{"text": t} for t in read_jsonl_slice("reuters21578_en", 40, "text")]
    )
    return {
        "finetune": prepare_store("finetune", train, tiny_tokenizer_dir, tmp / "ft"),
        "validation": prepare_store("finetune", dev, tiny_tokenizer_dir, tmp / "dev"),
        "pretrain": prepare_store("pretrain", docs, tiny_tokenizer_dir, tmp / "pt"),
        "tokenizer": tiny_tokenizer_dir,
    }


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def finetune(stores, out: Path, *extra: str, resume: str | None = None):
    from pegasus_gsg import finetune as entry

    argv = entry_argv(stores["finetune"], stores["tokenizer"], out, *TINY, *extra)
    return entry.main(argv + (["--resume", resume] if resume else []))


def pretrain(stores, out: Path, *extra: str, resume: str | None = None):
    from pegasus_gsg import pretrain as entry

    argv = entry_argv(stores["pretrain"], stores["tokenizer"], out, *TINY, *extra)
    return entry.main(argv + (["--resume", resume] if resume else []))


def test_overfits_one_batch(stores, tmp_path):
    # Four pairs, a budget that holds them in one batch: every step sees the same batch.
    result = finetune(
        stores,
        tmp_path / "run",
        "data.max_samples=4",
        "data.max_tokens=4096",
        "model.dropout=0",
        "model.attention_dropout=0",
        "optim.lr=5e-3",
        "optim.weight_decay=0",
        "schedule.decay=constant",
        "schedule.max_steps=150",
    )
    history = losses(tmp_path / "run")
    assert len(history) == 150 and result.state.step == 150
    assert history[0] > math.log(1000) - 1.0  # starts near chance over a ~1000-id vocabulary
    assert history[-1] < 0.5, history[-10:]  # memorised: below 0.5 nats per target token


def test_resume_reproduces_the_uninterrupted_losses(stores, tmp_path):
    # Pretraining with MLM, dropout and two micro-batches per step, over several epochs of a
    # small corpus: resume must restore sampler position, epoch, RNG, optimizer and schedule.
    common = (
        "schedule.max_steps=20",
        "checkpoint.save_every=10",
        "optim.grad_accum=2",
        "data.mlm_prob=0.15",
        "data.max_tokens=512",
        "data.max_samples=24",
    )
    straight = pretrain(stores, tmp_path / "straight", *common)
    assert straight.state.epoch >= 2  # the resume point is not at an epoch start
    first = tmp_path / "interrupted"
    shutil.copytree(
        tmp_path / "straight" / "checkpoints" / "step_00000010",
        first / "checkpoints" / "step_00000010",
    )
    resumed = pretrain(stores, first, *common, resume="latest")
    full, tail = losses(tmp_path / "straight"), losses(first)
    assert len(full) == 20 and len(tail) == 10
    assert tail == pytest.approx(full[10:], rel=1e-6, abs=1e-7)
    assert resumed.state.epoch == straight.state.epoch
    assert resumed.state.batch_in_epoch == straight.state.batch_in_epoch
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError, match=r"different config \(optim.lr: 0.0003 -> 0.001\)"):
        pretrain(stores, first, *common, "optim.lr=1e-3", resume="latest")


def test_finetune_keeps_the_best_model_and_exports_a_loadable_one(stores, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    out = tmp_path / "ft"
    result = finetune(
        stores,
        out,
        "--validation",
        str(stores["validation"]),
        "schedule.max_steps=40",
        "eval.every=20",
        "eval.generate_samples=12",
        "eval.max_new_tokens=12",
        "optim.lr=3e-3",
        "optim.label_smoothing=0.1",
    )
    history = result.state.history
    assert [h["step"] for h in history] == [20, 40]
    # Every validation is also appended to eval.jsonl (what reports plot); metrics.jsonl keeps
    # one training row per log interval.
    assert [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()] == history
    assert all("loss" in json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())
    for h in history:
        assert all(0.0 <= h[k] <= 100.0 for k in ("rouge1", "rouge2", "rougeLsum"))
    # Learned something real (the loss includes label smoothing, worth ~0.6 nats here).
    assert history[-1]["val_loss"] < min(history[0]["val_loss"], math.log(1000) - 1.0)
    best = json.loads((out / "best" / "eval.json").read_text())
    assert best["rougeLsum"] == max(h["rougeLsum"] for h in history)
    for model_dir in (out / "model", out / "best"):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
        assert type(model).__name__ == "PegasusForConditionalGeneration"
        ids = tokenizer(["Please send me the draw file for Bishops Corner."], return_tensors="pt")
        summary = tokenizer.decode(model.generate(**ids)[0], skip_special_tokens=True)
        assert isinstance(summary, str)
    assert model.generation_config.max_new_tokens == 12
    saved = (out / "config.yaml").read_text()
    assert "label_smoothing: 0.1" in saved


def test_exported_pretrained_model_is_the_plain_class_and_feeds_finetuning(stores, tmp_path):
    from safetensors import safe_open

    result = pretrain(stores, tmp_path / "pt", "data.mlm_prob=0.15", "schedule.max_steps=3")
    with safe_open(str(tmp_path / "pt" / "model" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "mlm" in k]  # noqa: SIM118 (not a dict)
    assert "mlm_loss" in json.loads((tmp_path / "pt" / "metrics.jsonl").read_text().split("\n")[0])
    tuned = finetune(
        stores,
        tmp_path / "ft",
        "--init-from",
        str(tmp_path / "pt" / "model"),
        "schedule.max_steps=1",
    )
    assert tuned.state.step == 1
    assert result.model.config.d_model == 32


def test_profile_and_max_samples(stores, tmp_path):
    from pegasus_gsg.data import datasets as data

    seen: list[int] = []
    original = data.FinetuneDataset.__getitem__
    try:
        data.FinetuneDataset.__getitem__ = lambda self, i: (seen.append(i), original(self, i))[1]
        finetune(
            stores,
            tmp_path / "p",
            "--profile",
            "--max-samples",
            "10",
            "schedule.max_steps=6",
            "data.max_tokens=256",
        )
    finally:
        data.FinetuneDataset.__getitem__ = original
    assert seen and max(seen) < 10
    table = (tmp_path / "p" / "profile" / "top_operators.txt").read_text()
    assert "aten::" in table and "Self CPU" in table
    trace = json.loads((tmp_path / "p" / "profile" / "trace.json").read_text())
    assert trace["traceEvents"]


def test_log_line_format(stores, tmp_path, caplog):
    with caplog.at_level("INFO", logger="pegasus_gsg.training.loop"):
        finetune(stores, tmp_path / "l", "schedule.max_steps=2", "checkpoint.log_every=2")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 1
    parts = lines[0].split(" | ")
    assert parts[0] == "step 2/2" and parts[1].startswith("loss ") and parts[2].startswith("lr ")
    assert parts[3].endswith("tok/s") and parts[4].startswith("data wait ")


# --- bad input: one clear line, before any training ----------------------------------------


def run_cli_line(monkeypatch, capsys, argv: list[str]) -> str:
    from pegasus_gsg import finetune as entry
    from pegasus_gsg.training.entry import run_cli

    monkeypatch.setattr(sys, "argv", ["finetune", *argv])
    capsys.readouterr()  # drop what the test's own setup printed
    assert run_cli(entry.main, "pegasus_gsg.finetune") == 1
    lines = capsys.readouterr().err.strip().splitlines()
    # One error line, and it is the last thing printed (progress bars of model loading aside).
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return errors[0]


def base_argv(stores, out: Path) -> list[str]:
    return [
        "--train",
        str(stores["finetune"]),
        "--tokenizer",
        str(stores["tokenizer"]),
        "--out",
        str(out),
        *TINY,
        "schedule.max_steps=2",
    ]


def test_fp16_is_refused(stores, tmp_path, monkeypatch, capsys):
    err = run_cli_line(monkeypatch, capsys, [*base_argv(stores, tmp_path / "a"), "precision=fp16"])
    assert err.startswith("pegasus_gsg.finetune: error: config: precision='fp16' is refused")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # accelerate launch --mixed_precision
    err = run_cli_line(monkeypatch, capsys, base_argv(stores, tmp_path / "b"))
    assert "mixed precision fp16" in err and "refused" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_store_from_another_tokenizer_is_refused(stores, tmp_path, monkeypatch, capsys):
    from pegasus_gsg.data.tokenization import train_tokenizer

    other = tmp_path / "other_tokenizer"
    train_tokenizer(read_jsonl_slice("reuters21578_en", 100, "text"), vocab_size=600, out_dir=other)
    argv = base_argv(stores, tmp_path / "run")
    argv[argv.index("--tokenizer") + 1] = str(other)
    err = run_cli_line(monkeypatch, capsys, argv)
    assert f"token store {stores['finetune']} was written with tokenizer" in err
    assert not (tmp_path / "run").exists()


def test_vocab_model_mismatch_is_refused(stores, tmp_path, monkeypatch, capsys):
    from pegasus_gsg.data.tokenization import load_tokenizer
    from pegasus_gsg.training.config import EvalConfig, ModelConfig
    from pegasus_gsg.training.model import build_model, export, generation_config

    tokenizer = load_tokenizer(stores["tokenizer"])
    model = build_model(
        ModelConfig(d_model=32, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=64),
        len(tokenizer) + 50,
    )
    export(model, tokenizer, tmp_path / "wide", generation_config(EvalConfig()))
    err = run_cli_line(
        monkeypatch,
        capsys,
        [*base_argv(stores, tmp_path / "run"), "--init-from", str(tmp_path / "wide")],
    )
    assert (
        f"vocab/model mismatch: the tokenizer {stores['tokenizer']} has {len(tokenizer)} ids"
        f" but the model's embedding has {len(tokenizer) + 50} rows"
    ) in err
    assert not (tmp_path / "run").exists()


def test_resume_from_another_config_is_refused_before_training(
    stores, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    finetune(stores, out, "schedule.max_steps=3", "checkpoint.save_every=1", "checkpoint.keep=2")
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step_00000002", "step_00000003"]  # the keep limit deleted step 1
    before = (out / "metrics.jsonl").read_text()
    err = run_cli_line(
        monkeypatch, capsys, [*base_argv(stores, out), "model.d_model=64", "--resume", "latest"]
    )
    assert (
        "step_00000003: the checkpoint was written with a different config (model.d_model: 32 -> 64"
        in err
    )
    assert (out / "metrics.jsonl").read_text() == before  # nothing trained, nothing appended


def test_a_fresh_run_in_an_old_runs_out_is_refused_before_training(
    stores, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    finetune(stores, out, "schedule.max_steps=2", "checkpoint.save_every=2")
    before = (out / "metrics.jsonl").read_text()
    err = run_cli_line(monkeypatch, capsys, base_argv(stores, out))
    assert err == (
        f"pegasus_gsg.finetune: error: --out {out} already holds a run (step_00000002, "
        "metrics.jsonl): continue it with --resume latest, or start afresh in a new --out "
        "(or delete this one)"
    )
    assert (out / "metrics.jsonl").read_text() == before  # nothing trained, nothing appended
    # Only logged rows (a run killed before its first save) count as a run too.
    shutil.rmtree(out / "checkpoints")
    err = run_cli_line(monkeypatch, capsys, base_argv(stores, out))
    assert "already holds a run (metrics.jsonl)" in err


def test_missing_data_dir_is_refused(stores, tmp_path, monkeypatch, capsys):
    argv = base_argv(stores, tmp_path / "run")
    argv[argv.index("--train") + 1] = str(tmp_path / "nope")
    err = run_cli_line(monkeypatch, capsys, argv)
    assert err == (
        f"pegasus_gsg.finetune: error: data.train={tmp_path / 'nope'}: no such data "
        f"directory; create it with `pegasus-gsg prepare finetune --out "
        f"{tmp_path / 'nope'} ...`"
    )
    assert not (tmp_path / "run").exists()


def test_loss_is_normalised_by_the_real_target_tokens_of_the_whole_window(stores, tmp_path):
    """One step over two micro-batches equals one step on the window's mean token loss.

    AdamW's first update is lr * g / (|g| + eps); with eps = 1 >> |g| it is ~ lr * g, so it
    depends on the gradient's scale, and averaging per micro-batch (or dividing by the wrong
    count) would move the weights elsewhere.
    """
    from pegasus_gsg.data.collate import Seq2SeqCollator
    from pegasus_gsg.data.datasets import FinetuneDataset
    from pegasus_gsg.data.sampler import TokenBudgetBatchSampler
    from pegasus_gsg.data.store import TokenStore
    from pegasus_gsg.training.config import load_config
    from pegasus_gsg.training.model import Seq2SeqLossModel, build_model

    extra = (
        "schedule.max_steps=1",
        "optim.grad_accum=2",
        "model.dropout=0",
        "model.attention_dropout=0",
        "optim.grad_clip=0",
        "optim.weight_decay=0",
        "optim.eps=1",
        "optim.lr=0.5",
        "schedule.decay=constant",
        "seed=5",
    )
    trained = finetune(stores, tmp_path / "run", *extra).model

    cfg = load_config(None, [*TINY, *extra])
    dataset = FinetuneDataset(
        TokenStore.open(stores["finetune"]), max_input_len=128, max_target_len=32
    )
    sampler = TokenBudgetBatchSampler(dataset.lengths(), max_tokens=1024, seed=5)
    sampler.set_epoch(0)
    first, second = [Seq2SeqCollator()([dataset[i] for i in b]) for b in list(sampler)[:2]]
    counts = [int((b["labels"] != -100).sum()) for b in (first, second)]
    assert counts[0] != counts[1]  # otherwise per-batch averaging would be indistinguishable
    torch.manual_seed(5)  # what the entry point does before building the model
    model = Seq2SeqLossModel(build_model(cfg.model, trained.config.vocab_size))
    initial = [p.detach().clone() for p in model.model.parameters()]
    loss = (model(**first)["labels"] + model(**second)["labels"]) / sum(counts)
    loss.backward()
    torch.optim.AdamW(model.parameters(), lr=0.5, eps=1, weight_decay=0).step()
    named = list(model.model.named_parameters())
    for (name, ours), theirs, start in zip(named, trained.parameters(), initial, strict=True):
        expected, got = ours.detach() - start, theirs.detach() - start
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-7, msg=name)
    assert (
        max(float((p.detach() - s).abs().max()) for (_, p), s in zip(named, initial, strict=True))
        > 1e-4
    )


@pytest.mark.parametrize("decay", ["linear", "cosine", "inverse_sqrt", "constant"])
@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_optimizers_and_schedules(name, decay):
    from pegasus_gsg.training.config import load_config
    from pegasus_gsg.training.loop import _lr_scheduler, build_optimizer

    cfg = load_config(
        None,
        [
            f"optim.name={name}",
            f"schedule.decay={decay}",
            "schedule.warmup_steps=10",
            "schedule.max_steps=100",
            "optim.lr=1e-3",
        ],
    )
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(model, cfg.optim)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [cfg.optim.weight_decay, 0.0]
    assert len(optimizer.param_groups[0]["params"]) == 1  # only the matrix is decayed
    scheduler = _lr_scheduler(optimizer, cfg, 100)
    lrs = []
    for _ in range(100):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        lrs.append(scheduler.get_last_lr()[0])
    assert lrs[4] == pytest.approx(5e-4)  # halfway through the warmup
    assert lrs[9] == pytest.approx(1e-3)  # peak
    if decay == "constant":
        assert lrs[-1] == pytest.approx(1e-3)
    elif decay == "inverse_sqrt":
        assert lrs[-1] == pytest.approx(1e-3 * (10 / 100) ** 0.5, rel=0.05)
    else:
        assert lrs[-1] == pytest.approx(0.0, abs=1e-9)


def test_wall_clock_budget_stops_and_exports(stores, tmp_path):
    result = finetune(stores, tmp_path / "t", "schedule.max_steps=100000",
                      "schedule.max_minutes=0.0001")  # fmt: skip
    assert result.state.step == 1  # the budget is checked after each step
    assert (tmp_path / "t" / "model" / "model.safetensors").is_file()
    metrics = (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in metrics] == [1]


def test_stop_at_step_then_resume_is_the_straight_run(stores, tmp_path):
    # A staged run (a sweep candidate stopped early, then continued): the stop saves a
    # checkpoint off the save_every grid and exports; the continuation ends where one
    # uninterrupted run to max_steps ends, because the lr schedule always ran to max_steps.
    common = ("schedule.max_steps=12", "schedule.decay=linear", "schedule.warmup_steps=2",
              "checkpoint.save_every=5", "data.max_tokens=512", "data.max_samples=24")  # fmt: skip
    straight = finetune(stores, tmp_path / "straight", *common)
    staged = finetune(stores, tmp_path / "staged", *common, "schedule.stop_at_step=7")
    assert staged.state.step == 7
    assert (tmp_path / "staged" / "model" / "model.safetensors").is_file()
    saved = sorted(p.name for p in (tmp_path / "staged" / "checkpoints").iterdir())
    assert saved == ["step_00000005", "step_00000007"]
    assert losses(tmp_path / "staged") == pytest.approx(losses(tmp_path / "straight")[:7])
    resumed = finetune(stores, tmp_path / "staged", *common, resume="latest")
    assert resumed.state.step == 12
    assert losses(tmp_path / "staged") == pytest.approx(losses(tmp_path / "straight"), rel=1e-6)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resume_latest_steps_over_a_partial_checkpoint_and_cuts_the_logs(stores, tmp_path, caplog):
    """The state a kill inside a save used to leave: `step_N` without its run config (an older
    trainer saved in place), a staging directory, rows after the checkpoint and a torn line."""
    common = ("schedule.max_steps=6", "checkpoint.save_every=2", "checkpoint.keep=3")
    finetune(stores, tmp_path / "straight", *common)
    out = tmp_path / "killed"
    shutil.copytree(tmp_path / "straight", out)
    shutil.rmtree(out / "model")
    (out / "checkpoints" / "step_00000006" / "run_config.json").unlink()
    shutil.copytree(
        out / "checkpoints" / "step_00000004", out / "checkpoints" / ".tmp-step_00000008"
    )
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "loss": 1.0}\n{"step": 8, "lo')
    with caplog.at_level("WARNING", logger="pegasus_gsg.training.checkpoint"):
        result = finetune(stores, out, *common, resume="latest")
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "skipping " + str(out / "checkpoints" / "step_00000006") in warnings
    assert ".tmp-step_00000008" in warnings
    assert result.state.step == 6
    assert losses(out) == losses(tmp_path / "straight")  # steps 5, 6 again; 7 and torn 8 gone
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_00000002", "step_00000004", "step_00000006"]
    assert (out / "checkpoints" / "step_00000006" / "run_config.json").is_file()
    assert (out / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "straight" / "model" / "model.safetensors"
    ).read_bytes()


def test_truncate_log_refuses_a_file_it_did_not_write(tmp_path):
    from pegasus_gsg.training.checkpoint import truncate_log

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3')
    assert truncate_log(log, 1) == 2
    assert log.read_text() == '{"step": 1}\n'
    assert truncate_log(log, 5) == 0 and truncate_log(tmp_path / "absent.jsonl", 0) == 0
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected a JSON object with a 'step'"):
        truncate_log(log, 1)
    assert log.read_text() == '{"step": 1}\nnot json\n{"step": 3}\n'  # left as it was
