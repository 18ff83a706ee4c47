"""`pegasus-gsg demo`: raw text to a served summarizer in one command, on real data.

Stages, each the same command a user would run by hand:

1. **tokenizer**  a PEGASUS-layout Unigram tokenizer trained on the pretraining corpus and the
                  fine-tuning training pairs; the AESLC pairs are first deduplicated on the
                  email body (1,301 duplicates as released), with held-out pairs whose bodies
                  occur nowhere in the training data;
2. **prepare**    the corpus split into sentences, GSG-ranked (Ind-Orig) and tokenized into a
                  store; the pairs tokenized into fine-tuning stores;
3. **pretrain**   `python -m pegasus_gsg.pretrain` on the store for a wall-clock budget;
4. **finetune**   `python -m pegasus_gsg.finetune` from the pretrained weights;
5. **evaluate**   `pegasus-gsg evaluate` on the held-out pairs: ROUGE-1/2/Lsum with 95% CIs;
6. **serve**      `pegasus-gsg serve` on a free local port; unseen emails are summarized
                  through a real gRPC channel and printed next to their real subjects; SIGTERM
                  drains it.

The run directory gets `report.md` with the stage table, loss curves and ROUGE as PNG plots.
The defaults fit in about 15 minutes on 2 CPU cores; `--minutes` scales the two training
budgets, which take about 80% of the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pegasus_gsg.data.jsonl import read_jsonl
from pegasus_gsg.data.pairs import dedup_pairs
from pegasus_gsg.evaluation.report import markdown_table, plot_curves, plot_rouge_bars, read_metric
from pegasus_gsg.files import (
    fresh_staging_dir,
    remove_tree,
    replace_dir,
    write_text_atomic,
)
from pegasus_gsg.shipped import shipped_config

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path("../shared/data")
PRETRAIN_SHARE = 0.45
"""Share of `--minutes` given to pretraining; fine-tuning gets FINETUNE_SHARE."""
FINETUNE_SHARE = 0.35
LEAD_WORDS = 5
"""The scale baseline: the first words of the email as its subject (AESLC subjects average
about five words)."""


@dataclass
class DemoOptions:
    """What `pegasus-gsg demo` runs on and how big; every field has a default."""

    data_dir: Path = DEFAULT_DATA_DIR
    """Folder holding `<corpus>/data.jsonl` and `<pairs>/data.jsonl` (../shared/data)."""
    corpus: str = "reuters21578_en"
    """Pretraining corpus: a folder name under data_dir, or a JSON Lines file with `text`."""
    pairs: str = "aeslc"
    """Fine-tuning pairs: a folder under data_dir, or a JSON Lines file with `document`,
    `summary` and optionally `split` (train / dev|validation / test)."""
    out: Path = Path("demo-out")
    """Folder the demo writes: stores, tokenizer, runs, predictions and its report."""
    minutes: float = 12.0
    """Target length of the whole run in minutes, > 0; the training budgets are shares of
    it."""
    corpus_docs: int = 15000
    """Most corpus documents read for the tokenizer and pretraining; >= 1."""
    vocab_size: int = 4000
    """Tokenizer vocabulary size including reserved ids, >= 1 (the tokenizer trainer refuses
    one too small to hold its reserved and byte pieces)."""
    train_pairs: int = 4000
    """Most (document, summary) pairs to fine-tune on; >= 1."""
    eval_pairs: int = 200
    """Held-out pairs scored with ROUGE (half as many, at least 4, validate); >= 1."""
    show_examples: int = 5
    """Summaries generated through the gRPC server and shown in the report; >= 1."""
    max_input_len: int = 256
    """Encoder tokens per example including `</s>`; >= 2."""
    max_target_len: int = 32
    """Decoder target tokens per example including `</s>`; >= 2."""
    seed: int = 0
    """Seed of the tokenizer sample, data order and training; >= 0."""
    threads: int = 1
    """torch/OpenMP threads per training process. 1 by default: with anything else running
    on a 2-core machine, 2 threads per process collapsed to 5.4 s/step against 0.45 s/step with
    1 (the second thread spin-waits for a busy core; measured for experiments/)."""
    smoke: bool = False
    """Seconds-long run on tiny slices through every stage (used by the tests)."""

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.out = Path(self.out)
        if not self.minutes > 0:
            raise ValueError(f"--minutes must be > 0, got {self.minutes}")
        for name in (
            "corpus_docs",
            "vocab_size",
            "train_pairs",
            "eval_pairs",
            "show_examples",
            "threads",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("max_input_len", "max_target_len"):
            value = getattr(self, name)
            if value < 2:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 2, got {value}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.smoke:
            self.corpus_docs = min(self.corpus_docs, 300)
            self.vocab_size = min(self.vocab_size, 800)
            self.train_pairs = min(self.train_pairs, 64)
            self.eval_pairs = min(self.eval_pairs, 8)
            self.show_examples = min(self.show_examples, 2)

    def resolve(self, name: str, what: str) -> Path:
        """`name` as a JSON Lines path: an existing file, else data_dir/name/data.jsonl.

        Raises:
            FileNotFoundError: neither exists; says exactly what to pass instead.
        """
        as_file = Path(name)
        if as_file.is_file():
            return as_file
        path = self.data_dir / name / "data.jsonl"
        if path.is_file():
            return path
        flag = "--corpus" if what == "corpus" else "--pairs"
        raise FileNotFoundError(
            f"{what} {name!r}: neither a file nor {path}. The demo reads the project's real data "
            f"from ../shared/data; pass --data-dir DIR (a folder with {name}/data.jsonl), or "
            f"{flag} FILE.jsonl ("
            + (
                "one document per line in field 'text'"
                if what == "corpus"
                else "fields 'document' and 'summary', optional 'split'"
            )
            + ")"
        )


@dataclass
class Stage:
    """One timed stage of the demo, for the report."""

    name: str
    """tokenizer, prepare, pretrain, finetune, evaluate or serve."""
    seconds: float
    """Wall-clock time the stage took."""
    figure: str
    """One line saying what the stage produced (counts, losses, ROUGE)."""


@dataclass
class DemoResult:
    """What `run_demo` did and measured."""

    out: Path
    """The demo's output folder (absolute)."""
    stages: list[Stage] = field(default_factory=list)
    """The stages run so far, in order."""
    rouge: dict[str, dict[str, float]] = field(default_factory=dict)
    """The fine-tuned model's ROUGE on the held-out pairs: metric -> low/mid/high F1."""
    baseline: dict[str, dict[str, float]] = field(default_factory=dict)
    """ROUGE of the first LEAD_WORDS words of each held-out document, for scale."""
    examples: list[dict[str, str]] = field(default_factory=list)
    """Summaries served over gRPC: `subject` (the reference) and `generated`."""
    report: Path | None = None
    """The written report; None until the last stage has run."""


