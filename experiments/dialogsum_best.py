"""DialogSum, one focused recipe (issue 20): the summarizer this project trains on 2 CPU cores.

    .venv/bin/python -m experiments.dialogsum_best             # the recipe (see Recipe for time)
    .venv/bin/python -m experiments.dialogsum_best --dry-run   # the same stages, tiny, ~3 min

Run from the repository root. Every stage is a command of the project's own tools, run by a
StageRunner (experiments/pipeline.py): a finished stage is skipped on a rerun, a training stage
resumes from its newest checkpoint (`--resume latest`), so a killed recipe is simply started
again. Every training length is a fixed optimizer-step count: machine load changes the wall
time, never the result. Training runs as 2 gloo processes (one per core, one thread each, the
global batch is 2 x `max_tokens` padded input tokens).

1. Data (experiments/dialogsum/data.py): DialogSum deduplicated across splits; the baselines
   (LEAD-k, GSG extract, first words) on the 500 test dialogues with the same ROUGE code.
2. Unlabelled text, never a summary: the DialogSum training dialogues, Reuters-21578 and the
   QMSum training meetings' transcripts cut into dialogue-sized windows of whole turns.
3. Tokenizer (Unigram, `vocab_size`) and stores; GSG Ind-Orig pretraining, `pretrain_steps`.
4. Learning-rate sweep: one fine-tuning run per rate in `sweep_lrs`, every one with the final
   schedule (`finetune_steps`) but stopped at `sweep_steps` (schedule.stop_at_step); the rate
   with the lowest validation loss there wins and its run continues to `finetune_steps`, so
   the sweep costs only the losers' steps.
5. The model is saved in float16 (`release/`), and decoding is chosen on validation only
   (beams x length penalty x no-repeat n-gram, `decode_val_size` dialogues); the test split is
   decoded once, with `pegasus-gsg evaluate`, from the float16 release.
6. Report: `docs/dialogsum_best/` (results.json, tables.md, samples.md, plots) and the model
   card `release/README.md` (Hugging Face format). The issue's target is ROUGE-1, -2 and -Lsum
   each above LEAD-3 with non-overlapping 95% intervals (`beats_lead`); `--ship DIR` copies
   the release there when it beats every baseline's mean on all three (`beats_baselines`) and
   weighs at most `max_ship_mb`.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from experiments.dialogsum.baselines import run_baselines, turns
from experiments.dialogsum.data import build_data, read_jsonl_rows, unlabelled_inputs
from experiments.dialogsum.plan import Plan
from experiments.dialogsum.report import write_samples
from experiments.dialogsum_card import (
    extrapolate,
    lead_result,
    plot,
    write_card,
    write_tables,
)
from experiments.pipeline import (
    PY,
    REPO,
    ROUGE_COLUMNS,
    StageRunner,
    Task,
    distinct_rate,
    overlapping,
    read_rouge,
    rel,
    run_tasks,
    setup_logging,
    write_jsonl,
)
from pegasus_gsg.files import fresh_staging_dir, replace_dir, write_text_atomic

logger = logging.getLogger("dialogsum_best")

SHAPE = ("model.d_model=256", "model.encoder_layers=4", "model.decoder_layers=4",
         "model.attention_heads=4", "model.ffn_dim=1024")  # fmt: skip
"""configs/dialogsum.yaml's shape, chosen by the DialogSum study's measurement (docs/dialogsum/
tables.md: d320 5+5 and d384 6+6 cost 2.4-2.8x the CPU per step of d256 4+4)."""

TINY_SHAPE = ("model.d_model=32", "model.encoder_layers=1", "model.decoder_layers=1",
              "model.attention_heads=2", "model.ffn_dim=64")  # fmt: skip
"""The dry run's shape."""


