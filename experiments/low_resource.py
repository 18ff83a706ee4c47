"""The PEGASUS low-resource experiment in miniature: does GSG pretraining help with few labels?

    .venv/bin/python experiments/low_resource.py            # ~35 min on 2 busy CPU cores
    .venv/bin/python experiments/low_resource.py --dry-run  # a minute, tiny everything

One tiny model shape (configs/tiny.yaml: d_model 64, 2+2 layers, 4,000-id tokenizer trained on
Reuters), four initialisations, the same fine-tuning budget for all:

    random      no pretraining
    ind_orig    GSG pretraining, gap sentences = top ROUGE1-F1 against the rest (the paper's pick)
    random_gsg  GSG pretraining, gap sentences chosen at random
    lead        GSG pretraining, gap sentences = the first ones

Every pretraining run has the same number of optimizer steps on the same Reuters-21578 store
(one store per strategy; only the ranking differs). Every fine-tuning run has the same number of
optimizer steps (not wall time, so reruns are comparable) on 100 or 1,000 training pairs of
AESLC (email body -> subject) and of DialogSum (dialogue -> summary), nested seeded samples of
the deduplicated training split. Scores: ROUGE-1/2/Lsum F1 with 95% bootstrap intervals on a
fixed seeded sample of the deduplicated test split (no test document occurs in training), the
same sample for every row.

The paper (Zhang et al. 2020, Fig. 4/5 and §6.2) found Ind-Orig best, Lead good on news only,
and large gains over random initialisation with 1,000 or fewer examples. Here the model has
0.49M parameters and pretraining lasts minutes; the output says what was measured.

Output (OUT = runs/experiments/low_resource): `results.json` (settings, every command with its
seconds, every score), `tables.md`, `logs/`, and the plots `docs/low_resource.png` (ROUGE with
intervals) and `docs/low_resource_pretrain.png` (pretraining loss). Stages that finished are
skipped on a rerun (see pipeline.py).
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
    ROUGE_COLUMNS,
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
from pegasus_gsg.files import atomic_file, write_text_atomic

logger = logging.getLogger("low_resource")

INITS = {
    "random": "random init",
    "ind_orig": "GSG Ind-Orig",
    "random_gsg": "GSG Random",
    "lead": "GSG Lead",
}
"""Initialisation -> label; the GSG ones name the prepare strategy (random_gsg -> random)."""
STRATEGY = {"ind_orig": "ind_orig", "random_gsg": "random", "lead": "lead"}
DATASETS = {
    # name: (max target tokens for training and generation)
    "aeslc": 32,
    "dialogsum": 64,
}


@dataclass
class Plan:
    """Sizes of the experiment; the defaults are the committed run."""

    data_dir: Path = REPO.parent / "shared" / "data"
    out: Path = REPO / "runs" / "experiments" / "low_resource"
    docs: Path = REPO / "docs"
    seed: int = 0
    vocab_size: int = 4000
    tokenizer_docs: int = 8000
    pretrain_docs: int | None = None
    """Reuters documents prepared for pretraining (None: all 14,925)."""
    pretrain_steps: int = 1000
    pretrain_warmup: int = 100
    pretrain_lr: float = 2e-3
    pretrain_max_tokens: int = 4096
    finetune_steps: int = 150
    finetune_warmup: int = 10
    finetune_lr: float = 1e-3
    finetune_max_tokens: int = 2048
    sizes: tuple[int, ...] = (100, 1000)
    test_size: int = 300
    max_input_len: int = 256
    pretrain_target_len: int = 64
    inits: tuple[str, ...] = tuple(INITS)
    """Initialisations fine-tuned (pretraining always covers all three strategies)."""
    datasets: tuple[str, ...] = tuple(DATASETS)
    threads: int = 1
    """OMP threads per training process. On a 2-core machine that others also use, 2 threads
    per process ran 10x slower than 1 (5.4 vs 0.43 s/step): OpenMP threads spin-waiting on a
    core that another process holds."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "pretrain_steps", "finetune_steps", "test_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"--sizes must be positive integers, got {self.sizes}")

    @classmethod
    def dry_run(cls) -> Plan:
        return cls(
            out=REPO / "runs" / "experiments" / "low_resource_dry",
            docs=REPO / "runs" / "experiments" / "low_resource_dry",
            vocab_size=800,
            tokenizer_docs=300,
            pretrain_docs=300,
            pretrain_steps=3,
            pretrain_warmup=1,
            finetune_steps=3,
            finetune_warmup=1,
            sizes=(16, 32),
            test_size=8,
        )


def common_overrides(plan: Plan) -> list[str]:
    return [
        f"seed={plan.seed}",
        f"data.max_input_len={plan.max_input_len}",
        "checkpoint.log_with=none",
        "checkpoint.log_every=10",
    ]


