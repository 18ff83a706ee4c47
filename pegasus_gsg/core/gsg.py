"""Gap-sentence selection: which sentences PEGASUS removes and asks the decoder to write back.

Exactly shared/GSG.md §3. For n sentences and gap-sentence ratio gsr, m = min(int(max(n·gsr,
1)), n) sentences are chosen:

- `random`: m sentences uniformly at random; `lead`: the first m;
- `ind_orig` / `ind_uniq`: each sentence alone is scored by ROUGE1-F1 against the rest of the
  document and the m best are taken (the paper's best setting is Ind-Orig at gsr 0.3);
- `seq_orig` / `seq_uniq`: greedy, m times add the sentence that maximises ROUGE1-F1 between the
  chosen set and the rest of the document.

Equal scores: the later sentence ranks first (the original implementation's sort order). Scores
are compared exactly, as integers, because of two identities:

- Orig: |C| + |R| is the document's token count N for every candidate (set), so
  F = 2·overlap / N and ranking by F is ranking by the integer overlap
  Σ_w min(c[w], D[w] − c[w]) (c: candidate counts, D: document counts).
- Uniq: with U distinct document tokens and A = #{w : 0 < c[w] < D[w]} (the shared types),
  |C| + |R| = A + U, so F = 2A / (A + U) rises with A and ranking by F is ranking by A.

Why it is fast: the plain way re-tokenizes and re-counts "the rest of the document" with
rouge-score for every candidate, O(n·N) per Ind ranking and O(m·n·N) per Seq selection (about
10 ms and 50-100 ms on a 15-sentence BBC article here, 70 ms and over a second on CNN/DM).
Here a document is tokenized once into integer word ids (scoring.document_ids) and counted
into a sentences x words matrix, keeping only words that occur twice or more (the others can
never overlap). Ind is then three whole-matrix numpy operations; a Seq step is one pass over
the matrix plus the chosen counts, so the full greedy ranking costs O(n² · V) array work with
~8 numpy calls per step. Very long documents switch to sparse (sentence, word) pairs. What is
left is mostly tokenization (~0.3 µs per token in Python), so the speed-up grows with document
length: measured 30-50x (Ind) and 50-100x (Seq) on 15-sentence BBC articles, 120-550x and
400-600x on 35-sentence ones (benchmarks/bench_gsg.py runs both ways side by side).

A `Ranking` covers all n sentences and is prefix-consistent, so one stored ranking serves every
gsr (select_from_ranking) and the mixed & stochastic variant (stochastic_select).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from pegasus_gsg.core.scoring import (
    DocumentIds,
    EncodedDocument,
    document_ids,
    encode_pairs,
    ids_from_tokens,
)
from pegasus_gsg.core.sentences import split_sentences

STRATEGIES: tuple[str, ...] = ("random", "lead", "ind_orig", "ind_uniq", "seq_orig", "seq_uniq")
SCORED_STRATEGIES: tuple[str, ...] = ("ind_orig", "ind_uniq", "seq_orig", "seq_uniq")
DENSE_MAX_CELLS = 1 << 16
"""Up to this many sentences x words cells, counts are a dense matrix (fewest numpy calls);
above, sparse (sentence, word) pairs (least memory and work on very long documents)."""


@dataclass(frozen=True)
class Ranking:
    """Every sentence of a document, most important first.

    `order[:m]` sorted ascending is the selection for any m (prefix-consistent).
    `scores[i]` is sentence i's score (indexed by sentence position, not rank):

    - ind_*: its ROUGE1-F1 against the rest of the document;
    - seq_*: the ROUGE1-F1 of the chosen set right after the greedy step that added it (these
      rise and fall along the order, so they are not a per-sentence importance);
    - random, lead: (n − rank) / n, i.e. 1.0 for the first pick down to 1/n for the last.
    """

    order: Sequence[int] | np.ndarray
    """Sentence indices, most important first: a permutation of 0..n-1. A list, or the
    store's array as read (no conversion on the batch-time path)."""
    scores: Sequence[float] | np.ndarray
    """One score per sentence, indexed by sentence position (see above), as many as `order`;
    each in [0, 1]."""

    def __post_init__(self) -> None:
        if len(self.order) != len(self.scores):
            raise ValueError(
                f"Ranking: order has {len(self.order)} entries but scores has {len(self.scores)}"
            )
        if sorted(self.order) != list(range(len(self.order))):
            raise ValueError(
                f"Ranking: order must be a permutation of 0..{len(self.order) - 1}, "
                f"got {self.order}"
            )


