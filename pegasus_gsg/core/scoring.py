"""Scoring tokens and ROUGE1-F1 for gap-sentence selection (shared/GSG.md §2-3).

Tokens are the `rouge-score` package's default tokenization: lowercase the text, then every
maximal run of `[a-z0-9]` is a token (rouge-score replaces everything else by spaces and splits;
no stemming). Extension: every CJK character (Han, Hiragana/Katakana, Hangul) is a token of its
own, so Chinese text does not score 0 everywhere; text without such characters tokenizes exactly
as rouge-score does. By default the 127-word English stopword list of the released PEGASUS-LARGE
setup is removed before scoring.

ROUGE1-F1 between candidate multiset C and reference multiset R is
`F = 2·overlap / (|C| + |R|)` (equal to rouge-score's 2PR/(P+R), but as a single division of
integers, so mathematically equal scores compare equal). `Uniq` reduces both sides to sets.

`document_ids` tokenizes a document once and maps its tokens to small integer ids; gsg.py
scores every candidate from per-sentence counts of those ids (a dense sentences x words matrix
for news-sized documents, sparse (sentence, word) pairs otherwise) instead of re-tokenizing
"the rest of the document" per candidate.

Evaluation ROUGE (stemming, rougeLsum) lives elsewhere; this module only serves GSG.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain

import numpy as np

STOPWORDS: frozenset[str] = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
    her hers herself it its itself they them their theirs themselves what which who whom this that
    these those am is are was were be been being have has had having do does did doing a an the and
    but if or because as until while of at by for with about against between into through during
    before after above below to from up down in out on off over under again further then once here
    there when where why how all any both each few more most other some such no nor not only own
    same so than too very s t can will just don should now
    """.split()  # noqa: SIM905 - the list reads as it is printed in shared/GSG.md
)
"""The 127 English stopwords removed before scoring unless `stopwords=False`."""

# Unicode blocks whose characters are tokens of their own. Han: radicals, 々 〆 〇 and the
# Hangzhou numerals, CJK Unified Ideographs with extension A and the supplementary-plane
# extensions, compatibility ideographs. Kana: Hiragana, Katakana (incl. ー), phonetic extensions,
# half-width Katakana. Hangul: Jamo, compatibility Jamo, Jamo extensions A/B, syllables,
# half-width Hangul.
CJK_RANGES = (
    "\u2e80-\u2fdf\u3005-\u3007\u3021-\u3029\u3038-\u303b\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\U00020000-\U0003134f"
    "\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9d"
    "\u1100-\u11ff\u3131-\u318e\ua960-\ua97f\uac00-\ud7af\ud7b0-\ud7ff\uffa0-\uffdc"
)
_TOKEN = re.compile(rf"[a-z0-9]+|[{CJK_RANGES}]")
_CJK = re.compile(rf"[{CJK_RANGES}]")
_STOPWORDS_BYTES = frozenset(word.encode("ascii") for word in STOPWORDS)
_STOP_IDS_STR: dict[Hashable, int] = dict.fromkeys(STOPWORDS, -1)
_STOP_IDS_BYTES: dict[Hashable, int] = dict.fromkeys(_STOPWORDS_BYTES, -1)
_ALNUM = b"abcdefghijklmnopqrstuvwxyz0123456789"
_ALNUM_OR_SPACE = bytes(c if c in _ALNUM else ord(" ") for c in range(256))


def tokenize(text: str, *, stopwords: bool = True) -> list[str]:
    """Scoring tokens of `text` (see the module docstring), stopwords removed by default."""
    # Lowercase the whole text first, as rouge-score does: a few characters only become a-z
    # after lowercasing (the Kelvin sign K -> k, İ -> i + combining dot).
    tokens = _TOKEN.findall(text.lower())
    if stopwords:
        return [t for t in tokens if t not in STOPWORDS]
    return tokens


def _overlap_and_size(
    candidate: Iterable[Hashable], reference: Iterable[Hashable], uniq: bool
) -> tuple[int, int]:
    if uniq:
        c, r = set(candidate), set(reference)
        return len(c & r), len(c) + len(r)
    cc, rc = Counter(candidate), Counter(reference)
    overlap = sum(min(n, rc[w]) for w, n in cc.items())
    return overlap, sum(cc.values()) + sum(rc.values())


def rouge1_f1_exact(
    candidate: Iterable[Hashable], reference: Iterable[Hashable], *, uniq: bool = False
) -> Fraction:
    """ROUGE1-F1 of two token sequences as an exact fraction `2·overlap / (|C| + |R|)`."""
    overlap, size = _overlap_and_size(candidate, reference, uniq)
    return Fraction(2 * overlap, size) if overlap else Fraction(0)


def rouge1_f1(
    candidate: Iterable[Hashable], reference: Iterable[Hashable], *, uniq: bool = False
) -> float:
    """ROUGE1-F1 of two token sequences; one correctly rounded division of integers."""
    overlap, size = _overlap_and_size(candidate, reference, uniq)
    return 2 * overlap / size if overlap else 0.0


@dataclass(frozen=True)
class DocumentIds:
    """A document's scoring tokens as small integer ids, stopwords already removed.

    `word[k]` and `sentence[k]` are the word id (0..vocab_size-1) and the sentence index of the
    k-th kept token, in document order.
    """

    num_sentences: int
    word: np.ndarray  # int64
    sentence: np.ndarray  # int64, non-decreasing
    vocab_size: int

    @property
    def num_tokens(self) -> int:
        """|document| as a multiset: the Orig denominator |C| + |R| of every candidate."""
        return len(self.word)

    def count_matrix(self) -> np.ndarray:
        """Dense (sentences x words) counts; one bincount, cheap for news-sized documents."""
        n, v = self.num_sentences, self.vocab_size
        return np.bincount(self.sentence * v + self.word, minlength=n * v).reshape(n, v)


