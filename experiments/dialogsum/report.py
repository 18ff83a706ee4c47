"""The study's committed results: tables, sample predictions and plots under `Plan.docs`.

- `tables.md` (`baselines.md` for --baselines-only): DialogSum test and SAMSum test, baselines
  and full-data models with 95% bootstrap intervals and the share of distinct predictions;
  the k / gsr chosen on validation; the low-resource table (mean ± sd over seeds, each seed's
  R-1 interval); stage seconds by kind.
- `samples.md`: `Plan.samples` seeded test dialogues, the reference and every model's
  prediction side by side.
- Plots: test ROUGE bars, low-resource means with each seed's dot, the pretraining loss and
  the full-data runs' validation loss.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.dialogsum.data import read_jsonl_rows
from experiments.dialogsum.plan import INITS, Plan
from experiments.pipeline import REPO, ROUGE_COLUMNS, fmt_score, seeded_sample
from pegasus_gsg.files import atomic_file, write_text_atomic


def summarize_low(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (pairs, init): mean and across-seed standard deviation of each metric's test F1."""
    groups: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for r in results:
        if "examples" in r:
            groups.setdefault((r["examples"], r["init"]), []).append(r)
    out = []
    for (n, init), group in sorted(groups.items()):
        rows = sorted(group, key=lambda r: int(r["seed"]))
        row: dict[str, Any] = {"examples": n, "init": init, "seeds": [r["seed"] for r in rows]}
        for metric, _ in ROUGE_COLUMNS:
            mids = [r["test"]["scores"][metric]["mid"] for r in rows]
            row[metric] = {
                "mean": statistics.fmean(mids),
                "sd": statistics.stdev(mids) if len(mids) > 1 else 0.0,
                "per_seed": [r["test"]["scores"][metric] for r in rows],
            }
        row["distinct_mean"] = statistics.fmean(r["test"]["distinct"] for r in rows)
        out.append(row)
    return out


def _main_rows(report: Mapping[str, Any], split: str) -> list[tuple[str, Mapping[str, Any]]]:
    rows: list[tuple[str, Mapping[str, Any]]] = [
        (r["model"], r) for r in report["baselines"]["results"] if r["split"] == split
    ]
    for m in report["models"]:
        if m["key"].startswith("full_") and split in m:
            rows.append(
                (f"fine-tuned, all pairs, {m['init']} (lp {m['length_penalty']:g})", {**m[split]})
            )
    return rows


