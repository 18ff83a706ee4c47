"""GSG throughput on real news, one core: this project's selection vs the plain way, one run.

    .venv/bin/python benchmarks/bench_gsg.py        # ~3 minutes on an idle core
    .venv/bin/python benchmarks/bench_gsg.py --docs 200 --plain-docs 10 --plain-seq-docs 3

Corpora: `bbc_news_summary` documents and `reuters21578_en` texts from ../shared/data, plus
the BBC articles with 30+ sentences (CNN/DM length). Each timing goes from raw text to the
gap-sentence indices at gsr 0.3 (sentence splitting included on both sides, stopwords removed
as by default).

Plain way, the baseline the issue names: rouge-score's RougeScorer(["rouge1"]) re-scores "the
rest of the document" against each candidate (a tokenizer wrapper drops the same stopwords,
and for *_uniq deduplicates tokens); Seq is the plain greedy loop (m steps, every remaining
candidate re-scored per step). The plain way is slow, so it runs on a subsample, and the ratio
compares both ways on that same subsample, document by document (this project's time is the
median of `--repeats` runs per document; the plain way runs once). The machine is shared, so
expect noise: the load average is printed.

Agreement counts documents where both ways chose the same sentences. The plain way compares
rouge-score's float F values, whose last bits turn exact ties into noise, so disagreements on
tied sentences are expected; tests/test_gsg.py checks exactness against a Fraction reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from pegasus_gsg.core.gsg import STRATEGIES, example_rng, num_gap_sentences, select_sentences
from pegasus_gsg.core.scoring import STOPWORDS
from pegasus_gsg.core.sentences import split_sentences

REPO = Path(__file__).resolve().parents[1]
# (label, corpus directory, text field, minimum sentences per document)
CORPORA = [
    ("bbc_news_summary", "bbc_news_summary", "document", 0),
    ("reuters21578_en", "reuters21578_en", "text", 0),
    # CNN/DM-length articles (the issue's ~70 ms plain Ind figure is for those): the plain way
    # costs O(n·N) per document and this project's O(N), so the ratio grows with length.
    ("bbc_news_summary, >= 30 sentences", "bbc_news_summary", "document", 30),
]
GSR = 0.3


class PlainTokenizer:
    """rouge-score's own tokenizer, minus the same stopwords; sets for Uniq."""

    def __init__(self, uniq: bool) -> None:
        self.uniq = uniq

    def tokenize(self, text: str) -> list[str]:
        tokens = [t for t in rouge_tokenize.tokenize(text, None) if t not in STOPWORDS]
        return list(dict.fromkeys(tokens)) if self.uniq else tokens


def plain_ind(sentences: Sequence[str], scorer: rouge_scorer.RougeScorer) -> list[int]:
    n = len(sentences)
    scores = [
        scorer.score("".join(sentences[:i] + sentences[i + 1 :]), sentences[i])["rouge1"].fmeasure
        for i in range(n)
    ]
    order = sorted(range(n), key=lambda i: (scores[i], i), reverse=True)
    return sorted(order[: num_gap_sentences(n, GSR)])


def plain_seq(sentences: Sequence[str], scorer: rouge_scorer.RougeScorer) -> list[int]:
    n = len(sentences)
    chosen: set[int] = set()
    for _ in range(num_gap_sentences(n, GSR)):
        best, best_f = -1, -1.0
        for i in range(n):
            if i in chosen:
                continue
            inside = chosen | {i}
            candidate = "".join(sentences[j] for j in sorted(inside))
            rest = "".join(sentences[j] for j in range(n) if j not in inside)
            f = scorer.score(rest, candidate)["rouge1"].fmeasure
            if f >= best_f:
                best, best_f = i, f
        chosen.add(best)
    return sorted(chosen)


def plain_select(text: str, strategy: str) -> list[int]:
    scorer = rouge_scorer.RougeScorer(
        ["rouge1"], tokenizer=PlainTokenizer(strategy.endswith("uniq"))
    )
    sentences = split_sentences(text)
    return (plain_ind if strategy.startswith("ind") else plain_seq)(sentences, scorer)


