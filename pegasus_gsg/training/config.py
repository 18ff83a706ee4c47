"""Typed training configuration: dataclasses, a YAML file, and `key=value` overrides.

A run is described by one `TrainConfig`: model shape (`ModelConfig`), optimiser (`OptimConfig`),
learning-rate schedule (`ScheduleConfig`), data (`DataConfig`), evaluation (`EvalConfig`) and
checkpointing/logging (`CheckpointConfig`). Pretraining and fine-tuning use the same classes;
they differ only in values (data paths, label smoothing, whether validation generates).

Resolution order, later wins:
    dataclass defaults -> `extends:` file (if any) -> YAML file -> command-line overrides.
Overrides are dotted keys, `optim.lr=3e-4` or `--optim.lr 3e-4`; values are parsed as YAML and
coerced to the field's declared type (so `1e-4`, which YAML 1.1 reads as a string, is a float).
`model.preset=base` fills in the paper's BASE shape before explicit model fields apply.

Every field is checked in `__post_init__`; a bad value raises `ValueError` naming the field and
the allowed range. Run state (step, epoch, RNG) never lives here: it is in checkpoints. A run
saves its resolved config as `config.yaml` next to its outputs, and `fingerprint()` is what
`--resume` compares to refuse a checkpoint written by a different configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from pegasus_gsg.data.masking import ExampleOptions
from pegasus_gsg.files import write_text_atomic

ModelPreset = Literal["tiny", "base", "large"]
"""The named model shapes: the keys of MODEL_PRESETS (a test keeps the two equal)."""

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # CPU-sized: trains in seconds, used by tests, the demo and the benchmark.
    "tiny": dict(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        attention_heads=4,
        ffn_dim=128,
        max_position_embeddings=512,
    ),
    # GSG.md §5: PEGASUS-BASE (paper: 223M parameters; HF counts 272M for this shape with the
    # 96k vocabulary and shared embeddings).
    "base": dict(
        d_model=768,
        encoder_layers=12,
        decoder_layers=12,
        attention_heads=12,
        ffn_dim=3072,
        max_position_embeddings=1024,
    ),
    # GSG.md §5: PEGASUS-LARGE, 568M parameters with the 96k vocabulary.
    "large": dict(
        d_model=1024,
        encoder_layers=16,
        decoder_layers=16,
        attention_heads=16,
        ffn_dim=4096,
        max_position_embeddings=1024,
    ),
}


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config: {name}={value!r} is out of range; expected {allowed}")


def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """The allowed values of each `Literal`-typed field of `cls` (None included if optional),
    read from the annotation itself so that no hand-written list can drift from it."""
    out: dict[str, tuple[Any, ...]] = {}
    for name, annotation in typing.get_type_hints(cls).items():
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is Literal:
            out[name] = args
        elif any(typing.get_origin(a) is Literal for a in args):
            out[name] = tuple(
                v for a in args for v in (typing.get_args(a) if a is not type(None) else (None,))
            )
    return out


def _check_choices(obj: object, section: str) -> None:
    """Every `Literal` field of the config dataclass `obj` holds one of its declared values."""
    for name, allowed in _choices(type(obj)).items():
        value = getattr(obj, name)
        _check(value in allowed, f"{section}{name}", value, f"one of {allowed}")


@dataclass
class ModelConfig:
    """Shape of a new `PegasusForConditionalGeneration`, or where to load one from."""

    preset: ModelPreset | None = None
    """A named shape, `tiny`, `base` (the paper's BASE) or `large`, filling the shape fields
    below (explicit fields still win); None = the fields as given."""
    init_from: str | None = None
    """A local HF PEGASUS directory (weights + config) to start from; the shape fields are then
    ignored. None = a new, randomly initialised model."""
    d_model: int = 64
    """Hidden size of every layer (embedding width); an int >= 1, divisible by
    attention_heads."""
    encoder_layers: int = 2
    """Transformer layers in the encoder; an int >= 1."""
    decoder_layers: int = 2
    """Transformer layers in the decoder; an int >= 1."""
    attention_heads: int = 4
    """Attention heads per layer; an int >= 1 that divides d_model."""
    ffn_dim: int = 128
    """Inner width of each layer's feed-forward block; an int >= 1."""
    max_position_embeddings: int = 512
    """Longest sequence, in tokens, the sinusoidal positions cover; an int >= 1 and at least
    data.max_input_len and data.max_target_len."""
    dropout: float = 0.1
    """Dropout probability on activations (embeddings, residuals, feed-forward); in [0, 1)."""
    attention_dropout: float = 0.1
    """Dropout probability on attention weights; in [0, 1)."""

    def __post_init__(self) -> None:
        _check_choices(self, "model.")
        for name in (
            "d_model",
            "encoder_layers",
            "decoder_layers",
            "attention_heads",
            "ffn_dim",
            "max_position_embeddings",
        ):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), "an int >= 1")
        _check(
            self.d_model % self.attention_heads == 0,
            "model.attention_heads",
            self.attention_heads,
            f"a divisor of model.d_model={self.d_model}",
        )
        for name in ("dropout", "attention_dropout"):
            _check(
                0.0 <= getattr(self, name) < 1.0,
                f"model.{name}",
                getattr(self, name),
                "a float in [0, 1)",
            )


