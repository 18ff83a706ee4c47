"""Helpers for the training tests: small real stores, and an instrumented training launcher.

As a script it is what the 2-process test launches with `accelerate launch`:

    accelerate launch --multi_gpu --num_processes 2 tests/_helpers_train.py AUDIT_DIR \\
        finetune --config ... --out BASE ...

Each rank trains with `out_dir=BASE/rank<N>`, so whatever a rank writes lands in its own tree
and the test can see exactly which process wrote what. It also records the dataset indices the
rank loaded and a digest of its final parameters in `AUDIT_DIR/rank<N>.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PEGASUS_GSG_DATA", REPO.parent / "shared" / "data"))


def aeslc_pairs(limit: int, split: str = "train", skip: int = 0) -> list[dict]:
    """First `limit` AESLC pairs of `split` with distinct email bodies (after `skip` of them)."""
    seen: set[str] = set()
    out: list[dict] = []
    with (SHARED_DATA / "aeslc" / "data.jsonl").open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["split"] != split or record["document"] in seen:
                continue
            seen.add(record["document"])
            if len(seen) > skip:
                out.append({"document": record["document"], "summary": record["summary"]})
            if len(out) >= limit:
                break
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def prepare_store(kind: str, input_file: Path, tokenizer_dir: Path, out: Path) -> Path:
    """A real store, written by pegasus_gsg.prepare (what `pegasus-gsg prepare KIND` runs)."""
    from pegasus_gsg.prepare import PrepareConfig, prepare

    prepare([str(input_file)], tokenizer_dir, out, PrepareConfig(kind=kind))
    return out


def param_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _launch(audit_dir: Path, entry: str, argv: list[str]) -> None:
    import importlib

    from pegasus_gsg import data

    rank = int(os.environ.get("RANK", "0"))
    seen: list[int] = []
    for cls in (data.FinetuneDataset, data.PretrainingDataset):
        original = cls.__getitem__

        def recording(self, i, _original=original):
            seen.append(int(i))
            return _original(self, i)

        cls.__getitem__ = recording
    out_index = argv.index("--out")
    argv[out_index + 1] = str(Path(argv[out_index + 1]) / f"rank{rank}")
    module = importlib.import_module(f"pegasus_gsg.{entry}")
    result = module.main(argv)
    audit_dir.mkdir(parents=True, exist_ok=True)
    (audit_dir / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "indices": seen,
                "digest": param_digest(result.model),
                "steps": result.state.step,
            }
        )
    )


if __name__ == "__main__":
    _launch(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