def build_data(plan: Plan, out: Path) -> dict[str, Any]:
    """Deduplicated, seeded train slices and test sample per dataset, as JSON Lines."""
    counts: dict[str, Any] = {}
    for name in DATASETS:
        folder = out / "data" / name
        summary = folder / "counts.json"
        if summary.is_file():
            counts[name] = json.loads(summary.read_text())
            continue
        pairs = dedup_pairs(read_pairs(plan.data_dir / name / "data.jsonl"))
        largest = seeded_sample(pairs.train, max(plan.sizes), plan.seed)
        for n in plan.sizes:
            write_jsonl(folder / f"train_{n}.jsonl", largest[:n])
        write_jsonl(folder / "test.jsonl", seeded_sample(pairs.test, plan.test_size, plan.seed))
        counts[name] = {
            "train_after_dedup": len(pairs.train),
            "test_after_dedup": len(pairs.test),
            "dropped_duplicates": pairs.duplicates,
            "dropped_empty": pairs.empty,
            "test_sample": plan.test_size,
        }
        write_text_atomic(summary, json.dumps(counts[name], indent=2))
    return counts


def run(plan: Plan) -> dict[str, Any]:
    out = plan.out
    runner = StageRunner(out, threads=plan.threads)
    started = time.time()
    reuters = plan.data_dir / "reuters21578_en" / "data.jsonl"
    tok = out / "tokenizer"
    gsg = [PY, "-m", "pegasus_gsg"]

    runner.run(
        "tokenizer",
        [*gsg, "tokenizer", "train", "--input", rel(reuters), "--vocab-size", plan.vocab_size,
         "--out", rel(tok), "--max-records", plan.tokenizer_docs],
    )  # fmt: skip
    limit = ["--max-records", plan.pretrain_docs] if plan.pretrain_docs else []
    for init, strategy in STRATEGY.items():
        runner.run(
            f"prepare_pretrain_{init}",
            [*gsg, "prepare", "pretrain", "--input", rel(reuters), "--tokenizer", rel(tok),
             "--out", rel(out / "stores" / f"pretrain_{init}"), "--strategy", strategy,
             "--seed", plan.seed, "--num-proc", 2, "--skip-bad", "--no-progress", *limit],
        )  # fmt: skip
    counts = build_data(plan, out)
    for name in DATASETS:
        for n in plan.sizes:
            runner.run(
                f"prepare_{name}_{n}",
                [*gsg, "prepare", "finetune",
                 "--input", rel(out / "data" / name / f"train_{n}.jsonl"), "--tokenizer", rel(tok),
                 "--out", rel(out / "stores" / f"{name}_{n}"), "--no-progress"],
            )  # fmt: skip

    for init in STRATEGY:
        run_dir = out / "pretrain" / init
        runner.run(
            f"pretrain_{init}",
            [PY, "-m", "pegasus_gsg.pretrain", "--config", "configs/tiny.yaml",
             "--train", rel(out / "stores" / f"pretrain_{init}"), "--tokenizer", rel(tok),
             "--out", rel(run_dir), "--resume", "latest", *common_overrides(plan),
             f"data.max_target_len={plan.pretrain_target_len}",
             f"data.max_tokens={plan.pretrain_max_tokens}",
             f"schedule.max_steps={plan.pretrain_steps}",
             f"schedule.warmup_steps={plan.pretrain_warmup}", "schedule.decay=linear",
             f"optim.lr={plan.pretrain_lr}", "checkpoint.save_every=100", "checkpoint.keep=1"],
        )  # fmt: skip

    results = []
    for n in plan.sizes:
        for name, target_len in DATASETS.items():
            for init, label in INITS.items():
                if init not in plan.inits or name not in plan.datasets:
                    continue
                key = f"{name}_{n}_{init}"
                run_dir = out / "finetune" / key
                start = (
                    ["--tokenizer", rel(tok)]
                    if init == "random"
                    else ["--init-from", rel(out / "pretrain" / init / "model")]
                )
                runner.run(
                    f"finetune_{key}",
                    [PY, "-m", "pegasus_gsg.finetune", "--config", "configs/tiny_finetune.yaml",
                     *start, "--train", rel(out / "stores" / f"{name}_{n}"), "--out", rel(run_dir),
                     *common_overrides(plan), f"data.max_target_len={target_len}",
                     f"data.max_tokens={plan.finetune_max_tokens}",
                     f"schedule.max_steps={plan.finetune_steps}",
                     f"schedule.warmup_steps={plan.finetune_warmup}", "schedule.decay=linear",
                     f"optim.lr={plan.finetune_lr}", "optim.label_smoothing=0.1",
                     "eval.every=0", "eval.generate_samples=0",
                     f"eval.max_new_tokens={target_len}", "checkpoint.save_every=0"],
                    clean=run_dir,
                )  # fmt: skip
                preds = out / "eval" / f"{key}.jsonl"
                runner.run(
                    f"evaluate_{key}",
                    [*gsg, "evaluate", "--model", rel(run_dir / "model"),
                     "--input", rel(out / "data" / name / "test.jsonl"),
                     "--max-input-len", plan.max_input_len, "--max-new-tokens", target_len,
                     "--num-beams", 1, "--out", rel(preds)],
                )  # fmt: skip
                rouge = read_rouge(preds)
                results.append(
                    {
                        "dataset": name,
                        "examples": n,
                        "init": label,
                        "init_key": init,
                        "n_test": rouge["n"],
                        "scores": rouge["scores"],
                    }
                )

    stage_seconds = sum(r["seconds"] for r in runner.records)
    report = {
        "plan": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(plan).items()},
        "data": counts,
        "results": results,
        "stages": runner.records,
        "stage_seconds_total": round(stage_seconds, 1),
        "this_invocation_seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text_atomic(out / "results.json", json.dumps(report, indent=2, ensure_ascii=False))
    tables = write_tables(report, out / "tables.md")
    plan.docs.mkdir(parents=True, exist_ok=True)
    plot_results(results, plan.docs / "low_resource.png")
    plot_pretraining(out, plan.docs / "low_resource_pretrain.png")
    print(tables)
    return report


