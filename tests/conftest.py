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


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~1000-id PEGASUS-layout tokenizer trained on real English and Chinese text (saved dir).

    Trained once per session (~3 s) on 300 reuters21578_en texts, 100 lcsts_clge documents and
    100 thucnews_zh_1k texts; load it with `AutoTokenizer.from_pretrained(dir)` or
    `pegasus_gsg.tokenizer.load_tokenizer(dir)`.
    """
    from pegasus_gsg.tokenizer import train_tokenizer

    texts = (
        read_jsonl_slice("reuters21578_en", 300, "text")
        + read_jsonl_slice("lcsts_clge", 100, "document")
        + read_jsonl_slice("thucnews_zh_1k", 100, "text")
    )
    out = tmp_path_factory.mktemp("tiny_tokenizer")
    train_tokenizer(texts, vocab_size=1000, out_dir=out)
    return out


@pytest.fixture(scope="session")
def tiny_summarizer_dir(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A save_pretrained dir: random-weight 1-layer PEGASUS (d_model 32) + `tiny_tokenizer_dir`.

    Generation config: greedy, max_new_tokens 12. See tests/_model_fixtures.py.
    """
    from tests._model_fixtures import build_model_dir

    out = tmp_path_factory.mktemp("tiny_summarizer")
    return build_model_dir(tiny_tokenizer_dir, out, d_model=32, layers=1, max_new_tokens=12)


# No model or dataset hub is reachable here or in CI: every model and tokenizer the tests load
# is a local directory, and nothing should try the network first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