@dataclass
class OptimConfig:
    """Optimiser and the update rule around it."""

    name: Literal["adamw", "adafactor"] = "adamw"
    """`adamw` (torch, fused where available) or `adafactor`, the paper's choice
    (transformers.optimization.Adafactor with a fixed lr, no relative step)."""
    lr: float = 3e-4
    """Peak learning rate, reached after schedule.warmup_steps; a float in (0, 1)."""
    weight_decay: float = 0.01
    """Decoupled weight decay on matrices (not biases or LayerNorm scales); >= 0."""
    beta1: float = 0.9
    """AdamW's first-moment decay; in [0, 1). Unused by adafactor."""
    beta2: float = 0.999
    """AdamW's second-moment decay; in [0, 1). Unused by adafactor."""
    eps: float = 1e-8
    """AdamW's denominator term; > 0. Unused by adafactor."""
    grad_clip: float = 1.0
    """Max global gradient L2 norm per optimizer step; >= 0, 0 disables clipping."""
    label_smoothing: float = 0.0
    """Probability mass spread over the vocabulary in the target loss; in [0, 1). 0.1 for
    fine-tuning as in the paper; 0 for pretraining."""
    grad_accum: int = 1
    """Micro-batches per optimizer step, an int >= 1; the loss is normalised over the whole
    window."""
    max_nonfinite_steps: int = 0
    """Steps whose loss is NaN or infinite (on any process) to skip over the run, an int >= 0:
    such a step takes no optimizer step and no lr-schedule step, its gradients are dropped, its
    micro-batches count as consumed, and it is not counted in `schedule.max_steps`. The next one
    stops the run with an error naming the step and the batch's records. 0 = stop on the first.
    May be raised on `--resume`."""

    def __post_init__(self) -> None:
        _check_choices(self, "optim.")
        _check(0.0 < self.lr < 1.0, "optim.lr", self.lr, "a float in (0, 1)")
        _check(self.weight_decay >= 0.0, "optim.weight_decay", self.weight_decay, ">= 0")
        _check(0.0 <= self.beta1 < 1.0, "optim.beta1", self.beta1, "[0, 1)")
        _check(0.0 <= self.beta2 < 1.0, "optim.beta2", self.beta2, "[0, 1)")
        _check(self.eps > 0.0, "optim.eps", self.eps, "> 0")
        _check(self.grad_clip >= 0.0, "optim.grad_clip", self.grad_clip, ">= 0 (0 = off)")
        _check(
            0.0 <= self.label_smoothing < 1.0,
            "optim.label_smoothing",
            self.label_smoothing,
            "[0, 1)",
        )
        _check(self.grad_accum >= 1, "optim.grad_accum", self.grad_accum, "an int >= 1")
        _check(
            self.max_nonfinite_steps >= 0,
            "optim.max_nonfinite_steps",
            self.max_nonfinite_steps,
            "an int >= 0",
        )


