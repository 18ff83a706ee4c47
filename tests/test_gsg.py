"""Gap-sentence selection (shared/GSG.md §3): hand-made documents with obvious answers, and the
fast Ind/Seq rankings against a slow reference written straight from the definition."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from pegasus_gsg.core import gsg
from pegasus_gsg.core.gsg import (
    STRATEGIES,
    Ranking,
    example_rng,
    gap_sentence_counts,
    importance,
    num_gap_sentences,
    rank_sentences,
    rank_tokenized,
    select_from_ranking,
    select_sentences,
    stochastic_select,
)
from pegasus_gsg.core.scoring import STOPWORDS, tokenize
from pegasus_gsg.core.sentences import split_sentences
from tests.conftest import read_jsonl_slice

# --- the slow reference: re-score the whole rest of the document for every candidate -------


def reference_f1(candidate: list[str], reference: list[str], uniq: bool) -> Fraction:
    """ROUGE1-F1 as rouge-score defines it (2PR/(P+R)), in exact fractions."""
    if uniq:
        candidate, reference = list(set(candidate)), list(set(reference))
    c, r = Counter(candidate), Counter(reference)
    overlap = sum((c & r).values())
    if overlap == 0:
        return Fraction(0)
    precision = Fraction(overlap, sum(c.values()))
    recall = Fraction(overlap, sum(r.values()))
    return 2 * precision * recall / (precision + recall)


def _split(tokens: Sequence[Sequence[str]], chosen: set[int]) -> tuple[list[str], list[str]]:
    inside = [t for i, ts in enumerate(tokens) if i in chosen for t in ts]
    rest = [t for i, ts in enumerate(tokens) if i not in chosen for t in ts]
    return inside, rest


def reference_ranking(tokens: Sequence[Sequence[str]], strategy: str) -> tuple[list, list]:
    """(order, exact scores) for ind_*/seq_* by the definition, no shortcuts."""
    n, uniq = len(tokens), strategy.endswith("uniq")
    if strategy.startswith("ind"):
        scores = [reference_f1(*_split(tokens, {i}), uniq) for i in range(n)]
        order = sorted(range(n), key=lambda i: (scores[i], i), reverse=True)
        return order, scores
    chosen: list[int] = []
    scores = [Fraction(0)] * n
    for _ in range(n):
        best, best_f = -1, Fraction(-1)
        for i in range(n):  # ascending, ">=": on equal F the later sentence wins
            if i not in chosen:
                f = reference_f1(*_split(tokens, {*chosen, i}), uniq)
                if f >= best_f:
                    best, best_f = i, f
        chosen.append(best)
        scores[best] = best_f
    return chosen, scores


_SCORED = ("ind_orig", "ind_uniq", "seq_orig", "seq_uniq")
_WORDS = ["apple", "bank", "rate", "oil", "the", "of", "3", "中", "国"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from(_WORDS), max_size=7), max_size=9),
    st.sampled_from(_SCORED),
    st.booleans(),
)
def test_fast_equals_reference_on_random_documents(
    words: list[list[str]], strategy: str, stopwords: bool
) -> None:
    sentences = [" ".join(ws) + ". " for ws in words]
    ranking = rank_sentences(sentences, strategy, stopwords=stopwords)
    tokens = [tokenize(s, stopwords=stopwords) for s in sentences]
    order, scores = reference_ranking(tokens, strategy)
    assert ranking.order == order
    assert ranking.scores == [float(s) for s in scores]


@pytest.mark.parametrize("dense_max_cells", [gsg.DENSE_MAX_CELLS, 0])  # dense and sparse Ind
@pytest.mark.parametrize("strategy", _SCORED)
def test_fast_equals_reference_on_larger_documents(
    strategy: str, dense_max_cells: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gsg, "DENSE_MAX_CELLS", dense_max_cells)
    rng = np.random.default_rng(7)
    vocab = [f"w{k}" for k in range(25)]
    for _ in range(4):
        tokens = [
            list(rng.choice(vocab, size=rng.integers(0, 12))) for _ in range(rng.integers(15, 30))
        ]
        ranking = rank_tokenized(tokens, strategy)
        order, scores = reference_ranking(tokens, strategy)
        assert ranking.order == order
        assert ranking.scores == [float(s) for s in scores]


def test_fast_equals_reference_on_real_news() -> None:
    for document in read_jsonl_slice("reuters21578_en", 6, "text"):
        sentences = split_sentences(document)
        tokens = [tokenize(s) for s in sentences]
        for strategy in _SCORED:
            assert (
                rank_sentences(sentences, strategy).order == reference_ranking(tokens, strategy)[0]
            )


def test_ind_scores_match_rouge_score_on_real_news() -> None:
    """The plain way (rouge-score on the rest of the document) gives the same numbers."""

    class StopwordTokenizer:
        def tokenize(self, text: str) -> list[str]:
            return [t for t in rouge_tokenize.tokenize(text, None) if t not in STOPWORDS]

    scorer = rouge_scorer.RougeScorer(["rouge1"], tokenizer=StopwordTokenizer())
    document = read_jsonl_slice("bbc_news_summary", 1, "document")[0]
    sentences = split_sentences(document)
    ranking = rank_sentences(sentences, "ind_orig")
    for i, sentence in enumerate(sentences):
        rest = "".join(sentences[:i] + sentences[i + 1 :])
        assert ranking.scores[i] == pytest.approx(scorer.score(rest, sentence)["rouge1"].fmeasure)


# --- hand-made documents -------------------------------------------------------------------

# Scoring tokens: 0 apple shares rose sharply today | 1 apple shares rose strong iphone sales |
# 2 weather mild | 3 investors bought apple shares. Ind overlaps: 3, 3, 0, 2.
APPLE = [
    "Apple shares rose sharply today. ",
    "Apple shares rose after strong iPhone sales. ",
    "The weather was mild. ",
    "Investors bought Apple shares.",
]


def test_ind_orig_by_hand_with_tie_to_the_later_sentence() -> None:
    ranking = rank_sentences(APPLE, "ind_orig")
    assert ranking.order == [1, 0, 3, 2]
    assert ranking.scores == [6 / 17, 6 / 17, 0.0, 4 / 17]  # N = 17 scoring tokens
    assert select_from_ranking(ranking, 0.25) == [1]
    assert select_from_ranking(ranking, 0.5) == [0, 1]


def test_ind_uniq_by_hand() -> None:
    ranking = rank_sentences(APPLE, "ind_uniq")
    assert ranking.order == [1, 0, 3, 2]
    assert ranking.scores[1] == 2 * 3 / (3 + 12)  # 12 distinct tokens
    assert ranking.scores[3] == 2 * 2 / (2 + 12)


def test_seq_orig_by_hand_differs_from_ind() -> None:
    # Step 1 as Ind (tie 0/1 -> 1). Step 2: adding 0 gives overlap 2, adding 2 or 3 gives 3
    # (tie -> 3). Step 3: adding 2 keeps 3, adding 0 drops to 0.
    ranking = rank_sentences(APPLE, "seq_orig")
    assert ranking.order == [1, 3, 2, 0]
    assert select_from_ranking(ranking, 0.5) == [1, 3]
    assert ranking.scores[3] == 6 / 17


def test_mr_smith_and_decimal_numbers() -> None:
    sentences = split_sentences("Mr. Smith met Mr. Jones. Smith left.")
    assert sentences == ["Mr. ", "Smith met Mr. ", "Jones. ", "Smith left."]
    assert rank_sentences(sentences, "ind_orig").order == [1, 3, 0, 2]
    assert select_sentences(sentences, "ind_orig", 0.5) == [1, 3]

    sentences = split_sentences("It rose 3.5 pct. It fell 3.5 pct. Then nothing.")
    assert len(sentences) == 3
    assert rank_sentences(sentences, "ind_orig").order == [1, 0, 2]


def test_quotes_do_not_end_a_sentence_and_ties_go_to_the_later_one() -> None:
    sentences = split_sentences('He said "Stop." Then he left. "Stop!" she said.')
    assert sentences == ['He said "Stop." Then he left. ', '"Stop!" she said.']
    assert rank_sentences(sentences, "ind_orig").order == [1, 0]


def test_chinese_characters_are_scored() -> None:
    sentences = split_sentences("北京今天下雨。北京明天晴。上海很热。")
    assert sentences == ["北京今天下雨。", "北京明天晴。", "上海很热。"]
    ranking = rank_sentences(sentences, "ind_orig")
    assert ranking.order == [1, 0, 2]  # 北 京 天 shared by 0 and 1
    assert ranking.scores[2] == 0.0 and ranking.scores[1] > 0
    assert select_from_ranking(ranking, 0.3) == [1]


def test_stopwords_can_be_kept() -> None:
    sentences = ["The the the of of. ", "The of cats. ", "Dogs bark loudly."]
    assert rank_sentences(sentences, "ind_orig").order == [2, 1, 0]  # all zero
    assert rank_sentences(sentences, "ind_orig", stopwords=False).order == [1, 0, 2]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_sentence_and_empty_documents(strategy: str) -> None:
    rng = np.random.default_rng(0)
    one = rank_sentences(["Only one sentence here."], strategy, rng=rng)
    assert one.order == [0]
    assert select_from_ranking(one, 0.3) == [0]
    empty = rank_sentences([], strategy, rng=rng)
    assert empty == Ranking(order=[], scores=[])
    assert select_from_ranking(empty, 0.3) == []
    assert stochastic_select(empty, rng) == []


def test_one_sentence_scores_zero_against_an_empty_rest() -> None:
    for strategy in ("ind_orig", "ind_uniq", "seq_orig", "seq_uniq"):
        assert rank_sentences(["Only one sentence here."], strategy).scores == [0.0]


def test_lead_and_random() -> None:
    sentences = [f"Sentence number {k}. " for k in range(10)]
    lead = rank_sentences(sentences, "lead")
    assert lead.order == list(range(10))
    assert select_from_ranking(lead, 0.3) == [0, 1, 2]
    assert lead.scores[0] == 1.0 and lead.scores[9] == 0.1

    first = rank_sentences(sentences, "random", rng=example_rng(1, 5, 0))
    again = rank_sentences(sentences, "random", rng=example_rng(1, 5, 0))
    other = rank_sentences(sentences, "random", rng=example_rng(1, 6, 0))
    assert first == again
    assert sorted(first.order) == list(range(10))
    assert first.order != other.order
    with pytest.raises(ValueError, match="needs rng"):
        rank_sentences(sentences, "random")


@pytest.mark.parametrize(
    ("n", "gsr", "m"),
    [(0, 0.3, 0), (1, 0.3, 1), (3, 0.3, 1), (10, 0.3, 3), (10, 1.0, 10), (7, 0.45, 3)],
)
def test_number_of_gap_sentences(n: int, gsr: float, m: int) -> None:
    assert num_gap_sentences(n, gsr) == m
    assert gap_sentence_counts(np.array([n, n]), gsr).tolist() == [m, m]


def test_gap_sentence_counts_is_the_formula_of_gsg_md_for_every_length() -> None:
    # m = min(int(max(n * gsr, 1.0)), n), written out here as GSG.md §3 states it.
    lengths = np.arange(0, 200)
    for gsr in (0.05, 0.15, 0.3, 1 / 3, 0.45, 0.7, 1.0):
        expected = [min(int(max(n * gsr, 1.0)), n) for n in lengths.tolist()]
        assert gap_sentence_counts(lengths, gsr).tolist() == expected
        assert [num_gap_sentences(n, gsr) for n in lengths.tolist()] == expected
    with pytest.raises(ValueError, match="must be >= 0, got -1"):
        gap_sentence_counts(np.array([3, -1]), 0.3)
    with pytest.raises(ValueError, match="must be >= 0, got -1"):
        num_gap_sentences(-1, 0.3)


@pytest.mark.parametrize("gsr", [0.0, -0.1, 1.5, float("nan")])
def test_gsr_outside_the_range_is_refused(gsr: float) -> None:
    with pytest.raises(ValueError, match=r"gsr must be in \(0, 1\]"):
        select_from_ranking(Ranking([0], [0.0]), gsr)


def test_unknown_strategy_lists_the_allowed_values() -> None:
    with pytest.raises(
        ValueError, match=r"unknown strategy 'best'; allowed: random, lead, ind_orig"
    ):
        rank_sentences(["A. "], "best")


def test_ranking_is_prefix_consistent() -> None:
    document = read_jsonl_slice("bbc_news_summary", 1, "document")[0]
    sentences = split_sentences(document)
    for strategy in ("ind_orig", "seq_orig"):
        ranking = rank_sentences(sentences, strategy)
        previous: set[int] = set()
        for m_gsr in np.linspace(0.05, 1.0, 20):
            chosen = set(select_from_ranking(ranking, float(m_gsr)))
            assert previous <= chosen
            previous = chosen


def test_ranking_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="permutation"):
        Ranking(order=[0, 0], scores=[0.1, 0.2])
    with pytest.raises(ValueError, match="scores has 1"):
        Ranking(order=[0, 1], scores=[0.1])


# --- mixed & stochastic, per-example randomness -------------------------------------------


def test_stochastic_without_noise_is_the_plain_cut_at_the_drawn_gsr() -> None:
    ranking = rank_sentences(APPLE, "ind_orig")
    for seed in range(5):
        assert stochastic_select(
            ranking, np.random.default_rng(seed), gsr_range=(0.5, 0.5), noise=0.0
        ) == select_from_ranking(ranking, 0.5)


def test_stochastic_draws_gsr_from_the_range_and_jitters_scores() -> None:
    sentences = split_sentences(read_jsonl_slice("bbc_news_summary", 1, "document")[0])
    n = len(sentences)
    ranking = rank_sentences(sentences, "ind_orig")
    sizes, selections = set(), set()
    for epoch in range(60):
        chosen = stochastic_select(ranking, example_rng(3, 0, epoch))
        assert chosen == sorted(chosen)
        assert num_gap_sentences(n, 0.15) <= len(chosen) <= num_gap_sentences(n, 0.45)
        sizes.add(len(chosen))
        selections.add(tuple(chosen))
    assert len(sizes) >= 3  # gsr really varies
    assert len(selections) >= 10  # and so does the choice
    assert stochastic_select(ranking, example_rng(3, 0, 1)) == stochastic_select(
        ranking, example_rng(3, 0, 1)
    )


def test_stochastic_on_seq_rankings_follows_the_greedy_order() -> None:
    ranking = rank_sentences(APPLE, "seq_orig")
    values = importance(ranking)
    assert sorted(range(4), key=lambda i: (values[i], i), reverse=True) == ranking.order
    chosen = stochastic_select(ranking, np.random.default_rng(0), gsr_range=(0.5, 0.5), noise=0.0)
    assert chosen == [1, 3]


def test_stochastic_options_are_validated() -> None:
    ranking = Ranking([0], [0.0])
    with pytest.raises(ValueError, match="gsr_range"):
        stochastic_select(ranking, np.random.default_rng(0), gsr_range=(0.5, 0.2))
    with pytest.raises(ValueError, match="noise"):
        stochastic_select(ranking, np.random.default_rng(0), noise=1.5)


def test_example_rng_is_reproducible_and_distinct_per_document_and_epoch() -> None:
    def draw(seed: int, index: int, epoch: int) -> list[float]:
        return example_rng(seed, index, epoch).random(4).tolist()

    assert draw(0, 1, 2) == draw(0, 1, 2)
    assert len({tuple(draw(0, i, e)) for i in range(5) for e in range(5)}) == 25
    assert draw(0, 1, 2) != draw(1, 1, 2)
    with pytest.raises(ValueError, match="index must be a non-negative integer"):
        example_rng(0, -1, 0)
