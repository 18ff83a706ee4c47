"""CTranslate2 conversion and decoding of an exported PEGASUS model (the fast inference path).

Conversion. `ctranslate2.converters.TransformersConverter` has a `PegasusLoader`, but it reads
`config.normalize_before` and `config.normalize_embedding`, which transformers 5's
`PegasusConfig` does not define. PEGASUS is, exactly: pre-norm (a layer norm before each
self-attention, cross-attention and feed-forward block, residual added after), with a final
layer norm on top of the encoder and of the decoder stacks (`model.encoder.layer_norm`,
`model.decoder.layer_norm`), sinusoidal positions, embeddings scaled by sqrt(d_model) when
`scale_embedding`, and **no** layer norm on the embeddings. `_PegasusConverter` states that
(`normalize_before=True`, `normalize_embedding=False`) on the loaded model's config before the
loader reads it; after a float32 conversion `convert` re-checks it by scoring a sentence with
both engines (token log-probs must agree to 1e-3; tests/test_ct2.py pins 1e-4 on real text).

Length limits. transformers forces `</s>` as the last token at `max_new_tokens` when the
generation config has `forced_eos_token_id` (our exported models do); CTranslate2 has no such
rule. `Ct2Decoder` reproduces it: it decodes at most `max_new_tokens - 1` tokens and appends
`</s>` to a hypothesis that did not end, which is exactly what the forced token does to greedy
search (the first max_new_tokens - 1 steps are unconstrained in both).

int8 on CPU. CTranslate2 multiplies int8 on x86 as u8 x s8 through MKL (GenuineIntel) or
oneDNN (other vendors); without VNNI those products saturate at int16 and int8 log-probs drift
far from float32 (the test model: 1.97 nats mean against 0.46 with VNNI). `int8_gemm_risk`
names that case from the CPU's flags and the ISA caps in the environment, and
`refuse_saturating_int8` refuses it before conversion (`resolve_compute_type`) and at load
(`Ct2Decoder`). A decoder that loads int8 then scores fixed texts with int8 and with the same
weights in float32 (`int8_gemm_error`) and logs a warning above `INT8_TOLERANCE` (1%).
`PEGASUS_GSG_INT8_CHECK=0` skips both.

Cache. `cached_conversion` converts once per (model checksum, compute type, ctranslate2
version) into `<cache>/<compute_type>-<key>/` where `<cache>` defaults to `MODEL/.ct2`. The
conversion is written into a temporary sibling directory and renamed into place only after the
manifest (`pegasus_gsg_ct2.json`) is written, so a finished-looking directory is always whole; a
directory without its manifest (a crash of an older layout, a copy cut short) is removed and
redone. Without free space for the conversion (`conversion_bytes`: the weights at the stored
type, checked first) or on a write that meets a full disk, it raises DiskFullError naming the
target directory and removes its temporary one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

from pegasus_gsg.evaluation.generation import GenerationOptions
from pegasus_gsg.files import (
    check_free_space,
    remove_stale_temps,
    replace_dir,
    temp_path,
    writing_to,
)

logger = logging.getLogger(__name__)

MANIFEST = "pegasus_gsg_ct2.json"
"""Written last into a converted directory: what it was converted from and how."""

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_COPIED = (*TOKENIZER_FILES, "generation_config.json")
_DEFAULT_COMPUTE_TYPE = {"cpu": "float32", "cuda": "bfloat16"}


def _ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError as err:
        raise ValueError(
            "the ctranslate2 backend needs the ctranslate2 package: pip install 'pegasus-gsg[ct2]'"
        ) from err
    return ctranslate2


def default_device() -> str:
    """cuda when CTranslate2 sees a GPU, else cpu."""
    return "cuda" if _ctranslate2().get_cuda_device_count() > 0 else "cpu"


def resolve_compute_type(compute_type: str | None, device: str, check_int8: bool = True) -> str:
    """`compute_type`, or the device default (float32 on CPU, bfloat16 on GPU), checked.

    `check_int8=False` skips `refuse_saturating_int8` (a conversion for another machine, or a
    caller that checks it itself).

    Raises:
        ValueError: the device is unknown, or it does not support the compute type (the message
            lists the ones it supports), or int8 on a CPU where it saturates
            (`refuse_saturating_int8`).
    """
    if device not in _DEFAULT_COMPUTE_TYPE:
        raise ValueError(f"device must be 'cpu' or 'cuda' for ctranslate2, got {device!r}")
    ct2 = _ctranslate2()
    if device == "cuda" and ct2.get_cuda_device_count() == 0:
        raise ValueError("device 'cuda' asked for, but ctranslate2 sees no CUDA device")
    supported = sorted(ct2.get_supported_compute_types(device))
    chosen = compute_type or _DEFAULT_COMPUTE_TYPE[device]
    if chosen == "bfloat16" and compute_type is None and chosen not in supported:
        chosen = "float16" if "float16" in supported else "float32"
    if chosen not in supported:
        raise ValueError(
            f"compute type {chosen!r} is not supported on {device} by this ctranslate2 build; "
            f"supported: {', '.join(supported)}"
        )
    if check_int8:
        refuse_saturating_int8(chosen, device)
    return chosen


def is_ct2_dir(path: str | Path) -> bool:
    """True for a converted directory (CTranslate2's model.bin plus our manifest)."""
    return (Path(path) / "model.bin").is_file() and (Path(path) / MANIFEST).is_file()


def check_convertible(model_dir: str | Path) -> None:
    """Raise naming what is missing when `model_dir` is no exported seq2seq model.

    Raises:
        FileNotFoundError: the directory, its config.json, its weights or its tokenizer is missing.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no config.json: not a save_pretrained model (nor a converted "
            f"ctranslate2 directory: no model.bin + {MANIFEST})"
        )
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"{model_dir} has no weights: expected one of {', '.join(WEIGHT_FILES)}"
        )
    if not (model_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no tokenizer.json: ctranslate2 needs the tokenizer to build its "
            "vocabulary (save the tokenizer with the model)"
        )


def model_checksum(model_dir: str | Path) -> str:
    """sha256 over the files that define the model's outputs (config, weights, tokenizer)."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    for name in sorted(("config.json", "generation_config.json", *WEIGHT_FILES, *TOKENIZER_FILES)):
        path = model_dir / name
        if not path.is_file():
            continue
        digest.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _converter_class() -> Any:
    ct2 = _ctranslate2()

    base: Any = ct2.converters.TransformersConverter

    class _PegasusConverter(base):  # type: ignore[misc]
        """TransformersConverter that states PEGASUS's layer-norm layout (see module docstring)."""

        def load_model(self, model_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
            model = model_class.from_pretrained(model_name_or_path, **kwargs)
            if model.config.model_type == "pegasus":
                model.config.normalize_before = True  # pre-norm blocks + final stack norms
                model.config.normalize_embedding = False  # no layernorm_embedding in PEGASUS
            return model

    return _PegasusConverter


def convert(
    model_dir: str | Path, out_dir: str | Path, compute_type: str = "float32", verify: bool = True
) -> Path:
    """Convert an exported model into a CTranslate2 directory at `out_dir` (atomically).

    The weights are stored as `compute_type` (int8 stores int8 weights: a quarter of the size).
    Tokenizer and generation config files are copied alongside, then the manifest is written,
    then the directory is renamed into place.

    Raises:
        FileNotFoundError: see `check_convertible`.
        ValueError: CTranslate2 cannot convert this model (message from the converter), an
            existing non-empty `out_dir`, or a float32 conversion whose scores disagree.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_convertible(model_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"output directory {out_dir} exists and is not empty")
    ct2 = _ctranslate2()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir.parent)  # conversions of this host's killed processes
    needed = conversion_bytes(model_dir, compute_type)
    check_free_space(out_dir, needed)
    # Named for this process: two processes may convert the same model into one cache at once.
    tmp = temp_path(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process that had this pid
    tmp.mkdir()
    try:
        copy = [name for name in _COPIED if (model_dir / name).is_file()]
        converter = _converter_class()(str(model_dir), copy_files=copy)
        try:
            with writing_to(out_dir, needed):
                converter.convert(str(tmp), quantization=compute_type, force=True)
        except (ValueError, KeyError, AttributeError, NotImplementedError) as err:
            raise ValueError(f"ctranslate2 cannot convert {model_dir}: {err}") from err
        hf_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        generation = {}
        if (model_dir / "generation_config.json").is_file():
            generation = json.loads(
                (model_dir / "generation_config.json").read_text(encoding="utf-8")
            )
        forced = generation.get("forced_eos_token_id", hf_config.get("forced_eos_token_id"))
        manifest = {
            "source": str(model_dir.resolve()),
            "source_sha256": model_checksum(model_dir),
            "compute_type": compute_type,
            "ctranslate2_version": ct2.__version__,
            "model_name": hf_config.get("_name_or_path") or model_dir.name,
            "model_type": hf_config.get("model_type"),
            "max_position_embeddings": hf_config.get("max_position_embeddings"),
            "vocab_size": hf_config.get("vocab_size"),
            "decoder_start_token_id": hf_config.get("decoder_start_token_id"),
            "forced_eos_token_id": forced,
        }
        with writing_to(out_dir, needed):
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if verify and compute_type == "float32":
            diff = _max_score_difference(model_dir, tmp)
            if diff > 1e-3:
                raise ValueError(
                    f"converted {model_dir} scores differ from transformers' by {diff:.2e} "
                    "(> 1e-3): the conversion does not reproduce the model"
                )
            manifest["verified_max_logprob_diff"] = diff
            with writing_to(out_dir, needed):
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if out_dir.exists():
            if any(out_dir.iterdir()):
                raise ValueError(
                    f"output directory {out_dir} was filled by another writer during this "
                    "conversion"
                )
            out_dir.rmdir()
        with writing_to(out_dir, needed):
            replace_dir(tmp, out_dir)  # flushes every file first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s to %s (%s)", model_dir, out_dir, compute_type)
    return out_dir


_BYTES_PER_FLOAT32 = {"float32": 1.0, "int16": 0.5, "float16": 0.5, "bfloat16": 0.5}


def conversion_bytes(model_dir: Path, compute_type: str) -> int:
    """About what converting `model_dir` to `compute_type` writes: its float32 weights scaled
    to the stored type (int8*: a quarter), plus the copied tokenizer and config files."""
    weights = next((model_dir / n for n in WEIGHT_FILES if (model_dir / n).is_file()), None)
    weight_bytes = weights.stat().st_size if weights is not None else 0
    scale = 0.25 if compute_type.startswith("int8") else _BYTES_PER_FLOAT32.get(compute_type, 1)
    copied = sum((model_dir / n).stat().st_size for n in _COPIED if (model_dir / n).is_file())
    return int(weight_bytes * scale) + copied


def cached_conversion(
    model_dir: str | Path, compute_type: str, cache_dir: str | Path | None = None
) -> Path:
    """The converted directory for (model, compute type), converting it first if needed."""
    model_dir = Path(model_dir)
    check_convertible(model_dir)
    key = hashlib.sha256(
        f"{model_checksum(model_dir)}|{compute_type}|{_ctranslate2().__version__}".encode()
    ).hexdigest()[:16]
    cache = Path(cache_dir) if cache_dir is not None else model_dir / ".ct2"
    target = cache / f"{compute_type}-{key}"
    if is_ct2_dir(target):
        logger.info("using cached ctranslate2 conversion %s", target)
        return target
    if target.exists():
        logger.warning("ignoring incomplete conversion %s (no %s): redoing it", target, MANIFEST)
        shutil.rmtree(target)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot write the ctranslate2 cache {cache} ({err}); name a writable cache "
            "directory or convert ahead with `pegasus-gsg export-ct2`"
        ) from err
    try:
        return convert(model_dir, target, compute_type)
    except ValueError:
        if is_ct2_dir(target):  # another process finished the same conversion first
            return target
        raise


def _max_score_difference(model_dir: Path, ct2_dir: Path) -> float:
    """Largest |log p| difference between transformers and CTranslate2 on a fixed sentence."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    source = tokenizer("The quick brown fox jumps over the lazy dog. It was not amused.")[
        "input_ids"
    ]
    target = tokenizer("The fox jumps.")["input_ids"]
    with torch.inference_mode():
        ref = token_logprobs(model, [source], [target])[0]
    decoder = Ct2Decoder(ct2_dir, device="cpu", compute_type="float32")
    got = decoder.score([source], [target])[0]
    return max(abs(a - b) for a, b in zip(ref, got, strict=True))


def token_logprobs(
    model: Any, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
) -> list[list[float]]:
    """transformers' log p(target[t] | source, target[:t]) per target token (teacher forcing)."""
    import torch

    out = []
    start = model.config.decoder_start_token_id
    for source, target in zip(sources, targets, strict=True):
        decoder_input = torch.tensor([[start, *target[:-1]]])
        logits = model(
            input_ids=torch.tensor([list(source)]), decoder_input_ids=decoder_input
        ).logits
        logp = torch.log_softmax(logits[0].float(), dim=-1)
        out.append(logp[torch.arange(len(target)), torch.tensor(list(target))].tolist())
    return out


INT8_TOLERANCE = 0.01
"""Relative int8-vs-float32 log-prob difference above which loading int8 logs a warning."""

INT8_CHECK_ENV = "PEGASUS_GSG_INT8_CHECK"
"""Set to 0 to skip the int8 checks at load (the CPU rule and the scored texts)."""

_CHECK_TEXTS = (
    "The central bank raised interest rates by a quarter point on Tuesday, citing inflation.",
    "Heavy rain flooded roads across the region overnight, and schools stayed closed.",
    "The company said quarterly profit rose 12 percent as sales of its new phone beat forecasts.",
    "国家统计局周三公布的数据显示，上月全国居民消费价格同比上涨百分之二。",
)

# oneDNN (ONEDNN_MAX_CPU_ISA) and MKL (MKL_ENABLE_INSTRUCTIONS) caps that still allow VNNI.
_ONEDNN_AVX512_VNNI_CAPS: tuple[str, ...] = (
    "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
    "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT",
)  # fmt: skip
_ONEDNN_AVX2_VNNI_CAPS: tuple[str, ...] = ("AVX2_VNNI", "AVX2_VNNI_2", *_ONEDNN_AVX512_VNNI_CAPS)
_MKL_AVX512_VNNI_CAPS: tuple[str, ...] = ("AVX512_E1", "AVX512_E2", "AVX512_E3", "AVX512_E4")
_MKL_AVX2_VNNI_CAPS: tuple[str, ...] = ("AVX2_E1", *_MKL_AVX512_VNNI_CAPS)


def _cpu_info() -> tuple[str, set[str]] | None:
    """(vendor id, feature flags) of the first CPU in /proc/cpuinfo; None where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in text.split("\n\n")[0].splitlines())
    )
    if "flags" not in fields:
        return None
    return fields.get("vendor_id", ""), set(fields["flags"].split())


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    return None if not value else value in ("1", "true", "yes", "on")


def int8_gemm_risk(cpu: tuple[str, set[str]] | None = None) -> str | None:
    """Why CTranslate2's int8 matrix product saturates on this CPU, or None when it does not.

    CTranslate2 multiplies int8 on x86 as u8 x s8 (activations shifted by +128) through MKL
    (default on GenuineIntel; `CT2_USE_MKL`) or oneDNN (elsewhere). Without VNNI both build each
    4-term sum from `vpmaddubsw` pairs that saturate at int16 (255 * 127 * 2 > 32767), which
    oneDNN documents ("Nuances of int8 computations"); with VNNI (`vpdpbusd`) the sums are
    exact. Measured (docs/serving.md): oneDNN capped below VNNI moves the test model's log-probs
    4x more than with VNNI; MKL on an AMD CPU is exact at any cap but 2.4-4x slower than oneDNN
    (slower than float32), so no switch is set here. The rule reads the CPU's flags and the caps
    a user may set (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS); `cpu` overrides
    /proc/cpuinfo. Non-x86 CPUs and unreadable flags give None (the scored check still runs).
    """
    cpu = cpu if cpu is not None else _cpu_info()
    if cpu is None:
        return None
    vendor, flags = cpu
    if not {"avx2", "sse4_1"} & flags:  # not x86 (or too old for CTranslate2's int8 at all)
        return None
    use_mkl = _env_flag("CT2_USE_MKL")
    if use_mkl is None:
        use_mkl = vendor == "GenuineIntel"
    if use_mkl and vendor != "GenuineIntel":
        return None  # MKL's int8 path on AMD: exact (measured), if slow
    if use_mkl:
        backend, cap_env = "MKL", "MKL_ENABLE_INSTRUCTIONS"
        avx512_caps, avx2_caps = _MKL_AVX512_VNNI_CAPS, _MKL_AVX2_VNNI_CAPS
    else:
        backend, cap_env = "oneDNN", "ONEDNN_MAX_CPU_ISA"
        avx512_caps, avx2_caps = _ONEDNN_AVX512_VNNI_CAPS, _ONEDNN_AVX2_VNNI_CAPS
    cap = os.environ.get(cap_env, "").strip().upper()
    if "avx512_vnni" in flags and (not cap or cap in avx512_caps):
        return None
    if "avx_vnni" in flags and (not cap or cap in avx2_caps):
        return None
    where = f" ({cap_env}={cap})" if cap else ""
    return f"this {vendor or 'x86'} CPU gives {backend}{where} no VNNI"


def _int8_check_enabled() -> bool:
    return os.environ.get(INT8_CHECK_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _check_sources(decoder: Ct2Decoder) -> list[list[int]]:
    """`_CHECK_TEXTS` in the model's tokenizer, or fixed id runs when it has none."""
    tokenizer_file = decoder.path / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        sources = [tokenizer.encode(text).ids for text in _CHECK_TEXTS]
    else:
        size = len(decoder.vocab)
        sources = [[(7 + 31 * i + 97 * j) % size for i in range(24)] for j in range(4)]
    return [[*[i for i in ids if i != decoder.eos_id][:64], decoder.eos_id] for ids in sources]


def refuse_saturating_int8(compute_type: str, device: str) -> None:
    """Raise when `compute_type` is int8* on a CPU where `int8_gemm_risk` names a reason.

    Called before conversion by `resolve_compute_type` and again when a decoder loads (not by
    `pegasus-gsg export-ct2`: a conversion is CPU-independent); the `PEGASUS_GSG_INT8_CHECK=0`
    environment variable turns it off.

    Raises:
        ValueError: one line: the reason, the float32 alternative and the opt-out.
    """
    if device != "cpu" or not compute_type.startswith("int8") or not _int8_check_enabled():
        return
    risk = int8_gemm_risk()
    if risk is not None:
        raise ValueError(
            f"{compute_type} is inaccurate here: {risk}, so int8 matrix products saturate "
            f"(docs/serving.md); use --compute-type float32, or set {INT8_CHECK_ENV}=0 to "
            f"load {compute_type} anyway"
        )


def int8_gemm_error(decoder: Ct2Decoder) -> float:
    """Relative difference between `decoder`'s int8 log-probs and float32's on fixed texts.

    The reference is the same converted directory loaded as float32 (int8 weights widened), so
    only the int8 matrix product is measured: mean |int8 log p - float32 log p| over
    mean |float32 log p|, teacher-forced on each fixed text's float32 greedy summary.
    """
    reference = Ct2Decoder(decoder.path, device="cpu", compute_type="float32", threads=1)
    sources = _check_sources(decoder)
    targets = reference.generate(sources, GenerationOptions(max_new_tokens=16))
    exact = [lp for row in reference.score(sources, targets) for lp in row]
    approx = [lp for row in decoder.score(sources, targets) for lp in row]
    scale = sum(abs(lp) for lp in exact)
    return sum(abs(a - b) for a, b in zip(exact, approx, strict=True)) / max(scale, 1e-6)


class Ct2Decoder:
    """A converted model loaded in a `ctranslate2.Translator`, working on token ids.

    Not thread-safe for `generate`: the server's one batching worker owns it.
    """

    def __init__(
        self,
        ct2_dir: str | Path,
        *,
        device: str = "cpu",
        compute_type: str | None = None,
        threads: int = 0,
        inter_threads: int = 1,
        check_int8: bool = True,
    ) -> None:
        ct2 = _ctranslate2()
        if inter_threads < 1:
            raise ValueError(f"inter_threads must be >= 1, got {inter_threads}")
        self.inter_threads = inter_threads
        self.path = Path(ct2_dir)
        if not is_ct2_dir(self.path):
            raise FileNotFoundError(
                f"{self.path} is no converted model (needs model.bin + {MANIFEST})"
            )
        self.manifest: dict[str, Any] = json.loads((self.path / MANIFEST).read_text("utf-8"))
        self.device = device
        self.compute_type = resolve_compute_type(compute_type, device, check_int8)
        self._translator_kwargs = {
            "device": device,
            "compute_type": self.compute_type,
            "inter_threads": inter_threads,
            "intra_threads": threads,
        }
        self.translator = ct2.Translator(str(self.path), **self._translator_kwargs)
        vocab_file = self.path / "shared_vocabulary.json"
        if not vocab_file.is_file():
            vocab_file = self.path / "target_vocabulary.json"
        self.vocab: list[str] = json.loads(vocab_file.read_text("utf-8"))
        self.token_id = {token: i for i, token in enumerate(self.vocab)}
        config = json.loads((self.path / "config.json").read_text("utf-8"))
        self.eos_id = self.token_id[config["eos_token"]]
        self.start_token = config.get("decoder_start_token") or config["bos_token"]
        forced = self.manifest.get("forced_eos_token_id")
        self.forced_eos = forced is not None
        self.int8_error: float | None = None
        """The int8 self-check's relative error (see `int8_gemm_error`); None when not run."""
        int8_on_cpu = device == "cpu" and self.compute_type.startswith("int8")
        if int8_on_cpu and check_int8 and _int8_check_enabled():
            self._check_int8()

    def _check_int8(self) -> None:
        """Warn where int8 moves log-probs by more than `INT8_TOLERANCE` (the CPU rule has
        already refused a saturating CPU in `resolve_compute_type`, before the load)."""
        self.int8_error = int8_gemm_error(self)
        if self.int8_error > INT8_TOLERANCE:
            logger.warning(
                "int8 changes %s's log-probs by %.1f%% against float32 on fixed texts (more "
                "than %.0f%%): compare summaries with --compute-type float32 before serving it",
                self.path, 100 * self.int8_error, 100 * INT8_TOLERANCE,
            )  # fmt: skip
        else:
            logger.info("int8 self-check of %s: %.2f%% from float32", self.path,
                        100 * self.int8_error)  # fmt: skip

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def _ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.token_id[t] for t in tokens]

    def score(
        self, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """log p of each target token (the target ends with `</s>`), teacher-forced."""
        trimmed = [list(t[:-1]) if t and t[-1] == self.eos_id else list(t) for t in targets]
        results = self.translator.score_batch(
            [self.tokens(s) for s in sources], [self.tokens(t) for t in trimmed],
            max_input_length=0,
        )  # fmt: skip
        # CTranslate2 scores `</s>` after the target too: keep it only when the target has it.
        return [list(r.log_probs)[: len(t)] for r, t in zip(results, targets, strict=True)]

    def _length_kwargs(self, options: GenerationOptions) -> tuple[dict[str, Any], bool]:
        """max/min decoding length, and whether `</s>` is forced at the last position."""
        forced = self.forced_eos  # transformers forces </s> even over min_new_tokens
        max_len = options.max_new_tokens - 1 if forced else options.max_new_tokens
        return {
            "max_decoding_length": max_len,
            "min_decoding_length": min(options.min_new_tokens, max_len),
            "no_repeat_ngram_size": options.no_repeat_ngram_size,
            "max_input_length": 0,
            "return_end_token": True,
        }, forced

    def _translator_for(self, options: GenerationOptions) -> Any:
        """The shared translator, or for a seeded sample a fresh one seeded with it.

        CTranslate2's sampler is a thread-local generator seeded once, when a worker thread
        first samples; `set_random_seed` later has no effect on it. A new translator has new
        worker threads, so its first sample starts from the seed (loading from the page cache
        costs about as much as a few decoding steps on the models we serve).
        """
        if not (options.do_sample and options.seed is not None):
            return self.translator
        ct2 = _ctranslate2()
        ct2.set_random_seed(options.seed % 2**32)
        return ct2.Translator(str(self.path), **self._translator_kwargs)

    def _sampling_kwargs(self, options: GenerationOptions) -> dict[str, Any]:
        if not options.do_sample:
            return {"sampling_topk": 1}
        return {
            "sampling_topk": 0,  # the whole distribution, cut by top_p
            "sampling_topp": options.top_p,
            "sampling_temperature": options.temperature,
        }

    def sub_batch_size(self, n: int) -> int:
        """Sources per sub-batch: one batch split evenly over the `inter_threads` replicas,
        which decode their parts in parallel (0 = the whole batch on one replica)."""
        return 0 if self.inter_threads == 1 else -(-n // self.inter_threads)

    def _finish(self, ids: list[int], forced: bool) -> list[int]:
        if forced and (not ids or ids[-1] != self.eos_id):
            ids = [*ids, self.eos_id]
        return ids

    def generate(
        self,
        sources: Sequence[Sequence[int]],
        options: GenerationOptions,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[list[int]]:
        """Generated ids per source (with `</s>` when generated), one batched decode.

        `should_stop()` is polled after each greedy/sampling step; True ends the batch early
        (every request of it was cancelled). Beam search cannot be stopped part way.
        """
        kwargs, forced = self._length_kwargs(options)
        if kwargs["max_decoding_length"] == 0:  # max_new_tokens 1 with forced </s>
            return [[self.eos_id] for _ in sources]
        callback = None
        if should_stop is not None and options.num_beams == 1:

            def callback(step: Any) -> bool:
                return should_stop()

        rerank = forced and options.num_beams > 1 and options.length_penalty != 0
        results = self._translator_for(options).translate_batch(
            [self.tokens(s) for s in sources],
            max_batch_size=self.sub_batch_size(len(sources)),
            beam_size=options.num_beams,
            num_hypotheses=options.num_beams if rerank else 1,
            length_penalty=options.length_penalty,
            callback=callback,
            **kwargs,
            **self._sampling_kwargs(options),
        )
        candidates = [[self._ids(h) for h in r.hypotheses] for r in results]
        if rerank:
            return self._rerank_forced(sources, candidates, options)
        return [self._finish(hyps[0], forced) for hyps in candidates]

    def _rerank_forced(
        self,
        sources: Sequence[Sequence[int]],
        candidates: list[list[list[int]]],
        options: GenerationOptions,
    ) -> list[list[int]]:
        """Pick each beam search's result the way transformers scores a forced `</s>`.

        transformers gives the forced `</s>` log-prob 0 and divides by the full length
        max_new_tokens**length_penalty; CTranslate2 ranked the unfinished hypothesis by its
        max_new_tokens - 1 tokens. Rescoring the returned hypotheses exactly (teacher-forced
        log-probs) with transformers' rule restores its choice.
        """
        flat_sources, flat_targets = [], []
        for source, hyps in zip(sources, candidates, strict=True):
            for hyp in hyps:
                flat_sources.append(source)
                flat_targets.append(hyp)
        logps = iter(self.score(flat_sources, flat_targets))
        chosen = []
        for hyps in candidates:
            best, best_score = hyps[0], -math.inf
            for hyp in hyps:
                total = sum(next(logps))
                length = len(hyp) if hyp and hyp[-1] == self.eos_id else len(hyp) + 1
                normalized = total / length**options.length_penalty
                if normalized > best_score:
                    best, best_score = hyp, normalized
            chosen.append(self._finish(best, True))
        return chosen

    def generate_tokens(
        self, source: Sequence[int], options: GenerationOptions
    ) -> Generator[int, None, None]:
        """Ids of one greedy/sampled summary as they are decoded (closing the iterator stops it)."""
        if options.num_beams != 1:
            raise ValueError(f"streaming needs num_beams == 1, got {options.num_beams}")
        kwargs, forced = self._length_kwargs(options)
        if kwargs["max_decoding_length"] == 0:
            yield self.eos_id
            return
        kwargs.pop("return_end_token")
        last = None
        for step in self._translator_for(options).generate_tokens(
            self.tokens(source), **kwargs, **self._sampling_kwargs(options)
        ):
            last = step.token_id
            yield last
        if forced and last != self.eos_id:
            yield self.eos_id
