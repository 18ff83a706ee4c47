"""Generate summaries and score them with ROUGE-1/2/Lsum, the way the PEGASUS paper did.

Scoring is the `rouge-score` package (the paper's): F-measure of ROUGE-1, ROUGE-2 and
ROUGE-Lsum, with the Porter stemmer for English. ROUGE-Lsum is the summary-level LCS over
sentences, and rouge-score takes the sentences to be the lines of the text, so predictions and
references keep their newlines (our tokenizers keep `\\n` as a token, so generated multi-line
summaries survive), and each line is further cut into sentences, one per line, as the HF
summarization example does with nltk (here with GSG's own splitter, which needs no downloaded
model; ROUGE-1/2 ignore line breaks, so only Lsum sees this). rouge-score's tokenizer keeps
only `[a-z0-9]` runs and would score Chinese as empty text; when the references are mostly
CJK, every CJK character becomes a token of its own instead (pegasus_gsg.core.scoring.tokenize, no
stemming), i.e. character-level ROUGE as used for LCSTS.

Reported numbers are 100 x the mean F-measure over examples, with a percentile bootstrap 95%
interval (resample the examples with replacement `bootstrap_samples` times; a seeded NumPy RNG,
so the interval is reproducible, which rouge-score's own BootstrapAggregator is not). The point
estimate is the plain mean, i.e. what rouge-score's scorer gives averaged over examples.

Generation sorts inputs by length and cuts batches under a padded-token budget, so a batch of
short emails is not padded to one long one; results are returned in input order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from rouge_score import rouge_scorer
from transformers import GenerationConfig, PreTrainedModel

from pegasus_gsg.core.scoring import CJK_RANGES
from pegasus_gsg.core.scoring import tokenize as cjk_aware_tokenize
from pegasus_gsg.core.sentences import split_sentences
from pegasus_gsg.data.padding import right_pad
from pegasus_gsg.data.vocab import PAD_ID
from pegasus_gsg.evaluation.generation import GenerationOptions

if TYPE_CHECKING:
    from pegasus_gsg.evaluation.ct2 import Ct2Decoder

logger = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")
_CJK = re.compile(f"[{CJK_RANGES}]")


@dataclass(frozen=True)
class Score:
    """One metric: mean and bootstrap 95% interval, all x100."""

    low: float
    mid: float
    high: float


class CharacterTokenizer:
    """rouge-score tokenizer interface: CJK characters one token each, a-z0-9 runs as usual."""

    def tokenize(self, text: str) -> list[str]:
        return cjk_aware_tokenize(text, stopwords=False)


def is_cjk(texts: Sequence[str]) -> bool:
    """True when most non-space characters of `texts` are CJK (score on characters)."""
    chars = sum(len(t) - t.count(" ") for t in texts)
    cjk = sum(len(_CJK.findall(t)) for t in texts)
    return chars > 0 and cjk / chars > 0.3


def make_scorer(lang: str = "en") -> rouge_scorer.RougeScorer:
    """`en`: rouge-score with the Porter stemmer; `cjk`: character tokens, no stemming."""
    if lang == "cjk":
        return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=CharacterTokenizer())
    if lang != "en":
        raise ValueError(f"lang must be 'en' or 'cjk', got {lang!r}")
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def sentence_lines(text: str) -> str:
    """One sentence per line: what rouge-score's rougeLsum takes as the sentences."""
    return "\n".join(
        s.strip() for line in text.split("\n") for s in split_sentences(line) if s.strip()
    )


def rouge_scores(
    predictions: Sequence[str], references: Sequence[str], *, lang: str = "auto"
) -> dict[str, np.ndarray]:
    """Per-example F-measures (0-1) for each ROUGE type.

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    if lang == "auto":
        lang = "cjk" if is_cjk(references) else "en"
    scorer = make_scorer(lang)
    out = {t: np.empty(len(predictions)) for t in ROUGE_TYPES}
    for i, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        # rouge-score's order: (target, prediction)
        scores = scorer.score(sentence_lines(ref), sentence_lines(pred))
        for t in ROUGE_TYPES:
            out[t][i] = scores[t].fmeasure
    return out


def rouge_report(
    predictions: Sequence[str],
    references: Sequence[str],
    *,
    lang: str = "auto",
    bootstrap_samples: int = 1000,
    seed: int = 0,
) -> dict[str, Score]:
    """Mean ROUGE-1/2/Lsum x100 with percentile-bootstrap 95% intervals."""
    per_example = rouge_scores(predictions, references, lang=lang)
    rng = np.random.default_rng(seed)
    n = len(predictions)
    resample = rng.integers(0, n, size=(bootstrap_samples, n)) if bootstrap_samples else None
    report = {}
    for name, values in per_example.items():
        mean = 100 * float(values.mean())
        if resample is None:
            report[name] = Score(mean, mean, mean)
            continue
        means = 100 * values[resample].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        report[name] = Score(float(low), mean, float(high))
    return report


def format_table(report: dict[str, Score], n: int) -> str:
    """The table `pegasus-gsg evaluate` prints."""
    lines = [
        f"ROUGE F1 x100 over {n} examples (95% bootstrap interval)",
        f"{'metric':<10} {'score':>7}   {'95% CI':>15}",
    ]
    for name, s in report.items():
        lines.append(f"{name:<10} {s.mid:>7.2f}   [{s.low:6.2f}, {s.high:6.2f}]")
    return "\n".join(lines)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    inputs: Sequence[Sequence[int]],
    generation: GenerationConfig,
    *,
    max_tokens: int = 4096,
    max_batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> list[list[int]]:
    """Generated token ids for each input (in input order), length-sorted batches."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    beams = max(1, generation.num_beams or 1)
    results: list[list[int]] = [[] for _ in inputs]
    start = 0
    while start < len(order):
        longest = max(1, len(inputs[order[start]]))
        size = max(1, min(max_batch_size, max_tokens // (longest * beams)))
        chunk = order[start : start + size]
        start += size
        ids, mask = right_pad([inputs[i] for i in chunk], PAD_ID)
        # transformers 5's PreTrainedModel does not declare generate (GenerationMixin does).
        out = model.generate(  # type: ignore[operator]
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=generation
        )
        for row, i in enumerate(chunk):
            results[i] = out[row].tolist()
    model.train(was_training)
    return results


def generate_ct2(
    decoder: Ct2Decoder,
    inputs: Sequence[Sequence[int]],
    generation: GenerationConfig,
    *,
    max_tokens: int = 4096,
    max_batch_size: int = 64,
) -> list[list[int]]:
    """`generate` on the CTranslate2 backend: the same batching, ids without the start token."""
    options = GenerationOptions(
        max_new_tokens=generation.max_new_tokens or 64,
        min_new_tokens=generation.min_new_tokens or 0,
        num_beams=generation.num_beams or 1,
        length_penalty=float(generation.length_penalty or 1.0),
        no_repeat_ngram_size=generation.no_repeat_ngram_size or 0,
    )
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    results: list[list[int]] = [[] for _ in inputs]
    start = 0
    while start < len(order):
        longest = max(1, len(inputs[order[start]]))
        size = max(1, min(max_batch_size, max_tokens // (longest * options.num_beams)))
        chunk = order[start : start + size]
        start += size
        for i, ids in zip(
            chunk, decoder.generate([inputs[i] for i in chunk], options), strict=True
        ):
            results[i] = ids
    return results