def write_tables(report: Mapping[str, Any], path: Path) -> str:
    """Test and SAMSum tables, the low-resource table, the choices made on validation."""
    from pegasus_gsg.evaluation.report import markdown_table

    parts = []
    for split, title in (
        ("test", "DialogSum test"),
        ("samsum_test", "SAMSum test (no SAMSum training)"),
    ):
        rows = _main_rows(report, split)
        if not rows:
            continue
        n = rows[0][1]["n"]
        header = ["system", *(name for _, name in ROUGE_COLUMNS), "distinct"]
        body = [
            [
                name,
                *(fmt_score(r["scores"][m]) for m, _ in ROUGE_COLUMNS),
                f"{100 * r['distinct']:.0f}%",
            ]
            for name, r in rows
        ]
        parts.append(f"#### {title}: {n} dialogues, F1 x100 [95% bootstrap CI]\n")
        parts.append(markdown_table(header, body) + "\n")
    chosen = report["baselines"]["chosen"]
    parts.append(
        f"Chosen on the {report['baselines']['validation_n']} validation dialogues "
        f"({report['baselines']['criterion']}): LEAD-k k={chosen['lead_k']}, "
        f"GSG extract gsr={chosen['gsr']:g}.\n"
    )
    low = report.get("low_resource_summary") or []
    if low:
        header = [
            "train pairs",
            "init",
            *(f"{name} mean ± sd" for _, name in ROUGE_COLUMNS),
            "R-1 per seed [95% CI]",
            "distinct",
        ]
        body = [
            [
                r["examples"],
                r["init"],
                *(f"{r[m]['mean']:.1f} ± {r[m]['sd']:.1f}" for m, _ in ROUGE_COLUMNS),
                "; ".join(fmt_score(s) for s in r["rouge1"]["per_seed"]),
                f"{100 * r['distinct_mean']:.0f}%",
            ]
            for r in low
        ]
        parts.append("#### Low resource: DialogSum test, mean ± sd over seeds\n")
        parts.append(markdown_table(header, body) + "\n")
    if report["stages"]:
        groups: dict[str, float] = {}
        for r in report["stages"]:
            kind = r["stage"].split("_")[0]
            groups[kind] = groups.get(kind, 0.0) + r["seconds"]
        parts.append("#### Stage seconds by kind (summed over both lanes)\n")
        parts.append(
            markdown_table(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in groups.items()])
            + "\n"
        )
    text = "\n".join(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return text


def write_samples(report: Mapping[str, Any], plan: Plan, path: Path) -> Path:
    """`plan.samples` seeded test dialogues: the reference and every model's prediction."""
    sources = {
        r["model"]: r["predictions"] for r in report["baselines"]["results"] if r["split"] == "test"
    }
    for m in report["models"]:
        label = m["key"]
        sources[label] = m["test"]["predictions"]
    preds = {name: read_jsonl_rows(REPO / p) for name, p in sources.items()}
    test = read_jsonl_rows(plan.out / "data" / "test.jsonl")
    picks = sorted(seeded_sample(range(len(test)), min(plan.samples, len(test)), plan.seed))
    lines = [f"# DialogSum: {len(picks)} test dialogues, every model's prediction\n"]
    for i in picks:
        lines.append(f"## test dialogue {test[i].get('id', i)}\n")
        lines.append("```\n" + test[i]["document"] + "\n```\n")
        lines.append(f"- **reference**: {test[i]['summary']}".replace("\n", " / "))
        for name, rows in preds.items():
            lines.append(f"- **{name}**: {rows[i]['prediction']!s}".replace("\n", " / "))
        lines.append("")
    write_text_atomic(path, "\n".join(lines))
    return path


def plot_all(report: Mapping[str, Any], plan: Plan) -> list[Path]:
    """Test ROUGE bars (baselines and full models), low-resource means with seed spread, and
    the training curves (pretraining loss, fine-tuning validation loss)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pegasus_gsg.evaluation.report import plot_curves, plot_rouge_bars, read_metric

    out = []
    bars = {
        name: {
            label: (r["scores"][m]["mid"], r["scores"][m]["low"], r["scores"][m]["high"])
            for m, label in ROUGE_COLUMNS
        }
        for name, r in _main_rows(report, "test")
    }
    out.append(plot_rouge_bars(bars, plan.docs / "test_rouge.png", title="DialogSum test"))
    low = report["low_resource_summary"]
    if low:
        fig, axes = plt.subplots(1, len(ROUGE_COLUMNS), figsize=(12, 3.4))
        for ax, (metric, label) in zip(axes, ROUGE_COLUMNS, strict=True):
            for init in INITS.values():
                rows = [r for r in low if r["init"] == init]
                xs = [r["examples"] for r in rows]
                ax.errorbar(
                    xs,
                    [r[metric]["mean"] for r in rows],
                    yerr=[r[metric]["sd"] for r in rows],
                    marker="o",
                    capsize=3,
                    label=init,
                )
                for r in rows:
                    ax.scatter(
                        [r["examples"]] * len(r[metric]["per_seed"]),
                        [s["mid"] for s in r[metric]["per_seed"]],
                        s=8,
                        alpha=0.5,
                    )
            ax.set_xscale("log")
            ax.set_xlabel("training pairs")
            ax.set_ylabel(f"{label} F1 (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle("DialogSum low resource: mean ± sd over seeds (dots: seeds)")
        fig.tight_layout()
        with atomic_file(plan.docs / "low_resource.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        out.append(plan.docs / "low_resource.png")
    pretrain = plan.out / "pretrain" / "metrics.jsonl"
    if pretrain.is_file():
        out.append(
            plot_curves(
                [read_metric(pretrain, "loss", "GSG Ind-Orig")],
                plan.docs / "pretrain_loss.png",
                title="Pretraining on Reuters + DialogSum dialogues",
                ylabel="loss",
            )
        )
    curves = []
    for init, label in INITS.items():
        evals = plan.out / "finetune" / f"full_{init}" / "eval.jsonl"
        if evals.is_file():
            curves.append(read_metric(evals, "val_loss", label))
    if curves:
        out.append(
            plot_curves(
                curves,
                plan.docs / "finetune_val_loss.png",
                title="Fine-tuning on all DialogSum pairs",
                ylabel="validation loss",
            )
        )
    return out
