"""Run reports: loss curves and ROUGE tables as PNG plots, and a markdown page that shows them.

Used by `pegasus-gsg demo` and the experiment scripts. Training runs write one JSON object per
log interval to `OUT/metrics.jsonl` and one per validation to `OUT/eval.jsonl` (training/loop.py);
this module only reads those files, so a report can be rebuilt from a finished run at any time.
A plot is written whole or not at all (pegasus_gsg.files).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from pegasus_gsg.data.jsonl import read_jsonl
from pegasus_gsg.files import atomic_file


@dataclass
class Curve:
    """One series of (step, value) points, e.g. the training loss of a run."""

    label: str
    steps: list[int]
    values: list[float]


def read_metric(metrics_file: str | Path, key: str, label: str | None = None) -> Curve:
    """The (step, key) series of a run's metrics.jsonl; rows without `key` are passed over.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line is not JSON (names the file and line).
    """
    path = Path(metrics_file)
    steps: list[int] = []
    values: list[float] = []
    for _, row in read_jsonl(path, skip_blank=True):
        if key in row and "step" in row:
            steps.append(int(row["step"]))
            values.append(float(row[key]))
    return Curve(label or path.parent.name, steps, values)


def plot_curves(curves: Sequence[Curve], out_png: str | Path, *, title: str, ylabel: str) -> Path:
    """Draw the curves on one axis and save a PNG; empty curves are listed as such in the legend."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for curve in curves:
        if curve.steps:
            ax.plot(
                curve.steps,
                curve.values,
                marker="." if len(curve.steps) < 30 else None,
                label=curve.label,
            )
        else:
            ax.plot([], [], label=f"{curve.label} (no points)")
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, Path(out_png))


def plot_rouge_bars(
    rows: Mapping[str, Mapping[str, Sequence[float]]], out_png: str | Path, *, title: str
) -> Path:
    """Grouped bars: rows[name][metric] = (mid, low, high) in percent; whiskers are the 95% CI."""
    names = list(rows)
    metrics = sorted({m for r in rows.values() for m in r})
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(
        figsize=(max(6, 1.6 * len(metrics) * max(len(names), 1) / 2), 4), dpi=110
    )
    for k, name in enumerate(names):
        xs: list[float] = []
        mids: list[float] = []
        errs: list[list[float]] = [[], []]
        for j, metric in enumerate(metrics):
            if metric not in rows[name]:
                continue
            mid, low, high = rows[name][metric]
            xs.append(j + k * width - 0.4 + width / 2)
            mids.append(mid)
            errs[0].append(max(mid - low, 0.0))
            errs[1].append(max(high - mid, 0.0))
        ax.bar(xs, mids, width=width, yerr=errs, capsize=3, label=name)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("F1 (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(names) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(out_png))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; floats get two decimals, `|` in cells is escaped."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.2f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _save(fig: Figure, out: Path) -> Path:
    """Write `fig` to `out` whole (the temporary name keeps `.png`, which savefig reads)."""
    with atomic_file(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return out