def _timed(result: DemoResult, name: str, fn: Callable[[], str]) -> None:
    logger.info("== stage %s", name)
    start = time.perf_counter()
    figure = fn()
    result.stages.append(Stage(name, time.perf_counter() - start, figure))
    logger.info("== stage %s done in %.1f s: %s", name, result.stages[-1].seconds, figure)


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run a stage's command, streaming its output to the terminal and to `log`.

    Raises:
        RuntimeError: the command failed; names it and the log holding its output.
    """
    logger.info("$ %s", " ".join(cmd))
    with (
        log.open("w", encoding="utf-8") as f,
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            sys.stderr.write(line)
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"stage command failed with exit {code}: {' '.join(cmd)} (see {log})")


def _dedup_pairs(path: Path, opts: DemoOptions, out_dir: Path) -> tuple[Path, Path, Path, str]:
    """Split pairs into train / validation / held-out test JSON Lines, deduplicated on document.

    A body that occurs in several splits (AESLC has 108 dev/test overlaps) is kept only in the
    first split it was met in, train first, so nothing evaluated was trained on. Returns the
    three files and a note of what was dropped.
    """
    records = (r for _, r in read_jsonl(path, required=("document", "summary")))
    pairs = dedup_pairs(records, ("train", "validation", "test"))
    by_split = pairs.splits
    dropped = f"{pairs.duplicates} duplicate and {pairs.empty} empty pairs dropped"
    if pairs.other_split:
        dropped += ", not used: " + ", ".join(f"{n} {k}" for k, n in pairs.other_split.items())
    if not by_split["test"]:  # no split field: hold out the tail
        cut = max(1, len(by_split["train"]) // 10)
        by_split["test"] = by_split["train"][-cut:]
        by_split["train"] = by_split["train"][:-cut]
    if not by_split["validation"]:
        by_split["validation"] = by_split["test"][: len(by_split["test"]) // 2]
    limits = {
        "train": opts.train_pairs,
        "validation": max(opts.eval_pairs // 2, 4),
        "test": opts.eval_pairs + opts.show_examples,
    }
    paths = []
    for split, limit in limits.items():
        p = out_dir / f"pairs_{split}.jsonl"
        rows = by_split[split][:limit]
        if not rows:
            raise ValueError(f"{path}: no usable {split} pairs after deduplication")
        write_text_atomic(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        paths.append(p)
    return paths[0], paths[1], paths[2], dropped


def _lead_words_rouge(predictions: Path) -> dict[str, dict[str, float]]:
    """ROUGE of the first LEAD_WORDS words of each evaluated document against its reference."""
    from pegasus_gsg.evaluation.rouge import rouge_report

    held_out = [r for _, r in read_jsonl(predictions.parent / "pairs_test.jsonl")]
    evaluated = [r for _, r in read_jsonl(predictions, required=("index", "reference"))]
    leads = [" ".join(held_out[r["index"]]["document"].split()[:LEAD_WORDS]) for r in evaluated]
    report = rouge_report(leads, [r["reference"] for r in evaluated])
    return {k: {"low": v.low, "mid": v.mid, "high": v.high} for k, v in report.items()}


SMOKE_OVERRIDES = (
    "data.max_tokens=2048",
    "schedule.warmup_steps=2",
    "schedule.max_steps=8",
    "checkpoint.log_every=1",
)
"""--smoke: a few tiny steps through every stage instead of the configs' real sizes."""


