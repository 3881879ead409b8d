"""The typed configuration: attrs schemas Hydra composes YAML and overrides onto.

This module owns the keys, their types, defaults and valid ranges. Each validator sits
beside the field it guards, and every number is bounded to what its use can hold (an
integer TensorFlow keeps in int32 or int64, a rate that must be finite). Hydra/OmegaConf
check types at composition; `composeloop.config.store.to_config` turns the composed tree
into these instances and runs the validators, naming the FULL key of the first invalid
value (``optimizer.learning_rate``).

Sections whose part a user may replace (`data`, `model`, `optimizer`, `step`) are open
dicts to Hydra, so a YAML of yours may put any key in them (and the command line with
``++model.blocks=3``), with ``_target_``: an import path, Hydra-style. `to_config` reads
such a section into its attrs class: the keys the class knows are typed and validated as
any other, the others are the target's own arguments (``args``), refused when there is no
target to take them.

Known traps with hydra-core 1.3 / omegaconf 2.3, respected here: no ``attrs.field(factory=
...)``, no ``@attrs.frozen`` (it rejects CLI overrides), ``Enum`` rather than ``Literal``,
and ``_target_`` needs ``alias="_target_"`` (attrs strips a leading underscore otherwise).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from typing import Any, Dict, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

import attrs

from composeloop.errors import ConfigError
from composeloop.vocabulary import Direction, GanLoss, Mode, NanPolicy, Precision, StrategyKind, Weights

INT32_MAX = 2**31 - 1  # counts TensorFlow holds in int32 (and sizes of tensors' dimensions)
INT64_MAX = 2**63 - 1  # counts TensorFlow holds in int64 (steps)
SEED_MAX = 2**32 - 1  # NumPy's and Keras's seeds are 32-bit


class InvalidValue(ValueError):
    """A validator's verdict on one field; `validate` adds the path to the key."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check(test: Callable[[Any], bool], requirement: str, optional: bool = False) -> Callable:
    def validator(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if optional and value is None:
            return
        if _number(value) and isinstance(value, float) and not math.isfinite(value):
            raise InvalidValue(attribute.name, f"must be finite ({requirement}), got {value!r}")
        if not _number(value) or not test(value):
            raise InvalidValue(attribute.name, f"must be {requirement}, got {value!r}")

    return validator


def count(low: int, high: int = INT32_MAX, optional: bool = False) -> Callable:
    """An integer in [low, high]: the bound is what its TensorFlow use can hold."""
    requirement = f"an integer in [{low}, {high}]" if high < INT64_MAX else f"an integer >= {low}"
    return _check(lambda v: isinstance(v, int) and low <= v <= high, requirement, optional)


positive = _check(lambda v: v > 0, "> 0")
optional_positive = _check(lambda v: v > 0, "> 0", optional=True)
non_negative = _check(lambda v: v >= 0, ">= 0")
optional_non_negative = _check(lambda v: v >= 0, ">= 0", optional=True)
unit_interval_open = _check(lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")
optional_unit_interval_open = _check(lambda v: 0 < v < 1, "between 0 and 1 (exclusive)", optional=True)
fraction = _check(lambda v: 0 <= v < 1, "in [0, 1)")
unit_interval_closed_above = _check(lambda v: 0 < v <= 1, "in (0, 1]")
optional_fraction = _check(lambda v: 0 <= v < 1, "in [0, 1)", optional=True)


def _image_size_ok(v: int) -> bool:
    return isinstance(v, int) and 4 <= v <= 4096 and v % 4 == 0 and (v // 4) & (v // 4 - 1) == 0


_POWER_OF_TWO_TIMES_4 = "4 times a power of two (8, 16, ... 4096)"
image_size = _check(_image_size_ok, _POWER_OF_TWO_TIMES_4)
optional_image_size = _check(_image_size_ok, _POWER_OF_TWO_TIMES_4, optional=True)


def example_shape(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not value or not all(isinstance(d, int) and 1 <= d <= 65536 for d in value):
        raise InvalidValue(attribute.name, f"must be a non-empty list of sizes in [1, 65536], got {list(value or [])}")


def optional_import_path(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip() or " " in value.strip()):
        raise InvalidValue(attribute.name, f"must be an import path like my_pkg.module.name, got {value!r}")


def regular_expressions(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A list of regular expressions (variable path patterns); names the entry at fault."""
    if not isinstance(value, list | tuple):
        raise InvalidValue(attribute.name, f"must be a list of patterns, got {value!r}")
    for index, pattern in enumerate(value):
        where = f"{attribute.name}[{index}]"
        if not isinstance(pattern, str) or not pattern:
            raise InvalidValue(where, f"must be a non-empty pattern (a regular expression), got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as error:
            raise InvalidValue(where, f"{pattern!r} is not a regular expression: {error}") from None


def _target() -> Any:
    return attrs.field(default=None, alias="_target_", validator=optional_import_path)


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


class Resume(enum.Enum):
    auto = "auto"  # continue from the run directory's latest checkpoint, if any
    never = "never"  # refuse a run directory that already holds a run


@attrs.define
class DataConfig:
    """Where examples come from: a built-in `source`, or your function by `_target_`."""

    _target_: Optional[str] = _target()  # noqa: UP045 - OmegaConf reads typing generics
    source: DataSource = DataSource.digits
    path: Optional[str] = None  # noqa: UP045
    batch_size: int = attrs.field(default=32, validator=count(1))
    val_fraction: float = attrs.field(default=0.2, validator=unit_interval_open)
    synthetic_examples: int = attrs.field(default=256, validator=count(2, 10_000_000))
    synthetic_shape: List[int] = attrs.field(default=[8, 8], validator=example_shape)  # noqa: UP006
    synthetic_classes: int = attrs.field(default=10, validator=count(2, 1_000_000))
    args: Dict[str, Any] = {}  # noqa: UP006 - not a key: the section's other keys, the target's arguments


@attrs.define
class ModelConfig:
    """The model a single-model composition trains: built-in `name`, or yours by `_target_`."""

    _target_: Optional[str] = _target()  # noqa: UP045
    name: ModelName = ModelName.mlp
    width: int = attrs.field(default=64, validator=count(1, 1_000_000))
    depth: int = attrs.field(default=2, validator=count(1, 1000))
    l2: float = attrs.field(default=0.0, validator=non_negative)
    dropout: float = attrs.field(default=0.0, validator=fraction)
    num_classes: Optional[int] = attrs.field(default=None, validator=count(2, 10_000_000, optional=True))  # noqa: UP045
    args: Dict[str, Any] = {}  # noqa: UP006


@attrs.define
class OptimizerConfig:
    """One Keras optimizer per variable group, made fresh for each: built-in `name` or any
    `keras.optimizers` class (or yours) by `_target_`, with a learning-rate schedule.

    `schedule` is a name (constant, cosine, cyclic) or a ``{_target_: ...}`` giving a Keras
    `LearningRateSchedule` or a function of the update count.

    `weight_decay` is composeloop's decoupled weight decay, the same for every optimizer
    and every phase (``w -= learning_rate * weight_decay * w`` before each update, AdamW's
    rule), sparing the variables whose path matches a `weight_decay_exclude` pattern. When
    it is set, an optimizer's own decay (AdamW's default 0.004) is switched off, so weights
    are never decayed twice; null leaves the optimizer's own as it is.
    """

    _target_: Optional[str] = _target()  # noqa: UP045
    name: OptimizerName = OptimizerName.adam
    learning_rate: float = attrs.field(default=1e-3, validator=positive)
    momentum: Optional[float] = attrs.field(default=None, validator=optional_fraction)  # noqa: UP045 - sgd
    beta_1: Optional[float] = attrs.field(default=None, validator=optional_fraction)  # noqa: UP045 - adam
    beta_2: Optional[float] = attrs.field(default=None, validator=optional_unit_interval_open)  # noqa: UP045
    schedule: Any = "constant"
    warmup_steps: int = attrs.field(default=0, validator=count(0, INT64_MAX))
    min_learning_rate: float = attrs.field(default=0.0, validator=non_negative)
    cycle_steps: int = attrs.field(default=2000, validator=count(2, INT64_MAX))
    weight_decay: Optional[float] = attrs.field(default=None, validator=optional_non_negative)  # noqa: UP045
    weight_decay_exclude: List[str] = attrs.field(default=[], validator=regular_expressions)  # noqa: UP006
    args: Dict[str, Any] = {}  # noqa: UP006


@attrs.define
class GradientConfig:
    """Gradient transforms, run after the all-reduce: `skip_nonfinite` (always first), then
    `transforms` in order, then the clip keys that are set (value, norm, global norm).

    `transforms` entries: a built-in name (``clip_by_global_norm``), ``{name: {arg: value}}``,
    or ``{_target_: my_pkg.transform, arg: value}``.
    """

    transforms: List[Any] = []  # noqa: UP006
    clip_value: Optional[float] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045
    clip_norm: Optional[float] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045
    clip_global_norm: Optional[float] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045


@attrs.define
class StepConfig:
    """The composition: a step builder by `_target_`; the section's extra keys are its arguments.

    A builder is called with what its parameters name (see `composeloop.app.compositions`).
    """

    _target_: str = attrs.field(default="composeloop.parts.recipes.classifier_step", alias="_target_")
    args: Dict[str, Any] = {}  # noqa: UP006

    @_target_.validator
    def _check_target(self, attribute: attrs.Attribute, value: Any) -> None:
        optional_import_path(self, attribute, value)
        if value is None:
            raise InvalidValue(attribute.name, "a step builder is required (an import path)")


@attrs.define
class TrainConfig:
    """How every phase trains. `ema` (a decay) keeps an exponential moving average of the
    weights, which validation, the saved models and the other modes use; `lookahead` (k)
    pulls slow weights `lookahead_alpha` of the way towards the fast ones every k updates.
    """

    epochs: int = attrs.field(default=10, validator=count(0, INT32_MAX))
    steps_per_execution: int = attrs.field(default=1, validator=count(1, INT32_MAX))
    jit_compile: bool = False
    nan_policy: NanPolicy = NanPolicy["raise"]
    accumulate: int = attrs.field(default=1, validator=count(1, INT32_MAX))
    precision: Precision = Precision.float32
    ema: Optional[float] = attrs.field(default=None, validator=optional_unit_interval_open)  # noqa: UP045 - null: off
    ema_warmup: bool = True  # decay min(ema, (1 + n) / (10 + n)) for the n-th update
    lookahead: Optional[int] = attrs.field(default=None, validator=count(1, INT32_MAX, optional=True))  # noqa: UP045 - k
    lookahead_alpha: float = attrs.field(default=0.5, validator=unit_interval_closed_above)


@attrs.define
class CheckpointConfig:
    """Rolling checkpoints in <run dir>/checkpoints (or `directory`); the best one in best/.

    `restore` is which one the modes other than train use (``checkpoint=best`` selects it).
    """

    every_steps: Optional[int] = attrs.field(default=None, validator=count(1, INT64_MAX, optional=True))  # noqa: UP045
    every_epochs: int = attrs.field(default=1, validator=count(1, INT32_MAX))
    keep: int = attrs.field(default=3, validator=count(1, 10_000))
    directory: Optional[str] = None  # noqa: UP045
    restore: Weights = Weights.latest


@attrs.define
class EarlyStoppingConfig:
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs (null: off)."""

    monitor: str = "val_loss"
    mode: Direction = Direction.auto
    patience: Optional[int] = attrs.field(default=None, validator=count(1, INT32_MAX, optional=True))  # noqa: UP045
    min_delta: float = attrs.field(default=0.0, validator=non_negative)
    restore_best: bool = True


@attrs.define
class ReportConfig:
    """What a run shows and writes besides metrics.jsonl/.csv and summary.json."""

    progress_bar: Optional[bool] = None  # noqa: UP045 - null: a live bar only on a terminal
    tensorboard: bool = True
    tensorboard_every_steps: Optional[int] = attrs.field(  # noqa: UP045
        default=None, validator=count(1, INT64_MAX, optional=True)
    )
    curves: bool = True


class TrackingBackend(enum.Enum):
    none = "none"  # the run directory only
    mlflow = "mlflow"  # also an MLflow run (the composeloop[tracking] extra)


@attrs.define
class TrackingConfig:
    """Where runs are recorded besides their directory (`tracking=mlflow` selects MLflow).

    `uri` is any MLflow tracking URI; the default is a SQLite file in the working directory
    (no server). `experiment` is the MLflow experiment (null: the config's `experiment`).
    """

    backend: TrackingBackend = TrackingBackend.none
    uri: str = "sqlite:///mlflow.db"
    experiment: Optional[str] = None  # noqa: UP045


@attrs.define
class StrategyConfig:
    """Where a run's replicas live: `name` picks the tf.distribute strategy."""

    name: StrategyKind = StrategyKind.default
    devices: List[str] = []  # noqa: UP006 - one_device/mirrored: exact devices; empty: chosen
    logical_cpus: int = attrs.field(default=2, validator=count(1, 256))


@attrs.define
class GanConfig:
    """The GAN composition (`+experiment=gan`, `wgan_gp`): its models, losses and outputs.

    Both players' optimizers come from `optimizer.*` (one fresh each) and their gradient
    transforms from `gradient.*`; `d_learning_rate`/`g_learning_rate` set a player's own
    peak learning rate (null: `optimizer.learning_rate`).
    """

    latent_dim: int = attrs.field(default=32, validator=count(1, 1_000_000))
    loss: GanLoss = GanLoss.non_saturating
    label_noise: float = attrs.field(default=0.0, validator=fraction)
    n_critic: int = attrs.field(default=1, validator=count(1, 1000))
    gradient_penalty: float = attrs.field(default=0.0, validator=non_negative)
    image_size: int = attrs.field(default=8, validator=image_size)
    generator_size: Optional[int] = attrs.field(default=None, validator=optional_image_size)  # noqa: UP045
    width: int = attrs.field(default=64, validator=count(1, 1_000_000))
    d_learning_rate: Optional[float] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045
    g_learning_rate: Optional[float] = attrs.field(default=None, validator=optional_positive)  # noqa: UP045
    grid: int = attrs.field(default=64, validator=count(1, 4096))
    samples: int = attrs.field(default=1000, validator=count(1, 1_000_000))
    classifier_epochs: int = attrs.field(default=30, validator=count(1, 100_000))


@attrs.define
class LrFindConfig:
    """`mode=lr_find` (`+experiment=lr_find`): the learning-rate range test.

    The learning rate of every phase's optimizer ramps exponentially from `start` to `end`
    over `steps` training steps; the test stops early once the smoothed loss exceeds
    `divergence` times its minimum (or is not finite).
    """

    start: float = attrs.field(default=1e-7, validator=positive)
    end: float = attrs.field(default=10.0, validator=positive)
    steps: int = attrs.field(default=100, validator=count(2, 10_000_000))
    smoothing: float = attrs.field(default=0.9, validator=fraction)  # the weight of the old loss average
    divergence: float = attrs.field(default=4.0, validator=_check(lambda v: v > 1, "> 1"))


@attrs.define
class PredictConfig:
    """`mode=predict`: the model applied to `input` (an .npz holding `x`) -> predictions.npz."""

    input: Optional[str] = None  # noqa: UP045
    model: Optional[str] = None  # noqa: UP045 - which model of several (null: the only one)


def section_keys(section: type) -> list[str]:
    """The keys an open section's class knows (its `args` are the others)."""
    return [field.name for field in attrs.fields(section) if field.name != "args"]


def section_defaults(section: type) -> dict[str, Any]:
    """An open section's defaults as the plain dict Hydra composes onto (enums by name)."""
    fields = attrs.fields_dict(section)
    values = {}
    for name in section_keys(section):
        default = fields[name].default
        default = default.factory() if isinstance(default, attrs.Factory) else default  # type: ignore[attr-defined]
        values[name] = default.name if isinstance(default, enum.Enum) else default
    return values


@attrs.define
class Config:
    experiment: str = "classifier"
    mode: Mode = Mode.train
    seed: int = attrs.field(default=0, validator=count(0, SEED_MAX))
    main_metric: Optional[str] = None  # noqa: UP045 - what sweeps and search judge by; null: the composition's
    # Open sections (see the module docstring): dicts when composed, attrs records once validated.
    data: Any = section_defaults(DataConfig)
    model: Any = section_defaults(ModelConfig)
    optimizer: Any = section_defaults(OptimizerConfig)
    gradient: GradientConfig = GradientConfig()
    metrics: List[Any] = []  # noqa: UP006 - extra metrics: built-in names or {_target_: ...}
    step: Any = section_defaults(StepConfig)
    train: TrainConfig = TrainConfig()
    gan: GanConfig = GanConfig()
    resume: Resume = Resume.auto
    checkpoint: CheckpointConfig = CheckpointConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    report: ReportConfig = ReportConfig()
    tracking: TrackingConfig = TrackingConfig()
    strategy: StrategyConfig = StrategyConfig()
    predict: PredictConfig = PredictConfig()
    lr_find: LrFindConfig = LrFindConfig()


# Open sections: a user may set their `_target_`; their other keys are the target's arguments.
TARGET_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optimizer": OptimizerConfig, "step": StepConfig}


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
