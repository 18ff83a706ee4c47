"""The demo in its shrunken mode: every stage, server included, on tiny slices of real data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from pegasus_gsg import demo
from pegasus_gsg.cli import main
from pegasus_gsg.demo import DemoOptions, run_demo
from pegasus_gsg.training.config import load_config


@pytest.mark.slow
def test_smoke_demo_runs_every_stage(shared_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    result = run_demo(DemoOptions(data_dir=shared_data, out=out, smoke=True, minutes=3))

    assert [s.name for s in result.stages] == [
        "tokenizer",
        "prepare",
        "pretrain",
        "finetune",
        "evaluate",
        "serve",
    ]
    # The exported model loads as a plain HF seq2seq model and generates.
    model_dir = out / "finetune" / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    assert type(model).__name__ == "PegasusForConditionalGeneration"
    ids = tok(["Please review the attached contract."], return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4).shape[0] == 1
    # Training really ran: losses are finite and logged for every step.
    for run in ("pretrain", "finetune"):
        rows = [json.loads(x) for x in (out / run / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows if "loss" in r]
        assert losses and all(math.isfinite(v) for v in losses)
    eval_lines = (out / "finetune" / "eval.jsonl").read_text().splitlines()
    val = [json.loads(x)["val_loss"] for x in eval_lines]
    assert val and all(math.isfinite(v) for v in val)
    # ROUGE report: three metrics, each a number in [0, 100] inside its interval.
    assert set(result.rouge) == {"rouge1", "rouge2", "rougeLsum"}
    for score in [*result.rouge.values(), *result.baseline.values()]:
        assert 0.0 <= score["low"] <= score["mid"] <= score["high"] <= 100.0
    assert set(result.baseline) == set(result.rouge)
    # Summaries came back over gRPC for unseen held-out emails.
    assert len(result.examples) == 2
    assert all(isinstance(e["generated"], str) for e in result.examples)
    held_out = {
        json.loads(x)["document"] for x in (out / "pairs_test.jsonl").read_text().splitlines()
    }
    train = {
        json.loads(x)["document"] for x in (out / "pairs_train.jsonl").read_text().splitlines()
    }
    assert not held_out & train
    report = (out / "report.md").read_text()
    assert "loss.png" in report and (out / "loss.png").stat().st_size > 1000
    assert (out / "rouge.png").stat().st_size > 1000
    assert "drained, exit 0" in report


def test_demo_without_data_says_what_to_pass(tmp_path: Path, capsys) -> None:
    code = main(["demo", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "--data-dir" in err and "--corpus FILE.jsonl" in err and "reuters21578_en" in err
    assert not (tmp_path / "o").exists()  # nothing written before the inputs were found


def test_lead_words_baseline_scores_the_first_words_of_each_evaluated_email(tmp_path: Path):
    from pegasus_gsg.demo import _lead_words_rouge

    held_out = [
        {
            "document": "Meeting moved to Friday at noon, see you",
            "summary": "Meeting moved to Friday",
        },
        {"document": "unused", "summary": "unused"},
        {"document": "Budget numbers for Q3 attached below", "summary": "gas prices"},
    ]
    (tmp_path / "pairs_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    evaluated = [
        {"index": 0, "reference": "Meeting moved to Friday"},
        {"index": 2, "reference": "gas prices"},
    ]
    (tmp_path / "preds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evaluated))
    scores = _lead_words_rouge(tmp_path / "preds.jsonl")
    # First five words "Meeting moved to Friday at": P 4/5, R 4/4, F 8/9; the other shares nothing.
    assert scores["rouge1"]["mid"] == pytest.approx(100 * (8 / 9) / 2)
    assert scores["rouge2"]["mid"] == pytest.approx(100 * (2 * 3 / 4 * 1) / (3 / 4 + 1) / 2)


def test_demo_hyperparameters_come_from_configs_and_the_options_override_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opts = DemoOptions(max_input_len=128, max_target_len=16, seed=7)
    overrides = demo._train_overrides(opts, 2.5)
    pre = load_config(demo.demo_config("demo_pretrain.yaml"), overrides)
    ft = load_config(demo.demo_config("demo_finetune.yaml"), overrides)
    # The stages differ only in what the files say; the options win over both files.
    assert (pre.optim.lr, pre.schedule.decay, pre.optim.label_smoothing) == (
        2e-3,
        "inverse_sqrt",
        0,
    )
    assert (ft.optim.lr, ft.schedule.decay, ft.optim.label_smoothing) == (1.5e-3, "constant", 0.1)
    assert (ft.eval.every, pre.eval.every) == (150, 0)
    for cfg in (pre, ft):
        assert (cfg.data.max_input_len, cfg.data.max_target_len, cfg.seed) == (128, 16, 7)
        assert cfg.model.max_position_embeddings == 128 and cfg.model.d_model == 64
        assert cfg.schedule.max_minutes == 2.5 and cfg.schedule.max_steps == 100_000
    smoke = load_config(
        demo.demo_config("demo_pretrain.yaml"),
        demo._train_overrides(DemoOptions(smoke=True), 1.0),
    )
    assert (smoke.schedule.max_steps, smoke.data.max_tokens) == (8, 2048)

    with pytest.raises(FileNotFoundError, match=r"no shipped config demo_nope\.yaml in .*configs"):
        demo.demo_config("demo_nope.yaml")
