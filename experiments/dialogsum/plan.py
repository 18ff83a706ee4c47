"""The study's plan: every size, step count and wall-clock budget, and whether they fit.

`Plan` holds the committed 2.5-hour plan (defaults) and the dry run's tiny one
(`Plan.dry_run()`). `Plan.budget()` adds up the training stages' minute caps on `workers`
single-thread lanes, plus the stated allowances for setup and decoding, and refuses a plan
whose bound exceeds `wall_minutes`. Run state never goes in here: a stage's spent minutes live
in the StageRunner's ledger (stages.minutes_left).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.pipeline import REPO

INITS = {"random": "random init", "ind_orig": "GSG Ind-Orig"}
"""Fine-tuning starts: key (used in run names) -> label (used in tables)."""


@dataclass
class Plan:
    """Sizes and budgets of the study; the defaults are the committed 2.5-hour plan.

    Steps come from throughput measured with `--measure-shapes` (configs/dialogsum.yaml says
    how); each training stage also stops at its minutes cap if the machine is slower.
    """

    data_dir: Path = REPO.parent / "shared" / "data"
    out: Path = REPO / "runs" / "experiments" / "dialogsum"
    docs: Path = REPO / "docs" / "dialogsum"
    seed: int = 0
    config: str = "configs/dialogsum.yaml"
    finetune_config: str = "configs/dialogsum_finetune.yaml"
    model_overrides: tuple[str, ...] = ()
    """Extra `key=value` config overrides for every training run (the dry run's tiny shape)."""
    vocab_size: int = 8000
    pretrain_docs: int | None = None
    """Records read from each pretraining source (None: all of Reuters and all dialogues)."""
    pretrain_steps: int = 6000
    """An upper bound: pretraining stops at `pretrain_minutes` (1,177 steps in the committed run,
    2,420 tokens/s with the other core busy); inverse-sqrt decay makes that stop no worse than
    planned."""
    pretrain_minutes: float = 50.0
    full_steps: int = 5000
    """Also an upper bound; the full-data runs stop at `full_minutes` (1,208-1,260 steps)."""
    full_minutes: float = 35.0
    full_save_every: int = 200
    full_keep: int = 50
    """Checkpoints of a full-data run: every one is kept (~115 MB each), so that
    experiments/dialogsum_curve.py can decode them (ROUGE against fine-tuning minutes)."""
    low_steps: tuple[tuple[int, int], ...] = ((100, 100), (1000, 300))
    """(training pairs, optimizer steps) of the low-resource runs, meant to compare random and
    pretrained runs at equal updates; see `low_minutes` for what the run reached."""
    low_minutes: tuple[tuple[int, float], ...] = ((100, 2.5), (1000, 6.0))
    """Wall-clock caps. At the measured ~1.7 s/step the 100-pair runs ended by their steps
    (86-100) but the 1,000-pair runs by the cap (198-218 of 300 steps; random init got the
    more), so those compare equal minutes rather than equal updates."""
    seeds: int = 3
    num_beams: int = 4
    backend: str = "ctranslate2"
    """`pegasus-gsg evaluate --backend`: CTranslate2 float32 decodes the same beams as
    transformers (197 of 200 validation predictions identical, ROUGE within 0.04, on this
    study's random-init model) at about half the CPU time."""
    length_penalties: tuple[float, ...] = (0.6, 1.0, 1.4)
    lp_val_size: int = 200
    """Validation dialogues decoded per length penalty (full-data models)."""
    low_lp_val_size: int = 60
    """The same for the low-resource models."""
    test_size: int | None = None
    """Test dialogues scored (None: all 500)."""
    samsum_size: int | None = None
    """SAMSum test dialogues scored (None: all 815)."""
    max_input_len: int = 384
    max_target_len: int = 96
    pretrain_target_len: int = 128
    samples: int = 10
    workers: int = 2
    wall_minutes: float = 150.0
    eval_minutes: float = 58.0
    """Stated allowance for decoding and scoring in process-minutes (not a cap: generation
    has no budget switch); counted in `budget()`. Measured: beam 4 on one loaded core cost
    0.55 CPU s per dialogue at the 96-token maximum (an untrained model), ~0.25 s expected at
    summary length; 13k decodes + 58 process starts."""
    setup_minutes: float = 6.0
    """Stated allowance for tokenizer, stores and baselines."""
    lead_ks: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8)
    gsrs: tuple[float, ...] = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5)

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "pretrain_steps",
            "full_steps",
            "seeds",
            "num_beams",
            "lp_val_size",
            "low_lp_val_size",
            "workers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if dict(self.low_steps).keys() != dict(self.low_minutes).keys():
            raise ValueError("low_steps and low_minutes must name the same training sizes")
        if not self.length_penalties:
            raise ValueError("--length-penalties: give at least one value")

    @property
    def sizes(self) -> list[int]:
        return sorted(dict(self.low_steps))

    @property
    def seed_list(self) -> list[int]:
        """The seeds of the low-resource runs: `seed`, `seed + 1`, ..."""
        return [self.seed + i for i in range(self.seeds)]

    def budget(self) -> dict[str, Any]:
        """Stage caps in minutes and the wall time they imply on `workers` lanes.

        The lanes: pretraining then the pretrained full run on one; the random full run and
        the low-resource runs fill the other and then both. `longest_lane` is a bound: the
        low-resource runs are shared out greedily as lanes free up.

        Raises:
            ValueError: the plan does not fit `wall_minutes`.
        """
        low = dict(self.low_minutes)
        low_total = sum(low[n] for n in self.sizes) * len(INITS) * self.seeds
        training = self.pretrain_minutes + 2 * self.full_minutes + low_total
        chain = self.pretrain_minutes + self.full_minutes
        lanes = max(chain, training / self.workers) if self.workers > 1 else training
        wall = self.setup_minutes + lanes + self.eval_minutes / self.workers
        report = {
            "pretrain_minutes": self.pretrain_minutes,
            "full_finetune_minutes_each": self.full_minutes,
            "low_resource_minutes_each": low,
            "low_resource_minutes_total": low_total,
            "training_minutes_total": training,
            "setup_minutes": self.setup_minutes,
            "eval_minutes": self.eval_minutes,
            "workers": self.workers,
            "longest_lane_minutes": round(lanes, 1),
            "wall_minutes_bound": round(wall, 1),
            "wall_minutes_allowed": self.wall_minutes,
        }
        if wall > self.wall_minutes:
            raise ValueError(
                f"the plan needs about {wall:.0f} min of wall time, more than "
                f"--wall-minutes {self.wall_minutes:g}: lower the stage budgets"
            )
        return report

    @classmethod
    def dry_run(cls) -> Plan:
        """The same plumbing at tiny sizes (a 1-layer d_model-32 model, minutes), in its own OUT."""
        out = REPO / "runs" / "experiments" / "dialogsum_dry"
        return cls(
            out=out,
            docs=out / "docs",
            model_overrides=(
                "model.d_model=32",
                "model.encoder_layers=1",
                "model.decoder_layers=1",
                "model.attention_heads=2",
                "model.ffn_dim=64",
                "data.max_tokens=1024",
            ),
            vocab_size=700,
            pretrain_docs=150,
            pretrain_steps=4,
            pretrain_minutes=1.0,
            full_steps=3,
            full_minutes=1.0,
            full_save_every=1,
            low_steps=((8, 2), (16, 2)),
            low_minutes=((8, 1.0), (16, 1.0)),
            seeds=2,
            num_beams=2,
            length_penalties=(0.8, 1.6),
            lp_val_size=6,
            low_lp_val_size=4,
            test_size=8,
            samsum_size=6,
            max_input_len=128,
            max_target_len=24,
            pretrain_target_len=32,
            samples=3,
            eval_minutes=1.0,
            setup_minutes=1.0,
        )
