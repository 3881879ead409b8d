"""The typed configuration: attrs schemas Hydra composes YAML and overrides onto.

This module owns the keys, their types, defaults and valid ranges. Each validator sits
beside the field it guards. Hydra/OmegaConf check types at composition; `to_config` turns
the composed tree into these instances and runs the validators, reporting the FULL key
(``optimizer.learning_rate``) of the first invalid value.

Known traps with hydra-core 1.3 / omegaconf 2.3, respected here: no ``attrs.field(factory=
...)``, no ``@attrs.frozen`` (it rejects CLI overrides), ``Enum`` rather than ``Literal``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

import attrs

from composeloop.errors import ConfigError


class InvalidValue(ValueError):
    """A validator's verdict on one field; `to_config` adds the path to the key."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _check(test: Callable[[Any], bool], requirement: str, optional: bool = False) -> Callable:
    def validator(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if optional and value is None:
            return
        if not test(value):
            raise InvalidValue(attribute.name, f"must be {requirement}, got {value!r}")

    return validator


positive = _check(lambda v: v > 0, "> 0")
optional_positive = _check(lambda v: v > 0, "> 0", optional=True)
non_negative = _check(lambda v: v >= 0, ">= 0")
at_least_one = _check(lambda v: v >= 1, ">= 1")
unit_interval_open = _check(lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")
dropout_rate = _check(lambda v: 0 <= v < 1, "in [0, 1)")
optional_class_count = _check(lambda v: v >= 2, ">= 2", optional=True)
_POWER_OF_TWO_TIMES_4 = "4 times a power of two (8, 16, ...)"
image_size = _check(lambda v: v >= 4 and v % 4 == 0 and (v // 4) & (v // 4 - 1) == 0, _POWER_OF_TWO_TIMES_4)
optional_image_size = _check(
    lambda v: v >= 4 and v % 4 == 0 and (v // 4) & (v // 4 - 1) == 0, _POWER_OF_TWO_TIMES_4, optional=True
)
example_shape = _check(lambda v: len(v) >= 1 and all(d >= 1 for d in v), "a non-empty list of sizes >= 1")


class DataSource(enum.Enum):
    digits = "digits"
    npz = "npz"
    synthetic = "synthetic"


class ModelName(enum.Enum):
    mlp = "mlp"
    cnn = "cnn"


class OptimizerName(enum.Enum):
    adam = "adam"
    sgd = "sgd"


class Schedule(enum.Enum):
    constant = "constant"
    cosine = "cosine"
    cyclic = "cyclic"  # triangular cycles between min_learning_rate and learning_rate


# Functional form: "raise" is a keyword, and OmegaConf matches enum members by name.
NanPolicy = enum.Enum("NanPolicy", {"raise": "raise", "skip": "skip", "stop": "stop"})


class Resume(enum.Enum):
    auto = "auto"  # continue from the run directory's latest checkpoint, if any
    never = "never"  # refuse a run directory that already holds a run


class MonitorMode(enum.Enum):
    auto = "auto"
    min = "min"
    max = "max"


class StrategyName(enum.Enum):
    default = "default"
    one_device = "one_device"
    mirrored = "mirrored"
    multi_worker = "multi_worker"


class Precision(enum.Enum):
    float32 = "float32"
    mixed_bfloat16 = "mixed_bfloat16"
    mixed_float16 = "mixed_float16"


class GanLoss(enum.Enum):
    non_saturating = "non_saturating"
    minimax = "minimax"
    least_squares = "least_squares"
    hinge = "hinge"
    wasserstein = "wasserstein"


@attrs.define
class DataConfig:
    source: DataSource = DataSource.digits
    path: Optional[str] = None  # noqa: UP045 - OmegaConf reads typing generics
    batch_size: int = attrs.field(default=32, validator=positive)
    val_fraction: float = attrs.field(default=0.2, validator=unit_interval_open)
    synthetic_examples: int = attrs.field(default=256, validator=positive)
    synthetic_shape: List[int] = attrs.field(default=[8, 8], validator=example_shape)  # noqa: UP006
    synthetic_classes: int = attrs.field(default=10, validator=optional_class_count)


@attrs.define
class ModelConfig:
    name: ModelName = ModelName.mlp
    width: int = attrs.field(default=64, validator=positive)
    depth: int = attrs.field(default=2, validator=at_least_one)
    l2: float = attrs.field(default=0.0, validator=non_negative)
    dropout: float = attrs.field(default=0.0, validator=dropout_rate)
    num_classes: Optional[int] = attrs.field(default=None, validator=optional_class_count)  # noqa: UP045


@attrs.define
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adam
    learning_rate: float = attrs.field(default=1e-3, validator=positive)
    momentum: float = attrs.field(default=0.0, validator=dropout_rate)
    schedule: Schedule = Schedule.constant
    warmup_steps: int = attrs.field(default=0, validator=non_negative)
    min_learning_rate: float = attrs.field(default=0.0, validator=non_negative)
    cycle_steps: int = attrs.field(default=2000, validator=_check(lambda v: v >= 2, ">= 2"))


@attrs.define
class GradientConfig:
    """Gradient transforms, applied after the all-reduce in this order when set.

    Non-finite gradients are always withheld; `train.nan_policy` says what happens next.
    """

    clip_value: Optional[float] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045
    clip_norm: Optional[float] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045
    clip_global_norm: Optional[float] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045


@attrs.define
class TrainConfig:
    epochs: int = attrs.field(default=10, validator=non_negative)
    steps_per_execution: int = attrs.field(default=1, validator=at_least_one)
    jit_compile: bool = False
    nan_policy: NanPolicy = NanPolicy["raise"]
    accumulate: int = attrs.field(default=1, validator=at_least_one)
    precision: Precision = Precision.float32


@attrs.define
class CheckpointConfig:
    """Rolling checkpoints in <run dir>/checkpoints (or `directory`); the best one in best/."""

    every_steps: Optional[int] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045
    every_epochs: int = attrs.field(default=1, validator=at_least_one)
    keep: int = attrs.field(default=3, validator=at_least_one)
    directory: Optional[str] = None  # noqa: UP045


@attrs.define
class EarlyStoppingConfig:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs (null: off)."""

    monitor: str = "val_loss"
    mode: MonitorMode = MonitorMode.auto
    patience: Optional[int] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045
    min_delta: float = attrs.field(default=0.0, validator=non_negative)
    restore_best: bool = True


@attrs.define
class ReportConfig:
    """What a run shows and writes besides metrics.jsonl/.csv and summary.json."""

    progress_bar: Optional[bool] = None  # noqa: UP045 - null: a live bar only on a terminal
    tensorboard: bool = True
    tensorboard_every_steps: Optional[int] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045
    curves: bool = True



@attrs.define
class StrategyConfig:
    """Where a run's replicas live: `name` picks the tf.distribute strategy."""

    name: StrategyName = StrategyName.default
    devices: List[str] = []  # noqa: UP006 - one_device/mirrored: exact devices; empty: chosen
    logical_cpus: int = attrs.field(default=2, validator=at_least_one)


@attrs.define
class GanConfig:
    """The GAN experiments (gan, wgan_gp): models, losses, each player's optimizer, outputs."""

    latent_dim: int = attrs.field(default=32, validator=positive)
    loss: GanLoss = GanLoss.non_saturating
    label_noise: float = attrs.field(default=0.0, validator=dropout_rate)
    n_critic: int = attrs.field(default=1, validator=at_least_one)
    gradient_penalty: float = attrs.field(default=0.0, validator=non_negative)
    clip_norm: Optional[float] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045
    image_size: int = attrs.field(default=8, validator=image_size)
    generator_size: Optional[int] = attrs.field(default=None, validator=optional_image_size)  # noqa: UP045
    width: int = attrs.field(default=64, validator=positive)
    d_optimizer: OptimizerName = OptimizerName.adam
    d_learning_rate: float = attrs.field(default=2e-4, validator=positive)
    g_optimizer: OptimizerName = OptimizerName.adam
    g_learning_rate: float = attrs.field(default=2e-4, validator=positive)
    beta_1: float = attrs.field(default=0.5, validator=dropout_rate)
    beta_2: float = attrs.field(default=0.999, validator=unit_interval_open)
    grid: int = attrs.field(default=64, validator=positive)
    samples: int = attrs.field(default=1000, validator=positive)
    classifier_epochs: int = attrs.field(default=30, validator=at_least_one)


@attrs.define
class Config:
    experiment: str = "classifier"
    seed: int = attrs.field(default=0, validator=non_negative)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    gradient: GradientConfig = GradientConfig()
    train: TrainConfig = TrainConfig()
    gan: GanConfig = GanConfig()
    resume: Resume = Resume.auto
    checkpoint: CheckpointConfig = CheckpointConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    report: ReportConfig = ReportConfig()
    strategy: StrategyConfig = StrategyConfig()


def validate(instance: Any, path: str = "") -> None:
    """Runs every validator of `instance` and its nested schemas, naming the full key.

    Raises:
      ConfigError: ``"<full.key>: must be ..., got ..."`` for the first invalid value.
    """
    try:
        attrs.validate(instance)
    except InvalidValue as invalid:
        raise ConfigError(f"{path}{invalid.field}: {invalid.reason}") from None
    for field in attrs.fields(type(instance)):
        value = getattr(instance, field.name)
        if attrs.has(type(value)):
            validate(value, f"{path}{field.name}.")
