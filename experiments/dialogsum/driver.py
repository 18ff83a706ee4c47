"""One run of the study, resumable: data, baselines, every stage on two lanes, then the report.

`run(plan)` is what `python -m experiments.dialogsum` does. Each piece is skipped when its
output is already there and still matches the plan (OUT/data/counts.json, OUT/baselines.json,
OUT/done/<stage>.json), so rerunning after an interruption continues where it stopped and a
finished study only rewrites its report. The training stages run on `plan.workers`
single-thread lanes (pipeline.run_tasks) in the order `Study.tasks()` gives.

The report, `results.json` under `plan.docs` (`baselines.json` with `baselines_only`), holds
the plan, its budget, the data counts, the baselines, every model's scores, the low-resource
summary and every stage's exact command and seconds; tables, samples and plots follow it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from experiments.dialogsum.baselines import run_baselines
from experiments.dialogsum.data import build_data
from experiments.dialogsum.plan import Plan
from experiments.dialogsum.report import plot_all, summarize_low, write_samples, write_tables
from experiments.dialogsum.stages import Study
from experiments.pipeline import rel, run_tasks
from pegasus_gsg.files import write_text_atomic


def run(plan: Plan, *, baselines_only: bool = False) -> dict[str, Any]:
    """Run (or resume) the study `plan` describes and write its report; returns the report.

    Raises:
        ValueError: the plan does not fit its wall-clock budget (Plan.budget).
        RuntimeError: a stage's command failed (it names the command and its log).
    """
    budget = plan.budget()
    started = time.time()
    counts = build_data(plan)
    study = Study(plan)
    baselines = run_baselines(plan)
    if not baselines_only:
        study.prepare()
        run_tasks(study.tasks(), plan.workers)
    report = {
        "plan": {k: (rel(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()},
        "budget": budget,
        "data": counts,
        "baselines": baselines,
        "models": [study.results[k] for k in sorted(study.results)],
        "low_resource_summary": summarize_low(list(study.results.values())),
        "stages": study.runner.records,
        "stage_seconds_total": round(sum(r["seconds"] for r in study.runner.records), 1),
        "this_invocation_seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    plan.docs.mkdir(parents=True, exist_ok=True)
    name = "baselines.json" if baselines_only else "results.json"
    write_text_atomic(plan.docs / name, json.dumps(report, indent=2, ensure_ascii=False))
    tables = write_tables(report, plan.docs / ("baselines.md" if baselines_only else "tables.md"))
    if not baselines_only:
        write_samples(report, plan, plan.docs / "samples.md")
        plot_all(report, plan)
    print(tables)
    return report
