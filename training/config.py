"""The training configurations (``training/configs/*.toml``) as typed, validated models.

A TOML file is read and validated once, by :func:`load_config` (the ensemble: ``ich-model train``, ``cv``,
``cv-report``, ``export``, ``card``) or :func:`load_baselines_config` (``ich-model baselines``); the model is
then passed down, so every reader sees the same names and the same defaults. An unknown key, a missing one
or a value of the wrong type is a :class:`ConfigError` that names the file, the table and the key: a typo
such as ``negative_fracton`` would otherwise train with the default and say nothing.

Each default here is the value a config without the key trains with; the committed configs rely on them.
The field order of each table is the order the committed files write their keys in, so that
:meth:`Section.as_written` (what the model card lists) reads like the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ich.spec import MODEL_KEYS
from training.case_model import DecisionTargets

#: The Dice conventions of ``training.losses`` (``dice = ...`` in a step or in ``[weight]``).
DiceMode = Literal["batch", "per_slice", "mixed"]
DICE_MODES: tuple[DiceMode, ...] = ("batch", "per_slice", "mixed")
Amp = Literal["none", "bf16"]


class ConfigError(ValueError):
    """A configuration file that does not validate; the message names the file, the table and the key."""


class Section(BaseModel):
    """A table of a config: unknown keys are refused, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def as_written(self) -> dict[str, Any]:
        """The keys the file sets, with their values (nested tables likewise); defaults left out."""
        return self.model_dump(exclude_unset=True)


# ----------------------------------------------------------------------------------------- shared tables
class AugmentConfig(Section):
    """What to randomise (``augment = {...}`` of a step, ``training.augment``); zeros switch a part off."""

    flip: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    intensity: float = 0.05
    #: probability that a negative sample receives a pasted lesion of the selection
    paste: float = 0.0
    #: Gaussian noise, its SD drawn per sample from U(0, noise_hu) HU
    noise_hu: float = 0.0
    #: unsharp-mask amount drawn per sample from U(-sharpen / 2, sharpen); < 0 blurs
    sharpen: float = 0.0
    #: HU-scale offset drawn per sample from U(-hu_offset, hu_offset)
    hu_offset: float = 0.0


class RunSection(Section):
    """``[run]`` keys common to the ensemble's and the baselines' configs."""

    name: str
    seed: int
    size: int = Field(gt=0)
    threads: int = Field(default=2, gt=0)
    amp: Amp = "none"
    #: "cpu", "cuda", "cuda:N", or "auto" (cuda when available)
    device: str = "cpu"

    def resolved_device(self) -> str:
        """``device`` with ``auto`` resolved to what this machine has."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------- the ensemble
class RunConfig(RunSection):
    """``[run]``: name, seed, input size, threads, validation patients, precision of the forward pass."""

    #: patients held out to select checkpoints on (0: none, every step keeps its last weights)
    val_patients: int = Field(default=0, ge=0)
    #: a split to reuse (written when absent); "" for none
    split_file: str = ""
    eval_batch: int = Field(gt=0)
    #: the opening of the slice probability when checkpoints are selected; default ``[weight].opening``
    select_opening: int | None = None

    @property
    def split_path(self) -> Path | None:
        return Path(self.split_file) if self.split_file else None


class CvConfig(Section):
    """``[cv]``: the number of patient folds of ``ich-model cv``."""

    folds: int = Field(default=5, ge=2)


class DecisionConfig(Section):
    """``[decision]``: what the case decision is fitted for (:class:`training.case_model.DecisionTargets`)."""

    score: str = DecisionTargets.score
    target_sensitivity: float = DecisionTargets.target_sensitivity
    band_sensitivity: float = DecisionTargets.band_sensitivity
    band_specificity: float = DecisionTargets.band_specificity

    @field_validator("score")
    @classmethod
    def _known_score(cls, value: str) -> str:
        from ich.scoring import SCORES

        if value not in (*SCORES, "select"):
            raise ValueError(f"expected one of {[*SCORES, 'select']}")
        return value

    def targets(self, opening: int) -> DecisionTargets:
        """The targets of ``training.case_model``, with the weight model's opening."""
        return DecisionTargets(**self.model_dump(), opening=opening)


class NetworkConfig(Section):
    """``[network]``: the base models' :class:`training.networks.InceptionUNet`."""

    width: int = Field(default=16, gt=0)
    depth: int = Field(default=4, gt=0)
    #: left-right flip test-time augmentation inside each base model
    flip_tta: bool = False


class HardNegatives(Section):
    """Hard-negative mining of one step (``hard_negatives = {...}`` in its table).

    From iteration ``start`` on, every ``every`` iterations, the current network scores every training
    negative (max of its map) and the ``pool`` highest become the hard pool; then ``fraction`` of each
    batch's negative half is drawn from that pool, the rest from all negatives. Why: sampled uniformly,
    the normal slices rarely show the few structures (skull base, vault, calcifications) that set off a
    confident false focus, and one such focus makes a normal case positive (case = max slice).
    """

    start: int = Field(default=0, ge=0)
    every: int = Field(default=200, gt=0)
    pool: int = Field(default=200, gt=0)
    fraction: float = Field(default=0.5, ge=0.0, le=1.0)


