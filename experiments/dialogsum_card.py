"""The DialogSum recipe's report: tables, plots, and the model card of its release.

`experiments/dialogsum_best.py` calls these on its report (results.json): `write_tables`
(test ROUGE with 95% intervals next to the baselines, the verdict against LEAD-3, the
learning-rate sweep, the decoding grid, stage times), `plot` (pretraining and fine-tuning loss,
validation loss and ROUGE against the step, test ROUGE bars) and `write_card` (release/README.md
in the Hugging Face model card format: YAML front matter, then data, shape, steps, compute,
ROUGE with intervals next to the baselines, how to use it, limitations). When the model does
not beat LEAD-3, `extrapolate` states the fine-tuning steps the measured validation curve
would need, from a log-linear fit of ROUGE against the step (a rough estimate, said so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.dialogsum.data import read_jsonl_rows
from experiments.pipeline import REPO, ROUGE_COLUMNS, fmt_score
from pegasus_gsg.files import atomic_file, write_text_atomic

MAX_EXTRAPOLATION = 20
"""Estimates beyond this multiple of the run's fine-tuning steps are not given."""

MODEL_LABEL = "this model (PEGASUS d256 4+4, GSG Ind-Orig + fine-tuning)"


def test_rows(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, result) of every system on the DialogSum test split, the model last."""
    rows: list[tuple[str, Mapping[str, Any]]] = [
        (r["model"], r) for r in report["baselines"]["results"] if r["split"] == "test"
    ]
    rows.append((MODEL_LABEL, report["model"]["test"]))
    return rows


def lead_result(baselines: Mapping[str, Any]) -> Mapping[str, Any]:
    """LEAD-k on the test split, k chosen on validation: what the verdict compares with."""
    name = f"LEAD-{baselines['chosen']['lead_k']}"
    return next(r for r in baselines["results"] if r["split"] == "test" and r["model"] == name)


def decoding_text(d: Mapping[str, Any]) -> str:
    nr = d["no_repeat_ngram_size"]
    return f"beam {d['num_beams']}, length penalty {d['length_penalty']:g}, " + (
        f"no repeated {nr}-gram" if nr else "repeats allowed"
    )


def verdict_text(report: Mapping[str, Any]) -> str:
    b = report["beats_lead"]
    per = ", ".join(f"{name} {'yes' if b[m] else 'no'}" for m, name in ROUGE_COLUMNS)
    return f"Above {b['baseline']} with non-overlapping 95% intervals: {per}."


def training_steps(report: Mapping[str, Any]) -> dict[str, int]:
    r = report["recipe"]
    losers = len(r["sweep_lrs"]) - 1
    return {
        "pretrain": min(r["pretrain_stop"] or r["pretrain_steps"], r["pretrain_steps"]),
        "pretrain_schedule": r["pretrain_steps"],
        "finetune": r["finetune_steps"],
        "sweep_losers": losers * r["sweep_steps"],
    }


def stage_minutes(report: Mapping[str, Any]) -> dict[str, float]:
    """Wall minutes by kind of stage (all attempts of each)."""
    groups: dict[str, float] = {}
    for rec in report["stages"]:
        kind = rec["stage"].split("_")[0]
        seconds = rec.get("seconds_all_attempts", rec["seconds"])
        groups[kind] = groups.get(kind, 0.0) + seconds / 60
    return {k: round(v, 1) for k, v in groups.items()}


def write_tables(report: Mapping[str, Any], path: Path) -> str:
    from pegasus_gsg.evaluation.report import markdown_table

    rows = test_rows(report)
    n = report["model"]["test"]["n"]
    parts = [f"#### DialogSum test: {n} dialogues, F1 x100 [95% bootstrap CI]\n"]
    header = ["system", *(name for _, name in ROUGE_COLUMNS), "distinct"]
    body = [
        [
            name,
            *(fmt_score(r["scores"][m]) for m, _ in ROUGE_COLUMNS),
            f"{100 * r['distinct']:.0f}%",
        ]
        for name, r in rows
    ]
    parts.append(markdown_table(header, body) + "\n")
    parts.append(verdict_text(report) + "\n")
    chosen = report["baselines"]["chosen"]
    parts.append(
        f"Decoding, chosen on {report['decoding']['validation_n']} validation dialogues (mean of "
        f"ROUGE-1, -2, -Lsum F1): {decoding_text(report['decoding']['chosen'])}. Baselines' k "
        f"and gsr chosen on the {report['baselines']['validation_n']} validation dialogues: "
        f"LEAD-k k={chosen['lead_k']}, GSG extract gsr={chosen['gsr']:g}.\n"
    )
    sweep = report["sweep"]
    parts.append(
        f"#### Learning-rate sweep: validation loss at fine-tuning step {sweep['steps']}\n"
    )
    parts.append(
        markdown_table(
            ["lr", "validation loss", "chosen"],
            [
                [lr, f"{loss:.4f}", "yes" if float(lr) == sweep["chosen_lr"] else ""]
                for lr, loss in sweep["val_loss"].items()
            ],
        )
        + "\n"
    )
    parts.append("#### Decoding grid on validation (mean ROUGE F1 x100)\n")
    parts.append(
        markdown_table(
            ["beams", "length penalty", "no-repeat n-gram", "mean ROUGE", "chosen"],
            [
                [
                    g["num_beams"],
                    f"{g['length_penalty']:g}",
                    g["no_repeat_ngram_size"],
                    f"{g['val_mean_rouge']:.2f}",
                    "yes"
                    if all(g[k] == v for k, v in report["decoding"]["chosen"].items())
                    else "",
                ]
                for g in report["decoding"]["grid"]
            ],
        )
        + "\n"
    )
    steps = training_steps(report)
    parts.append("#### Compute (wall minutes by stage kind, 2 CPU cores)\n")
    parts.append(
        markdown_table(["stage", "minutes"], [[k, v] for k, v in stage_minutes(report).items()])
        + "\n"
    )
    parts.append(
        f"Optimizer steps: pretraining {steps['pretrain']} (of a "
        f"{steps['pretrain_schedule']}-step cosine schedule), fine-tuning {steps['finetune']}, "
        f"sweep runs not continued {steps['sweep_losers']}; global batch "
        f"{report['recipe']['processes']} x {report['recipe']['max_tokens']} padded input "
        "tokens.\n"
    )
    estimate = report.get("estimate")
    if estimate:
        parts.append("#### Not above LEAD-3 yet: what the measured curve says\n")
        parts.append(estimate["text"] + "\n")
    text = "\n".join(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return text


def eval_rows(out: Path, lr: float) -> list[dict[str, Any]]:
    path = out / "finetune" / f"lr{lr:g}" / "eval.jsonl"
    return read_jsonl_rows(path) if path.is_file() else []


def extrapolate(report: Mapping[str, Any], out: Path) -> dict[str, Any] | None:
    """Fine-tuning steps at which each metric would pass the baseline's upper 95% bound, from
    a least-squares fit of validation ROUGE (greedy) against ln(step), shifted to the test
    score at the last step. None when the model already beats the baseline or the curve has
    fewer than 3 points."""
    if report["beats_lead"]["all"]:
        return None
    rows = [r for r in eval_rows(out, report["sweep"]["chosen_lr"]) if "rouge1" in r]
    if len(rows) < 3:
        return None
    lead = lead_result(report["baselines"])
    needs = {}
    for metric, name in ROUGE_COLUMNS:
        xs = [math.log(r["step"]) for r in rows]
        ys = [r[metric] for r in rows]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs
        )
        test = report["model"]["test"]["scores"][metric]
        half = (test["high"] - test["low"]) / 2
        # the test mean needed for non-overlapping intervals (the model's own half-width)
        target = lead["scores"][metric]["high"] + half
        gap = target - test["mid"]
        growth = gap / slope if slope > 0 else math.inf
        if gap <= 0:
            needs[name] = rows[-1]["step"]
        elif growth > math.log(MAX_EXTRAPOLATION):
            needs[name] = None  # flat, falling, or far beyond the measured range
        else:
            needs[name] = round(rows[-1]["step"] * math.exp(growth))
    per_step_min = _finetune_minutes_per_step(report)
    parts = []
    for name, step in needs.items():
        if step is None:
            parts.append(
                f"{name}: beyond {MAX_EXTRAPOLATION}x this run's steps (or the curve is flat): "
                "no estimate"
            )
        else:
            pace = f" (~{step * per_step_min / 60:.1f} h at this run's pace)"
            hours = pace if per_step_min else ""
            parts.append(f"{name}: ~{step} fine-tuning steps{hours}")
    text = (
        "Log-linear fit of validation ROUGE (greedy, the training-time evaluation) against "
        "ln(step), shifted to the test score, to the test mean whose interval clears the "
        "baseline's upper bound: " + "; ".join(parts) + ". A rough estimate: curves flatten."
    )
    return {"steps_needed": needs, "text": text}


def _finetune_minutes_per_step(report: Mapping[str, Any]) -> float | None:
    lr = report["sweep"]["chosen_lr"]
    seconds = sum(
        rec.get("seconds_all_attempts", rec["seconds"])
        for rec in report["stages"]
        if rec["stage"] in (f"sweep_lr{lr:g}", f"finetune_lr{lr:g}")
    )
    steps = report["recipe"]["finetune_steps"]
    return seconds / 60 / steps if seconds else None


def plot(report: Mapping[str, Any], recipe: Any) -> list[Path]:
    """Loss curves, validation loss and ROUGE against the step, test ROUGE bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pegasus_gsg.evaluation.report import plot_curves, plot_rouge_bars, read_metric

    out, docs = recipe.out, recipe.docs
    made = [
        plot_rouge_bars(
            {name: {label: (r["scores"][m]["mid"], r["scores"][m]["low"], r["scores"][m]["high"])
                    for m, label in ROUGE_COLUMNS} for name, r in test_rows(report)},
            docs / "test_rouge.png",
            title="DialogSum test (95% bootstrap intervals)",
        )
    ]  # fmt: skip
    made.append(
        plot_curves(
            [read_metric(out / "pretrain" / "metrics.jsonl", "loss", "GSG Ind-Orig")],
            docs / "pretrain_loss.png",
            title="Pretraining: dialogues + Reuters + QMSum windows",
            ylabel="training loss",
        )
    )
    made.append(
        plot_curves(
            [read_metric(out / "finetune" / f"lr{lr:g}" / "metrics.jsonl", "loss", f"lr {lr:g}")
             for lr in recipe.sweep_lrs],
            docs / "finetune_loss.png",
            title="Fine-tuning on all DialogSum pairs (training loss)",
            ylabel="training loss (label smoothing 0.1)",
        )
    )  # fmt: skip
    rows = eval_rows(out, report["sweep"]["chosen_lr"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110)
    steps = [r["step"] for r in rows]
    ax1.plot(steps, [r["val_loss"] for r in rows], marker="o")
    ax1.set_xlabel("fine-tuning step")
    ax1.set_ylabel("validation loss")
    ax1.grid(alpha=0.3)
    lead = lead_result(report["baselines"])
    for (metric, label), color in zip(ROUGE_COLUMNS, ("C0", "C1", "C2"), strict=True):
        ax2.plot(steps, [r.get(metric, math.nan) for r in rows], marker="o", color=color,
                 label=f"{label} (validation, greedy)")  # fmt: skip
        ax2.axhline(lead["scores"][metric]["mid"], color=color, ls=":", lw=1)
        test = report["model"]["test"]["scores"][metric]["mid"]
        ax2.scatter([recipe.finetune_steps], [test], marker="*", s=80, color=color)
    ax2.set_xlabel("fine-tuning step")
    ax2.set_ylabel("ROUGE F1 x100")
    ax2.set_title(f"dotted: {lead['model']} on test; stars: this model on test", fontsize=9)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(docs / "rouge_vs_step.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    made.append(docs / "rouge_vs_step.png")
    return made


def write_card(report: Mapping[str, Any], recipe: Any, path: Path) -> Path:
    """The model card (Hugging Face format) of the release directory."""
    test = report["model"]["test"]["scores"]
    rec = report["recipe"]
    steps = training_steps(report)
    minutes = stage_minutes(report)
    train_minutes = sum(v for k, v in minutes.items() if k in ("pretrain", "sweep", "finetune"))
    metrics_yaml = "\n".join(
        f"          - type: {m}\n            value: {test[m]['mid']:.2f}\n"
        f"            name: {name} F1 x100 (95% CI {test[m]['low']:.1f}-{test[m]['high']:.1f})"
        for m, name in ROUGE_COLUMNS
    )
    table_rows = "\n".join(
        f"| {name} | " + " | ".join(fmt_score(r["scores"][m]) for m, _ in ROUGE_COLUMNS) + " |"
        for name, r in test_rows(report)
    )
    decoding = report["decoding"]["chosen"]
    release = REPO / report["model"]["release"]
    command = (
        f"pegasus-gsg evaluate --model MODEL_DIR --input runs/experiments/dialogsum_best/data/"
        f"test.jsonl --max-input-len {rec['max_input_len']} --max-new-tokens "
        f"{rec['max_target_len']} --num-beams {decoding['num_beams']} --length-penalty "
        f"{decoding['length_penalty']:g} --no-repeat-ngram-size "
        f"{decoding['no_repeat_ngram_size']} --backend {rec['backend']} --out preds.jsonl"
    )
    card = f"""---
language:
  - en
license: cc-by-nc-sa-4.0
library_name: transformers
pipeline_tag: summarization
tags:
  - pegasus
  - summarization
  - dialogue-summarization
  - pegasus-gsg
datasets:
  - knkarthick/dialogsum
metrics:
  - rouge
model-index:
  - name: pegasus-gsg-dialogsum-small
    results:
      - task:
          type: summarization
          name: Dialogue summarization
        dataset:
          name: DialogSum (test, {report["model"]["test"]["n"]} dialogues, deduplicated)
          type: knkarthick/dialogsum
          split: test
        metrics:
{metrics_yaml}
---

# pegasus-gsg DialogSum small (d256, 4+4 layers)

A small PEGASUS encoder-decoder ({_params(release)} parameters, {report["size_mb"]} MB in
float16) that summarizes two-person English dialogues in one or two sentences, in the style of
DialogSum's references (third person: "#Person1# asks #Person2# ..."). Trained from scratch
with pegasus-gsg (this repository) on 2 CPU cores by `python -m experiments.dialogsum_best`
(about {train_minutes:.0f} minutes of training).

{verdict_text(report)}

## Results: DialogSum test, F1 x100 [95% bootstrap interval]

| system | ROUGE-1 | ROUGE-2 | ROUGE-Lsum |
|---|---|---|---|
{table_rows}

Decoding ({decoding_text(decoding)}, at most {rec["max_target_len"]} new tokens, inputs cut at
{rec["max_input_len"]} tokens) was chosen on {report["decoding"]["validation_n"]} validation
dialogues only. ROUGE: `rouge-score` with stemming, Lsum on newline-split sentences, as
`pegasus-gsg evaluate` computes it; this reproduces the numbers above from this directory:

    {command}

## Training

- **Tokenizer**: Unigram, {rec["vocab_size"]} ids, trained on the unlabelled text below.
- **Pretraining** (Gap Sentences Generation, Ind-Orig, gap ratio 0.3): the DialogSum training
  dialogues (never their summaries), Reuters-21578 news, and QMSum's training meeting
  transcripts cut into windows of whole turns; {steps["pretrain"]} optimizer steps of a
  {steps["pretrain_schedule"]}-step cosine schedule (lr {rec["pretrain_lr"]:g}).
- **Fine-tuning**: all {report["data"]["train_after_dedup"]} DialogSum training pairs
  (deduplicated against validation and test), {steps["finetune"]} steps, lr
  {report["sweep"]["chosen_lr"]:g} (chosen from {", ".join(f"{x:g}" for x in rec["sweep_lrs"])}
  by validation loss at step {rec["sweep_steps"]}), linear decay, label smoothing 0.1,
  dropout {rec["finetune_dropout"]:g} (0.1 in pretraining).
- **Shape**: d_model 256, 4 encoder + 4 decoder layers, 4 heads, FFN 1024, inputs up to
  {rec["max_input_len"]} tokens.
- **Compute**: 2 CPU cores (AMD EPYC), 2 gloo processes with one thread each, global batch
  {rec["processes"]} x {rec["max_tokens"]} padded input tokens; wall minutes by stage:
  {", ".join(f"{k} {v}" for k, v in minutes.items())}.

## Use

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForSeq2SeqLM.from_pretrained(MODEL_DIR)
    ids = tok(dialogue, return_tensors="pt", truncation=True, max_length={rec["max_input_len"]})
    print(tok.decode(model.generate(**ids)[0], skip_special_tokens=True))

or serve it: `pegasus-gsg serve --model MODEL_DIR` (add `--backend ctranslate2` for
CTranslate2) and `pegasus-gsg summarize --server 127.0.0.1:50051 "..."`. The generation config
holds the decoding above.

## Limitations

- Small and trained briefly on one dataset: it summarizes short chit-chat and service
  dialogues like DialogSum's; it is not a general summarizer. It was not scored out of domain
  here (the DialogSum study's models, same shape and less training, fell far below LEAD-3 on
  SAMSum's chats).
- Summaries can state facts not in the dialogue (names, numbers, who did what); do not use it
  where that matters.
- English only; inputs beyond {rec["max_input_len"]} tokens are cut.
- License: CC BY-NC-SA 4.0 (DialogSum's terms; Reuters-21578 is for research use only), so
  non-commercial research use.
"""
    write_text_atomic(path, card)
    return path


def _params(release: Path) -> str:
    from safetensors import safe_open

    total = 0
    with safe_open(str(release / "model.safetensors"), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
            total += math.prod(f.get_slice(key).get_shape())
    return f"{total / 1e6:.1f}M"
