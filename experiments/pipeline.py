"""Restartable experiment stages, deduplicated pair slices and result tables.

Shared by `low_resource.py`, `chinese.py` and `dialogsum/`. An experiment is a list of stages,
each one command line of the project's own tools (`pegasus-gsg tokenizer train`, `pegasus-gsg
prepare`, `python -m pegasus_gsg.pretrain|finetune`, `pegasus-gsg evaluate`), run in a
subprocess with its output in `OUT/logs/<stage>.log`. A stage that finished leaves
`OUT/done/<stage>.json` (the exact command, seconds, end time); a rerun of the script skips it,
so an interrupted experiment continues where it stopped. Pretraining runs save checkpoints and
are resumed with `--resume latest`; the short fine-tuning runs are simply restarted from
scratch.

Pairs: `dedup_pairs` keeps each document once, training side first, so no evaluated document
was seen in training (AESLC as released repeats 1,301 email bodies, some across splits). The
training slices are nested (the first 100 of the 1,000) and every slice is a seeded shuffle,
so each row of a table saw the same data.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pegasus_gsg.data.pairs import DedupedPairs
from pegasus_gsg.data.pairs import dedup_pairs as _dedup_pairs
from pegasus_gsg.files import atomic_file, write_text_atomic

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclass
class StageRunner:
    """Runs stages as subprocesses in the repository root; skips those already done."""

    out: Path
    threads: int = 2
    records: list[dict[str, Any]] = field(default_factory=list)
    heartbeat_s: float = 30.0

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        (self.out / "done").mkdir(parents=True, exist_ok=True)

    def spent(self, name: str) -> float:
        """Wall seconds stage `name` ran in earlier, unfinished attempts (0 for a new one)."""
        ledger = self.out / "done" / f"{name}.spent"
        return float(ledger.read_text()) if ledger.is_file() else 0.0

    def done(self, name: str) -> dict[str, Any] | None:
        marker = self.out / "done" / f"{name}.json"
        return json.loads(marker.read_text()) if marker.is_file() else None

    def run(self, name: str, cmd: Sequence[object], *, clean: Path | None = None) -> dict[str, Any]:
        """Run `cmd` unless stage `name` is done; `clean` is removed first (a partial run).

        Raises:
            RuntimeError: the command failed; names it and its log.
        """
        record = self.done(name)
        if record is not None:
            logger.info("skip %s (done in %.0f s at %s)", name, record["seconds"], record["end"])
            record = {**record, "skipped": True}
            self.records.append(record)
            return record
        if clean is not None and clean.exists():
            shutil.rmtree(clean)
        line = shlex.join(str(c) for c in cmd)
        logger.info("$ %s", line)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
        log = self.out / "logs" / f"{name}.log"
        start = time.perf_counter()
        before = 0.0 if clean is not None else self.spent(name)  # a clean start owes nothing
        ledger = self.out / "done" / f"{name}.spent"
        with log.open("a" if before else "w", encoding="utf-8") as f:
            proc = subprocess.Popen(
                [str(c) for c in cmd], cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env
            )
            while True:
                try:
                    code = proc.wait(timeout=self.heartbeat_s)
                    break
                except subprocess.TimeoutExpired:
                    # Seconds this stage has used over all attempts, at most one heartbeat
                    # stale even after a kill -9 of this script: what a resumed run has left.
                    write_text_atomic(ledger, f"{before + time.perf_counter() - start:.1f}")
        seconds = time.perf_counter() - start
        write_text_atomic(ledger, f"{before + seconds:.1f}")
        if code != 0:
            raise RuntimeError(f"stage {name} failed with exit {code}: {line} (see {log})")
        record = {
            "stage": name,
            "command": line,
            "seconds": round(seconds, 1),
            "seconds_all_attempts": round(before + seconds, 1),
            "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_text_atomic(self.out / "done" / f"{name}.json", json.dumps(record, indent=2))
        logger.info("done %s in %.0f s", name, seconds)
        self.records.append(record)
        return record


@dataclass(frozen=True)
class Task:
    """One unit of an experiment for `run_tasks`: `fn` runs after every task in `after`."""

    name: str
    fn: Callable[[], Any]
    after: tuple[str, ...] = ()


def run_tasks(tasks: Sequence[Task], workers: int) -> dict[str, Any]:
    """Run `tasks` on `workers` threads, each task once all of its `after` tasks finished.

    Tasks start in list order among those ready, so list the long chain first. The tasks'
    work is subprocesses (StageRunner.run), so threads are enough. Returns name -> result.

    Raises:
        ValueError: a task waits for a name that is not in `tasks`, or names repeat.
        Exception: the first task that failed; no new task starts after a failure.
    """
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"task names repeat: {sorted(n for n in names if names.count(n) > 1)}")
    unknown = {a for t in tasks for a in t.after} - set(names)
    if unknown:
        raise ValueError(f"tasks wait for unknown tasks {sorted(unknown)}")
    pending = list(tasks)
    finished: dict[str, Any] = {}
    failed: list[BaseException] = []
    cond = threading.Condition()

    def next_task() -> Task | None:
        with cond:
            while True:
                if failed or not pending:
                    return None
                ready = [t for t in pending if all(a in finished for a in t.after)]
                if ready:
                    pending.remove(ready[0])
                    return ready[0]
                cond.wait()

    def worker() -> None:
        while (task := next_task()) is not None:
            try:
                result = task.fn()
            except BaseException as err:
                with cond:
                    failed.append(err)
                    cond.notify_all()
                return
            with cond:
                finished[task.name] = result
                cond.notify_all()

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for _ in range(max(1, workers)):
            pool.submit(worker)
    if failed:
        raise failed[0]
    return finished


def distinct_rate(predictions: Sequence[str]) -> float:
    """Share of predictions that no other prediction equals (after stripping whitespace):
    1.0 when all differ; a model writing one summary for everything scores about 0."""
    if not predictions:
        raise ValueError("distinct_rate: no predictions")
    counts: dict[str, int] = {}
    for p in predictions:
        counts[p.strip()] = counts.get(p.strip(), 0) + 1
    return sum(1 for p in predictions if counts[p.strip()] == 1) / len(predictions)


def rel(path: Path) -> str:
    """`path` relative to the repository root (`../shared/data/...` for the shared data), so
    the recorded commands run from any checkout's root."""
    return os.path.relpath(Path(path).resolve(), REPO)


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """All records of a JSON Lines pairs file (`document`, `summary`, `split`)."""
    from pegasus_gsg.data.jsonl import read_jsonl

    return [r for _, r in read_jsonl(path, required=("document", "summary"))]


