"""What the CTranslate2 backend changes in a trained model's summaries: exact matches and ROUGE.

Decodes the same held-out pairs with `pegasus-gsg evaluate` three times per decoding mode,
through transformers, CTranslate2 float32 and CTranslate2 int8, and prints how many summaries
are identical between each pair of paths and each path's ROUGE-1/2/Lsum (the same scoring code
for all). The model is any exported fine-tuned model; the demo's is the default:

    .venv/bin/pegasus-gsg demo --out demo-out
    .venv/bin/python benchmarks/bench_ct2_quality.py --model demo-out/finetune/model \
        --input demo-out/pairs_test.jsonl [--samples 200] [--modes greedy beam4]

Beam search is compared with the model's generation config plus `num_beams=4` and
`early_stopping=True` (a private copy of the model directory is made for it): CTranslate2
stops a beam search once `num_beams` hypotheses have finished, which is transformers'
`early_stopping=True`; with `early_stopping=False` transformers keeps searching and the two
may differ (the server logs a warning for such models, docs/serving.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PATHS = {
    "transformers": ["--backend", "transformers"],
    "ct2-float32": ["--backend", "ctranslate2", "--compute-type", "float32"],
    "ct2-int8": ["--backend", "ctranslate2", "--compute-type", "int8"],
}
METRICS = ("rouge1", "rouge2", "rougeLsum")


def beam_copy(model: Path, work: Path) -> Path:
    """A copy of `model` whose generation config asks for 4 beams with early stopping."""
    out = work / "model_beam4"
    shutil.copytree(model, out, ignore=shutil.ignore_patterns(".ct2"))
    config_path = out / "generation_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config.update(num_beams=4, early_stopping=True)
    config_path.write_text(json.dumps(config, indent=2))
    return out


def decode(
    model: Path, pairs: Path, samples: int, path: str, out: Path
) -> tuple[list[str], dict[str, float]]:
    """Run `pegasus-gsg evaluate` on one path; its predictions and ROUGE scores."""
    cmd = [sys.executable, "-m", "pegasus_gsg", "evaluate", "--model", str(model),
           "--input", str(pairs), "--max-samples", str(samples), "--out", str(out),
           *PATHS[path]]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    predictions = [json.loads(line)["prediction"] for line in out.read_text().splitlines()]
    scores = json.loads(out.with_name(out.name + ".rouge.json").read_text())["scores"]
    return predictions, {m: scores[m]["mid"] for m in METRICS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="an exported fine-tuned model")
    p.add_argument("--input", type=Path, required=True, help="JSON Lines pairs to summarize")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--modes", nargs="+", choices=("greedy", "beam4"), default=["greedy", "beam4"])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results: dict[str, dict[str, tuple[list[str], dict[str, float]]]] = {}
        for mode in args.modes:
            model = args.model if mode == "greedy" else beam_copy(args.model, work)
            results[mode] = {
                path: decode(model, args.input, args.samples, path, work / f"{mode}_{path}.jsonl")
                for path in PATHS
            }
    for mode, by_path in results.items():
        n = len(next(iter(by_path.values()))[0])
        print(f"\n{mode}, {n} pairs of {args.input}")
        names = list(by_path)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                same = sum(x == y for x, y in zip(by_path[a][0], by_path[b][0], strict=True))
                print(f"  identical {a} vs {b}: {same}/{n} ({100 * same / n:.1f}%)")
        for path, (_, scores) in by_path.items():
            print(f"  {path:13s} " + "  ".join(f"{m} {scores[m]:.2f}" for m in METRICS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
