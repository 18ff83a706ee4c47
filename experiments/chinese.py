"""Chinese PEGASUS in miniature: GSG on THUCNews, fine-tuning on LCSTS, character-level ROUGE.

    .venv/bin/python experiments/chinese.py            # ~10 min on 2 CPU cores
    .venv/bin/python experiments/chinese.py --dry-run  # a minute, tiny everything

Stages (each a command of the project's own tools; see pipeline.py for restarts):

1. a 6,000-id tokenizer trained on THUCNews (1,000 articles) + the LCSTS training documents;
2. THUCNews split at 。！？ and GSG-ranked with Ind-Orig (ROUGE1-F1 on characters) into a store;
3. pretraining with configs/zh_tiny.yaml (the tiny shape, fixed steps);
4. fine-tuning on a seeded sample of deduplicated LCSTS training pairs (short news -> headline),
   from the pretrained weights and, as the baseline, from random initialisation, same steps;
5. `pegasus-gsg evaluate` on a seeded sample of the deduplicated LCSTS test split: ROUGE-1/2/Lsum
   on characters (chosen automatically for CJK references), 95% bootstrap intervals.

Output (OUT = runs/experiments/chinese): results.json, tables.md, logs/, and
docs/chinese_pretrain.png (pretraining loss).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.pipeline import (
    PY,
    REPO,
    StageRunner,
    dedup_pairs,
    read_pairs,
    read_rouge,
    rel,
    results_table,
    seeded_sample,
    setup_logging,
    write_jsonl,
)
from pegasus_gsg.files import write_text_atomic

logger = logging.getLogger("chinese")

INITS = {"random": "random init", "ind_orig": "GSG Ind-Orig (THUCNews)"}


@dataclass
class Plan:
    data_dir: Path = REPO.parent / "shared" / "data"
    out: Path = REPO / "runs" / "experiments" / "chinese"
    docs: Path = REPO / "docs"
    seed: int = 0
    vocab_size: int = 6000
    pretrain_steps: int = 600
    finetune_steps: int = 300
    finetune_lr: float = 1e-3
    finetune_max_tokens: int = 2048
    target_len: int = 32
    train_pairs: int = 3000
    test_size: int = 300
    threads: int = 1
    """OMP threads per process (see low_resource.Plan.threads: 1 is far faster on a busy box)."""

    @classmethod
    def dry_run(cls) -> Plan:
        return cls(
            out=REPO / "runs" / "experiments" / "chinese_dry",
            docs=REPO / "runs" / "experiments" / "chinese_dry",
            vocab_size=1200,
            pretrain_steps=3,
            finetune_steps=3,
            train_pairs=64,
            test_size=8,
            threads=1,
        )


def build_data(plan: Plan, out: Path) -> dict[str, Any]:
    """Tokenizer text (THUCNews + LCSTS train documents), train sample and test sample."""
    folder = out / "data"
    summary = folder / "counts.json"
    if summary.is_file():
        return json.loads(summary.read_text())
    pairs = dedup_pairs(read_pairs(plan.data_dir / "lcsts_clge" / "data.jsonl"))
    write_jsonl(folder / "train.jsonl", seeded_sample(pairs.train, plan.train_pairs, plan.seed))
    write_jsonl(folder / "test.jsonl", seeded_sample(pairs.test, plan.test_size, plan.seed))
    write_jsonl(folder / "lcsts_train_text.jsonl", ({"text": r["document"]} for r in pairs.train))
    counts = {
        "train_after_dedup": len(pairs.train),
        "test_after_dedup": len(pairs.test),
        "dropped_duplicates": pairs.duplicates,
        "dropped_empty": pairs.empty,
        "train_sample": plan.train_pairs,
        "test_sample": plan.test_size,
    }
    write_text_atomic(summary, json.dumps(counts, indent=2))
    return counts


def run(plan: Plan) -> dict[str, Any]:
    out = plan.out
    runner = StageRunner(out, threads=plan.threads)
    started = time.time()
    thucnews = plan.data_dir / "thucnews_zh_1k" / "data.jsonl"
    tok = out / "tokenizer"
    gsg = [PY, "-m", "pegasus_gsg"]
    counts = build_data(plan, out)
    runner.run(
        "tokenizer",
        [*gsg, "tokenizer", "train", "--input", rel(thucnews),
         rel(out / "data" / "lcsts_train_text.jsonl"), "--vocab-size", plan.vocab_size,
         "--out", rel(tok)],
    )  # fmt: skip
    runner.run(
        "prepare_pretrain",
        [*gsg, "prepare", "pretrain", "--input", rel(thucnews), "--tokenizer", rel(tok),
         "--out", rel(out / "stores" / "pretrain"), "--strategy", "ind_orig", "--skip-bad",
         "--no-progress"],
    )  # fmt: skip
    runner.run(
        "prepare_finetune",
        [*gsg, "prepare", "finetune", "--input", rel(out / "data" / "train.jsonl"),
         "--tokenizer", rel(tok), "--out", rel(out / "stores" / "lcsts_train"), "--no-progress"],
    )  # fmt: skip
    pre = out / "pretrain"
    runner.run(
        "pretrain",
        [PY, "-m", "pegasus_gsg.pretrain", "--config", "configs/zh_tiny.yaml",
         "--train", rel(out / "stores" / "pretrain"), "--tokenizer", rel(tok), "--out", rel(pre),
         "--resume", "latest", f"seed={plan.seed}", f"schedule.max_steps={plan.pretrain_steps}"],
    )  # fmt: skip
    results = []
    for init, label in INITS.items():
        run_dir = out / "finetune" / init
        start = (
            ["--tokenizer", rel(tok)] if init == "random" else ["--init-from", rel(pre / "model")]
        )
        runner.run(
            f"finetune_{init}",
            [PY, "-m", "pegasus_gsg.finetune", "--config", "configs/zh_tiny.yaml", *start,
             "--train", rel(out / "stores" / "lcsts_train"), "--out", rel(run_dir),
             f"seed={plan.seed}", f"data.max_target_len={plan.target_len}",
             f"data.max_tokens={plan.finetune_max_tokens}",
             f"schedule.max_steps={plan.finetune_steps}", "schedule.warmup_steps=10",
             f"optim.lr={plan.finetune_lr}", "optim.label_smoothing=0.1",
             f"eval.max_new_tokens={plan.target_len}", "checkpoint.save_every=0"],
            clean=run_dir,
        )  # fmt: skip
        preds = out / "eval" / f"{init}.jsonl"
        runner.run(
            f"evaluate_{init}",
            [*gsg, "evaluate", "--model", rel(run_dir / "model"),
             "--input", rel(out / "data" / "test.jsonl"), "--max-input-len", 256,
             "--max-new-tokens", plan.target_len, "--num-beams", 1, "--out", rel(preds)],
        )  # fmt: skip
        rouge = read_rouge(preds)
        results.append(
            {
                "dataset": "lcsts_clge",
                "examples": plan.train_pairs,
                "init": label,
                "n_test": rouge["n"],
                "scores": rouge["scores"],
            }
        )
        examples = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
        results[-1]["examples_shown"] = examples[:3]

    report = {
        "plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()},
        "data": counts,
        "results": results,
        "stages": runner.records,
        "stage_seconds_total": round(sum(r["seconds"] for r in runner.records), 1),
        "this_invocation_seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text_atomic(out / "results.json", json.dumps(report, indent=2, ensure_ascii=False))
    tables = write_tables(report, out / "tables.md")
    plan.docs.mkdir(parents=True, exist_ok=True)
    from pegasus_gsg.evaluation.report import plot_curves, read_metric

    plot_curves(
        [read_metric(pre / "metrics.jsonl", "loss", "GSG Ind-Orig, THUCNews")],
        plan.docs / "chinese_pretrain.png",
        title="Chinese GSG pretraining (tiny model)",
        ylabel="loss",
    )
    print(tables)
    return report


def write_tables(report: dict[str, Any], path: Path) -> str:
    from pegasus_gsg.evaluation.report import markdown_table

    rows = report["results"]
    header, body = results_table(rows, ["examples", "init"], {"examples": "train pairs"})
    parts = [
        f"#### LCSTS (test sample of {rows[0]['n_test']}; character-level F1 x100, 95% CI)\n",
        markdown_table(header, body) + "\n",
        "#### Wall time by stage (seconds)\n",
        markdown_table(
            ["stage", "seconds"],
            [[r["stage"], f"{r['seconds']:.0f}"] for r in report["stages"]]
            + [["total", f"{report['stage_seconds_total']:.0f}"]],
        )
        + "\n",
    ]
    text = "\n".join(parts)
    write_text_atomic(path, text)
    return text


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, separate output dir")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    plan = Plan.dry_run() if args.dry_run else Plan()
    if args.data_dir:
        plan.data_dir = args.data_dir
    if args.out:
        plan.out = args.out
    try:
        run(plan)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        print(f"chinese: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
