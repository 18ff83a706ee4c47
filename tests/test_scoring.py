"""Scoring tokens and ROUGE1-F1 (shared/GSG.md §2-3), checked against rouge-score itself."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from pegasus_gsg.core.scoring import (
    STOPWORDS,
    document_ids,
    encode_sentence_tokens,
    ids_from_tokens,
    rouge1_f1,
    rouge1_f1_exact,
    sentence_keys,
    tokenize,
)
from tests.conftest import read_jsonl_slice

_SCORER = rouge_scorer.RougeScorer(["rouge1"])

# Letters, digits, punctuation and characters whose lowercase is special (İ, the Kelvin sign),
# but no CJK: on such text our tokens must be exactly rouge-score's.
_NON_CJK = st.text(st.sampled_from(list("abcXYZ019 .,'-\n\t£éİKÅßΣ\u00a0")), max_size=50)
_WITH_CJK = st.text(st.sampled_from(list("ab THE the 1 .。中文ひカ한\u3000")), max_size=40)


def _decode(keys: list[list]) -> list[list[str]]:
    return [[k.decode() if isinstance(k, bytes) else k for k in ks] for ks in keys]


def test_stopword_list_is_the_127_words() -> None:
    assert len(STOPWORDS) == 127
    assert {"i", "the", "don", "s", "t", "now", "themselves"} <= STOPWORDS
    assert "said" not in STOPWORDS


def test_tokens_by_hand() -> None:
    assert tokenize("The cat's 3.5 MAT, isn't it?") == ["cat", "3", "5", "mat", "isn"]
    assert tokenize("The cat is on the mat", stopwords=False) == [
        "the", "cat", "is", "on", "the", "mat",
    ]  # fmt: skip
    assert tokenize("我爱北京 Tiananmen!") == ["我", "爱", "北", "京", "tiananmen"]
    assert tokenize("ひらがなとカタカナ、한국어") == list("ひらがなとカタカナ한국어")
    assert tokenize("abc中def") == ["abc", "中", "def"]


@settings(max_examples=300, deadline=None)
@given(_NON_CJK)
def test_tokens_equal_rouge_score_without_cjk(text: str) -> None:
    assert tokenize(text, stopwords=False) == rouge_tokenize.tokenize(text, None)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_NON_CJK, _WITH_CJK), max_size=6), st.booleans())
def test_fast_sentence_keys_equal_tokenize(sentences: list[str], stopwords: bool) -> None:
    expected = [tokenize(s, stopwords=stopwords) for s in sentences]
    assert _decode(sentence_keys(sentences, stopwords=stopwords)) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_NON_CJK, _WITH_CJK), max_size=6), st.booleans())
def test_document_ids_number_exactly_the_tokenize_tokens(
    sentences: list[str], stopwords: bool
) -> None:
    fast = document_ids(sentences, stopwords=stopwords)
    slow = ids_from_tokens([tokenize(s, stopwords=stopwords) for s in sentences])
    # Both number words in order of first occurrence, so the arrays must be identical.
    assert fast.word.tolist() == slow.word.tolist()
    assert fast.sentence.tolist() == slow.sentence.tolist()
    assert (fast.vocab_size, fast.num_sentences) == (slow.vocab_size, len(sentences))
    counts = fast.count_matrix()
    assert counts.shape == (len(sentences), fast.vocab_size)
    assert counts.sum(axis=1).tolist() == [len(tokenize(s, stopwords=stopwords)) for s in sentences]


def test_fast_sentence_keys_equal_tokenize_on_real_news() -> None:
    for document in read_jsonl_slice("bbc_news_summary", 30, "document"):
        sentences = document.split(". ")
        expected = [tokenize(s) for s in sentences]
        assert _decode(sentence_keys(sentences)) == expected


@settings(max_examples=300, deadline=None)
@given(_NON_CJK, _NON_CJK)
def test_rouge1_f1_equals_rouge_score(candidate: str, reference: str) -> None:
    expected = _SCORER.score(reference, candidate)["rouge1"].fmeasure
    ours = rouge1_f1(tokenize(candidate, stopwords=False), tokenize(reference, stopwords=False))
    assert abs(ours - expected) < 1e-12


def test_rouge1_f1_equals_rouge_score_on_real_sentences() -> None:
    document = read_jsonl_slice("bbc_news_summary", 1, "document")[0]
    sentences = document.split(". ")
    for i, sentence in enumerate(sentences):
        rest = ". ".join(sentences[:i] + sentences[i + 1 :])
        expected = _SCORER.score(rest, sentence)["rouge1"].fmeasure
        ours = rouge1_f1(tokenize(sentence, stopwords=False), tokenize(rest, stopwords=False))
        assert abs(ours - expected) < 1e-12


def test_exact_scores_and_uniq_by_hand() -> None:
    candidate, reference = list("aab"), list("abbc")
    # Orig: overlap = min(2,1) + min(1,2) = 2 -> F = 4/7; Uniq: {a,b} vs {a,b,c} -> 4/5.
    assert rouge1_f1_exact(candidate, reference) == Fraction(4, 7)
    assert rouge1_f1_exact(candidate, reference, uniq=True) == Fraction(4, 5)
    assert rouge1_f1(candidate, reference) == 4 / 7
    assert rouge1_f1([], []) == 0.0
    assert rouge1_f1(["x"], ["y"]) == 0.0


def test_equal_fractions_compare_equal_where_rouge_score_does_not() -> None:
    # overlap 1 with (|C|, |R|) = (1, 5) and (2, 4): both F = 2/6 exactly.
    a = rouge1_f1(["w"], ["w", "x", "x", "x", "x"])
    b = rouge1_f1(["w", "y"], ["w", "z", "z", "z"])
    assert a == b == 2 / 6
    assert rouge1_f1_exact(["w"], list("wxxxx")) == rouge1_f1_exact(list("wy"), list("wzzz"))
    # rouge-score's 2PR/(P+R) turns this tie into a last-bit difference.
    rouge_a = _SCORER.score("w x x x x", "w")["rouge1"].fmeasure
    rouge_b = _SCORER.score("w z z z", "w y")["rouge1"].fmeasure
    assert rouge_a != rouge_b


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcde"), max_size=6), max_size=6))
def test_encoded_pairs_count_every_token(sentences: list[list[str]]) -> None:
    doc = encode_sentence_tokens(sentences)
    assert doc.num_sentences == len(sentences)
    assert doc.num_tokens == sum(map(len, sentences))
    vocab = list(dict.fromkeys(t for s in sentences for t in s))
    for i, tokens in enumerate(sentences):
        lo, hi = doc.pair_start[i], doc.pair_start[i + 1]
        got = {
            vocab[w]: int(c)
            for w, c in zip(doc.pair_word[lo:hi], doc.pair_count[lo:hi], strict=True)
        }
        assert got == Counter(tokens)
        assert set(doc.pair_sentence[lo:hi].tolist()) <= {i}
    assert dict(zip(vocab, doc.doc_count.tolist(), strict=True)) == Counter(
        t for s in sentences for t in s
    )
