"""The experiment scripts' pure logic: pair deduplication, nested samples, result tables,
and stage skipping (experiments/pipeline.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.pipeline import (
    StageRunner,
    dedup_pairs,
    results_table,
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
