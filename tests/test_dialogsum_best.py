"""The DialogSum recipe (experiments/dialogsum_best.py) end to end at its dry-run size, on the
real DialogSum, Reuters and QMSum text: pretraining and fine-tuning as 2 gloo processes, the
learning-rate sweep whose winner continues, decoding chosen on validation, the float16 release
with its model card, the LEAD-3 gate on shipping, and a rerun that skips every stage."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from experiments import dialogsum_best as best
from experiments.dialogsum.data import read_jsonl_rows
from experiments.pipeline import ROUGE_COLUMNS
from tests.conftest import SHARED_DATA


def test_turn_windows_keep_whole_turns_of_about_the_asked_length():
    transcript = "\n".join(f"A: {'word ' * 9}{i}" for i in range(10))  # 11 words per turn
    windows = best.turn_windows(transcript, 30)
    assert [w.count("\n") + 1 for w in windows] == [3, 3, 3, 1]
    assert "\n".join(windows) == transcript


def test_shipping_needs_a_higher_mean_than_every_baseline_on_every_metric():
    model = {m: {"mid": 30.0} for m, _ in ROUGE_COLUMNS}
    lead = {"scores": {m: {"mid": 27.0} for m, _ in ROUGE_COLUMNS}}
    words = {"scores": {**lead["scores"], "rouge2": {"mid": 30.5}}}
    assert best.above_every_baseline(model, [lead])
    assert not best.above_every_baseline(model, [lead, words])


def test_beats_needs_a_higher_mean_and_non_overlapping_intervals():
    lead = {m: {"low": 26.0, "mid": 27.0, "high": 28.0} for m, _ in ROUGE_COLUMNS}
    model = {
        "rouge1": {"low": 28.5, "mid": 29.5, "high": 30.5},  # clear
        "rouge2": {"low": 27.5, "mid": 28.5, "high": 29.5},  # higher, intervals overlap
        "rougeLsum": {"low": 20.0, "mid": 21.0, "high": 22.0},  # lower
    }
    assert best.beats(model, lead) == {"rouge1": True, "rouge2": False, "rougeLsum": False}


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_DATA / "qmsum_general" / "data.jsonl").is_file(), reason="shared data not present"
)
def test_recipe_dry_run_end_to_end(tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForSeq2SeqLM

    recipe = replace(best.Recipe.dry_run(), out=tmp_path / "out", docs=tmp_path / "docs",
                     data_dir=SHARED_DATA)  # fmt: skip
    ship = tmp_path / "shipped"
    report = best.run(recipe, ship=ship)
    out = recipe.out

    # Unlabelled text: dialogues, Reuters and QMSum windows, never a summary.
    windows = read_jsonl_rows(out / "data" / "qmsum_windows.jsonl")
    assert len(windows) == recipe.pretrain_docs and all(set(w) == {"text"} for w in windows)
    assert all(set(r) == {"text"} for r in read_jsonl_rows(out / "data" / "dialogues_train.jsonl"))

    # The sweep: every rate stopped at sweep_steps; the lowest validation loss continued to
    # finetune_steps in the same run directory (its checkpoint at the stop is there).
    sweep = report["sweep"]
    losses = {float(k): v for k, v in sweep["val_loss"].items()}
    assert sweep["chosen_lr"] == min(losses, key=losses.__getitem__)
    for lr in recipe.sweep_lrs:
        run_dir = out / "finetune" / f"lr{lr:g}"
        state = json.loads((run_dir / "train_state.json").read_text())
        won = lr == sweep["chosen_lr"]
        assert state["step"] == (recipe.finetune_steps if won else recipe.sweep_steps)
        assert (run_dir / "checkpoints" / f"step_{recipe.sweep_steps:08d}").is_dir()
    finetune_log = (out / "logs" / f"finetune_lr{sweep['chosen_lr']:g}.log").read_text()
    assert f"checkpoints/step_{recipe.sweep_steps:08d} at step {recipe.sweep_steps}" in finetune_log
    stopped = out / "finetune" / f"lr{sweep['chosen_lr']:g}" / "checkpoints" / "step_00000002"
    assert (stopped / "random_states_1.pkl").is_file()  # two processes trained it

    # Decoding chosen on validation; test decoded once with it, from the float16 release.
    grid = report["decoding"]["grid"]
    top = max(g["val_mean_rouge"] for g in grid)
    chosen = report["decoding"]["chosen"]
    first_top = next(g for g in grid if g["val_mean_rouge"] == top)
    assert {k: first_top[k] for k in chosen} == chosen
    test_stages = [s for s in report["stages"] if s["stage"] == "evaluate_test"]
    assert len(test_stages) == 1 and "release" in test_stages[0]["command"]
    assert f"--length-penalty {chosen['length_penalty']}" in test_stages[0]["command"]
    release = out / "release"
    with safe_open(str(release / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}  # noqa: SIM118
    model = AutoModelForSeq2SeqLM.from_pretrained(release)
    assert model.config.d_model == 32
    assert model.dtype == torch.float32  # float16 on disk, upcast when loaded
    generation = json.loads((release / "generation_config.json").read_text())
    assert {k: generation[k] for k in chosen} == chosen

    # The model card: Hugging Face front matter whose metrics are the test scores.
    card = (release / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "cc-by-nc-sa-4.0" and front["pipeline_tag"] == "summarization"
    metrics = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    scores = report["model"]["test"]["scores"]
    assert metrics == {m: round(scores[m]["mid"], 2) for m, _ in ROUGE_COLUMNS}
    assert "LEAD-" in card and "Limitations" in card

    # `pegasus-gsg evaluate` on the release reproduces the reported test scores.
    from pegasus_gsg.cli import main as cli

    again = tmp_path / "again.jsonl"
    assert cli(["evaluate", "--model", str(release), "--input", str(out / "data" / "test.jsonl"),
                "--max-input-len", str(recipe.max_input_len),
                "--max-new-tokens", str(recipe.max_target_len), "--backend", recipe.backend,
                "--out", str(again)]) == 0  # fmt: skip
    reproduced = json.loads(again.with_name(again.name + ".rouge.json").read_text())["scores"]
    assert reproduced == scores

    # A tiny model beats no baseline: not shipped.
    assert not report["beats_baselines"] and not report["beats_lead"]["all"]
    assert not ship.exists()
    assert report["estimate"] is None or "Log-linear fit" in report["estimate"]["text"]
    tables = (recipe.docs / "tables.md").read_text()
    assert "Above LEAD-" in tables and "Learning-rate sweep" in tables
    assert (recipe.docs / "samples.md").read_text().count("## test dialogue") == recipe.samples
    assert (recipe.docs / "rouge_vs_step.png").stat().st_size > 0

    # A rerun skips every stage and reports the same scores.
    rerun = best.run(recipe)
    assert all(s.get("skipped") for s in rerun["stages"])
    assert rerun["model"]["test"]["scores"] == scores