@dataclass(frozen=True)
class EncodedDocument:
    """Sparse per-sentence counts: one entry per distinct (sentence, word) pair.

    Pairs are sorted by sentence then word; those of sentence i are
    `pair_start[i]:pair_start[i + 1]`.
    """

    num_sentences: int
    pair_sentence: np.ndarray  # int64, sentence index of each pair
    pair_word: np.ndarray  # int64, word id of each pair
    pair_count: np.ndarray  # int64, occurrences of the word in the sentence
    pair_start: np.ndarray  # int64, n + 1 offsets into the pair arrays
    doc_count: np.ndarray  # int64, occurrences of each word id in the whole document
    num_tokens: int  # |document| as a multiset: the Orig denominator |C| + |R| of every candidate


def _sentence_tokens(
    sentences: Sequence[str],
) -> tuple[Sequence[Sequence[Hashable]], dict[Hashable, int]]:
    """Each sentence's tokens (stopwords included) and `{stopword: -1}` in the same key type.

    The keys compare equal exactly when the tokens of `tokenize` do, but they are `bytes` for
    documents without CJK characters: after lowercasing, every character outside [a-z0-9] is
    a separator, so non-ASCII characters can become "?" and the scanning is done by
    `bytes.translate` + `split` in C, about twice as fast as the regular expression.
    """
    text = "".join(sentences)
    lowered = text.lower()
    # A few characters change length when lowercased (İ -> i + combining dot); those documents
    # and documents with CJK characters take the regular expression per sentence.
    if len(lowered) != len(text) or not (lowered.isascii() or _CJK.search(lowered) is None):
        return [_TOKEN.findall(sentence.lower()) for sentence in sentences], _STOP_IDS_STR
    buffer = lowered.encode("ascii", "replace").translate(_ALNUM_OR_SPACE)
    tokens: list[list[bytes]] = []
    start = 0
    for sentence in sentences:
        end = start + len(sentence)
        tokens.append(buffer[start:end].split())
        start = end
    return tokens, _STOP_IDS_BYTES


def sentence_keys(sentences: Sequence[str], *, stopwords: bool = True) -> list[list[Hashable]]:
    """Each sentence's scoring tokens as hashable keys (`bytes` or `str`; see `tokenize`)."""
    tokens, stop = _sentence_tokens(sentences)
    if stopwords:
        return [[t for t in ts if t not in stop] for ts in tokens]
    return [list(ts) for ts in tokens]


def document_ids(sentences: Sequence[str], *, stopwords: bool = True) -> DocumentIds:
    """Tokenize every sentence once (exactly as `tokenize`) and number the words."""
    tokens, stop_ids = _sentence_tokens(sentences)
    return _number(tokens, stop_ids if stopwords else {})


def ids_from_tokens(sentence_tokens: Sequence[Sequence[Hashable]]) -> DocumentIds:
    """Number already tokenized sentences (any hashable tokens, nothing removed)."""
    return _number(sentence_tokens, {})


def _number(
    sentence_tokens: Sequence[Sequence[Hashable]], stop_ids: dict[Hashable, int]
) -> DocumentIds:
    """Word ids 0..V-1 in order of first occurrence, tokens found in `stop_ids` dropped.

    One C-level pass: a defaultdict whose factory is its own `len` hands out the next id to
    each new token, and starts out holding the stopwords mapped to -1 (1.4x faster than
    collecting the distinct tokens first and mapping them in a second pass).
    """
    index = defaultdict(None, stop_ids)
    index.default_factory = index.__len__
    lengths = [len(tokens) for tokens in sentence_tokens]
    flat = chain.from_iterable(sentence_tokens)
    word = np.fromiter(map(index.__getitem__, flat), dtype=np.int64, count=sum(lengths))
    index.default_factory = None  # break the index -> bound method -> index cycle
    n = len(sentence_tokens)
    sentence = np.repeat(np.arange(n, dtype=np.int64), lengths)
    if stop_ids:
        keep = word >= 0
        word = word[keep] - len(stop_ids)
        sentence = sentence[keep]
    return DocumentIds(
        num_sentences=n, word=word, sentence=sentence, vocab_size=len(index) - len(stop_ids)
    )


def encode_pairs(doc: DocumentIds) -> EncodedDocument:
    """Count the distinct (sentence, word) pairs of `doc` (sparse, for any document size)."""
    n, width = doc.num_sentences, max(doc.vocab_size, 1)
    # One key per token that sorts by (sentence, word); runs of equal keys are the pairs.
    keys = np.sort(doc.sentence * width + doc.word)
    first = np.empty(len(keys), dtype=bool)
    first[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    run_start = np.flatnonzero(first)
    pair_key = keys[run_start]
    pair_count = np.empty(len(run_start), dtype=np.int64)
    pair_count[:-1] = run_start[1:] - run_start[:-1]
    pair_count[-1:] = len(keys) - run_start[-1:]
    pair_sentence = pair_key // width
    return EncodedDocument(
        num_sentences=n,
        pair_sentence=pair_sentence,
        pair_word=pair_key % width,
        pair_count=pair_count,
        pair_start=np.searchsorted(pair_sentence, np.arange(n + 1)),
        doc_count=np.bincount(doc.word, minlength=doc.vocab_size),
        num_tokens=doc.num_tokens,
    )


def encode_sentence_tokens(sentence_tokens: Sequence[Sequence[Hashable]]) -> EncodedDocument:
    """Count (sentence, word) pairs of already tokenized sentences."""
    return encode_pairs(ids_from_tokens(sentence_tokens))
