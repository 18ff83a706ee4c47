"""How every system is scored: beam decoding with a length penalty chosen on validation, ROUGE.

Models are decoded as the paper does: beam search (`Plan.num_beams`) through `pegasus-gsg
evaluate`, once per length penalty in `Plan.length_penalties` on a validation sample (never
on test); the penalty with the best mean of ROUGE-1, -2 and -Lsum F1 (`choose`, ties to the
first) then decodes the test split once, and SAMSum's test split for the full-data models.
Baselines are scored with the same ROUGE code (pegasus_gsg.evaluation.rouge.rouge_report,
F1 x100 with a 95% bootstrap interval), so every row of a table is comparable.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.dialogsum.data import read_jsonl_rows
from experiments.dialogsum.plan import Plan
from experiments.pipeline import PY, ROUGE_COLUMNS, StageRunner, distinct_rate, read_rouge, rel


def mean_rouge(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean of ROUGE-1, -2 and -Lsum F1 (x100): the selection criterion on validation."""
    from pegasus_gsg.evaluation.rouge import rouge_report

    report = rouge_report(predictions, references, bootstrap_samples=0)
    return statistics.fmean(s.mid for s in report.values())


def choose(candidates: Mapping[Any, float]) -> Any:
    """The key with the highest score; ties go to the first key (the candidates' order)."""
    best = max(candidates.values())
    return next(k for k, v in candidates.items() if v == best)


def score_predictions(
    predictions: Sequence[str], references: Sequence[str], seed: int = 0
) -> dict[str, dict[str, float]]:
    """{metric: {low, mid, high}} exactly as `pegasus-gsg evaluate` writes it."""
    from pegasus_gsg.evaluation.rouge import rouge_report

    report = rouge_report(predictions, references, seed=seed)
    return {k: {"low": s.low, "mid": s.mid, "high": s.high} for k, s in report.items()}


def evaluate(
    runner: StageRunner, plan: Plan, key: str, model: Path, data: str, *, lp: float, tag: str
) -> Path:
    """Stage `evaluate_<key>_<tag>`: `model` decodes OUT/data/<data>.jsonl with length
    penalty `lp`; returns the predictions file (its ROUGE is beside it, `.rouge.json`)."""
    preds = plan.out / "eval" / f"{key}_{tag}.jsonl"
    runner.run(
        f"evaluate_{key}_{tag}",
        [PY, "-m", "pegasus_gsg", "evaluate", "--model", rel(model),
         "--input", rel(plan.out / "data" / f"{data}.jsonl"),
         "--max-input-len", plan.max_input_len, "--max-new-tokens", plan.max_target_len,
         "--num-beams", plan.num_beams, "--length-penalty", lp, "--backend", plan.backend,
         "--out", rel(preds)],
    )  # fmt: skip
    return preds


def decode(
    runner: StageRunner, plan: Plan, key: str, model: Path, *, val: str, ood: bool
) -> dict[str, Any]:
    """Length penalty chosen on `val`, then the test split (and SAMSum when `ood`)."""
    by_lp = {}
    for lp in plan.length_penalties:
        preds = evaluate(runner, plan, key, model, val, lp=lp, tag=f"val_lp{lp:g}")
        scores = read_rouge(preds)
        by_lp[lp] = statistics.fmean(scores["scores"][m]["mid"] for m, _ in ROUGE_COLUMNS)
    lp = choose(by_lp)
    result: dict[str, Any] = {
        "length_penalty": lp,
        "length_penalty_validation": {f"{k:g}": v for k, v in by_lp.items()},
    }
    for split in ("test", "samsum_test") if ood else ("test",):
        preds = evaluate(runner, plan, key, model, split, lp=lp, tag=split)
        rows = read_jsonl_rows(preds)
        result[split] = {
            "n": read_rouge(preds)["n"],
            "scores": read_rouge(preds)["scores"],
            "distinct": distinct_rate([r["prediction"] for r in rows]),
            "predictions": rel(preds),
        }
    return result