def fast_select(text: str, strategy: str, index: int) -> list[int]:
    return select_sentences(split_sentences(text), strategy, GSR, rng=example_rng(0, index, 0))


def load(data: Path, name: str, field: str, min_sentences: int, limit: int) -> list[str]:
    path = data / name / "data.jsonl"
    if not path.exists():
        sys.exit(f"bench_gsg: {path} not found; pass --data")
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line).get(field) or ""
            if text.strip() and len(split_sentences(text)) >= min_sentences:
                texts.append(text)
            if len(texts) >= limit:
                break
    return texts


def timed(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` runs (seconds) and the last run's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_corpus(texts: list[str], args: argparse.Namespace) -> list[dict]:
    rows = []
    for strategy in args.strategies:
        fast_all, _ = timed(
            lambda s=strategy: [fast_select(t, s, i) for i, t in enumerate(texts)], args.repeats
        )
        row = {"strategy": strategy, "docs_per_s": len(texts) / fast_all}
        if strategy in ("random", "lead"):
            rows.append(row)
            continue
        count = args.plain_docs if strategy.startswith("ind") else args.plain_seq_docs
        subsample = texts[:: max(1, len(texts) // count)][:count]
        fast_times, plain_times, agree = [], [], 0
        for i, text in enumerate(subsample):
            fast_time, fast_choice = timed(
                lambda t=text, s=strategy, k=i: fast_select(t, s, k), args.repeats
            )
            # One run per document: the plain way is slow and its time varies little.
            plain_time, plain_choice = timed(lambda t=text, s=strategy: plain_select(t, s), 1)
            fast_times.append(fast_time)
            plain_times.append(plain_time)
            agree += fast_choice == plain_choice
        row.update(
            plain_docs=len(subsample),
            fast_sub_docs_per_s=len(subsample) / sum(fast_times),
            plain_docs_per_s=len(subsample) / sum(plain_times),
            ratio=sum(plain_times) / sum(fast_times),
            median_ratio=statistics.median(
                p / f for p, f in zip(plain_times, fast_times, strict=True)
            ),
            agree=f"{agree}/{len(subsample)}",
        )
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--docs", type=int, default=500, help="documents per corpus (fast way)")
    parser.add_argument("--plain-docs", type=int, default=30, help="plain Ind subsample size")
    parser.add_argument("--plain-seq-docs", type=int, default=8, help="plain Seq subsample size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    print(
        "columns: docs/s = this project on all docs (median of --repeats runs); docs/s sub and\n"
        "plain/s = both ways on the plain subsample; speed-up = total plain time / total time;\n"
        "median = median per-document ratio; agree = same selection (ties differ, see --help)\n"
        f"load average at start: {os.getloadavg()[0]:.2f} (others share this machine)"
    )
    results = {}
    for label, name, field, min_sentences in CORPORA:
        texts = load(args.data, name, field, min_sentences, args.docs)
        sentences = [len(split_sentences(t)) for t in texts]
        words = [len(t.split()) for t in texts]
        print(
            f"\n{label}: {len(texts)} docs, median {np.median(sentences):.0f} sentences / "
            f"{np.median(words):.0f} words; gsr {GSR}; plain way on {args.plain_docs} (Ind) / "
            f"{args.plain_seq_docs} (Seq) of them"
        )
        print(
            f"{'strategy':10s} {'docs/s':>9s} {'docs/s sub':>11s} {'plain/s':>9s} "
            f"{'speed-up':>9s} {'median':>7s} {'agree':>7s}"
        )
        rows = bench_corpus(texts, args)
        for r in rows:
            if "ratio" in r:
                print(
                    f"{r['strategy']:10s} {r['docs_per_s']:9.0f} {r['fast_sub_docs_per_s']:11.0f}"
                    f" {r['plain_docs_per_s']:9.1f} {r['ratio']:8.0f}x {r['median_ratio']:6.0f}x"
                    f" {r['agree']:>7s}"
                )
            else:
                print(
                    f"{r['strategy']:10s} {r['docs_per_s']:9.0f} {'-':>11s} {'-':>9s} "
                    f"{'-':>9s} {'-':>7s} {'-':>7s}"
                )
            sys.stdout.flush()
        results[label] = rows
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        from pegasus_gsg.files import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