def check_strategy(strategy: str) -> str:
    """Return `strategy` or raise ValueError listing the allowed values."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    return strategy


def check_gsr(gsr: float, name: str = "gsr") -> float:
    """Return `gsr` or raise ValueError naming the allowed range (0, 1]."""
    if not 0.0 < gsr <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in (0, 1], got {gsr}")
    return gsr


def check_gsr_range(gsr_range: Sequence[float], name: str = "gsr_range") -> tuple[float, float]:
    """`gsr_range` as a (low, high) float pair, or ValueError unless 0 < low <= high <= 1."""
    if len(gsr_range) != 2:
        raise ValueError(f"{name} must be a (low, high) pair, got {gsr_range!r}")
    low, high = float(gsr_range[0]), float(gsr_range[1])
    if not 0.0 < low <= high <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got ({low}, {high})")
    return low, high


def gap_sentence_counts(num_sentences: np.ndarray, gsr: float) -> np.ndarray:
    """m = min(int(max(n·gsr, 1.0)), n) for every n in an array (GSG.md §3): the one home of the
    gap-count formula; at least one gap sentence, none for an empty document.

    Vectorised for per-store length estimates; `num_gap_sentences` is the one-document form.
    """
    n = np.asarray(num_sentences, dtype=np.int64)
    if n.size and int(n.min()) < 0:
        raise ValueError(f"numbers of sentences must be >= 0, got {int(n.min())}")
    check_gsr(gsr)
    counts: np.ndarray = np.minimum(np.maximum(n * gsr, 1.0).astype(np.int64), n)
    return counts


def num_gap_sentences(n: int, gsr: float) -> int:
    """`gap_sentence_counts` for one document of `n` sentences, in plain Python: it runs once
    per example at batch time, where numpy's per-call overhead (a few µs) would be measurable
    (the tests pin both forms to the formula of GSG.md for every n up to 200)."""
    if n < 0:
        raise ValueError(f"numbers of sentences must be >= 0, got {n}")
    check_gsr(gsr)
    return min(int(max(n * gsr, 1.0)), n)


def rank_sentences(
    sentences: Sequence[str],
    strategy: str,
    *,
    stopwords: bool = True,
    rng: np.random.Generator | None = None,
) -> Ranking:
    """Rank all sentences of one document by `strategy` (one of `STRATEGIES`).

    `rng` is required by `random` (use `example_rng` for reproducible per-document draws) and
    ignored by the others. `stopwords=False` keeps the 127 English stopwords in the scores.
    """
    check_strategy(strategy)
    n = len(sentences)
    if strategy == "lead":
        return _positional_ranking(list(range(n)))
    if strategy == "random":
        if rng is None:
            raise ValueError("strategy 'random' needs rng (e.g. example_rng(seed, index, epoch))")
        return _positional_ranking(rng.permutation(n).tolist())
    return rank_ids(document_ids(sentences, stopwords=stopwords), strategy)


def rank_tokenized(sentence_tokens: Sequence[Sequence[Hashable]], strategy: str) -> Ranking:
    """Rank sentences given as scoring tokens (any hashable keys) by a scored strategy."""
    return rank_ids(ids_from_tokens(sentence_tokens), strategy)


def rank_ids(doc: DocumentIds, strategy: str) -> Ranking:
    """Rank a document already turned into word ids by a scored strategy."""
    if strategy not in SCORED_STRATEGIES:
        raise ValueError(
            f"a scored strategy is needed, one of {', '.join(SCORED_STRATEGIES)}; got {strategy!r}"
        )
    uniq = strategy.endswith("_uniq")
    greedy = strategy.startswith("seq_")
    if doc.num_sentences * doc.vocab_size <= DENSE_MAX_CELLS:
        counts, in_doc = _shared_word_counts(doc)
        if greedy:
            order, overlaps = _greedy_dense(counts, in_doc, uniq)
        else:
            overlaps = _terms(counts, in_doc, uniq).tolist()
    else:
        pairs = encode_pairs(doc)
        if greedy:
            order, overlaps = _greedy_sparse(pairs, uniq)
        else:
            overlaps = _independent_sparse(pairs, uniq)
    if not greedy:
        order = _order_by(overlaps)
    return Ranking(order=order, scores=_f1(overlaps, doc, uniq))


def _positional_ranking(order: list[int]) -> Ranking:
    n = len(order)
    scores = [0.0] * n
    for rank, index in enumerate(order):
        scores[index] = (n - rank) / n
    return Ranking(order=order, scores=scores)


def _order_by(keys: Sequence[float] | np.ndarray) -> list[int]:
    """Indices by decreasing key; equal keys put the later sentence first."""
    n = len(keys)
    return sorted(range(n), key=lambda i: (keys[i], i), reverse=True)


def _f1(overlaps: list[int], doc: DocumentIds, uniq: bool) -> list[float]:
    """F = 2·ov/N (Orig) or 2·A/(A + U) (Uniq) from integer overlaps; 0 where the overlap is 0.

    Every kept word occurs in the document, so U = vocab_size. Python int / int is correctly
    rounded: equal fractions give identical floats.
    """
    if uniq:
        return [2 * ov / (ov + doc.vocab_size) if ov else 0.0 for ov in overlaps]
    return [2 * ov / doc.num_tokens if ov else 0.0 for ov in overlaps]


def _shared_word_counts(doc: DocumentIds) -> tuple[np.ndarray, np.ndarray]:
    """Dense sentences x words counts and document counts, for words occurring twice or more.

    A word that occurs once in the document can never be on both sides (min(a, 1 − a) = 0 and
    0 < a < 1 never holds for integers), so its column is dropped: about half of a news
    article's words, and half the work of every step.
    """
    counts = doc.count_matrix()
    in_doc = counts.sum(axis=0)
    shared = in_doc > 1
    return counts[:, shared], in_doc[shared]


def _terms(
    a: np.ndarray, in_doc: np.ndarray, uniq: bool, out: np.ndarray | None = None
) -> np.ndarray:
    """Per-row overlap when each row's chosen counts are `a`: Σ min(a, D − a) or #{0 < a < D}."""
    terms = np.minimum(a, in_doc - a, out=out)
    overlap: np.ndarray = np.count_nonzero(terms, axis=1) if uniq else terms.sum(axis=1)
    return overlap


