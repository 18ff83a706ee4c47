"""`pegasus-gsg select` and `inspect` end to end: real files, stdin, every kind of bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pegasus_gsg.cli import main
from pegasus_gsg.core.gsg import rank_sentences, select_from_ranking
from pegasus_gsg.core.sentences import split_sentences
from pegasus_gsg.data.jsonl import read_jsonl
from tests.conftest import SHARED_DATA, read_jsonl_slice

DOCS = [
    {"text": "Apple shares rose sharply today. Apple shares rose after strong iPhone sales. "
     "The weather was mild. Investors bought Apple shares."},
    {"text": ""},
    {"text": "北京今天下雨。北京明天晴。上海很热。", "id": 7},
]  # fmt: skip


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def run_select(capsys, *args: str) -> tuple[int, list[dict], str]:
    code = main(["select", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_one_output_line_per_input_line_in_order(tmp_path: Path, capsys) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    code, records, _ = run_select(capsys, "--strategy", "ind_orig", "--gsr", "0.5", str(path))
    assert code == 0
    assert [sorted(r) for r in records] == [["scores", "selected", "sentences"]] * 3
    assert records[0]["selected"] == [0, 1]  # the two "apple shares rose" sentences
    assert records[0]["scores"] == [6 / 17, 6 / 17, 0.0, 4 / 17]
    assert records[1] == {"sentences": [], "selected": [], "scores": []}
    assert records[2]["sentences"] == ["北京今天下雨。", "北京明天晴。", "上海很热。"]
    assert records[2]["selected"] == [1]


def test_real_corpus_with_another_text_field(tmp_path: Path, capsys) -> None:
    documents = read_jsonl_slice("bbc_news_summary", 25, None)
    path = write_jsonl(tmp_path / "bbc.jsonl", documents)
    code, records, _ = run_select(
        capsys, "--strategy", "seq_uniq", "--gsr", "0.3", "--text-field", "document", str(path)
    )
    assert code == 0 and len(records) == len(documents)
    for document, record in zip(documents, records, strict=True):
        sentences = split_sentences(document["document"])
        assert record["sentences"] == sentences
        expected = select_from_ranking(rank_sentences(sentences, "seq_uniq"), 0.3)
        assert record["selected"] == expected


def test_no_stopwords_changes_the_choice(tmp_path: Path, capsys) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "The the of of. The of cats. Dogs bark."}])
    _, with_stop, _ = run_select(capsys, "--gsr", "0.3", str(path))
    _, without, _ = run_select(capsys, "--gsr", "0.3", "--no-stopwords", str(path))
    assert with_stop[0]["selected"] == [2] and without[0]["selected"] == [1]


def test_random_and_stochastic_are_reproducible_with_a_seed(tmp_path: Path, capsys) -> None:
    text = " ".join(f"Sentence {k} is about topic {k % 3}." for k in range(20))
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": text}] * 4)
    for options in (["--strategy", "random", "--gsr", "0.3"], ["--stochastic"]):
        _, first, _ = run_select(capsys, *options, "--seed", "5", str(path))
        _, again, _ = run_select(capsys, *options, "--seed", "5", str(path))
        _, other, _ = run_select(capsys, *options, "--seed", "6", str(path))
        assert first == again
        assert first != other
        # the same text at different record indices gets different draws
        assert len({tuple(r["selected"]) for r in first}) > 1


def test_stdin_through_the_console_entry_point() -> None:
    lines = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DOCS)
    result = subprocess.run(
        [sys.executable, "-m", "pegasus_gsg", "select", "--gsr", "0.5", "-"],
        input=lines.encode("utf-8"),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]
    assert [r["selected"] for r in records] == [[0, 1], [], [1]]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": "Fine. Line."}\n{"text": oops}\n', r":2: not valid JSON"),
        (b'{"text": "A."}\n{"body": 1}\n', r":2: missing field 'text'; the object has \['body'"),
        (b'{"text": "caf\xe9"}\n', r":1: invalid UTF-8 at byte 13"),
        (b'["text"]\n', r":1: expected a JSON object, got list"),
        (b'{"text": 5}\n', r":1: field 'text' must be a string, got int"),
        (b'{"text": "A."}\n\n', r":2: empty line"),
    ],
)  # fmt: skip
def test_bad_input_names_file_and_line(tmp_path: Path, capsys, content: bytes, message) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    code = main(["select", str(path)])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.startswith(f"pegasus-gsg select: error: {path}:")
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_failed_run_leaves_no_output_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"text": "Good. Line."}\nnot json\n')
    out = tmp_path / "out.jsonl"
    assert main(["select", "-o", str(out), str(path)]) == 1
    assert "1 output lines were written before it" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [path]

    good = write_jsonl(tmp_path / "good.jsonl", DOCS)
    assert main(["select", "-o", str(out), str(good)]) == 0
    assert len(out.read_text("utf-8").splitlines()) == 3


def test_missing_file(capsys, tmp_path: Path) -> None:
    assert main(["select", str(tmp_path / "nope.jsonl")]) == 1
    assert "nope.jsonl: no such file" in capsys.readouterr().err


def test_unknown_strategy_lists_the_allowed_values(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["select", "--strategy", "best", "-"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'best'" in err
    assert "'ind_orig', 'ind_uniq', 'seq_orig', 'seq_uniq'" in err


@pytest.mark.parametrize("gsr", ["0", "1.5", "-0.2", "abc"])
def test_gsr_out_of_range_is_refused(capsys, gsr: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["select", "--gsr", gsr, "-"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --gsr: gsr must be" in err and "(0, 1]" in err


def test_gsr_with_stochastic_is_refused(capsys) -> None:
    assert main(["select", "--stochastic", "--gsr", "0.3", "-"]) == 1
    assert "exclude each other" in capsys.readouterr().err


def test_inspect_marks_gap_sentences_plainly_when_not_a_terminal(tmp_path: Path, capsys) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    assert main(["inspect", "--gsr", "0.5", "--count", "3", "--width", "100", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    gap_rows = [line for line in out.splitlines() if line.startswith(">> ")]
    assert [row.split()[1:3] for row in gap_rows] == [["0", "2"], ["1", "1"], ["1", "1"]]
    assert "empty document" in out
    assert "input : <mask_1> <mask_1> The weather was mild." in out


def test_inspect_highlights_with_ansi_when_asked(capsys) -> None:
    text = "Apple rose. Apple fell. Pears grew."
    assert main(["inspect", "--text", text, "--color", "always", "--gsr", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[1;30;43mApple fell.\x1b[0m" in out
    assert ">> " not in out


def test_inspect_reads_real_data(capsys) -> None:
    path = SHARED_DATA / "reuters21578_en" / "data.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present")
    assert main(["inspect", "--index", "1", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"document 1 ({path}:2)" in out
    assert sum(line.startswith(">> ") for line in out.splitlines()) == 1


def test_jsonl_reader_line_numbers_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"a": 2}\r\n')
    assert list(read_jsonl(path, required=["a"], skip_blank=True)) == [(1, {"a": 1}), (3, {"a": 2})]
    with pytest.raises(ValueError, match=r"r\.jsonl:2: empty line"):
        list(read_jsonl(path))
    with pytest.raises(ValueError, match=r"r\.jsonl:1: missing field 'b'"):
        list(read_jsonl(path, required=["a", "b"]))
    with pytest.raises(IsADirectoryError):
        list(read_jsonl(tmp_path))