@dataclass
class Recipe:
    """Every size and step count of the recipe; the defaults are the committed run."""

    out: Path = REPO / "runs" / "experiments" / "dialogsum_best"
    docs: Path = REPO / "docs" / "dialogsum_best"
    data_dir: Path = REPO.parent / "shared" / "data"
    seed: int = 0
    processes: int = 2
    vocab_size: int = 8000
    model_overrides: tuple[str, ...] = SHAPE
    pretrain_docs: int | None = None
    """Records read from each unlabelled source (None: all)."""
    qmsum_window_words: int = 180
    """QMSum transcripts are cut into windows of whole turns of about this many words (a
    DialogSum dialogue has ~190 on average)."""
    max_tokens: int = 4096
    """Padded input tokens per micro-batch and process."""
    pretrain_steps: int = 600
    """The pretraining schedule's length (cosine decay to 0 at this step)."""
    pretrain_stop: int | None = 350
    """Pretraining stops here (schedule.stop_at_step; None: at pretrain_steps): on 2 shared
    cores a fine-tuning step buys more than a pretraining step once the GSG model has its
    first few hundred steps (the DialogSum study's curves)."""
    pretrain_lr: float = 1e-3
    pretrain_warmup: int = 100
    finetune_steps: int = 1300
    finetune_warmup: int = 100
    finetune_dropout: float = 0.0
    """Dropout while fine-tuning: under 3 epochs of 12k pairs overfitting is not the risk,
    and dropout's mask generation is 9% of a step at this shape (benchmarks/bench_cpu_mfu.py)."""
    sweep_lrs: tuple[float, ...] = (7e-4, 1.5e-3)
    sweep_steps: int = 100
    save_every: int = 100
    eval_every: int = 400
    eval_generate: int = 100
    """Validation dialogues decoded greedily at every evaluation (the ROUGE-vs-step curve)."""
    max_input_len: int = 384
    max_target_len: int = 96
    pretrain_target_len: int = 128
    num_beams: tuple[int, ...] = (4,)
    length_penalties: tuple[float, ...] = (0.8, 1.2)
    no_repeat_ngram_sizes: tuple[int, ...] = (0, 3)
    decode_val_size: int = 200
    test_size: int | None = None
    backend: str = "ctranslate2"
    samples: int = 10
    max_ship_mb: float = 25.0

    def study_plan(self) -> Plan:
        """The DialogSum study's Plan for the pieces reused from it (data, baselines)."""
        return Plan(
            data_dir=self.data_dir,
            out=self.out,
            docs=self.docs,
            seed=self.seed,
            vocab_size=self.vocab_size,
            pretrain_docs=self.pretrain_docs,
            seeds=1,
            low_steps=((100, 1),),
            low_minutes=((100, 1.0),),
            lp_val_size=self.decode_val_size,
            low_lp_val_size=1,
            test_size=self.test_size,
            samsum_size=self.test_size,
            max_input_len=self.max_input_len,
            max_target_len=self.max_target_len,
        )

    @classmethod
    def dry_run(cls) -> Recipe:
        """The same stages at tiny sizes, in its own OUT and docs."""
        out = REPO / "runs" / "experiments" / "dialogsum_best_dry"
        return cls(
            out=out,
            docs=out / "docs",
            vocab_size=700,
            model_overrides=TINY_SHAPE,
            pretrain_docs=150,
            qmsum_window_words=120,
            max_tokens=1024,
            pretrain_steps=4,
            pretrain_stop=3,
            pretrain_warmup=1,
            finetune_steps=6,
            finetune_warmup=1,
            sweep_lrs=(5e-4, 2e-3),
            sweep_steps=2,
            save_every=2,
            eval_every=3,
            eval_generate=4,
            max_input_len=128,
            max_target_len=24,
            pretrain_target_len=32,
            num_beams=(2,),
            length_penalties=(0.8, 1.6),
            no_repeat_ngram_sizes=(0, 3),
            decode_val_size=6,
            test_size=8,
            samples=3,
        )