def _greedy_dense(
    counts: np.ndarray, in_doc: np.ndarray, uniq: bool
) -> tuple[list[int], list[int]]:
    """Greedy Seq over the dense count matrix, run to the end so the order serves every m.

    With `chosen` the word counts of the chosen set S, row i of counts + chosen is the multiset
    S ∪ {i}, so one pass of `_terms` gives the overlap of every candidate set at once (its rest
    holds D − that). Sentences without shared words never change the overlap: once only they
    remain, they all tie, and they follow in descending index order without further passes.
    """
    n = counts.shape[0]
    chosen = np.zeros(counts.shape[1], dtype=np.int64)
    candidate = np.empty_like(counts)
    taken = np.zeros(n, dtype=bool)
    live = cast(list[bool], counts.any(axis=1).tolist())
    remaining_live = sum(live)
    order: list[int] = []
    overlaps = [0] * n
    total = 0
    while len(order) < n:
        if remaining_live == 0:
            rest = [i for i in range(n - 1, -1, -1) if not taken[i]]
            order.extend(rest)
            for i in rest:
                overlaps[i] = total
            break
        np.add(counts, chosen, out=candidate)
        overlap = _terms(candidate, in_doc, uniq, out=candidate)
        overlap[taken] = -1
        best = n - 1 - int(np.argmax(overlap[::-1]))  # argmax takes the first; we want the last
        total = int(overlap[best])
        chosen += counts[best]
        taken[best] = True
        remaining_live -= live[best]
        order.append(best)
        overlaps[best] = total
    return order, overlaps


