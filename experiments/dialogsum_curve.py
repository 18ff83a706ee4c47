"""ROUGE against fine-tuning minutes: every saved checkpoint of a DialogSum study run, decoded.

    .venv/bin/python experiments/dialogsum_curve.py                 # full_random, 200 dialogues
    .venv/bin/python experiments/dialogsum_curve.py --run full_ind_orig --checkpoints DIR

The question it answers (issue 14, item 3): how many minutes of fine-tuning does the study's
model need before it beats the extractive baselines, and so whether a 15-minute demo could
train one. Each checkpoint `step_N` of the run becomes a model directory (the run's exported
`model/` with the checkpoint's weights), is decoded by `pegasus-gsg evaluate` on the first
`--n` test dialogues (beam 4, the length penalty the study chose for the run) and scored with
the same ROUGE code as every other row; the baselines are rescored on the same dialogues.

Minutes are wall-clock since the run started (its stage record in OUT/done), read from each
checkpoint's file time, so they include validation passes and saves, as a user's run would.

The study keeps every checkpoint of a full-data run (`Plan.full_keep`). The committed run
predates that and kept two, so its figures used hard links of every checkpoint taken while it
ran (`--checkpoints`), which are the same files.
"""

from __future__ import annotations

import argparse
import calendar
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.dialogsum import Plan, first_words, lead_k, read_jsonl_rows, score_predictions
from experiments.pipeline import (
    PY,
    ROUGE_COLUMNS,
    StageRunner,
    read_rouge,
    rel,
    setup_logging,
    write_jsonl,
)
from pegasus_gsg.files import (
    atomic_file,
    fresh_staging_dir,
    remove_tree,
    replace_dir,
    write_text_atomic,
)

logger = logging.getLogger("dialogsum_curve")

CHECKPOINT_PREFIX = "model."
"""The training wrapper's prefix on every weight name in a checkpoint's model.safetensors."""


def checkpoint_model(checkpoint: Path, template: Path, out: Path) -> Path:
    """A loadable model directory: `template` (an exported model) with the checkpoint's weights.

    Raises:
        ValueError: the checkpoint's weight names do not match the template's.
    """
    from safetensors.torch import load_file, save_file

    if (out / "model.safetensors").is_file():
        return out
    weights = load_file(str(checkpoint / "model.safetensors"))
    renamed = {k.removeprefix(CHECKPOINT_PREFIX): v for k, v in weights.items()}
    expected = set(load_file(str(template / "model.safetensors")))
    if not expected <= set(renamed):
        missing = sorted(expected - set(renamed))[:3]
        raise ValueError(f"{checkpoint}: weights {missing} of {template} are not in it")
    staging = fresh_staging_dir(out)
    shutil.copytree(template, staging, ignore=shutil.ignore_patterns(".ct2"), dirs_exist_ok=True)
    save_file({k: renamed[k].contiguous() for k in expected}, str(staging / "model.safetensors"))
    replace_dir(staging, out)
    return out


def run_start(plan: Plan, run: str) -> float:
    """Epoch seconds at which the study's fine-tuning stage of `run` started: its end less the
    seconds of all its attempts, so a run that was stopped and resumed counts the minutes it
    trained; checkpoints saved before a stop read early by the pause between attempts (4 s in
    the committed run)."""
    record = json.loads((plan.out / "done" / f"finetune_{run}.json").read_text())
    end = calendar.timegm(time.strptime(record["end"], "%Y-%m-%dT%H:%M:%SZ"))
    return float(end - record.get("seconds_all_attempts", record["seconds"]))