def dedup_pairs(
    records: Iterable[Mapping[str, Any]], splits: Sequence[str] = ("train", "test")
) -> DedupedPairs:
    """Pairs of `splits`, each document once, in the first split (in that order) holding it;
    other splits (by default dev/validation) are ignored."""
    return _dedup_pairs(records, splits)


def seeded_sample(rows: Sequence[Any], n: int, seed: int) -> list[Any]:
    """The first `n` of a seeded shuffle of `rows` (nested: a smaller n is a prefix).

    Raises:
        ValueError: fewer than `n` rows.
    """
    if n > len(rows):
        raise ValueError(f"asked for {n} examples but only {len(rows)} are available")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:n]]


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSON lines, whole or not at all, so a half-written file never looks done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_rouge(preds: Path) -> dict[str, Any]:
    """The `<preds>.rouge.json` that `pegasus-gsg evaluate` writes: {"n", "scores"}."""
    return dict(json.loads(preds.with_name(preds.name + ".rouge.json").read_text()))


ROUGE_COLUMNS = (("rouge1", "R-1"), ("rouge2", "R-2"), ("rougeLsum", "R-Lsum"))


def fmt_score(score: Mapping[str, float]) -> str:
    """`21.3 [19.8, 22.9]`: mean and 95% bootstrap interval."""
    return f"{score['mid']:.1f} [{score['low']:.1f}, {score['high']:.1f}]"


def results_table(
    results: Sequence[Mapping[str, Any]], keys: Sequence[str], labels: Mapping[str, str]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a markdown table: the `keys` columns, then ROUGE with intervals.

    Each result is {key: value, ..., "scores": {rouge1: {low, mid, high}, ...}}. Within a group
    of rows that agree on every key but the last, the best mean of each metric is in bold.
    """
    header = [labels.get(k, k) for k in keys] + [name for _, name in ROUGE_COLUMNS]
    best: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in results:
        group = tuple(r[k] for k in keys[:-1])
        for metric, _ in ROUGE_COLUMNS:
            mid = r["scores"][metric]["mid"]
            best.setdefault(group, {})
            best[group][metric] = max(best[group].get(metric, mid), mid)
    rows = []
    for r in results:
        group = tuple(r[k] for k in keys[:-1])
        cells = [str(r[k]) for k in keys]
        for metric, _ in ROUGE_COLUMNS:
            text = fmt_score(r["scores"][metric])
            is_best = r["scores"][metric]["mid"] == best[group][metric]
            cells.append(f"**{text}**" if is_best and len(results) > 1 else text)
        rows.append(cells)
    return header, rows


def overlapping(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Whether two 95% intervals overlap (a rough check; not a significance test)."""
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