def _independent_sparse(pairs: EncodedDocument, uniq: bool) -> list[int]:
    """Ind overlaps from sparse (sentence, word) pairs, for documents too big for the matrix."""
    count, in_doc = pairs.pair_count, pairs.doc_count[pairs.pair_word]
    shared = (count < in_doc) if uniq else np.minimum(count, in_doc - count)
    n = pairs.num_sentences
    overlaps: list[int] = (
        np.bincount(pairs.pair_sentence, weights=shared, minlength=n).astype(np.int64).tolist()
    )
    return overlaps


def _greedy_sparse(doc: EncodedDocument, uniq: bool) -> tuple[list[int], list[int]]:
    """Greedy Seq from sparse pairs, for documents too big for the dense matrix.

    State: `chosen[w]`, the count of word w in the chosen set S. Adding candidate i changes the
    overlap only through i's own words, by term(chosen + c_i) − term(chosen) per word, where
    term(a) = min(a, D − a) (Orig) or [0 < a < D] (Uniq). One step evaluates that for all pairs
    at once; picking a sentence then updates `chosen` for its words only.
    """
    n = doc.num_sentences
    words, count, sentence = doc.pair_word, doc.pair_count, doc.pair_sentence
    in_doc = doc.doc_count[words]
    chosen = np.zeros(len(doc.doc_count), dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    total = 0
    order: list[int] = []
    overlaps = [0] * n
    start = doc.pair_start.tolist()
    for _ in range(n):
        before = chosen[words]
        after = before + count
        if uniq:
            delta = (after < in_doc).astype(np.int64) - ((before > 0) & (before < in_doc))
        else:
            delta = np.minimum(after, in_doc - after) - np.minimum(before, in_doc - before)
        # float64 is exact for these small integers; astype only acts on an empty document
        gain = np.bincount(sentence, weights=delta, minlength=n).astype(float, copy=False)
        gain[taken] = -np.inf
        best = n - 1 - int(np.argmax(gain[::-1]))  # argmax takes the first; we want the last
        total += int(gain[best])
        lo, hi = start[best], start[best + 1]
        chosen[words[lo:hi]] += count[lo:hi]
        taken[best] = True
        order.append(best)
        overlaps[best] = total
    return order, overlaps


def select_from_ranking(ranking: Ranking, gsr: float) -> list[int]:
    """The gap sentences for `gsr` in (0, 1], ascending."""
    m = num_gap_sentences(len(ranking.order), gsr)
    return sorted(ranking.order[:m])


def select_sentences(
    sentences: Sequence[str],
    strategy: str,
    gsr: float,
    *,
    stopwords: bool = True,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """rank_sentences followed by select_from_ranking: ascending gap-sentence indices."""
    check_gsr(gsr)
    ranking = rank_sentences(sentences, strategy, stopwords=stopwords, rng=rng)
    return select_from_ranking(ranking, gsr)


def importance(ranking: Ranking) -> np.ndarray:
    """Per-sentence values whose decreasing order (ties: later first) is `ranking.order`.

    These are `ranking.scores` when the scores already rank that way (ind_*, random, lead). Seq
    rankings store the F of each greedy step, which rises and falls along the order; for them
    the greedy rank itself is the importance: (n − rank) / n.
    """
    if _order_by(ranking.scores) == list(ranking.order):
        return np.asarray(ranking.scores, dtype=np.float64)
    n = len(ranking.order)
    by_rank = np.empty(n, dtype=np.float64)
    by_rank[np.asarray(ranking.order, dtype=np.int64)] = (n - np.arange(n)) / n
    return by_rank


def stochastic_select(
    ranking: Ranking,
    rng: np.random.Generator,
    *,
    gsr_range: tuple[float, float] = (0.15, 0.45),
    noise: float = 0.2,
) -> list[int]:
    """Mixed & stochastic selection (ascending indices).

    gsr is drawn uniformly from `gsr_range`, each importance s (see `importance`) becomes
    s·(1 + u) with u ~ Uniform(−noise, noise), and the top m = num_gap_sentences(n, gsr) by the
    noisy value are taken (ties: later first). With noise 0 this is select_from_ranking at the
    drawn gsr. Draws: first gsr, then one u per sentence, from `rng` (use `example_rng`).
    """
    low, high = check_gsr_range(gsr_range)
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise must be in [0, 1), got {noise}")
    n = len(ranking.order)
    gsr = float(rng.uniform(low, high))
    u = rng.uniform(-noise, noise, size=n)
    if n == 0:
        return []
    noisy = importance(ranking) * (1.0 + u)
    m = num_gap_sentences(n, gsr)
    return sorted(_order_by(noisy.tolist())[:m])


def example_rng(seed: int, index: int, epoch: int) -> np.random.Generator:
    """The RNG of example `index` in `epoch`: reproducible, independent across docs and epochs.

    Built with numpy's SeedSequence spawn keys, the documented way to derive independent
    streams (unlike the original implementation, which seeded every document's noise alike).
    """
    for name, value in (("seed", seed), ("index", index), ("epoch", epoch)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(index, epoch)))


@dataclass(frozen=True)
class SelectionOptions:
    """How `select_text` picks the gap sentences of one raw document (`select`, `inspect`)."""

    strategy: str = "ind_orig"
    """How sentences are ranked: one of STRATEGIES (default: the paper's best, Ind-Orig)."""
    gsr: float = 0.3
    """Gap-sentence ratio in (0, 1] when `gsr_range` is None."""
    stopwords: bool = True
    """False keeps the 127 English stopwords in the scores."""
    seed: int = 0
    """Seed of the per-example RNG (random strategy, mixed gsr, score noise); an int >= 0."""
    epoch: int = 0
    """With `seed` and the record index, the per-example RNG (`example_rng`); an int >= 0."""
    gsr_range: tuple[float, float] | None = None
    """Set: mixed & stochastic selection, gsr drawn from [low, high] and scores jittered."""
    noise: float = 0.2
    """With `gsr_range`: scores become s·(1 + u), u ~ U(−noise, noise); in [0, 1)."""

    def __post_init__(self) -> None:
        check_strategy(self.strategy)
        check_gsr(self.gsr)
        if self.gsr_range is not None:
            object.__setattr__(self, "gsr_range", check_gsr_range(self.gsr_range))
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        for name in ("seed", "epoch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def select_text(
    text: str, index: int, options: SelectionOptions
) -> tuple[list[str], Ranking, list[int]]:
    """Sentences, ranking and ascending gap-sentence indices of record `index` (0-based) of a
    corpus: split, rank, then the top m (or the mixed & stochastic draw)."""
    sentences = split_sentences(text)
    rng = example_rng(options.seed, index, options.epoch)
    ranking = rank_sentences(sentences, options.strategy, stopwords=options.stopwords, rng=rng)
    if options.gsr_range is not None:
        selected = stochastic_select(ranking, rng, gsr_range=options.gsr_range, noise=options.noise)
    else:
        selected = select_from_ranking(ranking, options.gsr)
    return sentences, ranking, selected
