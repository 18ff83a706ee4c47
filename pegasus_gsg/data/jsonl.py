"""A strict JSON Lines reader: every problem is reported as `FILE:LINE: what is wrong`.

One JSON object per line. Lines are read as bytes and decoded one at a time, so invalid UTF-8
is reported with its line number instead of surfacing as a decode error somewhere in a buffer.
A UTF-8 byte order mark on the first line is accepted. Nothing is skipped silently: a blank
line is an error unless `skip_blank=True`, in which case the caller still sees the line numbers
of the records it gets.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

STDIN = "-"


def display_name(source: str | Path) -> str:
    """How `source` is named in messages: `<stdin>` for "-", else the path as given."""
    return "<stdin>" if str(source) == STDIN else str(source)


def read_jsonl(
    source: str | Path,
    *,
    required: Sequence[str] = (),
    skip_blank: bool = False,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_no, record)` for each line of `source` (a path, or "-" for stdin).

    Raises:
        FileNotFoundError: `source` does not exist.
        ValueError: `FILE:LINE: ...` for invalid UTF-8, a line that is not JSON, a JSON value
            that is not an object, or an object without one of the `required` fields.
    """
    if str(source) == STDIN:
        yield from iter_jsonl(
            sys.stdin.buffer, name="<stdin>", required=required, skip_blank=skip_blank
        )
        return
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, expected a JSON Lines file")
    with path.open("rb") as stream:
        yield from iter_jsonl(stream, name=str(path), required=required, skip_blank=skip_blank)


def iter_jsonl(
    stream: BinaryIO,
    *,
    name: str,
    required: Sequence[str] = (),
    skip_blank: bool = False,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """`read_jsonl` over an open binary stream; `name` is used in messages."""
    for line_no, raw in enumerate(stream, start=1):
        where = f"{name}:{line_no}"
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{where}: invalid UTF-8 at byte {err.start} of the line "
                f"({raw[err.start : err.start + 4]!r}); expected UTF-8 text"
            ) from None
        if not line.strip():
            if skip_blank:
                continue
            raise ValueError(f"{where}: empty line; expected one JSON object per line")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{where}: not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno}); "
                "expected one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{where}: expected a JSON object, got {type(record).__name__} {_preview(line)}"
            )
        missing = [field for field in required if field not in record]
        if missing:
            raise ValueError(
                f"{where}: missing field {', '.join(map(repr, missing))}; "
                f"the object has {sorted(record) or 'no fields'}"
            )
        yield line_no, record


def _preview(line: str, width: int = 40) -> str:
    text = line.strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def iter_jsonl_texts(source: str | Path, text_field: str) -> Iterator[tuple[int, int, str]]:
    """(record index, line number, text) of each line of `source` (a path, or "-" for stdin).

    Raises:
        ValueError: `FILE:LINE: ...` as `read_jsonl` does, or when `text_field` is not a string.
    """
    name = display_name(source)
    for index, (line_no, record) in enumerate(read_jsonl(source, required=[text_field])):
        text = record[text_field]
        if not isinstance(text, str):
            raise ValueError(
                f"{name}:{line_no}: field {text_field!r} must be a string, "
                f"got {type(text).__name__ if text is not None else 'null'}"
            )
        yield index, line_no, text