def demo_config(name: str) -> Path:
    """The shipped configs/`name`, the hyperparameters of one training stage.

    Raises:
        FileNotFoundError: the file is missing (an incomplete installation).
    """
    return shipped_config(name)


def _train_overrides(opts: DemoOptions, minutes: float) -> list[str]:
    """What depends on the demo's own options, on top of configs/demo_*.yaml."""
    return [
        f"model.max_position_embeddings={max(opts.max_input_len, opts.max_target_len)}",
        f"data.max_input_len={opts.max_input_len}",
        f"data.max_target_len={opts.max_target_len}",
        f"schedule.max_minutes={minutes:.3f}",
        f"seed={opts.seed}",
        *(SMOKE_OVERRIDES if opts.smoke else ()),
    ]


def _final_loss(metrics: Path) -> str:
    curve = read_metric(metrics, "loss")
    if not curve.values:
        return "no logged steps"
    return f"loss {curve.values[0]:.2f} -> {curve.values[-1]:.2f} in {curve.steps[-1]} steps"


def _iter_texts(path: Path, limit: int) -> Iterator[str]:
    for n, (_, record) in enumerate(read_jsonl(path, required=("text",))):
        if n >= limit:
            return
        yield record["text"]


def run_demo(opts: DemoOptions) -> DemoResult:
    """Run every stage; returns the stage table, ROUGE and example summaries.

    Raises:
        FileNotFoundError: the corpus or pairs cannot be found (the message says what to pass).
        RuntimeError: a stage's command failed (the message names its log file).
    """
    corpus = opts.resolve(opts.corpus, "corpus")
    pairs = opts.resolve(opts.pairs, "pairs")
    out = opts.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    result = DemoResult(out)
    py = sys.executable
    tok_dir, pre_store = out / "tokenizer", out / "pretrain_store"
    pre_run, ft_run = out / "pretrain", out / "finetune"
    threads_env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads)}
    pretrain_minutes = opts.minutes * PRETRAIN_SHARE
    finetune_minutes = opts.minutes * FINETUNE_SHARE

    # The pair files come first: the tokenizer trains on the training pairs as well.
    train_pairs, val_pairs, _, dropped = _dedup_pairs(pairs, opts, out)

    def tokenizer() -> str:
        from pegasus_gsg.data.tokenization import train_tokenizer

        # The fine-tuning training pairs join the corpus, so that email bodies and subjects
        # are not split into many short pieces (held-out pairs stay unseen).
        texts = list(_iter_texts(corpus, opts.corpus_docs))
        pair_texts = [
            f"{r['document']}\n{r['summary']}"
            for _, r in read_jsonl(train_pairs, required=("document",))
        ]
        staging = fresh_staging_dir(tok_dir)
        tok = train_tokenizer(texts + pair_texts, opts.vocab_size, staging)
        replace_dir(staging, tok_dir)
        return f"{len(tok)} ids from {len(texts)} documents + {len(pair_texts)} training pairs"

    def prepare() -> str:
        from pegasus_gsg.data.preparation import PrepareConfig, prepare
        from pegasus_gsg.data.store import TokenStore

        nproc = 1 if opts.smoke else min(2, os.cpu_count() or 1)
        done = prepare(
            [str(corpus)],
            tok_dir,
            pre_store,
            PrepareConfig(
                kind="pretrain",
                strategy="ind_orig",
                skip_bad=True,
                max_records=opts.corpus_docs,
                num_proc=nproc,
                overwrite=True,
                progress=True,
            ),
        )
        for split, path in (("train", train_pairs), ("validation", val_pairs)):
            prepare(
                [str(path)],
                tok_dir,
                out / f"finetune_{split}",
                PrepareConfig(kind="finetune", overwrite=True, progress=True),
            )
        m = done.manifest or {}
        store = TokenStore.open(pre_store)
        return (
            f"{len(store)} docs, {m.get('num_tokens', 0):,} tokens "
            f"({store.dtype.name}); {opts.pairs}: {dropped}"
        )

    def pretrain() -> str:
        remove_tree(pre_run)  # a demo run starts afresh (the trainer refuses an old run's --out)
        _run(
            [
                py,
                "-m",
                "pegasus_gsg.pretrain",
                "--train",
                str(pre_store),
                "--tokenizer",
                str(tok_dir),
                "--out",
                str(pre_run),
                "--config",
                str(demo_config("demo_pretrain.yaml")),
                *_train_overrides(opts, pretrain_minutes),
            ],
            logs / "pretrain.log",
            threads_env,
        )
        return _final_loss(pre_run / "metrics.jsonl")

    def finetune() -> str:
        remove_tree(ft_run)
        _run(
            [
                py,
                "-m",
                "pegasus_gsg.finetune",
                "--init-from",
                str(pre_run / "model"),
                "--train",
                str(out / "finetune_train"),
                "--validation",
                str(out / "finetune_validation"),
                "--out",
                str(ft_run),
                "--config",
                str(demo_config("demo_finetune.yaml")),
                *_train_overrides(opts, finetune_minutes),
                *(("eval.every=4",) if opts.smoke else ()),
            ],
            logs / "finetune.log",
            threads_env,
        )
        return _final_loss(ft_run / "metrics.jsonl")

    def evaluate() -> str:
        preds = out / "predictions.jsonl"
        _run(
            [
                py,
                "-m",
                "pegasus_gsg",
                "evaluate",
                "--model",
                str(ft_run / "model"),
                "--input",
                str(out / "pairs_test.jsonl"),
                "--max-samples",
                str(opts.eval_pairs),
                "--max-new-tokens",
                "24",
                "--out",
                str(preds),
            ],
            logs / "evaluate.log",
            threads_env,
        )
        scores = json.loads(preds.with_name(preds.name + ".rouge.json").read_text())["scores"]
        result.rouge = scores
        result.baseline = _lead_words_rouge(preds)
        lead = result.baseline["rouge1"]["mid"]
        figures = " / ".join(f"{name} {s['mid']:.1f}" for name, s in scores.items())
        return f"{figures} (first {LEAD_WORDS} words of the email: rouge1 {lead:.1f})"

    def serve() -> str:
        from pegasus_gsg.serving.client import SummarizerClient
        from pegasus_gsg.serving.process import ServerProcess

        held_out = [r for _, r in read_jsonl(out / "pairs_test.jsonl")]
        unseen = held_out[opts.eval_pairs : opts.eval_pairs + opts.show_examples] or held_out[:1]
        args = ["--model", str(ft_run / "model"), "--port", "0", "--grace", "5"]
        server = ServerProcess([*args, "--max-wait-ms", "20"], log=logs / "server.log")
        try:
            address = server.wait_until_serving(timeout=300)
            with SummarizerClient(address, timeout=60.0) as client:
                replies = client.summarize_batch(
                    [r["document"] for r in unseen], truncate=True, max_new_tokens=24
                )
            for record, reply in zip(unseen, replies, strict=True):
                result.examples.append(
                    {
                        "document": record["document"],
                        "subject": record["summary"],
                        "generated": reply.summary,
                    }
                )
        finally:
            code = server.stop(timeout=30)
        if code != 0:
            log = server.log_path
            raise RuntimeError(f"the server exited with {code} after SIGTERM (see {log})")
        return f"{len(result.examples)} summaries over gRPC on port {server.port}; drained, exit 0"

    _timed(result, "tokenizer", tokenizer)
    _timed(result, "prepare", prepare)
    _timed(result, "pretrain", pretrain)
    _timed(result, "finetune", finetune)
    _timed(result, "evaluate", evaluate)
    _timed(result, "serve", serve)
    result.report = write_report(result, opts)
    return result