def curve(plan: Plan, run: str, checkpoints: Path, n: int) -> dict[str, Any]:
    results = json.loads((plan.docs / "results.json").read_text())
    model_result = next(m for m in results["models"] if m["key"] == run)
    lp = model_result["length_penalty"]
    out = plan.out / "curve" / run
    runner = StageRunner(out, threads=1)
    test = read_jsonl_rows(plan.out / "data" / "test.jsonl")[:n]
    subset = write_jsonl(out / "test_subset.jsonl", test)
    refs = [r["summary"] for r in test]
    lead = results["baselines"]["chosen"]["lead_k"]
    baselines = {
        f"LEAD-{lead}": score_predictions([lead_k(r["document"], lead) for r in test], refs),
        "first words, gold length": score_predictions(
            [first_words(r["document"], len(r["summary"].split())) for r in test], refs
        ),
    }
    start = run_start(plan, run)
    points = []
    for ckpt in sorted(checkpoints.glob("step_*")):
        if not (ckpt / "run_config.json").is_file():
            continue  # a partial checkpoint
        step = int(ckpt.name.removeprefix("step_"))
        preds = out / f"{ckpt.name}.jsonl"
        stage = f"evaluate_{ckpt.name}"
        if runner.done(stage) is None:
            model = out / ckpt.name
            checkpoint_model(ckpt, plan.out / "finetune" / run / "model", model)
            runner.run(
                stage,
                [PY, "-m", "pegasus_gsg", "evaluate", "--model", rel(model),
                 "--input", rel(subset), "--max-input-len", plan.max_input_len,
                 "--max-new-tokens", plan.max_target_len, "--num-beams", plan.num_beams,
                 "--length-penalty", lp, "--backend", plan.backend, "--out", rel(preds)],
            )  # fmt: skip
            remove_tree(model)  # ~40 MB each; the predictions are what is kept
        minutes = ((ckpt / "run_config.json").stat().st_mtime - start) / 60
        points.append(
            {"step": step, "minutes": round(minutes, 1), "scores": read_rouge(preds)["scores"]}
        )
    final = {"step": "final", "scores": model_result["test"]["scores"]}
    return {
        "run": run,
        "test_dialogues": n,
        "length_penalty": lp,
        "num_beams": plan.num_beams,
        "points": points,
        "final_full_test": final,
        "baselines_same_dialogues": baselines,
    }


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ROUGE_COLUMNS), figsize=(12, 3.4))
    for ax, (metric, label) in zip(axes, ROUGE_COLUMNS, strict=True):
        xs = [p["minutes"] for p in report["points"]]
        ax.plot(xs, [p["scores"][metric]["mid"] for p in report["points"]], marker="o",
                label=f"{report['run']} (beam {report['num_beams']})")  # fmt: skip
        ax.fill_between(
            xs,
            [p["scores"][metric]["low"] for p in report["points"]],
            [p["scores"][metric]["high"] for p in report["points"]],
            alpha=0.2,
        )
        for i, (name, scores) in enumerate(report["baselines_same_dialogues"].items()):
            ax.axhline(scores[metric]["mid"], linestyle="--", color=f"C{i + 1}", label=name)
        ax.set_xlabel("fine-tuning wall minutes (1 core)")
        ax.set_ylabel(f"{label} F1 (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"DialogSum test (first {report['test_dialogues']}): ROUGE vs fine-tuning time")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="full_random", choices=["full_random", "full_ind_orig"])
    p.add_argument("--checkpoints", type=Path, help="default: the run's own checkpoints/")
    p.add_argument("--n", type=int, default=200, help="test dialogues decoded per checkpoint")
    p.add_argument("--out", type=Path, help="the study's OUT (default as dialogsum.py)")
    p.add_argument("--docs", type=Path, help="the study's docs folder (default as dialogsum.py)")
    args = p.parse_args(argv)
    plan = Plan()
    if args.out:
        plan.out = args.out
    if args.docs:
        plan.docs = args.docs
    checkpoints = args.checkpoints or plan.out / "finetune" / args.run / "checkpoints"
    try:
        report = curve(plan, args.run, checkpoints, args.n)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"dialogsum_curve: error: {err}", file=sys.stderr)
        return 1
    write_text_atomic(plan.docs / f"curve_{args.run}.json", json.dumps(report, indent=2))
    plot(report, plan.docs / f"curve_{args.run}.png")
    rows = [
        f"step {pt['step']:>5} {pt['minutes']:5.1f} min: "
        + " / ".join(f"{pt['scores'][m]['mid']:.1f}" for m, _ in ROUGE_COLUMNS)
        for pt in report["points"]
    ]
    for name, s in report["baselines_same_dialogues"].items():
        rows.append(f"{name}: " + " / ".join(f"{s[m]['mid']:.1f}" for m, _ in ROUGE_COLUMNS))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
