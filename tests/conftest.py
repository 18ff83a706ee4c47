"""Shared fixtures. Real text comes from ../shared/data (never copied into the repo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PEGASUS_GSG_DATA", REPO_ROOT.parent / "shared" / "data"))


def read_jsonl_slice(name: str, limit: int, field: str | None = None) -> list:
    """First `limit` records of ../shared/data/<name>/data.jsonl (or one field of each)."""
    path = SHARED_DATA / name / "data.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present")
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            out.append(record[field] if field else record)
            if len(out) >= limit:
                break
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data."""
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA
