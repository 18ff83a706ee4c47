"""The experiment scripts' pure logic: pair deduplication, nested samples, result tables,
and stage skipping (experiments/pipeline.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import dialogsum
from experiments.pipeline import (
    REPO,
    StageRunner,
    Task,
    dedup_pairs,
    distinct_rate,
    results_table,
    run_tasks,
    seeded_sample,
)
from tests.conftest import SHARED_DATA


def _pair(doc: str, split: str, summary: str = "s") -> dict:
    return {"document": doc, "summary": summary, "split": split}


def test_dedup_keeps_each_document_once_and_training_side_first():
    records = [
        _pair("a", "test"),
        _pair("a ", "train"),  # same body up to surrounding whitespace: train keeps it
        _pair("b", "train"),
        _pair("b", "train"),
        _pair("c", "test"),
        _pair("c", "test"),
        _pair("d", "dev"),  # neither split: ignored
        _pair("", "train"),
        _pair("e", "test", summary="  "),
    ]
    pairs = dedup_pairs(records)
    assert [r["document"] for r in pairs.train] == ["a ", "b"]
    assert [r["document"] for r in pairs.test] == ["c"]
    assert pairs.duplicates == 3  # a (test copy of train), b, c
    assert pairs.empty == 2


@pytest.mark.skipif(
    not (SHARED_DATA / "aeslc" / "data.jsonl").is_file(), reason="shared data not present"
)
def test_dedup_on_real_aeslc_leaves_no_test_body_in_train():
    text = (SHARED_DATA / "aeslc" / "data.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines()]
    pairs = dedup_pairs(rows)
    train_bodies = {r["document"].strip() for r in pairs.train}
    test_bodies = [r["document"].strip() for r in pairs.test]
    assert not train_bodies & set(test_bodies)
    assert len(test_bodies) == len(set(test_bodies))
    # The released train+test splits repeat bodies; all of them must have been counted.
    n_in = sum(r["split"] in ("train", "test") for r in rows)
    assert len(pairs.train) + len(pairs.test) + pairs.duplicates + pairs.empty == n_in
    assert pairs.duplicates > 0


def test_seeded_sample_is_nested_reproducible_and_checked():
    rows = list(range(50))
    big = seeded_sample(rows, 20, seed=3)
    assert seeded_sample(rows, 5, seed=3) == big[:5]
    assert seeded_sample(rows, 20, seed=3) == big
    assert seeded_sample(rows, 20, seed=4) != big
    assert len(set(big)) == 20
    with pytest.raises(ValueError, match="only 50"):
        seeded_sample(rows, 51, seed=0)


def _score(mid: float) -> dict:
    return {"low": mid - 1, "mid": mid, "high": mid + 1}


def _row(examples: int, init: str, r1: float, r2: float, rl: float) -> dict:
    scores = {"rouge1": _score(r1), "rouge2": _score(r2), "rougeLsum": _score(rl)}
    return {"examples": examples, "init": init, "scores": scores}


def test_results_table_bolds_the_best_per_group_and_metric():
    results = [
        _row(100, "random", 10.0, 10.0, 10.0),
        _row(100, "gsg", 12.0, 3.0, 9.0),
        _row(1000, "random", 5.0, 5.0, 5.0),
    ]
    header, rows = results_table(results, ["examples", "init"], {"examples": "train pairs"})
    assert header == ["train pairs", "init", "R-1", "R-2", "R-Lsum"]
    best, plain = "**10.0 [9.0, 11.0]**", "10.0 [9.0, 11.0]"
    assert rows[0] == ["100", "random", plain, best, best]
    assert rows[1][2] == "**12.0 [11.0, 13.0]**" and rows[1][3] == "3.0 [2.0, 4.0]"
    # the 1000 group has one row: it is the best of its own group
    assert rows[2][2] == "**5.0 [4.0, 6.0]**"


def test_stage_runner_skips_finished_stages_and_reports_failures(tmp_path):
    runner = StageRunner(tmp_path / "exp", threads=1)
    marker = tmp_path / "count.txt"
    cmd = [sys.executable, "-c", f"p=open({str(marker)!r},'a'); p.write('x')"]
    first = runner.run("touch", cmd)
    second = runner.run("touch", cmd)
    assert marker.read_text() == "x"  # the second call did not run the command
    assert second["skipped"] and second["command"] == first["command"]
    assert json.loads((tmp_path / "exp" / "done" / "touch.json").read_text())["seconds"] >= 0
    with pytest.raises(RuntimeError, match="stage boom failed with exit 3"):
        runner.run("boom", [sys.executable, "-c", "import sys; sys.exit(3)"])
    assert runner.done("boom") is None  # a failed stage is not marked done


def test_run_tasks_respects_dependencies_and_stops_on_failure():
    order: list[str] = []
    tasks = [
        Task("late", lambda: order.append("late"), after=("early",)),
        Task("early", lambda: order.append("early") or 7),
        Task("free", lambda: order.append("free")),
    ]
    results = run_tasks(tasks, workers=2)
    assert order.index("early") < order.index("late") and sorted(order) == sorted(results)
    assert results["early"] == 7

    def boom() -> None:
        raise RuntimeError("stage x failed")

    ran: list[str] = []
    with pytest.raises(RuntimeError, match="stage x failed"):
        run_tasks([Task("x", boom), Task("y", lambda: ran.append("y"), after=("x",))], 1)
    assert ran == []  # nothing waiting on a failed task starts
    with pytest.raises(ValueError, match="unknown tasks"):
        run_tasks([Task("a", lambda: None, after=("nope",))], 1)


def test_distinct_rate_counts_predictions_nobody_else_wrote():
    assert distinct_rate(["a", "b", "c", "d"]) == 1.0
    assert distinct_rate(["a", "a ", "b", "c"]) == 0.5  # the two "a" are not distinct
    assert distinct_rate(["same"] * 5) == 0.0
    with pytest.raises(ValueError):
        distinct_rate([])


def test_gsg_extract_picks_the_turn_that_shares_most_with_the_rest():
    dialogue = _dialogue(0)
    turns = dialogsum.turns(dialogue)
    assert dialogsum.lead_k(dialogue, 2) == "\n".join(turns[:2])
    # gsr 0.1 of 10 turns = 1 turn: the fruit turn, whose words recur in every other turn
    assert dialogsum.gsg_extracts([dialogue], [0.1, 0.2])[0.1] == [turns[3]]
    assert dialogsum.first_words("a b  c\nd e", 4) == "a b c d"


FRUIT = ["apple", "banana", "cherry", "grape", "lemon", "mango", "olive", "peach", "plum"]


def _dialogue(i: int) -> str:
    """10 turns; turn 3 holds all the fruit words that the other turns each repeat once, so
    Ind-Orig ranks it first. LEAD-1 gives turn 0."""
    lines = []
    for t in range(10):
        if t == 3:
            lines.append(f"#Person1#: {' '.join(FRUIT)} basket{i}.")
        else:
            who = "#Person1#" if t % 2 == 0 else "#Person2#"
            lines.append(f"{who}: {FRUIT[t % len(FRUIT)]} w{i}x{t} v{i}y{t} chat{t}.")
    return "\n".join(lines)


def _synthetic_dialogsum(root: Path) -> Path:
    """DialogSum-shaped pairs whose validation and test splits prefer different baselines:
    validation summaries are turn 0, read exactly by LEAD-1 and best by the smallest gsr (one
    turn); test summaries are the whole dialogue, best read by the largest k and gsr."""
    rows = []
    for i in range(60):
        doc = _dialogue(i)
        turns = doc.split("\n")
        rows.append({"id": f"train_{i}", "split": "train", "document": doc,
                     "summary": f"{turns[0]}\n{turns[3]}"})  # fmt: skip
    for i in range(60, 70):
        doc = _dialogue(i)
        rows.append({"id": f"dev_{i}", "split": "validation", "document": doc,
                     "summary": doc.split("\n")[0]})  # fmt: skip
    for i in range(70, 80):
        doc = _dialogue(i)
        rows.append({"id": f"test_{i}", "split": "test", "document": doc, "summary": doc})
    (root / "dialogsum").mkdir(parents=True)
    (root / "samsum_test").mkdir()
    with (root / "dialogsum" / "data.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with (root / "samsum_test" / "data.jsonl").open("w") as f:
        for i in range(6):
            f.write(json.dumps({"id": str(i), "split": "test", "document": _dialogue(100 + i),
                                "summary": f"Person1 talks about fruit {i}."}) + "\n")  # fmt: skip
    (root / "reuters21578_en").symlink_to(SHARED_DATA / "reuters21578_en")
    return root


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_DATA / "reuters21578_en" / "data.jsonl").is_file(), reason="shared data not present"
)
def test_dialogsum_dry_run_end_to_end(tmp_path):
    """The study's whole plumbing at tiny size: stores, pretraining, fine-tuning, decoding with
    a length penalty chosen on validation, baselines chosen on validation, restart-skip."""
    from dataclasses import replace

    out = tmp_path / "out"
    plan = replace(
        dialogsum.Plan.dry_run(),
        data_dir=_synthetic_dialogsum(tmp_path / "data"),
        out=out,
        docs=tmp_path / "docs",
        low_steps=((8, 2),),
        low_minutes=((8, 1.0),),
        gsrs=(0.1, 0.3, 0.5),
        lead_ks=(1, 4, 10),
    )
    report = dialogsum.run(plan)

    # Baselines: k and gsr come from validation, where LEAD-1 and gsr 0.1 are exact; on the
    # test split the largest k / gsr would have won.
    base = report["baselines"]
    assert base["chosen"] == {"lead_k": 1, "gsr": 0.1}
    test_rows = dialogsum.read_jsonl_rows(out / "data" / "test.jsonl")
    docs, refs = [r["document"] for r in test_rows], [r["summary"] for r in test_rows]
    assert dialogsum.mean_rouge([dialogsum.lead_k(d, 10) for d in docs], refs) > (
        dialogsum.mean_rouge([dialogsum.lead_k(d, 1) for d in docs], refs)
    )
    gsg_test = dialogsum.gsg_extracts(docs, [0.1, 0.5])
    assert dialogsum.mean_rouge(gsg_test[0.5], refs) > dialogsum.mean_rouge(gsg_test[0.1], refs)
    names = {r["model"] for r in base["results"] if r["split"] == "test"}
    assert {"LEAD-1", "GSG Ind-Orig extract (gsr 0.1)", "first words, gold length"} == names

    # Models: the full-data pair (also on SAMSum) and low-resource runs for both seeds.
    models = {m["key"]: m for m in report["models"]}
    assert set(models) == {"full_random", "full_ind_orig", "low_8_random_seed0",
                           "low_8_random_seed1", "low_8_ind_orig_seed0",
                           "low_8_ind_orig_seed1"}  # fmt: skip
    for key, m in models.items():
        by_lp = m["length_penalty_validation"]
        assert m["length_penalty"] == dialogsum.choose({float(k): v for k, v in by_lp.items()})
        preds = [
            r["prediction"] for r in dialogsum.read_jsonl_rows(REPO / m["test"]["predictions"])
        ]
        assert len(preds) == len(test_rows)
        assert m["test"]["distinct"] == distinct_rate(preds)
        # test decoded once, with the validation-chosen length penalty
        test_stages = [s for s in report["stages"] if s["stage"].startswith(f"evaluate_{key}_test")]
        assert len(test_stages) == 1
        assert f"--length-penalty {m['length_penalty']}" in test_stages[0]["command"]
    assert (
        "samsum_test" in models["full_random"] and "samsum_test" not in models["low_8_random_seed0"]
    )

    # The seed changes the sample of pairs and the training RNG.
    s0 = dialogsum.read_jsonl_rows(out / "data" / "train_8_seed0.jsonl")
    s1 = dialogsum.read_jsonl_rows(out / "data" / "train_8_seed1.jsonl")
    assert [r["id"] for r in s0] != [r["id"] for r in s1]
    assert "seed: 1" in (out / "finetune" / "low_8_random_seed1" / "config.yaml").read_text()
    # The pretrained runs start from the pretraining output; the tokenizer never saw a summary.
    assert all(
        "summary" not in r
        for r in dialogsum.read_jsonl_rows(out / "data" / "dialogues_train.jsonl")
    )
    low = {(r["examples"], r["init"]): r for r in report["low_resource_summary"]}
    assert low[(8, "random init")]["seeds"] == [0, 1]
    assert (tmp_path / "docs" / "samples.md").read_text().count("## test dialogue") == plan.samples

    # ROUGE against fine-tuning time: every checkpoint of the full run is decoded; the last
    # one holds the exported model's weights, so it writes the model's own test predictions.
    from experiments import dialogsum_curve

    curve = dialogsum_curve.curve(plan, "full_random", out / "finetune" / "full_random" /
                                  "checkpoints", n=4)  # fmt: skip
    assert [p["step"] for p in curve["points"]] == [1, 2, 3]
    assert all(p["minutes"] >= 0 for p in curve["points"])
    final_preds = dialogsum.read_jsonl_rows(REPO / models["full_random"]["test"]["predictions"])
    step3 = dialogsum.read_jsonl_rows(out / "curve" / "full_random" / "step_00000003.jsonl")
    assert [r["prediction"] for r in step3] == [r["prediction"] for r in final_preds[:4]]
    assert set(curve["baselines_same_dialogues"]) == {"LEAD-1", "first words, gold length"}
    assert dialogsum_curve.main(["--out", str(out), "--docs", str(tmp_path / "docs"),
                                 "--n", "4"]) == 0  # fmt: skip
    assert (tmp_path / "docs" / "curve_full_random.png").stat().st_size > 0

    # Restart: a second run skips every stage; a removed marker reruns that stage only.
    (out / "done" / "evaluate_low_8_random_seed1_test.json").unlink()
    again = dialogsum.run(plan)
    ran = [s["stage"] for s in again["stages"] if not s.get("skipped")]
    assert ran == ["evaluate_low_8_random_seed1_test"]
    assert {m["key"]: m["test"]["scores"] for m in again["models"]} == {
        k: m["test"]["scores"] for k, m in models.items()
    }


def test_an_interrupted_stage_gets_only_the_rest_of_its_minutes(tmp_path):
    runner = StageRunner(tmp_path / "exp", threads=1)
    assert dialogsum.minutes_left(runner, "pretrain", 55.0) == 55.0
    with pytest.raises(RuntimeError):
        runner.run("pretrain", [sys.executable, "-c", "import sys; sys.exit(1)"])
    assert (tmp_path / "exp" / "done" / "pretrain.spent").is_file()  # the attempt is on record
    (tmp_path / "exp" / "done" / "pretrain.spent").write_text("1200.0")  # 20 min ran, then kill
    assert dialogsum.minutes_left(runner, "pretrain", 55.0) == 35.0
    (tmp_path / "exp" / "done" / "pretrain.spent").write_text("4000")
    assert dialogsum.minutes_left(runner, "pretrain", 55.0) == 0.5  # never 0: it must export


def test_the_committed_plan_fits_the_issue_budget():
    budget = dialogsum.Plan().budget()
    assert budget["wall_minutes_bound"] <= 150
    with pytest.raises(ValueError, match="more than --wall-minutes 150"):
        dialogsum.Plan(pretrain_minutes=140.0).budget()


def test_the_command_line_overrides_the_plan_and_refuses_a_bad_one(tmp_path, capsys):
    """`python -m experiments.dialogsum`: options land in the plan, which is validated again;
    a plan over budget or an impossible value is one error line and exit 1, before any work."""
    from experiments.dialogsum.__main__ import main, parse_args

    plan, args = parse_args(["--dry-run", "--seed", "3", "--out", str(tmp_path / "o")])
    assert (plan.seed, plan.out, plan.vocab_size, args.baselines_only) == (
        3,
        tmp_path / "o",
        dialogsum.Plan.dry_run().vocab_size,
        False,
    )
    assert main(["--dry-run", "--out", str(tmp_path / "o"), "--pretrain-minutes", "500"]) == 1
    assert "dialogsum: error: the plan needs about" in capsys.readouterr().err
    assert main(["--dry-run", "--out", str(tmp_path / "o"), "--workers", "0"]) == 1
    assert "--workers must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o" / "data").exists()  # refused before any data was written
