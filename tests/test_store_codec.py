"""split17: 96,103-id vocabularies in ~2 bytes per token, with O(1) record access."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pegasus_gsg.cli import main
from pegasus_gsg.data.preparation import PrepareConfig
from pegasus_gsg.data.preparation.assemble import assemble_store
from pegasus_gsg.data.store import (
    HIGH_BIT,
    TokenStore,
    split17_decode,
    token_codec,
    verify_store,
)

PEGASUS_VOCAB = 96_103


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.integers(0, PEGASUS_VOCAB - 1) | st.integers(HIGH_BIT - 2, HIGH_BIT + 2), max_size=200
    )
)
def test_low_bits_and_high_positions_decode_to_the_ids(ids: list[int]) -> None:
    array = np.asarray(ids, dtype=np.int64)
    low = (array & (HIGH_BIT - 1)).astype(np.uint16)
    high = np.flatnonzero(array >= HIGH_BIT)
    decoded = split17_decode(low, high)
    assert decoded.tolist() == ids
    if not len(high):
        assert decoded is low  # no high id: the view itself, no copy


def test_codec_choice_by_vocabulary_size() -> None:
    assert token_codec(32_000) is None and token_codec(65_536) is None
    assert token_codec(65_537) == "split17" and token_codec(PEGASUS_VOCAB) == "split17"
    assert token_codec(131_072) == "split17" and token_codec(131_073) is None  # uint32


def zipf_records(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(document, summary) id arrays with a long tail reaching all 96,103 ids."""
    records = []
    for _ in range(n):
        doc = np.minimum(rng.zipf(1.2, size=int(rng.integers(200, 2000))), PEGASUS_VOCAB) - 1
        summary = rng.integers(0, PEGASUS_VOCAB, size=int(rng.integers(1, 60)))
        records.append((doc.astype(np.uint32), summary.astype(np.uint32)))
    # One document uses every id once, the high ones (escaped) included.
    records[7] = (rng.permutation(PEGASUS_VOCAB).astype(np.uint32), records[7][1])
    return records


def chunk(records, first_row: int) -> dict[str, np.ndarray]:
    meta = {"rows": len(records), "skipped": {}, "skipped_examples": [], "filtered": 0}
    meta["splits"] = {}
    return {
        "tokens": np.concatenate([np.concatenate(r) for r in records]),
        "record_lengths": np.array([len(d) + len(s) for d, s in records], dtype=np.int64),
        "source_rows": np.arange(first_row, first_row + len(records), dtype=np.int64),
        "source_lengths": np.array([len(d) for d, _ in records], dtype=np.int64),
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    }


def test_a_96k_store_round_trips_with_2_bytes_per_id(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records = zipf_records(rng, 300)
    base = {
        "format": "pegasus-gsg-token-store",
        "format_version": 1,
        "kind": "finetune",
        "vocab_size": PEGASUS_VOCAB,
        "tokenizer": {"fingerprint": "f" * 64, "path": "synthetic"},
        "options": {},
        "source": {"files": [], "fingerprint": "0" * 64},
    }
    chunks = [chunk(records[:150], 0), chunk(records[150:], 150)]
    out = tmp_path / "store"
    manifest = assemble_store(
        chunks, out, tmp_path / "tmp", base, PrepareConfig("finetune"), np.dtype(np.uint32)
    )
    assert manifest["token_codec"] == "split17" and manifest["dtype"] == "uint32"
    tokens = sum(len(d) + len(s) for d, s in records)
    high = sum(int(np.count_nonzero(np.concatenate(r) >= HIGH_BIT)) for r in records)
    assert manifest["num_tokens"] == tokens and manifest["num_high_tokens"] == high > 0
    store = TokenStore.open(out)
    for i in (0, 1, 7, 149, 150, 299, -1):
        document, summary = store.pair(i)
        assert document.tolist() == records[i][0].tolist()
        assert summary.tolist() == records[i][1].tolist()
    assert store.lengths().tolist() == [len(d) for d, _ in records]
    assert (out / "tokens.npy").stat().st_size == 128 + 2 * tokens  # 2 bytes per id
    assert (out / "high_tokens.npy").stat().st_size == 128 + 4 * high  # + 4 per id >= 65,536
    assert verify_store(out) == []
    assert main(["verify", str(out)]) == 0
    # A flipped bit is caught by the hashes.
    low = np.load(out / "tokens.npy", mmap_mode="r+")
    low[10] ^= 1
    low.flush()
    assert verify_store(out)[0].startswith("tokens.npy: sha256")
