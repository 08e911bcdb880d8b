"""What a comparison is made of: its synthetic data sets, the stages of its training protocol, its variants, and
the record each run leaves (`mmllm compare` runs them; `compare_report` writes them up)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from mmllm.eval.curves import CurvePoint

# Data seed k draws each training/validation set with its own seed + k * this: far from every shipped set's seed.
DATA_SEED_STRIDE = 1000
CONFIG_STEPS = "the fit config's"  # a stage's budget when neither it nor compare sets one


@dataclass
class DataSet:
    """A synthetic set: `eval` names the `mmllm eval` task for test sets; `sweep_tiles` scores a test set's first
    `curve_items` again with each tile budget from 1 to the model's max_tiles (quality against resolution)."""

    name: str
    task: str
    level: str = "easy"
    n: int = 100
    seed: int = 0
    eval: str | None = None
    sweep_tiles: bool = False


@dataclass
class Stage:
    """One training stage of the protocol: its own `mmllm fit` arguments and budget. Every stage after the first
    starts from the weights the one before it ended with (`--model.init_from`, a fresh optimizer and schedule),
    as the paper's stage 2 starts from stage 1, e.g. `{name: connector, args: [--model.stage=pretrain]}` then
    `{name: sft, args: [--model.stage=sft]}`."""

    name: str
    args: list[str] = field(default_factory=list)
    max_steps: int | None = None  # null: compare's max_steps, else the fit config's


@dataclass
class Parts:
    """The pretrained parts every run starts from, made by the project itself (`mmllm pretrain llm|tower`): each a
    recipe, the fields of `train.pretrain_llm.LLMRecipe` / `train.pretrain_tower.TowerRecipe` ({} is the default
    recipe), built once and cached by content, then handed to `mmllm fit` as a user hands over real parts
    (`--model.llm.name_or_path`, `--model.encoder` with `pretrained` its weights file). null: the fit config's own
    part, built at random from its options."""

    llm: dict | None = None
    tower: dict | None = None


@dataclass
class Variant:
    """One more axis of the comparison: `args` go to every stage's `mmllm fit`; `stages` and `parts` replace
    compare's protocol and parts for this variant's runs (e.g. from-scratch joint training: one stage that trains
    everything, and `parts: {}`, no pretrained part). In a config, a plain list of arguments is a variant with
    those `args`."""

    args: list[str] = field(default_factory=list)
    stages: list[Stage] | None = None
    parts: Parts | None = None


@dataclass
class Run:
    arch: str
    variant: str
    seed: int
    scores: dict[str, float]
    params: int
    trainable: int
    decoder_tokens: float
    step_s: float
    peak_mb: float | None
    eval_items_per_s: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    cer: dict[str, float] = field(default_factory=dict)  # corpus character error rate of the OCR sets
    data_seed: int = 0
    curve: list[CurvePoint] = field(default_factory=list)  # test scores (first `curve_items`) during training
    tile_scores: dict[str, list[float]] = field(default_factory=dict)  # swept test set -> score at 1..max_tiles
    controls: dict[str, float] = field(default_factory=dict)  # control -> exact match on the first OCR test set
    sweep: list[dict] = field(default_factory=list)  # decoder tokens and train step time at 1..max_tiles tiles

    @classmethod
    def from_dict(cls, record: dict) -> Run:
        """A run as `asdict` wrote it to JSON (metrics.json, a run's run.json)."""
        return cls(**{**record, "curve": [CurvePoint(**p) for p in record.get("curve", [])],
                      "losses": [tuple(x) for x in record.get("losses", [])]})

    def passes(self, success: dict[str, float]) -> bool:
        return all(self.scores[name] >= threshold for name, threshold in success.items())

    @property
    def label(self) -> str:
        return f"{self.arch} {self.variant}".strip()


def with_budget(stages: list[Stage], max_steps: int | None) -> list[Stage]:
    """Every stage with a step budget of its own keeps it; the others take compare's `max_steps`."""
    return [replace(stage, max_steps=stage.max_steps or max_steps) for stage in stages]


def protocol_text(stages: list[Stage]) -> str:
    return " then ".join(f"{stage.name}: {stage.max_steps or CONFIG_STEPS} steps" for stage in stages)


def redrawn(sets: list[DataSet], data_seed: int) -> list[DataSet]:
    """The sets drawn again for data seed `data_seed` (0: as given), each under a name of its own."""
    if not data_seed:
        return sets
    return [replace(s, name=f"{s.name}-d{data_seed}", seed=s.seed + DATA_SEED_STRIDE * data_seed) for s in sets]