class Run:
    """The recipe's stages over one OUT; each method is one stage (skipped once done)."""

    def __init__(self, recipe: Recipe) -> None:
        self.r = recipe
        self.out = recipe.out
        self.plan = recipe.study_plan()
        self.runner = StageRunner(recipe.out, threads=1)
        self.tok = self.out / "tokenizer"
        self.data = self.out / "data"

    # --- data ---------------------------------------------------------------------------------
    def unlabelled(self) -> list[str]:
        """Reuters, the training dialogues and QMSum transcript windows (written once)."""
        path = self.data / "qmsum_windows.jsonl"
        if not path.is_file():
            rows = read_jsonl_rows(self.r.data_dir / "qmsum_general" / "data.jsonl")
            meetings = [r["document"] for r in rows if r.get("split") == "train"]
            windows = [w for m in meetings for w in turn_windows(m, self.r.qmsum_window_words)]
            write_jsonl(path, ({"text": w} for w in windows[: self.r.pretrain_docs]))
        return [*unlabelled_inputs(self.plan), rel(path)]

    def prepare(self) -> None:
        cli = [PY, "-m", "pegasus_gsg"]
        inputs = self.unlabelled()
        self.runner.run(
            "tokenizer",
            [*cli, "tokenizer", "train", "--input", *inputs, "--text-field", "text",
             "--vocab-size", self.r.vocab_size, "--out", rel(self.tok)],
        )  # fmt: skip
        self.runner.run(
            "prepare_pretrain",
            [*cli, "prepare", "pretrain", "--input", *inputs, "--tokenizer", rel(self.tok),
             "--out", rel(self.out / "stores" / "pretrain"), "--strategy", "ind_orig",
             "--num-proc", 2, "--no-progress"],
        )  # fmt: skip
        for name in ("train_full", "validation"):
            self.runner.run(
                f"prepare_{name}",
                [*cli, "prepare", "finetune", "--input", rel(self.data / f"{name}.jsonl"),
                 "--tokenizer", rel(self.tok), "--out", rel(self.out / "stores" / name),
                 "--no-progress"],
            )  # fmt: skip

    # --- training -----------------------------------------------------------------------------
    def launch(self) -> list[str]:
        """`accelerate launch` of `processes` gloo processes on this machine."""
        if self.r.processes == 1:
            return [PY, "-m"]
        return [PY, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", str(self.r.processes), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), "-m"]  # fmt: skip

    def common(self) -> list[str]:
        r = self.r
        return [f"seed={r.seed}", f"data.max_input_len={r.max_input_len}",
                f"data.max_tokens={r.max_tokens}", "checkpoint.log_with=none",
                f"checkpoint.save_every={r.save_every}", "checkpoint.keep=100",
                *r.model_overrides]  # fmt: skip

    def pretrain(self) -> None:
        r = self.r
        self.runner.run(
            "pretrain",
            [*self.launch(), "pegasus_gsg.pretrain", "--config", "configs/dialogsum.yaml",
             "--train", rel(self.out / "stores" / "pretrain"), "--tokenizer", rel(self.tok),
             "--out", rel(self.out / "pretrain"), "--resume", "latest", *self.common(),
             f"data.max_target_len={r.pretrain_target_len}", f"optim.lr={r.pretrain_lr}",
             "schedule.decay=cosine", f"schedule.warmup_steps={r.pretrain_warmup}",
             f"schedule.max_steps={r.pretrain_steps}",
             f"schedule.stop_at_step={r.pretrain_stop or r.pretrain_steps}"],
        )  # fmt: skip

    def finetune_dir(self, lr: float) -> Path:
        return self.out / "finetune" / f"lr{lr:g}"

    def finetune(self, lr: float, *, stop_at: int | None) -> None:
        """Fine-tuning at `lr` from the pretrained model, stopped at `stop_at` (a sweep
        candidate) or continued to `finetune_steps` (the winner)."""
        r = self.r
        stage = f"sweep_lr{lr:g}" if stop_at else f"finetune_lr{lr:g}"
        self.runner.run(
            stage,
            [*self.launch(), "pegasus_gsg.finetune", "--config", "configs/dialogsum_finetune.yaml",
             "--init-from", rel(self.out / "pretrain" / "model"),
             "--train", rel(self.out / "stores" / "train_full"),
             "--validation", rel(self.out / "stores" / "validation"),
             "--out", rel(self.finetune_dir(lr)), "--resume", "latest", *self.common(),
             f"data.max_target_len={r.max_target_len}", f"optim.lr={lr}",
             f"model.dropout={r.finetune_dropout}",
             f"model.attention_dropout={r.finetune_dropout}",
             "schedule.decay=linear", f"schedule.warmup_steps={r.finetune_warmup}",
             f"schedule.max_steps={r.finetune_steps}",
             f"schedule.stop_at_step={stop_at or r.finetune_steps}",
             f"eval.every={r.eval_every}", f"eval.generate_samples={r.eval_generate}",
             "eval.num_beams=1", f"eval.max_new_tokens={r.max_target_len}"],
        )  # fmt: skip

    def sweep(self) -> dict[str, Any]:
        """Each rate to `sweep_steps`; the lowest validation loss there wins."""
        losses = {}
        for lr in self.r.sweep_lrs:
            self.finetune(lr, stop_at=self.r.sweep_steps)
            losses[lr] = val_loss_at(self.finetune_dir(lr) / "eval.jsonl", self.r.sweep_steps)
        best = min(losses, key=lambda lr: (losses[lr], self.r.sweep_lrs.index(lr)))
        logger.info("sweep: validation loss at step %d %s -> lr %g", self.r.sweep_steps,
                    losses, best)  # fmt: skip
        return {"steps": self.r.sweep_steps, "val_loss": {f"{k:g}": v for k, v in losses.items()},
                "chosen_lr": best}  # fmt: skip

    # --- release and decoding -----------------------------------------------------------------
    def release(self, model: Path) -> Path:
        """The final model in float16 safetensors with its tokenizer: OUT/release."""
        target = self.out / "release"
        if (target / "model.safetensors").is_file():
            return target
        import torch
        from transformers import AutoModelForSeq2SeqLM

        staging = fresh_staging_dir(target)
        copy_files(model, staging, skip_suffix=".safetensors")
        half = AutoModelForSeq2SeqLM.from_pretrained(model, dtype=torch.float16)
        half.save_pretrained(staging, safe_serialization=True)
        compute_in_float32(staging)
        replace_dir(staging, target)
        return target

    def evaluate(self, model: Path, data: str, tag: str, decoding: dict[str, Any]) -> Path:
        preds = self.out / "eval" / f"{tag}.jsonl"
        self.runner.run(
            f"evaluate_{tag}",
            [PY, "-m", "pegasus_gsg", "evaluate", "--model", rel(model),
             "--input", rel(self.data / f"{data}.jsonl"),
             "--max-input-len", self.r.max_input_len, "--max-new-tokens", self.r.max_target_len,
             "--num-beams", decoding["num_beams"], "--length-penalty", decoding["length_penalty"],
             "--no-repeat-ngram-size", decoding["no_repeat_ngram_size"],
             "--backend", self.r.backend, "--out", rel(preds)],
        )  # fmt: skip
        return preds

    def choose_decoding(self, model: Path) -> dict[str, Any]:
        """Every decoding in the grid on the validation sample (two at a time); the best mean
        of ROUGE-1, -2, -Lsum F1 wins (ties: the earlier in the grid)."""
        grid = [
            {"num_beams": b, "length_penalty": lp, "no_repeat_ngram_size": n}
            for b in self.r.num_beams
            for lp in self.r.length_penalties
            for n in self.r.no_repeat_ngram_sizes
        ]
        scores: dict[int, float] = {}

        def one(i: int) -> None:
            preds = self.evaluate(model, "validation_lp", f"val_{decoding_tag(grid[i])}", grid[i])
            s = read_rouge(preds)["scores"]
            scores[i] = statistics.fmean(s[m]["mid"] for m, _ in ROUGE_COLUMNS)

        run_tasks([Task(f"val_{i}", partial(one, i)) for i in range(len(grid))], 2)
        best = max(range(len(grid)), key=lambda i: (scores[i], -i))
        return {
            "grid": [{**d, "val_mean_rouge": scores[i]} for i, d in enumerate(grid)],
            "chosen": grid[best],
            "validation_n": len(read_jsonl_rows(self.data / "validation_lp.jsonl")),
        }


def copy_files(src: Path, dst: Path, *, skip_suffix: str | None = None) -> None:
    """The plain files of `src` (not its folders, e.g. the CTranslate2 cache) into `dst`."""
    for f in src.iterdir():
        if f.is_file() and f.suffix != skip_suffix:
            shutil.copy2(f, dst / f.name)


def compute_in_float32(model: Path) -> None:
    """Float16 weights on disk, float32 arithmetic when loaded: the config's dtype says
    float32, so `from_pretrained` (and the server, and the CTranslate2 conversion check)
    upcast instead of running float16 matmuls on a CPU."""
    path = model / "config.json"
    config = json.loads(path.read_text())
    config["dtype"] = "float32"
    write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def set_generation(model: Path, decoding: dict[str, Any], max_new_tokens: int) -> None:
    """The model's generation config holds the chosen decoding (what a server uses)."""
    from transformers import GenerationConfig

    config = GenerationConfig.from_pretrained(model)
    # early_stopping: a beam search ends once num_beams hypotheses have finished, which is
    # what CTranslate2 (the recipe's decoder) does, so both serving backends agree with it.
    config.update(max_new_tokens=max_new_tokens, early_stopping=True, **decoding)
    write_text_atomic(model / "generation_config.json", config.to_json_string())


def free_port() -> int:
    """A TCP port free on this machine now (for the launch's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def turn_windows(transcript: str, words: int) -> list[str]:
    """Consecutive whole turns (lines) of a meeting, each window about `words` long."""
    windows, current, size = [], [], 0
    for turn in turns(transcript):
        current.append(turn)
        size += len(turn.split())
        if size >= words:
            windows.append("\n".join(current))
            current, size = [], 0
    if current:
        windows.append("\n".join(current))
    return windows


def val_loss_at(evals: Path, step: int) -> float:
    """The validation loss a run logged at `step` (OUT/eval.jsonl)."""
    for row in read_jsonl_rows(evals):
        if row["step"] == step:
            return float(row["val_loss"])
    raise ValueError(f"{evals}: no validation row at step {step}")


def decoding_tag(d: dict[str, Any]) -> str:
    return f"b{d['num_beams']}_lp{d['length_penalty']:g}_nr{d['no_repeat_ngram_size']}"


def beats(model: dict[str, Any], baseline: dict[str, Any]) -> dict[str, bool]:
    """Per metric: above the baseline with non-overlapping 95% intervals."""
    return {
        m: model[m]["mid"] > baseline[m]["mid"] and not overlapping(model[m], baseline[m])
        for m, _ in ROUGE_COLUMNS
    }


def above_every_baseline(model: dict[str, Any], baselines: list[dict[str, Any]]) -> bool:
    """The shipping rule: a higher mean than every baseline on ROUGE-1, -2 and -Lsum."""
    return all(model[m]["mid"] > b["scores"][m]["mid"] for b in baselines for m, _ in ROUGE_COLUMNS)


def run(recipe: Recipe, *, ship: Path | None = None) -> dict[str, Any]:
    """Run (or resume) the recipe; write its report and model card; returns the report."""
    started = time.time()
    run_ = Run(recipe)
    counts = build_data(run_.plan)
    baselines = run_baselines(run_.plan)
    run_.prepare()
    run_.pretrain()
    sweep = run_.sweep()
    lr = sweep["chosen_lr"]
    run_.finetune(lr, stop_at=None)
    release = run_.release(run_.finetune_dir(lr) / "model")
    decoding = run_.choose_decoding(release)
    set_generation(release, decoding["chosen"], recipe.max_target_len)
    preds = run_.evaluate(release, "test", "test", decoding["chosen"])
    rows = read_jsonl_rows(preds)
    test = {
        "n": read_rouge(preds)["n"],
        "scores": read_rouge(preds)["scores"],
        "distinct": distinct_rate([r["prediction"] for r in rows]),
        "predictions": rel(preds),
    }
    lead = lead_result(baselines)
    verdict = beats(test["scores"], lead["scores"])
    report = {
        "recipe": {k: (rel(v) if isinstance(v, Path) else v) for k, v in asdict(recipe).items()},
        "data": counts,
        "baselines": baselines,
        "sweep": sweep,
        "decoding": decoding,
        "model": {"key": "dialogsum_best", "release": rel(release), "test": test},
        "beats_lead": {"baseline": lead["model"], **verdict, "all": all(verdict.values())},
        "beats_baselines": above_every_baseline(
            test["scores"], [r for r in baselines["results"] if r["split"] == "test"]
        ),
        "size_mb": round((release / "model.safetensors").stat().st_size / 2**20, 1),
        "stages": run_.runner.records,
        "stage_seconds_total": round(sum(r["seconds"] for r in run_.runner.records), 1),
        "this_invocation_seconds": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report["estimate"] = extrapolate(report, recipe.out)
    recipe.docs.mkdir(parents=True, exist_ok=True)
    write_text_atomic(recipe.docs / "results.json", json.dumps(report, indent=2))
    tables = write_tables(report, recipe.docs / "tables.md")
    write_samples(
        {"baselines": baselines, "models": [{"key": "this model", "test": test}]},
        replace(run_.plan, samples=recipe.samples),
        recipe.docs / "samples.md",
    )
    plot(report, recipe)
    write_card(report, recipe, release / "README.md")
    if ship is not None:
        if report["beats_baselines"] and report["size_mb"] <= recipe.max_ship_mb:
            staging = fresh_staging_dir(ship)
            copy_files(release, staging)
            replace_dir(staging, ship)
            logger.info("shipped %s -> %s", release, ship)
        else:
            logger.warning("not shipped: above every baseline: %s, %.1f MB",
                           report["beats_baselines"], report["size_mb"])  # fmt: skip
    print(tables)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, its own OUT")
    parser.add_argument("--out", type=Path, help="where runs go (default: Recipe.out)")
    parser.add_argument("--docs", type=Path, help="where the report goes (default: Recipe.docs)")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument(
        "--ship", type=Path, help="copy the release here if it beats every baseline"
    )
    args = parser.parse_args(argv)
    recipe = Recipe.dry_run() if args.dry_run else Recipe()
    for name in ("out", "docs", "data_dir"):
        if getattr(args, name) is not None:
            recipe = replace(recipe, **{name: getattr(args, name).resolve()})
    setup_logging()
    try:
        run(recipe, ship=args.ship)
    except (RuntimeError, ValueError) as err:
        print(f"dialogsum_best: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
