"""Sentence splitting (shared/GSG.md §1): exact pieces on hand-made text, lossless always."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pegasus_gsg.core.sentences import split_sentences
from tests.conftest import read_jsonl_slice


def reference_split(text: str) -> list[str]:
    """The rule of GSG.md §1 written as a character scan, independent of the regex."""
    pieces, start, i, n = [], 0, 0, len(text)
    while i < n:
        if text[i] in ".!?":
            j = i
            while j < n and text[j] in ".!?":
                j += 1
            if j < n and text[j].isspace():
                while j < n and text[j].isspace():
                    j += 1
                pieces.append(text[start:j])
                start = j
            i = j
        elif text[i] in "。！？":
            j = i
            while j < n and text[j] in "。！？":
                j += 1
            while j < n and text[j] in "”’」』）)":
                j += 1
            while j < n and text[j].isspace():
                j += 1
            pieces.append(text[start:j])
            start = i = j
        else:
            i += 1
    if start < n:
        pieces.append(text[start:])
    return pieces


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("   ", ["   "]),
        ("No terminator", ["No terminator"]),
        ("Mr. Smith went home.", ["Mr. ", "Smith went home."]),
        ("It costs 3.5 dollars. Cheap!", ["It costs 3.5 dollars. ", "Cheap!"]),
        ("This is.what it is", ["This is.what it is"]),
        ('He said "Stop." Then he left.', ['He said "Stop." Then he left.']),
        ("Wait... what?! Yes.  \n Next", ["Wait... ", "what?! ", "Yes.  \n ", "Next"]),
        ("End with space. ", ["End with space. "]),
        ("Tab.\tNewline?\nDone", ["Tab.\t", "Newline?\n", "Done"]),
        ("你好。世界！好吗？", ["你好。", "世界！", "好吗？"]),
        ("他说：“好。”然后走了。", ["他说：“好。”", "然后走了。"]),
        ("结束了！！」 下一句", ["结束了！！」 ", "下一句"]),
        ("（完。）后记", ["（完。）", "后记"]),
        ("中文。English follows. 再见", ["中文。", "English follows. ", "再见"]),
        ("A.\u3000B", ["A.\u3000", "B"]),  # the ideographic space is whitespace
    ],
)
def test_exact_pieces(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected
    assert reference_split(text) == expected


_ALPHABET = st.sampled_from(list("ab3 .!?\n\t\u3000\u00a0。！？”’」』）)\"'中x"))


@settings(max_examples=400, deadline=None)
@given(st.text(_ALPHABET, max_size=60))
def test_lossless_and_matches_the_rule(text: str) -> None:
    pieces = split_sentences(text)
    assert "".join(pieces) == text
    assert all(pieces)
    assert pieces == reference_split(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_lossless_on_any_unicode(text: str) -> None:
    assert "".join(split_sentences(text)) == text


def test_real_news_is_split_losslessly_into_many_sentences() -> None:
    documents = read_jsonl_slice("bbc_news_summary", 50, "document")
    counts = []
    for document in documents:
        pieces = split_sentences(document)
        assert "".join(pieces) == document
        assert pieces == reference_split(document)
        counts.append(len(pieces))
    # BBC articles have 10-40 sentences; a splitter that never splits would give 1 each.
    assert sorted(counts)[len(counts) // 2] >= 8