SCALE_NOTE = (
    "For scale: the model is a 0.5M-parameter PEGASUS trained for minutes on a CPU; at this "
    "size and budget it learns the form of a subject line (short, capitalised, frequent "
    "email words) long before it learns to pick the right words, and the first-words baseline "
    "is usually ahead. The paper's PEGASUS-LARGE (568M parameters, pretrained for 500k steps "
    "on TPUs) reaches ROUGE 37.7 / 21.3 / 36.5 on AESLC, the default pairs. Raise "
    "`--minutes` to see the model improve; the pipeline, commands and files are the same at "
    "every size. A model that does summarize takes longer: `python -m experiments.dialogsum_best` "
    "(1.7 hours on 2 CPU cores) trains the DialogSum summarizer shipped in "
    "models/dialogsum-small (ROUGE-1 33.9 against LEAD-3's 27.5)."
)


def write_report(result: DemoResult, opts: DemoOptions) -> Path:
    """`OUT/report.md` with the stage table, loss curves and ROUGE plots (PNG)."""
    out = result.out
    curves = [
        read_metric(out / "pretrain" / "metrics.jsonl", "loss", "pretrain (GSG loss)"),
        read_metric(out / "finetune" / "metrics.jsonl", "loss", "fine-tune (train loss)"),
    ]
    val = out / "finetune" / "eval.jsonl"
    val_curve = read_metric(val, "val_loss", "fine-tune (validation loss)")
    plot_curves(
        [*curves, *([val_curve] if val_curve.steps else [])],
        out / "loss.png",
        title="Training loss",
        ylabel="cross-entropy per target token",
    )
    lead = f"first {LEAD_WORDS} words of the email"
    bars = {
        name: {k: (v["mid"], v["low"], v["high"]) for k, v in scores.items()}
        for name, scores in (("fine-tuned model", result.rouge), (lead, result.baseline))
    }
    plot_rouge_bars(bars, out / "rouge.png", title=f"ROUGE on held-out {opts.pairs} pairs")
    stage_rows = [(s.name, f"{s.seconds:.0f} s", s.figure) for s in result.stages]

    def cell(v: dict[str, float]) -> str:
        return f"{v['mid']:.2f} [{v['low']:.2f}, {v['high']:.2f}]"

    rouge_rows = [(k, cell(v), cell(result.baseline[k])) for k, v in result.rouge.items()]
    example_rows = [(e["subject"], e["generated"]) for e in result.examples]
    total = sum(s.seconds for s in result.stages)
    text = "\n\n".join(
        [
            "# pegasus-gsg demo run",
            f"Corpus `{opts.corpus}`, pairs `{opts.pairs}`, {opts.minutes:g}-minute budget; "
            f"total {total / 60:.1f} min.",
            "## Stages\n\n" + markdown_table(("stage", "time", "result"), stage_rows),
            "## Loss\n\n![loss curves](loss.png)",
            f"## ROUGE (F1 x100, 95% bootstrap CI, {opts.eval_pairs} held-out pairs)\n\n"
            + markdown_table(("metric", "fine-tuned model", lead), rouge_rows)
            + "\n\n![ROUGE](rouge.png)\n\n"
            + SCALE_NOTE,
            "## Unseen inputs served over gRPC\n\n"
            + markdown_table(("real subject", "generated subject"), example_rows),
        ]
    )
    path = out / "report.md"
    write_text_atomic(path, text + "\n")
    return path