class StepConfig(Section):
    """``[steps.<name>]``: one base model's training (``training.train.train_unet_step``)."""

    dice: DiceMode = "batch"
    #: the step whose best weights this one starts from (it must train before)
    init: str | None = None
    #: subtype-classifier pre-training iterations of the encoder (the ``subtype`` step)
    cls_iterations: int = Field(default=0, ge=0)
    iterations: int = Field(gt=0)
    lr: float = Field(gt=0)
    warmup: int = Field(ge=0)
    batch: int = Field(gt=0)
    eval_every: int = Field(gt=0)
    bce_weight: float = 1.0
    #: share of normal slices in each batch
    negative_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    #: weight of the slice term (``training.losses.slice_bce_loss``); 0 leaves it out
    slice_bce: float = Field(default=0.0, ge=0.0)
    #: how much more often normal slices at the vertex and the skull base are drawn
    edge_negative_weight: float = Field(default=1.0, gt=0.0)
    hard_negatives: HardNegatives | None = None
    augment: AugmentConfig = AugmentConfig()


class WeightConfig(Section):
    """``[weight]``: the weight model that fuses the five maps (``training.train.train_weight_step``)."""

    hidden: int = Field(gt=0)
    dice: DiceMode = "batch"
    #: grey opening (pixels) of the fused map before the slice maximum, inside the exported graph
    opening: int = Field(ge=1)
    iterations: int = Field(gt=0)
    batch: int = Field(gt=0)
    lr: float = Field(gt=0)
    eval_every: int = Field(gt=0)
    negatives_per_positive: int = Field(gt=0)
    slice_bce: float = Field(ge=0.0)


class ExportConfig(Section):
    """``[export]``: what ``ich-model export`` adds to the trained networks."""

    #: rotation test-time augmentation of the base models (+- degrees); 0 for none
    rotate_tta_deg: float = Field(default=0.0, ge=0.0)


class TrainingConfig(Section):
    """A whole ensemble config: ``training/configs/default.toml`` and its siblings."""

    run: RunConfig
    cv: CvConfig = CvConfig()
    decision: DecisionConfig = DecisionConfig()
    network: NetworkConfig
    #: the base models' tables, any of ``ich.spec.MODEL_KEYS`` (a run trains only the configured ones)
    steps: dict[str, StepConfig]
    weight: WeightConfig
    export: ExportConfig = ExportConfig()

    @field_validator("steps", mode="before")
    @classmethod
    def _known_steps(cls, steps: Any) -> Any:
        for name in steps if isinstance(steps, dict) else ():
            if name == "weight":
                raise ValueError("the weight model is configured in [weight], not [steps.weight]")
            if name not in MODEL_KEYS:
                raise ValueError(f"unknown step {name!r}: the steps are {', '.join(MODEL_KEYS)}")
        return steps

    @model_validator(mode="after")
    def _init_trains_before(self) -> TrainingConfig:
        for name, step in self.steps.items():
            if step.init is not None and step.init not in MODEL_KEYS[: MODEL_KEYS.index(name)]:
                raise ValueError(f"[steps.{name}] init = {step.init!r}: that step does not train before it")
        return self

    @property
    def select_opening(self) -> int:
        """The opening of the slice probability used to select checkpoints on validation patients."""
        return self.run.select_opening if self.run.select_opening is not None else self.weight.opening

    def decision_targets(self) -> DecisionTargets:
        return self.decision.targets(self.weight.opening)


# ---------------------------------------------------------------------------------------- the baselines
class BaselinesRun(RunSection):
    """``[run]`` of a baselines config."""

    eval_batch: int = Field(default=32, gt=0)


class BaselinesTrain(Section):
    """``[train]``: every unit's training (``training.baselines.train.train_unit``)."""

    iterations: int = Field(gt=0)
    batch: int = Field(gt=0)
    lr: float = Field(gt=0)
    warmup: int = Field(ge=0)
    log_every: int = Field(default=50, gt=0)
    negative_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    #: strong mode: weight of the saliency map's soft Dice against the mask
    seg_weight: float = 1.0
    dice: DiceMode = "batch"
    edge_negative_weight: float = Field(default=1.0, gt=0.0)
    augment: AugmentConfig = AugmentConfig()


class ClassifierNetwork(Section):
    """``[network.<architecture>]``: width multiplier and block repeats (default: the published ones)."""

    width: float = Field(default=1.0, gt=0)
    blocks: list[int] | None = None


class BaselinesConfig(Section):
    """A baselines config: ``training/configs/baselines.toml`` and ``baselines-gpu.toml``."""

    architectures: list[str]
    modes: list[str]
    run: BaselinesRun
    train: BaselinesTrain
    network: dict[str, ClassifierNetwork] = {}


# ------------------------------------------------------------------------------------------------- files
def _where(loc: tuple[int | str, ...]) -> str:
    """``("steps", "all", "lr")`` -> ``[steps.all] lr``; a top-level key is named alone."""
    parts = [str(p) for p in loc]
    if len(parts) <= 1:
        return "".join(parts)
    return f"[{'.'.join(parts[:-1])}] {parts[-1]}"


def describe(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the file and the key."""
    lines = []
    for item in error.errors():
        where = _where(tuple(item["loc"]))
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: {where}: unknown key")
        elif item["type"] == "missing":
            lines.append(f"{source}: {where}: missing")
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            given = item.get("input")
            got = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"{source}: {where}: {message}{got}" if where else f"{source}: {message}")
    return "\n".join(lines)


def _read(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from err


def parse_config(data: dict[str, Any], source: str = "<config>") -> TrainingConfig:
    """Validate an ensemble config already read from TOML."""
    try:
        return TrainingConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe(err, source)) from err


def load_config(path: Path) -> TrainingConfig:
    """Read and validate an ensemble config (``ConfigError`` naming the file and the key if it is wrong)."""
    return parse_config(_read(path), str(path))


def load_baselines_config(path: Path) -> BaselinesConfig:
    """Read and validate a baselines config."""
    try:
        return BaselinesConfig.model_validate(_read(path))
    except ValidationError as err:
        raise ConfigError(describe(err, str(path))) from err