def write_tables(report: dict[str, Any], path: Path) -> str:
    """One ROUGE table per dataset plus the stage-time table, as markdown."""
    from pegasus_gsg.evaluation.report import markdown_table

    parts = []
    for name in DATASETS:
        rows = [r for r in report["results"] if r["dataset"] == name]
        if not rows:
            continue
        header, body = results_table(rows, ["examples", "init"], {"examples": "train pairs"})
        n_test = rows[0]["n_test"]
        parts.append(f"#### {name} (test sample of {n_test}; F1 x100, 95% bootstrap CI)\n")
        parts.append(markdown_table(header, body) + "\n")
    groups: dict[str, float] = {}
    for r in report["stages"]:
        kind = r["stage"].split("_")[0]
        groups[kind] = groups.get(kind, 0.0) + r["seconds"]
    parts.append("#### Wall time by stage kind (seconds)\n")
    parts.append(
        markdown_table(
            ["stage", "seconds"],
            [[k, f"{v:.0f}"] for k, v in groups.items()]
            + [["total", f"{report['stage_seconds_total']:.0f}"]],
        )
        + "\n"
    )
    text = "\n".join(parts)
    write_text_atomic(path, text)
    return text


def plot_results(results: list[dict[str, Any]], out_png: Path) -> Path:
    """A grid of panels (dataset x training size); bars per initialisation, 95% CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [d for d in DATASETS if any(r["dataset"] == d for r in results)]
    sizes = sorted({r["examples"] for r in results})
    fig, axes = plt.subplots(
        len(names), len(sizes), figsize=(4.2 * len(sizes), 3.2 * len(names)), squeeze=False
    )
    inits = list(INITS.values())
    width = 0.8 / len(inits)
    for i, name in enumerate(names):
        for j, n in enumerate(sizes):
            ax = axes[i][j]
            for k, label in enumerate(inits):
                want = (name, n, label)
                row = next(
                    (r for r in results if (r["dataset"], r["examples"], r["init"]) == want), None
                )
                if row is None:
                    continue
                xs = [m + k * width - 0.4 + width / 2 for m in range(len(ROUGE_COLUMNS))]
                mids = [row["scores"][m]["mid"] for m, _ in ROUGE_COLUMNS]
                lows = [row["scores"][m]["mid"] - row["scores"][m]["low"] for m, _ in ROUGE_COLUMNS]
                highs = [
                    row["scores"][m]["high"] - row["scores"][m]["mid"] for m, _ in ROUGE_COLUMNS
                ]
                ax.bar(xs, mids, width=width, yerr=[lows, highs], capsize=2, label=label)
            ax.set_xticks(range(len(ROUGE_COLUMNS)), [c for _, c in ROUGE_COLUMNS])
            ax.set_title(f"{name}, {n} training pairs", fontsize=10)
            ax.set_ylabel("F1 (%)")
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out_png


def plot_pretraining(out: Path, out_png: Path) -> Path:
    from pegasus_gsg.evaluation.report import plot_curves, read_metric

    curves = [
        read_metric(out / "pretrain" / init / "metrics.jsonl", "loss", INITS[init])
        for init in STRATEGY
    ]
    return plot_curves(
        curves, out_png, title="GSG pretraining on Reuters-21578 (tiny model)", ylabel="loss"
    )


def parse_args(argv: list[str] | None = None) -> Plan:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, separate output dir")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--docs", type=Path, help="where the plots go (default: docs/)")
    p.add_argument("--pretrain-steps", type=int)
    p.add_argument("--finetune-steps", type=int)
    p.add_argument("--test-size", type=int)
    p.add_argument("--sizes", type=int, nargs="+")
    p.add_argument("--seed", type=int)
    p.add_argument("--inits", nargs="+", choices=list(INITS), help="fine-tune only these")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), help="only these")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    plan = Plan.dry_run() if args.dry_run else Plan()
    for name in ("data_dir", "out", "docs", "pretrain_steps", "finetune_steps", "test_size", "seed",
                 "threads"):  # fmt: skip
        if getattr(args, name) is not None:
            setattr(plan, name, getattr(args, name))
    if args.sizes:
        plan.sizes = tuple(args.sizes)
    if args.inits:
        plan.inits = tuple(args.inits)
    if args.datasets:
        plan.datasets = tuple(args.datasets)
    plan.__post_init__()
    return plan


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    plan = parse_args(argv)
    try:
        run(plan)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        print(f"low_resource: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
