"""Extractive baselines that a trained summarizer must beat: LEAD-k, GSG extract, first words.

- LEAD-k: the dialogue's first k turns (a turn is one non-empty line, `#Person1#: ...`).
- GSG Ind-Orig as an extractive summarizer: the turns pegasus_gsg.core.gsg selects at gap
  sentence ratio gsr, in document order (the pseudo-summary pretraining learns to write).
- First words, gold length: as many of the dialogue's first words as the reference has.

k and gsr are each chosen on the whole validation split (`scoring.choose` on the mean of
ROUGE-1, -2 and -Lsum F1), then every baseline is scored once on the test split and on SAMSum
with the models' ROUGE code. The result is cached in OUT/baselines.json, keyed by the plan
fields that decide the data (`data.data_key`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from experiments.dialogsum.data import data_key, read_jsonl_rows
from experiments.dialogsum.plan import Plan
from experiments.dialogsum.scoring import choose, mean_rouge, score_predictions
from experiments.pipeline import distinct_rate, rel, write_jsonl
from pegasus_gsg.files import write_text_atomic

logger = logging.getLogger("dialogsum")


def turns(document: str) -> list[str]:
    """The dialogue's turns: its non-empty lines (`#Person1#: ...`)."""
    return [line for line in document.split("\n") if line.strip()]


def lead_k(document: str, k: int) -> str:
    """The first `k` turns, one per line."""
    return "\n".join(turns(document)[:k])


def first_words(document: str, n: int) -> str:
    """The first `n` whitespace-separated words of the document."""
    return " ".join(document.split()[:n])


def gsg_extracts(documents: Sequence[str], gsrs: Sequence[float]) -> dict[float, list[str]]:
    """GSG Ind-Orig as an extractive summarizer: for each gsr, each document's selected turns
    (shared/GSG.md: each turn scored by ROUGE1-F1 against the rest, top m = n*gsr), in order.

    One ranking per document serves every gsr (rankings are prefix-consistent).
    """
    from pegasus_gsg.core.gsg import rank_sentences, select_from_ranking

    out: dict[float, list[str]] = {g: [] for g in gsrs}
    for doc in documents:
        units = turns(doc)
        ranking = rank_sentences(units, "ind_orig")
        for g in gsrs:
            out[g].append("\n".join(units[i] for i in select_from_ranking(ranking, g)))
    return out


def run_baselines(plan: Plan) -> dict[str, Any]:
    """Choose k and gsr on the whole validation split, then score the test split and SAMSum.

    Predictions go to OUT/eval/baseline_<name>_<split>.jsonl; the result to
    OUT/baselines.json (read back on a rerun).
    """
    path = plan.out / "baselines.json"
    if path.is_file():
        cached = dict(json.loads(path.read_text()))
        if cached.get("plan") == data_key(plan):
            return cached
    data = plan.out / "data"
    val = read_jsonl_rows(data / "validation.jsonl")
    val_docs, val_refs = [r["document"] for r in val], [r["summary"] for r in val]
    lead_val = {k: mean_rouge([lead_k(d, k) for d in val_docs], val_refs) for k in plan.lead_ks}
    gsg_val_preds = gsg_extracts(val_docs, plan.gsrs)
    gsg_val = {g: mean_rouge(p, val_refs) for g, p in gsg_val_preds.items()}
    best_k, best_gsr = choose(lead_val), choose(gsg_val)
    logger.info("validation: LEAD-k best k=%d, GSG Ind-Orig best gsr=%g", best_k, best_gsr)

    systems: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
        f"LEAD-{best_k}": lambda rows: [lead_k(r["document"], best_k) for r in rows],
        f"GSG Ind-Orig extract (gsr {best_gsr:g})": lambda rows: gsg_extracts(
            [r["document"] for r in rows], [best_gsr]
        )[best_gsr],
        "first words, gold length": lambda rows: [
            first_words(r["document"], len(r["summary"].split())) for r in rows
        ],
    }
    keys = {name: f"baseline_{i}" for i, name in enumerate(systems)}
    results = []
    for split in ("test", "samsum_test"):
        rows = read_jsonl_rows(data / f"{split}.jsonl")
        refs = [r["summary"] for r in rows]
        for name, system in systems.items():
            preds = system(rows)
            out = plan.out / "eval" / f"{keys[name]}_{split}.jsonl"
            write_jsonl(
                out,
                ({"index": i, "prediction": p, "reference": ref}
                 for i, (p, ref) in enumerate(zip(preds, refs, strict=True))),
            )  # fmt: skip
            results.append(
                {
                    "model": name,
                    "key": keys[name],
                    "split": split,
                    "n": len(rows),
                    "scores": score_predictions(preds, refs),
                    "distinct": distinct_rate(preds),
                    "predictions": rel(out),
                }
            )
    report = {
        "validation_n": len(val),
        "lead_k_validation": {str(k): v for k, v in lead_val.items()},
        "gsr_validation": {str(g): v for g, v in gsg_val.items()},
        "chosen": {"lead_k": best_k, "gsr": best_gsr},
        "criterion": "mean of ROUGE-1, ROUGE-2, ROUGE-Lsum F1 on the validation split",
        "results": results,
        "plan": data_key(plan),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=2, ensure_ascii=False))
    return report