# The `pegasus-gsg demo` command (cli.py dispatches here: the recipe and its options are one
# idea, so they share a module instead of a second `demo.py` under commands/).


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoOptions()
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder with the corpus and pairs folders (default ../shared/data)",
    )
    parser.add_argument(
        "--corpus",
        default=defaults.corpus,
        help="pretraining corpus: folder under --data-dir or a JSONL file (text)",
    )
    parser.add_argument(
        "--pairs",
        default=defaults.pairs,
        help="fine-tuning pairs: folder under --data-dir or a JSONL file "
        "(document, summary, optional split)",
    )
    parser.add_argument("--out", type=Path, default=defaults.out, help="run directory")
    parser.add_argument(
        "--minutes",
        type=float,
        default=defaults.minutes,
        help="target length of the whole run (training takes ~80%%)",
    )
    parser.add_argument("--corpus-docs", type=int, default=defaults.corpus_docs)
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size)
    parser.add_argument("--train-pairs", type=int, default=defaults.train_pairs)
    parser.add_argument("--eval-pairs", type=int, default=defaults.eval_pairs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help="torch threads per training process (default 1)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds-long run through every stage on tiny slices"
    )


def run(args: argparse.Namespace) -> int:
    opts = DemoOptions(
        data_dir=args.data_dir,
        corpus=args.corpus,
        pairs=args.pairs,
        out=args.out,
        minutes=args.minutes,
        corpus_docs=args.corpus_docs,
        vocab_size=args.vocab_size,
        train_pairs=args.train_pairs,
        eval_pairs=args.eval_pairs,
        seed=args.seed,
        threads=args.threads,
        smoke=args.smoke,
    )
    try:
        result = run_demo(opts)
    except RuntimeError as err:  # a stage's command failed: its log is named in the message
        raise ValueError(str(err)) from None
    print()
    print(
        markdown_table(
            ("stage", "time", "result"),
            [(s.name, f"{s.seconds:.0f} s", s.figure) for s in result.stages],
        )
    )
    print()
    print(
        markdown_table(
            ("real subject", "generated subject"),
            [(e["subject"], e["generated"]) for e in result.examples],
        )
    )
    print(f"\nreport: {result.report}")
    return 0
