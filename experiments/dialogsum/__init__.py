"""DialogSum study: real summarizers on a 2-core CPU, extractive baselines, GSG's low-resource gain.

    .venv/bin/python -m experiments.dialogsum                  # the study, <= 2.5 h wall time
    .venv/bin/python -m experiments.dialogsum --dry-run        # the same plumbing, tiny, minutes
    .venv/bin/python -m experiments.dialogsum --baselines-only # data + baselines, ~2 min
    .venv/bin/python -m experiments.dialogsum --measure-shapes # tokens/s of candidate shapes

Run from the repository root. What it runs (issue 14), every step a command of the project's
own tools (see pipeline.py), one module per part:

1. Data (`data.py`): DialogSum deduplicated across splits (train first, then validation, then
   test), so no evaluated dialogue was trained on; SAMSum's test split for out-of-domain
   scoring.
2. Tokenizer (`stages.py`): Unigram, trained on Reuters-21578 plus the DialogSum *training
   dialogues* (never the summaries).
3. GSG Ind-Orig pretraining on Reuters plus the training dialogues as unlabelled text (the
   paper's in-domain recipe; the summaries are never used), resumed from its checkpoints when
   interrupted.
4. Fine-tuning on all training pairs, from random init and from the pretrained model, same
   steps and budget; also resumable.
5. Low resource: 100 and 1,000 pairs x {random, Ind-Orig} x 3 seeds. The seed changes the
   sample of pairs (nested seeded shuffles, pipeline.seeded_sample) and the training RNG.
6. Decoding as the paper (`scoring.py`): beam search; each model's length penalty is the best
   of `length_penalties` on a validation sample (never on test), then test is decoded once.
   The full-data models are also scored on SAMSum's test split (no SAMSum training).
7. Baselines (`baselines.py`) scored with the same ROUGE code as `pegasus-gsg evaluate`
   (pegasus_gsg.evaluation.rouge.rouge_report) on the same test split: LEAD-k (first k turns),
   GSG Ind-Orig as an extractive summarizer (the turns pegasus_gsg.core.gsg selects at gsr),
   each with k / gsr chosen on validation; and the gold summary's length-matched first words.

Compute budget (`plan.py`, `Plan.budget()`): stages with a wall-clock `--minutes` cap
(`schedule.max_minutes`) and a step count sized from measured throughput (`shapes.py`), run
on `workers` = 2 single-thread lanes (one per core, pipeline.run_tasks); the plan refuses
budgets whose longest lane exceeds `wall_minutes`.

Output (OUT = runs/experiments/dialogsum): stores, runs, logs, predictions; the committed
results (`report.py`) go to `docs/dialogsum/`: results.json, tables.md, samples.md (10 test
dialogues, every model's prediction next to the reference) and the plots. `driver.py` runs it
all, resumably; `__main__.py` is the command line. experiments/dialogsum_curve.py then decodes
every saved checkpoint of a full-data run (ROUGE against fine-tuning minutes).
"""

from experiments.dialogsum.baselines import first_words, gsg_extracts, lead_k, run_baselines, turns
from experiments.dialogsum.data import build_data, data_key, read_jsonl_rows, unlabelled_inputs
from experiments.dialogsum.driver import run
from experiments.dialogsum.plan import INITS, Plan
from experiments.dialogsum.report import plot_all, summarize_low, write_samples, write_tables
from experiments.dialogsum.scoring import choose, decode, evaluate, mean_rouge, score_predictions
from experiments.dialogsum.shapes import SHAPES, measure_shapes
from experiments.dialogsum.stages import Study, minutes_left

__all__ = [
    "INITS",
    "SHAPES",
    "Plan",
    "Study",
    "build_data",
    "choose",
    "data_key",
    "decode",
    "evaluate",
    "first_words",
    "gsg_extracts",
    "lead_k",
    "mean_rouge",
    "measure_shapes",
    "minutes_left",
    "plot_all",
    "read_jsonl_rows",
    "run",
    "run_baselines",
    "score_predictions",
    "summarize_low",
    "turns",
    "unlabelled_inputs",
    "write_samples",
    "write_tables",
]
