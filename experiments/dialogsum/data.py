"""The study's data files: deduplicated DialogSum splits, seeded samples, unlabelled text.

DialogSum is deduplicated across splits (train first, then validation, then test), so no
evaluated dialogue was trained on; SAMSum's test split is kept for out-of-domain scoring. Every
sample is a seeded shuffle (pipeline.seeded_sample): the low-resource training slices are
nested per seed (the first 100 of the 1,000), and the seed changes which pairs they hold. The
tokenizer and pretraining read only dialogues and Reuters, never a summary.

Everything lands as JSON Lines under OUT/data, written once: `counts.json`, written last, holds
the plan fields that decided the files (`data_key`), and a rerun with the same fields reads it
back instead of rebuilding.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from experiments.dialogsum.plan import Plan
from experiments.pipeline import dedup_pairs, read_pairs, rel, seeded_sample, write_jsonl
from pegasus_gsg.files import write_text_atomic

logger = logging.getLogger("dialogsum")

SPLITS = ("train", "validation", "test")
"""DialogSum's splits in deduplication order: a dialogue stays in the first one holding it."""


def build_data(plan: Plan) -> dict[str, Any]:
    """Deduplicated splits, seeded samples and slices as JSON Lines under OUT/data.

    Written once; a rerun reads `counts.json` back (every file is written atomically, and
    `counts.json` last).
    """
    folder = plan.out / "data"
    summary = folder / "counts.json"
    key = data_key(plan)
    if summary.is_file():
        counts = dict(json.loads(summary.read_text()))
        if counts.get("plan") == key:
            return counts
        logger.info("data sizes or seed changed since %s was written: rebuilding", summary)
    pairs = dedup_pairs(read_pairs(plan.data_dir / "dialogsum" / "data.jsonl"), SPLITS)
    train, val, test = (pairs.splits[s] for s in SPLITS)
    # Unlabelled text for the tokenizer and pretraining: the dialogues only, never a summary.
    limit = plan.pretrain_docs
    write_jsonl(folder / "dialogues_train.jsonl", ({"text": r["document"]} for r in train[:limit]))
    if limit is not None:
        reuters = read_jsonl_rows(plan.data_dir / "reuters21578_en" / "data.jsonl")
        write_jsonl(folder / "reuters_sample.jsonl", ({"text": r["text"]} for r in reuters[:limit]))
    write_jsonl(folder / "train_full.jsonl", train)
    write_jsonl(folder / "validation.jsonl", val)
    write_jsonl(folder / "validation_lp.jsonl", seeded_sample(val, plan.lp_val_size, plan.seed))
    write_jsonl(
        folder / "validation_lp_low.jsonl", seeded_sample(val, plan.low_lp_val_size, plan.seed)
    )
    test_rows = test if plan.test_size is None else seeded_sample(test, plan.test_size, plan.seed)
    write_jsonl(folder / "test.jsonl", test_rows)
    samsum = read_pairs(plan.data_dir / "samsum_test" / "data.jsonl")
    if plan.samsum_size is not None:
        samsum = seeded_sample(samsum, plan.samsum_size, plan.seed)
    write_jsonl(folder / "samsum_test.jsonl", samsum)
    for s in plan.seed_list:
        largest = seeded_sample(train, max(plan.sizes), s)
        for n in plan.sizes:
            write_jsonl(folder / f"train_{n}_seed{s}.jsonl", largest[:n])
    counts = {
        "train_after_dedup": len(train),
        "validation_after_dedup": len(val),
        "test_after_dedup": len(test),
        "dropped_duplicates": pairs.duplicates,
        "dropped_empty": pairs.empty,
        "test_scored": len(test_rows),
        "samsum_test_scored": len(samsum),
        "lp_validation": plan.lp_val_size,
        "low_lp_validation": plan.low_lp_val_size,
        "plan": key,
    }
    write_text_atomic(summary, json.dumps(counts, indent=2))
    return counts


def data_key(plan: Plan) -> dict[str, Any]:
    """The plan fields that decide the data files (a change rebuilds them and the baselines)."""
    names = ("seed", "seeds", "low_steps", "lp_val_size", "low_lp_val_size", "test_size",
             "samsum_size", "pretrain_docs", "lead_ks", "gsrs")  # fmt: skip
    return dict(json.loads(json.dumps({n: getattr(plan, n) for n in names})))  # tuples: lists


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON Lines file the study wrote (blank lines skipped)."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def unlabelled_inputs(plan: Plan) -> list[str]:
    """The tokenizer's and pretraining's text: Reuters (all of it, or the first
    `pretrain_docs` records) and the DialogSum training dialogues."""
    data = plan.out / "data"
    reuters = (
        plan.data_dir / "reuters21578_en" / "data.jsonl"
        if plan.pretrain_docs is None
        else data / "reuters_sample.jsonl"
    )
    return [rel(reuters), rel(data / "dialogues_train.jsonl")]
