"""ROUGE scoring and the `pegasus-gsg evaluate` command (pegasus_gsg/evaluate.py)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer

from pegasus_gsg.evaluation.rouge import ROUGE_TYPES, generate, rouge_report, rouge_scores

PREDICTIONS = [
    "The cats were running across the gardens.\nThey stopped at the gate.",
    "Meeting moved to Tuesday at 10 am",
    "quarterly results beat the forecast",
    "",
]
REFERENCES = [
    "A cat runs across the garden.\nIt stops at the gate.",
    "Meeting rescheduled: Tuesday 10am",
    "Q3 results: forecast beaten",
    "Lunch on Friday?",
]


def test_scores_equal_rouge_score_with_stemming_and_newline_sentences():
    ours = rouge_scores(PREDICTIONS, REFERENCES)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    for i, (p, r) in enumerate(zip(PREDICTIONS, REFERENCES, strict=True)):
        expected = scorer.score(r, p)
        for t in ROUGE_TYPES:
            assert ours[t][i] == expected[t].fmeasure
    # Stemming matters here: "cats"/"cat", "running"/"runs", "gardens"/"garden" match.
    unstemmed = rouge_scorer.RougeScorer(["rouge1"]).score(REFERENCES[0], PREDICTIONS[0])
    assert ours["rouge1"][0] > unstemmed["rouge1"].fmeasure
    report = rouge_report(PREDICTIONS, REFERENCES)
    for t in ROUGE_TYPES:
        assert report[t].mid == pytest.approx(100 * ours[t].mean())


def test_rouge1_by_hand():
    # 5 of 6 unigrams shared both ways ("the" twice, cat, on, mat): P = R = F = 5/6.
    scores = rouge_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    assert scores["rouge1"][0] == pytest.approx(5 / 6)
    assert scores["rouge2"][0] == pytest.approx(3 / 5)  # the cat, on the, the mat


def test_lsum_uses_the_newline_sentences():
    prediction, reference = "b c d\na x y", "a x y\nb c d"
    split = rouge_scores([prediction], [reference])["rougeLsum"][0]
    joined = rouge_scores([prediction.replace("\n", " ")], [reference.replace("\n", " ")])
    assert split == pytest.approx(1.0)  # each reference sentence is found whole
    assert joined["rougeLsum"][0] < 1.0  # one long sentence: the LCS loses one half


def test_chinese_is_scored_on_characters():
    scores = rouge_scores(["我爱北京"], ["我爱上海"])
    assert scores["rouge1"][0] == pytest.approx(0.5)
    assert scores["rouge2"][0] == pytest.approx(1 / 3)  # 我爱 of 我爱/爱北/北京
    # rouge-score's own tokenizer keeps only [a-z0-9]: Chinese would score 0.
    plain = rouge_scorer.RougeScorer(["rouge1"]).score("我爱上海", "我爱北京")
    assert plain["rouge1"].fmeasure == 0.0
    assert rouge_scores(["我爱北京"], ["我爱上海"], lang="en")["rouge1"][0] == 0.0


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    refs = [" ".join(rng.choice(words, 6)) for _ in range(40)]
    preds = [" ".join(rng.choice(words, 6)) for _ in range(40)]
    a = rouge_report(preds, refs, bootstrap_samples=500, seed=3)
    b = rouge_report(preds, refs, bootstrap_samples=500, seed=3)
    assert a == b
    for s in a.values():
        assert 0 <= s.low < s.mid < s.high <= 100
    same = rouge_report(refs, refs, bootstrap_samples=200)
    assert all(s.low == s.mid == s.high == 100 for s in same.values())


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        rouge_scores(["a", "b"], ["a"])


@pytest.fixture(scope="module")
def tiny_model_dir(tiny_tokenizer_dir, tmp_path_factory):
    from pegasus_gsg.data.tokenization import load_tokenizer
    from pegasus_gsg.training.config import EvalConfig, ModelConfig
    from pegasus_gsg.training.model import build_model, export, generation_config

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            attention_heads=2,
            ffn_dim=64,
            max_position_embeddings=256,
        ),
        len(tokenizer),
    )
    return export(
        model,
        tokenizer,
        tmp_path_factory.mktemp("model"),
        generation_config(EvalConfig(max_new_tokens=8)),
    )


def test_generate_returns_input_order_whatever_the_batching(tiny_model_dir):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir)
    inputs = [[200 + i] * n + [1] for i, n in enumerate([3, 40, 7, 1, 25])]
    one_by_one = [generate(model, [x], model.generation_config)[0] for x in inputs]
    batched = generate(model, inputs, model.generation_config, max_tokens=64)
    assert batched == one_by_one


def test_evaluate_command_writes_predictions_and_prints_rouge(
    tiny_model_dir, shared_data, tmp_path, capsys
):
    from pegasus_gsg.cli import main

    out = tmp_path / "predictions.jsonl"
    code = main(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--input",
            str(shared_data / "aeslc" / "data.jsonl"),
            "--split",
            "test",
            "--dedupe",
            "--max-samples",
            "12",
            "--out",
            str(out),
            "--bootstrap",
            "100",
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    printed = capsys.readouterr().out
    report = rouge_report(
        [r["prediction"] for r in rows], [r["reference"] for r in rows], bootstrap_samples=100
    )
    for name, score in report.items():
        assert f"{name:<10} {score.mid:>7.2f}" in printed
    saved = json.loads((tmp_path / "predictions.jsonl.rouge.json").read_text())
    assert saved["n"] == 12
    assert saved["scores"]["rouge1"]["mid"] == pytest.approx(report["rouge1"].mid)


def test_evaluate_no_repeat_ngram_size_reaches_generation(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    from pegasus_gsg.cli import main

    data = tmp_path / "pairs.jsonl"
    docs = [f"the market {w} rose and the market fell again today {w}" for w in "abcdef"]
    data.write_text("".join(json.dumps({"document": d, "summary": "x"}) + "\n" for d in docs))

    def predictions(*extra: str) -> list[str]:
        out = tmp_path / f"p{len(extra)}.jsonl"
        argv = ["evaluate", "--model", str(tiny_model_dir), "--input", str(data), "--out",
                str(out), "--max-new-tokens", "24", "--bootstrap", "10", *extra]  # fmt: skip
        assert main(argv) == 0
        return [json.loads(line)["prediction"] for line in out.read_text().splitlines()]

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    inputs = tokenizer(docs)["input_ids"]
    plain = GenerationConfig(**{**model.generation_config.to_dict(), "max_new_tokens": 24})
    blocked = GenerationConfig(**{**plain.to_dict(), "no_repeat_ngram_size": 1})
    ids_plain = generate(model, inputs, plain)
    ids_blocked = generate(model, inputs, blocked)
    # The untrained model repeats tokens unless told not to: the option changes the output.
    assert any(len(set(ids)) < len(ids) for ids in ids_plain)
    assert all(len(set(ids)) == len(ids) for ids in ids_blocked)
    decode = partial(tokenizer.batch_decode, skip_special_tokens=True)
    assert predictions() == decode(ids_plain)
    assert predictions("--no-repeat-ngram-size", "1") == decode(ids_blocked)
    assert main(["evaluate", "--model", str(tiny_model_dir), "--input", str(data), "--out",
                 str(tmp_path / "x.jsonl"), "--no-repeat-ngram-size", "-1"]) == 1  # fmt: skip
    assert "--no-repeat-ngram-size must be >= 0, got -1" in capsys.readouterr().err


def test_evaluate_command_names_a_missing_field(tiny_model_dir, tmp_path, capsys):
    from pegasus_gsg.cli import main

    data = tmp_path / "bad.jsonl"
    data.write_text('{"document": "a b c", "summary": "a"}\n{"text": "x"}\n')
    code = main(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--input",
            str(data),
            "--out",
            str(tmp_path / "p.jsonl"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert f"{data}:2: no string field 'document'" in err
    assert not (tmp_path / "p.jsonl").exists()


def test_rouge_lsum_scores_sentences_not_one_long_line() -> None:
    from pegasus_gsg.evaluation.rouge import sentence_lines

    assert sentence_lines("The cat sat. The dog ran!\nA third line") == (
        "The cat sat.\nThe dog ran!\nA third line"
    )
    # Same two sentences in the other order: the summary-level LCS matches every sentence in
    # full, while one-line LCS can match only one of them.
    pred, ref = "the dog ran home. the cat sat down.", "the cat sat down. the dog ran home."
    lsum = rouge_scores([pred], [ref], lang="en")["rougeLsum"][0]
    plain_l = rouge_scorer.RougeScorer(["rougeL"]).score(ref, pred)["rougeL"].fmeasure
    assert lsum == pytest.approx(1.0)
    assert plain_l < 0.6


def test_evaluate_on_ctranslate2_equals_transformers_and_export_ct2_loads(
    tiny_model_dir, shared_data, tmp_path, capsys
):
    """The exported (forced-</s>) model: same predictions on both backends; export-ct2 output
    is a directory the CTranslate2 decoder loads directly."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    import shutil

    from pegasus_gsg.cli import main
    from pegasus_gsg.evaluation import ct2

    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    common = ["evaluate", "--model", str(model_dir), "--input",
              str(shared_data / "aeslc" / "data.jsonl"), "--split", "test", "--dedupe",
              "--max-samples", "30", "--bootstrap", "0"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "hf.jsonl")]) == 0
    assert main([*common, "--out", str(tmp_path / "ct2.jsonl"), "--backend", "ctranslate2"]) == 0
    hf = [
        json.loads(line)["prediction"] for line in (tmp_path / "hf.jsonl").read_text().splitlines()
    ]
    fast = [
        json.loads(line)["prediction"] for line in (tmp_path / "ct2.jsonl").read_text().splitlines()
    ]
    assert hf == fast and len(hf) == 30
    assert any(p.name.startswith("float32-") for p in (model_dir / ".ct2").iterdir())

    out = tmp_path / "int8"
    assert main(["export-ct2", str(model_dir), "--compute-type", "int8", "--out", str(out)]) == 0
    # check_int8=False: the manifest is under test here, not this CPU's int8 (test_ct2.py)
    decoder = ct2.Ct2Decoder(out, compute_type="int8", check_int8=False)
    assert decoder.manifest["source_sha256"] == ct2.model_checksum(model_dir)
    assert main(["export-ct2", str(model_dir), "--compute-type", "float16", "--out",
                 str(tmp_path / "x")]) == 1  # fmt: skip
    # The list depends on the CPU the build runs on (int16 is listed on some machines only).
    supported = sorted(ctranslate2.get_supported_compute_types("cpu"))
    assert {"float32", "int8"} <= set(supported) and "float16" not in supported
    assert f"supported: {', '.join(supported)}" in capsys.readouterr().err


def test_evaluate_refuses_int8_where_it_saturates_in_one_line(
    tiny_model_dir, shared_data, tmp_path, int8_saturating_env
):
    """oneDNN capped below VNNI (what an AVX2-only AMD CPU gets): `evaluate --compute-type int8`
    exits 1 with one line naming the cause and float32, before decoding anything."""
    pytest.importorskip("ctranslate2")
    import os
    import shutil
    import subprocess
    import sys

    forced = int8_saturating_env
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    out = tmp_path / "p.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "pegasus_gsg", "evaluate", "--model", str(model_dir), "--input",
         str(shared_data / "aeslc" / "data.jsonl"), "--max-samples", "5", "--bootstrap", "0",
         "--out", str(out), "--backend", "ctranslate2", "--compute-type", "int8"],
        env={**os.environ, **forced}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("pegasus-gsg evaluate: error: int8 is inaccurate here: ")
    assert "oneDNN (ONEDNN_MAX_CPU_ISA=AVX2) no VNNI" in proc.stderr
    assert "--compute-type float32" in proc.stderr and "PEGASUS_GSG_INT8_CHECK=0" in proc.stderr
    assert not out.exists() and not (model_dir / ".ct2").exists()  # refused before converting