@dataclass
class ScheduleConfig:
    """Learning rate: linear warmup, then decay; training length in optimizer steps or epochs."""

    decay: Literal["linear", "cosine", "inverse_sqrt", "constant"] = "linear"
    """Shape of the learning rate after warmup: `linear` or `cosine` to 0 at the last step,
    `inverse_sqrt` (the paper's square-root decay) or `constant`."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0 to optim.lr; an int >= 0."""
    max_steps: int | None = 1000
    """Optimizer steps to train, an int >= 1; exactly one of max_steps / epochs is set (the
    other None)."""
    epochs: int | None = None
    """Whole passes over the training set, an int >= 1, converted to steps from the first
    epoch's batches; exactly one of max_steps / epochs is set."""
    max_minutes: float | None = None
    """Also stop (evaluate, export) after this many wall-clock minutes, > 0; the lr schedule
    still follows max_steps/epochs. None = no time limit. For time-boxed runs such as the
    demo."""
    stop_at_step: int | None = None
    """Stop (checkpoint when checkpoint.save_every > 0, validate, export) after this optimizer
    step although the lr schedule runs to max_steps; `--resume latest` without it continues
    the same run to max_steps. For staged runs: a learning-rate sweep whose winner continues.
    None = run to max_steps."""

    def __post_init__(self) -> None:
        _check_choices(self, "schedule.")
        _check(self.warmup_steps >= 0, "schedule.warmup_steps", self.warmup_steps, ">= 0")
        _check(
            (self.max_steps is None) != (self.epochs is None),
            "schedule.max_steps",
            self.max_steps,
            f"set exactly one of max_steps and epochs (epochs={self.epochs})",
        )
        if self.max_steps is not None:
            _check(self.max_steps >= 1, "schedule.max_steps", self.max_steps, "an int >= 1")
        if self.epochs is not None:
            _check(self.epochs >= 1, "schedule.epochs", self.epochs, "an int >= 1")
        if self.max_minutes is not None:
            _check(self.max_minutes > 0, "schedule.max_minutes", self.max_minutes, "> 0 or none")
        if self.stop_at_step is not None:
            _check(self.stop_at_step >= 1, "schedule.stop_at_step", self.stop_at_step, ">= 1")


