"""`pegasus-gsg evaluate`: generate summaries for a JSON Lines file and print ROUGE-1/2/Lsum.

    pegasus-gsg evaluate --model runs/ft/model --input ../shared/data/aeslc/data.jsonl \\
        --split test --dedupe --out predictions.jsonl

Writes one JSON line per example (`index`, `id` when the record has one, `prediction`,
`reference`) to `--out` (atomically: a temp file renamed at the end), a `<out>.rouge.json` with
the scores, and prints the table (95% bootstrap intervals; see pegasus_gsg/evaluate.py). Both
are built in memory first: without free space for them it stops before writing either (one
`no space left writing PATH` line, as for a write that meets a full disk).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from pegasus_gsg.data.jsonl import read_jsonl

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a save_pretrained model directory")
    parser.add_argument("--input", required=True, help="JSON Lines file of documents + summaries")
    parser.add_argument("--text-field", default="document")
    parser.add_argument("--summary-field", default="summary")
    parser.add_argument("--split", help="keep only records whose `split` field equals this")
    parser.add_argument(
        "--dedupe",
        action="store_true",
        help="score each distinct document once (AESLC repeats emails)",
    )
    parser.add_argument("--max-samples", type=int, help="score the first N records only")
    parser.add_argument("--out", required=True, help="predictions.jsonl to write")
    parser.add_argument("--num-beams", type=int, help="default: the model's generation config")
    parser.add_argument("--max-new-tokens", type=int, help="default: the model's generation config")
    parser.add_argument(
        "--length-penalty",
        type=float,
        help="beam search: exponent on length dividing each beam's log-prob (>1 favours longer); "
        "default: the model's generation config",
    )
    parser.add_argument(
        "--no-repeat-ngram-size",
        type=int,
        help="forbid repeating any n-gram of this size in a summary (0: off); "
        "default: the model's generation config",
    )
    parser.add_argument("--max-input-len", type=int, default=512)
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=8192,
        help="padded input tokens x beams per generation batch",
    )
    parser.add_argument(
        "--lang",
        choices=["auto", "en", "cjk"],
        default="auto",
        help="en: stemmed rouge-score; cjk: one token per character",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument(
        "--backend",
        choices=["transformers", "ctranslate2"],
        default="transformers",
        help="generation engine (ctranslate2: converted once, cached in MODEL/.ct2)",
    )
    parser.add_argument(
        "--compute-type", help="ctranslate2: float32 (CPU default), int8, bfloat16 (GPU), ..."
    )


def read_pairs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Records with text and summary from the JSON Lines input, filtered as asked.

    Raises:
        FileNotFoundError: no input file.
        ValueError: a malformed line or a missing field, named by file:line.
    """
    path = Path(args.input)
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    records, seen, duplicates = [], set(), 0
    for line_no, record in read_jsonl(path, skip_blank=True):
        if args.split is not None and record.get("split") != args.split:
            continue
        for field in (args.text_field, args.summary_field):
            if not isinstance(record.get(field), str):
                raise ValueError(
                    f"{path}:{line_no}: no string field {field!r} "
                    f"(fields: {sorted(record)}); set --text-field/--summary-field"
                )
        if args.dedupe:
            if record[args.text_field] in seen:
                duplicates += 1
                continue
            seen.add(record[args.text_field])
        records.append(record)
        if args.max_samples is not None and len(records) >= args.max_samples:
            break
    if duplicates:
        logger.info("skipped %d duplicate documents", duplicates)
    if not records:
        raise ValueError(
            f"--input {path}: no records" + (f" with split {args.split!r}" if args.split else "")
        )
    return records


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    from pegasus_gsg.evaluation.rouge import format_table, generate, rouge_report
    from pegasus_gsg.files import check_free_space, write_bytes_atomic, writing_to

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model {model_dir}: not a model directory (no config.json)")
    if args.compute_type is not None and args.backend != "ctranslate2":
        raise ValueError("--compute-type needs --backend ctranslate2")
    if args.no_repeat_ngram_size is not None and args.no_repeat_ngram_size < 0:
        raise ValueError(f"--no-repeat-ngram-size must be >= 0, got {args.no_repeat_ngram_size}")
    records = read_pairs(args)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    try:
        gen = GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json: what from_pretrained's model would use
        gen = GenerationConfig.from_model_config(config)
    if args.num_beams is not None:
        gen.num_beams = args.num_beams
    if args.max_new_tokens is not None:
        gen.max_new_tokens = args.max_new_tokens
    if args.length_penalty is not None:
        gen.length_penalty = args.length_penalty
    if args.no_repeat_ngram_size is not None:
        gen.no_repeat_ngram_size = args.no_repeat_ngram_size
    max_len = min(args.max_input_len, config.max_position_embeddings)
    inputs = tokenizer([r[args.text_field] for r in records], truncation=True, max_length=max_len)[
        "input_ids"
    ]
    if args.backend == "ctranslate2":
        from pegasus_gsg.evaluation import ct2
        from pegasus_gsg.evaluation.rouge import generate_ct2

        device = ct2.default_device()
        compute_type = ct2.resolve_compute_type(args.compute_type, device)
        # torch's thread count (OMP_NUM_THREADS, else the CPUs) for CTranslate2 too, as the
        # server does: its own default is 4, which oversubscribes a core given to another job.
        decoder = ct2.Ct2Decoder(
            ct2.cached_conversion(model_dir, compute_type),
            device=device,
            compute_type=compute_type,
            threads=torch.get_num_threads(),
        )
        outputs = generate_ct2(decoder, inputs, gen, max_tokens=args.batch_tokens)
    else:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        outputs = generate(model, inputs, gen, max_tokens=args.batch_tokens, device=device)
    predictions = tokenizer.batch_decode(outputs, skip_special_tokens=True)
    references = [r[args.summary_field] for r in records]
    report = rouge_report(predictions, references, lang=args.lang, bootstrap_samples=args.bootstrap)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (record, pred, ref) in enumerate(zip(records, predictions, references, strict=True)):
        row = {"index": i, "prediction": pred, "reference": ref}
        if "id" in record:
            row["id"] = record["id"]
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    data = "".join(lines).encode("utf-8")
    scores = {name: {"low": s.low, "mid": s.mid, "high": s.high} for name, s in report.items()}
    rouge = json.dumps({"n": len(records), "scores": scores}, indent=2).encode("utf-8")
    # Both sizes are known: a disk without room for them stops here, before either is written.
    check_free_space(out, len(data) + len(rouge))
    with writing_to(out, len(data)):
        write_bytes_atomic(out, data)
    # Written whole or not at all, like the predictions: a run killed here leaves no scores
    # that look final. Predictions without their scores would: a full disk here removes them.
    rouge_path = out.with_name(out.name + ".rouge.json")
    try:
        with writing_to(rouge_path, len(rouge)):
            write_bytes_atomic(rouge_path, rouge)
    except OSError:
        out.unlink(missing_ok=True)
        raise
    print(format_table(report, len(records)))
    return 0
