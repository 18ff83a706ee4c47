"""The study's training stages: tokenizer, stores, GSG pretraining and every fine-tuning run.

Each stage is one command line of the project's own tools, run by a StageRunner (pipeline.py)
that skips the stages already done, so the study resumes where it stopped:

- tokenizer: Unigram on Reuters plus the DialogSum training dialogues (never the summaries);
- stores: the Ind-Orig pretraining store of the same text, a fine-tuning store per pair file;
- pretrain: GSG Ind-Orig (the paper's in-domain recipe), resumed from its checkpoints;
- full_<init>: fine-tuning on all training pairs from random init or the pretrained model,
  resumable, every checkpoint kept, then decoded (scoring.decode), SAMSum included;
- low_<n>_<init>_seed<s>: n pairs with seed s (the sample and the training RNG), restarted
  from scratch when interrupted (they are short).

Every training stage has a wall-clock cap (`schedule.max_minutes`) less what its earlier
attempts ran (`minutes_left`), so an interruption does not buy more time. `Study.tasks()`
orders the work for pipeline.run_tasks' lanes: the longest chain (pretraining, then the
pretrained full run) first.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from experiments.dialogsum.data import unlabelled_inputs
from experiments.dialogsum.plan import INITS, Plan
from experiments.dialogsum.scoring import decode
from experiments.pipeline import PY, StageRunner, Task, rel


def minutes_left(runner: StageRunner, stage: str, minutes: float) -> float:
    """The `schedule.max_minutes` for a (re)started stage: its budget less the time its
    earlier attempts ran (StageRunner's ledger), so an interruption does not buy more time."""
    return round(max(minutes - runner.spent(stage) / 60, 0.5), 2)


class Study:
    """The stages of one plan, run by a StageRunner; each method is one task."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.out = plan.out
        self.runner = StageRunner(plan.out, threads=1)
        self.tok = plan.out / "tokenizer"
        self.results: dict[str, dict[str, Any]] = {}

    def cli(self) -> list[str]:
        return [PY, "-m", "pegasus_gsg"]

    def common(self) -> list[str]:
        p = self.plan
        return [
            f"data.max_input_len={p.max_input_len}",
            "checkpoint.log_with=none",
            *p.model_overrides,
        ]

    def tokenizer(self) -> None:
        """Unigram tokenizer on Reuters + the training dialogues (never the summaries)."""
        self.runner.run(
            "tokenizer",
            [*self.cli(), "tokenizer", "train", "--input", *unlabelled_inputs(self.plan),
             "--text-field", "text", "--vocab-size", self.plan.vocab_size,
             "--out", rel(self.tok)],
        )  # fmt: skip

    def prepare_finetune(self, name: str) -> None:
        """The finetune store of OUT/data/<name>.jsonl."""
        self.runner.run(
            f"prepare_{name}",
            [*self.cli(), "prepare", "finetune",
             "--input", rel(self.out / "data" / f"{name}.jsonl"), "--tokenizer", rel(self.tok),
             "--out", rel(self.out / "stores" / name), "--no-progress"],
        )  # fmt: skip

    def prepare(self) -> None:
        """Tokenizer, the Ind-Orig pretraining store and every fine-tuning store."""
        p = self.plan
        self.tokenizer()
        self.runner.run(
            "prepare_pretrain",
            [*self.cli(), "prepare", "pretrain", "--input", *unlabelled_inputs(p),
             "--tokenizer", rel(self.tok), "--out", rel(self.out / "stores" / "pretrain"),
             "--strategy", "ind_orig", "--seed", p.seed, "--num-proc", 2, "--skip-bad",
             "--no-progress"],
        )  # fmt: skip
        for name in ["train_full", "validation"] + [
            f"train_{n}_seed{s}" for s in p.seed_list for n in p.sizes
        ]:
            self.prepare_finetune(name)

    def pretrain(self) -> None:
        p = self.plan
        run_dir = self.out / "pretrain"
        minutes = minutes_left(self.runner, "pretrain", p.pretrain_minutes)
        self.runner.run(
            "pretrain",
            [PY, "-m", "pegasus_gsg.pretrain", "--config", p.config,
             "--train", rel(self.out / "stores" / "pretrain"), "--tokenizer", rel(self.tok),
             "--out", rel(run_dir), "--resume", "latest", f"seed={p.seed}", *self.common(),
             f"data.max_target_len={p.pretrain_target_len}",
             f"schedule.max_steps={p.pretrain_steps}", f"schedule.max_minutes={minutes}",
             f"schedule.warmup_steps={min(200, max(1, p.pretrain_steps // 15))}",
             "checkpoint.save_every=200"],
        )  # fmt: skip

    def finetune(
        self,
        key: str,
        init: str,
        store: str,
        steps: int,
        minutes: float,
        seed: int,
        *,
        resumable: bool,
    ) -> Path:
        """One fine-tuning run; returns its exported model directory."""
        p = self.plan
        run_dir = self.out / "finetune" / key
        start = (
            ["--tokenizer", rel(self.tok)]
            if init == "random"
            else ["--init-from", rel(self.out / "pretrain" / "model")]
        )
        extra = (
            ["--resume", "latest", "--validation", rel(self.out / "stores" / "validation"),
             f"checkpoint.save_every={p.full_save_every}", f"checkpoint.keep={p.full_keep}",
             "eval.every=300",
             f"schedule.max_minutes={minutes_left(self.runner, f'finetune_{key}', minutes)}"]
            if resumable
            else ["checkpoint.save_every=0", f"schedule.max_minutes={minutes}"]
        )  # fmt: skip
        self.runner.run(
            f"finetune_{key}",
            [PY, "-m", "pegasus_gsg.finetune", "--config", p.finetune_config, *start,
             "--train", rel(self.out / "stores" / store), "--out", rel(run_dir),
             f"seed={seed}", *self.common(), f"data.max_target_len={p.max_target_len}",
             f"schedule.max_steps={steps}",
             f"schedule.warmup_steps={min(100, max(1, steps // 10))}",
             f"eval.num_beams={p.num_beams}",
             f"eval.max_new_tokens={p.max_target_len}", *extra],
            clean=None if resumable else run_dir,
        )  # fmt: skip
        return run_dir / "model"

    def full(self, init: str) -> dict[str, Any]:
        """Fine-tune on all training pairs from `init`; decode test and SAMSum."""
        p = self.plan
        key = f"full_{init}"
        model = self.finetune(
            key, init, "train_full", p.full_steps, p.full_minutes, p.seed, resumable=True
        )
        result = {
            "key": key,
            "init": INITS[init],
            **decode(self.runner, p, key, model, val="validation_lp", ood=True),
        }
        self.results[key] = result
        return result

    def low(self, n: int, init: str, seed: int) -> dict[str, Any]:
        """Fine-tune on `n` pairs (sample `seed`) from `init`; decode test."""
        p = self.plan
        key = f"low_{n}_{init}_seed{seed}"
        model = self.finetune(
            key,
            init,
            f"train_{n}_seed{seed}",
            dict(p.low_steps)[n],
            dict(p.low_minutes)[n],
            seed,
            resumable=False,
        )
        decoded = decode(self.runner, p, key, model, val="validation_lp_low", ood=False)
        result = {"key": key, "examples": n, "init": INITS[init], "seed": seed, **decoded}
        self.results[key] = result
        return result

    def tasks(self) -> list[Task]:
        """Longest chain first: pretraining, then the pretrained full run."""
        p = self.plan
        tasks = [
            Task("pretrain", self.pretrain),
            Task("full_random", partial(self.full, "random")),
            Task("full_ind_orig", partial(self.full, "ind_orig"), after=("pretrain",)),
        ]
        for init in INITS:
            after = ("pretrain",) if init != "random" else ()
            for n in reversed(p.sizes):
                for s in p.seed_list:
                    tasks.append(Task(f"low_{n}_{init}_{s}", partial(self.low, n, init, s), after))
        return tasks