@dataclass
class DataConfig(ExampleOptions):
    """Where the prepared stores are and how examples and batches are built from them.

    The example fields (gsr, mixed_gsr, score_noise, mask_prob, mlm_prob, max_input_len,
    max_target_len) and their ranges are masking.ExampleOptions', inherited: one home, so a
    pretraining dataset takes this config as its options.
    """

    _error_prefix: ClassVar[str] = "config: data."

    train: str | None = None
    """Directory of a store written by `pegasus-gsg prepare` (pretrain or finetune kind);
    required by the entry points (or --train)."""
    validation: str | None = None
    """Optional store of the same kind for validation loss (and ROUGE for fine-tuning); None =
    no validation."""
    tokenizer: str | None = None
    """Tokenizer directory; None = model.init_from when that holds a tokenizer."""
    max_tokens: int = 4096
    """Padded input tokens per micro-batch per process (the bucketing sampler's budget); at
    least max_input_len, so that one longest example fits."""
    max_batch_size: int | None = None
    """Most examples in one micro-batch, an int >= 1; None = only max_tokens limits it."""
    max_samples: int | None = None
    """Train on the first N records only (an int >= 1): profile the whole pipeline in a
    minute. None = every record."""
    num_workers: int = 0
    """DataLoader worker processes per training process; 0 = load in the training process."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.max_tokens >= self.max_input_len,
            "data.max_tokens",
            self.max_tokens,
            f">= data.max_input_len={self.max_input_len} (one longest example must fit)",
        )
        if self.max_batch_size is not None:
            _check(self.max_batch_size >= 1, "data.max_batch_size", self.max_batch_size, ">= 1")
        if self.max_samples is not None:
            _check(self.max_samples >= 1, "data.max_samples", self.max_samples, ">= 1")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")


@dataclass
class EvalConfig:
    """Periodic validation, and the generation settings of the exported model."""

    every: int = 0
    """Validate every N optimizer steps (and at the end), an int >= 0; 0 = only at the end."""
    generate_samples: int = 0
    """Validation examples to generate for ROUGE, an int >= 0 (0 = loss only); the best
    ROUGE-Lsum (else the lowest loss) is exported to OUT/best."""
    num_beams: int = 1
    """Beams when generating, an int >= 1 (1 = greedy); paper fine-tuning used 8. Also written
    into the exported GenerationConfig."""
    max_new_tokens: int = 64
    """Most tokens generated per summary, an int >= 1; also in the exported
    GenerationConfig."""
    length_penalty: float = 1.0
    """Beam scores are divided by length**length_penalty (> 1 favours longer summaries); a
    finite float. Also in the exported GenerationConfig."""

    def __post_init__(self) -> None:
        _check(self.every >= 0, "eval.every", self.every, ">= 0")
        _check(self.generate_samples >= 0, "eval.generate_samples", self.generate_samples, ">= 0")
        _check(self.num_beams >= 1, "eval.num_beams", self.num_beams, ">= 1")
        _check(self.max_new_tokens >= 1, "eval.max_new_tokens", self.max_new_tokens, ">= 1")
        _check(
            math.isfinite(self.length_penalty),
            "eval.length_penalty",
            self.length_penalty,
            "a finite float",
        )


@dataclass
class CheckpointConfig:
    """What is written during the run and how often (not part of the resume fingerprint)."""

    save_every: int = 0
    """Save a checkpoint (`OUT/checkpoints/step_NNNNNNNN`) every N optimizer steps, an int
    >= 0; 0 = never (a SIGTERM still saves one)."""
    keep: int = 3
    """Newest checkpoints kept, an int >= 1; older ones are deleted."""
    log_every: int = 10
    """One log line and one OUT/metrics.jsonl row every N optimizer steps (and at the end); an
    int >= 1."""
    log_with: Literal["tensorboard", "none"] = "tensorboard"
    """Tracker for metrics: `tensorboard` (under OUT) or `none`."""

    def __post_init__(self) -> None:
        _check(self.save_every >= 0, "checkpoint.save_every", self.save_every, ">= 0")
        _check(self.keep >= 1, "checkpoint.keep", self.keep, "an int >= 1")
        _check(self.log_every >= 1, "checkpoint.log_every", self.log_every, "an int >= 1")
        _check_choices(self, "checkpoint.")


# Fields that change what is written or where, never the training trajectory: a resume may
# change them freely. optim.max_nonfinite_steps only decides whether a NaN/inf step stops the run
# or is skipped; a run stopped by one must be resumable with a higher value.
_NOT_FINGERPRINTED = (
    "out_dir",
    "checkpoint",
    "data.train",
    "data.validation",
    "data.tokenizer",
    "data.num_workers",
    "model.init_from",
    "compile",
    "collective_timeout_s",
    "eval",
    "schedule.max_minutes",
    "schedule.stop_at_step",
    "optim.max_nonfinite_steps",
)


@dataclass
class TrainConfig:
    """One training run (pretraining or fine-tuning)."""

    out_dir: str = "runs/default"
    """Directory the run writes (config.yaml, metrics.jsonl, eval.jsonl, checkpoints/, model/,
    best/); created if absent, and refused if it holds another run (unless --resume)."""
    seed: int = 0
    """Seed of the data order, initialisation and dropout (each rank offsets it); an int
    >= 0."""
    precision: Literal["auto", "bf16", "fp32", "fp16"] = "auto"
    """`auto` = bf16 on CUDA, fp32 on CPU; `bf16` or `fp32`. fp16 is refused: PEGASUS
    overflows to NaN in it."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    collective_timeout_s: float | None = None
    """Seconds a process waits in a collective (all-reduce, barrier) for the others before the
    run fails, > 0: how long the surviving machines of a multi-machine run wait for one that
    vanished without closing its connections (power loss, a network partition; a killed one
    is noticed at once). It must exceed the longest work the main process does while the
    others wait (saving a checkpoint, exporting the model). None = torch's default (30 min for
    gloo, 10 min for NCCL). See pegasus_gsg/training/machines.py."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model's shape or starting weights (`model.*` keys)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser, gradient clipping and accumulation (`optim.*` keys)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule and run length (`schedule.*` keys)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Stores, example building and batching (`data.*` keys)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Validation and the exported generation settings (`eval.*` keys)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints and logging (`checkpoint.*` keys)."""

    def __post_init__(self) -> None:
        if self.precision == "fp16":
            raise ValueError(
                "config: precision='fp16' is refused: PEGASUS activations overflow float16 and "
                "the loss turns NaN; use precision=bf16 (GPU) or fp32"
            )
        _check_choices(self, "")
        _check(self.seed >= 0, "seed", self.seed, "an int >= 0")
        if self.collective_timeout_s is not None:
            _check(
                self.collective_timeout_s > 0,
                "collective_timeout_s",
                self.collective_timeout_s,
                "> 0 seconds or none",
            )
        longest = max(self.data.max_input_len, self.data.max_target_len)
        if self.model.init_from is None:
            _check(
                self.model.max_position_embeddings >= longest,
                "model.max_position_embeddings",
                self.model.max_position_embeddings,
                f">= the longest data length {longest}",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Write the resolved config as YAML (loadable again with `load_config`), whole or not
        at all."""
        write_text_atomic(Path(path), yaml.safe_dump(_plain(self.to_dict()), sort_keys=False))

    def fingerprint_dict(self) -> dict[str, Any]:
        """The flattened fields that determine the training trajectory."""
        flat = _flatten(_plain(self.to_dict()))
        return {
            k: v
            for k, v in flat.items()
            if not any(k == skip or k.startswith(skip + ".") for skip in _NOT_FINGERPRINTED)
        }

    def fingerprint(self) -> str:
        blob = json.dumps(self.fingerprint_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def describe_difference(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """`a.b: 1 -> 2, ...` for the keys whose values differ (for resume refusals)."""
    keys = sorted(set(saved) | set(current))
    diffs = [
        f"{k}: {saved.get(k)!r} -> {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    return ", ".join(diffs)


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "data": DataConfig,
    "eval": EvalConfig,
    "checkpoint": CheckpointConfig,
}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a YAML-parsed value into the declared field type, or say what was expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"config: {key}: cannot be {value!r}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ValueError(f"config: {key}={value!r} is not allowed; expected one of {allowed}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config: {key}={value!r}; expected a list like [0.15, 0.45]")
        types_ = typing.get_args(annotation)
        if len(value) != len(types_):
            raise ValueError(f"config: {key}={value!r}; expected a list of {len(types_)} values")
        return tuple(_coerce(v, a, key) for v, a in zip(value, types_, strict=True))
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1"):
                    return True
                if value.lower() in ("false", "no", "0"):
                    return False
                raise ValueError
            return bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", annotation)
        raise ValueError(f"config: {key}={value!r} is not a valid {name}") from None
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"config: unknown key {prefix}{unknown[0]!s}; known keys in "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        section = _SECTIONS.get(name) if cls is TrainConfig else None
        if section is not None:
            if not isinstance(value, dict):
                raise ValueError(f"config: {name} must be a mapping, got {value!r}")
            kwargs[name] = _build(section, value, f"{name}.")
        else:
            kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}")
    return cls(**kwargs)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a mapping of config sections, got {type(data).__name__}"
        )
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = (path.parent / parent).resolve()
    if parent_path in seen:
        raise ValueError(f"{path}: `extends: {parent}` forms a cycle")
    return _merge(_read_yaml(parent_path, (*seen, parent_path)), data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_KEY_VALUE = re.compile(r"^[A-Za-z_][\w.]*=")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["optim.lr=1e-4", "--data.train", "DIR", "--compile"]` -> a nested dict."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            key = item[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif (
                i + 1 < len(items)
                and not items[i + 1].startswith("--")
                and not (_KEY_VALUE.match(items[i + 1]))
            ):
                value = items[i + 1]
                i += 1
            else:
                value = "true"
        elif "=" in item:
            key, value = item.split("=", 1)
        else:
            raise ValueError(f"config override {item!r}: expected key=value or --key value")
        pairs.append((key.replace("-", "_"), value))
        i += 1
    nested: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"config override {key!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(value) if value != "" else None
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file (following `extends:`) <- overrides, validated."""
    values = _read_yaml(Path(path)) if path is not None else {}
    override_values = parse_overrides(overrides or [])
    # Asking for epochs on the command line replaces the file's max_steps, and vice versa.
    schedule_override = override_values.get("schedule", {})
    if isinstance(schedule_override, dict) and isinstance(values.get("schedule"), dict):
        for given, other in (("epochs", "max_steps"), ("max_steps", "epochs")):
            if given in schedule_override and other not in schedule_override:
                values["schedule"].pop(other, None)
                schedule_override.setdefault(other, None)
    values = _merge(values, override_values)
    model = values.get("model")
    if isinstance(model, dict) and model.get("preset") is not None:
        preset = model["preset"]
        if preset not in MODEL_PRESETS:
            raise ValueError(
                f"config: model.preset={preset!r} is not known; expected one of "
                f"{sorted(MODEL_PRESETS)}"
            )
        values["model"] = {**MODEL_PRESETS[preset], **model}
    if isinstance(values.get("schedule"), dict) and values["schedule"].get("epochs") is not None:
        # Setting epochs replaces the default max_steps unless both were given explicitly.
        values["schedule"].setdefault("max_steps", None)
    config: TrainConfig = _build(TrainConfig, values, "")
    return config
