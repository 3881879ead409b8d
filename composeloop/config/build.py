"""Builders: validated config sections -> data, models, optimizers, transforms, metrics.

This module owns the mapping from config values to objects, for built-in parts by name and
users' own by ``_target_`` (through `composeloop.config.parts`), each checked to be the right
kind of object before any training: a model is a Keras model, an optimizer a Keras
optimizer, a transform takes (gradients, variables, context), a metric is a
`composeloop.step.Metric`. Optimizers and transforms come as factories, because each
variable group needs its own. It holds no training logic and does not place strategies
(that is the application's, which alone knows the engine). TensorFlow and Keras are
imported inside the builders, after the config has been validated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from composeloop.config import parts
from composeloop.config.parts import PartSpec, call_with, resolve
from composeloop.config.schema import (
    DataConfig,
    DataSource,
    GradientConfig,
    ModelConfig,
    OptimizerConfig,
    OptimizerName,
    Schedule,
    StrategyConfig,
    TrainConfig,
)
from composeloop.errors import ConfigError
from composeloop.parts import data as datasets
from composeloop.vocabulary import Precision, StrategyKind

# ---------------------------------------------------------------------------- data and models


def load_data(config: DataConfig, seed: int) -> datasets.ArrayData | datasets.Datasets:
    """The configured data: a built-in source, or what `data._target_` returns.

    A target may return `ArrayData`, a mapping or object with ``x_train, y_train, x_val,
    y_val`` arrays, Keras's ``((x_train, y_train), (x_val, y_val))``, or `Datasets`; it is
    offered ``seed``, ``batch_size`` and ``val_fraction`` by parameter name.

    Raises:
      DataError: a file, array or shape at fault; ConfigError: a bad target.
    """
    if config._target_:
        offered = {"seed": seed, "batch_size": config.batch_size, "val_fraction": config.val_fraction}
        value = call_with(resolve(config._target_, "data._target_"), "data._target_", config.args, offered)
        return datasets.as_data(value, f"data._target_ ({config._target_})")
    if config.source is DataSource.digits:
        return datasets.digits(val_fraction=config.val_fraction, seed=seed)
    if config.source is DataSource.npz:
        if not config.path:
            raise ConfigError("data.path: data=npz needs a file: set data.path=FILE.npz")
        return datasets.load_npz(config.path)
    return datasets.synthetic(
        examples=config.synthetic_examples,
        shape=tuple(config.synthetic_shape),
        classes=config.synthetic_classes,
        val_fraction=config.val_fraction,
        seed=seed,
    )


def build_model(config: ModelConfig, data: Any) -> Any:
    """The configured model, built for the data's example shape and classes.

    A ``model._target_`` (a Keras model class or a function returning a model) gets the
    section's arguments and, when it names them, ``input_shape``, ``num_classes`` and ``data``.

    Raises:
      ConfigError: a target that does not give a Keras model; DataError: labels that do not fit.
    """
    import keras

    num_classes = config.num_classes or data.num_classes
    datasets.check_labels(data, num_classes)
    if config._target_:
        target = resolve(config._target_, "model._target_")
        offered = {"input_shape": data.example_shape, "num_classes": num_classes, "data": data}
        model = target if isinstance(target, keras.Model) else call_with(target, "model._target_", config.args, offered)
        if not isinstance(model, keras.Model):
            raise ConfigError(
                f"model._target_: {config._target_} gave {type(model).__name__}, not a Keras model (keras.Model)"
            )
        return built(model, data.example_shape, "model._target_")
    from composeloop.parts.models import build_classifier

    return build_classifier(
        config.name.value,
        data.example_shape,
        num_classes,
        width=config.width,
        depth=config.depth,
        l2=config.l2,
        dropout=config.dropout,
    )


def built(model: Any, example_shape: tuple[int, ...], key: str) -> Any:
    """`model` with its variables made, by calling it once on a batch of zeros if needed."""
    import numpy as np

    if not model.built or not model.trainable_variables:
        try:
            model(np.zeros((1, *example_shape), np.float32))
        except Exception as error:  # a user model that does not take the data's shape
            first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise ConfigError(
                f"{key}: the model cannot take examples of shape {tuple(example_shape)}: {first}"
            ) from None
    return model


# ---------------------------------------------------------------------------- optimizers


def build_schedule(config: OptimizerConfig, total_steps: int, peak: float | None = None) -> Any:
    """The configured learning rate: a float for `constant` without warmup, else a schedule.

    Args:
      config: the optimizer section.
      total_steps: the run's update count; cosine decays over what follows the warmup.
      peak: the peak rate (default: ``config.learning_rate``).
    """
    from composeloop.step import schedules

    peak = config.learning_rate if peak is None else peak
    schedule = parts.check_schedule(config.schedule)
    if schedule is Schedule.constant and config.warmup_steps == 0:
        return peak
    if schedule is None:  # the user's, by _target_: a Keras schedule or a function of the step
        main = _user_schedule(config.schedule)
        name = config.schedule["_target_"]
    elif schedule is Schedule.cosine:
        main = schedules.cosine(peak, max(total_steps - config.warmup_steps, 1), config.min_learning_rate)
        name = schedule.value
    elif schedule is Schedule.cyclic:
        main = schedules.triangular(config.min_learning_rate, peak, config.cycle_steps)
        name = schedule.value
    else:
        main, name = schedules.constant(peak), schedule.value
    description = f"{name} peak={peak} warmup={config.warmup_steps}"
    return schedules.keras_schedule(schedules.warmup(main, config.warmup_steps), description)


def _user_schedule(spec: Mapping[str, Any]) -> Callable:
    import tensorflow as tf

    key = "optimizer.schedule._target_"
    args = {k: v for k, v in spec.items() if k != "_target_"}
    value = call_with(resolve(spec["_target_"], key), key, args)
    if not callable(value):
        raise ConfigError(f"{key}: {spec['_target_']} gave {type(value).__name__}, not a schedule (step -> rate)")
    return lambda step: tf.cast(value(step), tf.float32)


# composeloop's optimizer keys a Keras optimizer takes by the same name, passed when set.
_OPTIMIZER_ARGUMENTS = ("momentum", "beta_1", "beta_2")
_BUILTIN_ARGUMENTS = {OptimizerName.adam: ("beta_1", "beta_2"), OptimizerName.sgd: ("momentum",)}


def optimizer_factory(config: OptimizerConfig, total_steps: int = 1) -> Callable[..., Any]:
    """A function making fresh configured optimizers, one per variable group.

    The factory takes an optional ``learning_rate`` (a player's own peak rate). A
    ``optimizer._target_`` (any `keras.optimizers` class, or yours) gets the schedule as
    ``learning_rate``, ``momentum``/``beta_1``/``beta_2`` when they are set, and the
    section's extra keys; a set key the target does not take is refused. With
    ``optimizer.weight_decay`` set, a Keras optimizer's own weight decay (AdamW's) is
    switched off: composeloop's decoupled decay (`composeloop.config.stages.wrap_apply`)
    takes its place, so weights are never decayed twice.

    Raises:
      ConfigError: naming the key (at the first call, before any training).

    Example:
      >>> make = optimizer_factory(config.optimizer, total_steps=1000)
      >>> d_optimizer, g_optimizer = make(), make(learning_rate=1e-4)
    """
    import keras

    set_arguments = {name: getattr(config, name) for name in _OPTIMIZER_ARGUMENTS if getattr(config, name) is not None}
    if config._target_:
        target = resolve(config._target_, "optimizer._target_")
        for name in set_arguments:
            if not parts.accepts(target, name):
                raise ConfigError(f"optimizer.{name}: {config._target_} does not take '{name}'")
    else:
        for name in set_arguments:
            if name not in _BUILTIN_ARGUMENTS[config.name]:
                raise ConfigError(f"optimizer.{name}: does not apply to optimizer.name={config.name.value}")

    def make(learning_rate: float | None = None) -> Any:
        schedule = build_schedule(config, total_steps, learning_rate)
        if not config._target_:
            if config.name is OptimizerName.sgd:
                return keras.optimizers.SGD(learning_rate=schedule, momentum=set_arguments.get("momentum", 0.0))
            return keras.optimizers.Adam(learning_rate=schedule, **set_arguments)
        args = {**config.args, **set_arguments, "learning_rate": schedule}
        optimizer = call_with(target, "optimizer._target_", args)
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise ConfigError(
                f"optimizer._target_: {config._target_} gave {type(optimizer).__name__}, not a Keras optimizer"
            )
        if config.weight_decay is not None:
            optimizer.weight_decay = None  # Keras's own decay: composeloop's replaces it (wrap_apply)
        return optimizer

    make()  # a wrong argument fails now, not when the step is built
    return make


def total_updates(examples: int, batch_size: int, train: TrainConfig) -> int:
    """How many optimizer updates a run makes (a cosine schedule decays over them)."""
    return max(math.ceil(examples / batch_size) * train.epochs // train.accumulate, 1)


# ---------------------------------------------------------------------------- transforms and metrics


def _as_transform(value: Any, spec: PartSpec) -> Any:
    from composeloop.step.compose import SLOT_ARGUMENTS, accepts_arguments

    if not callable(value) or not accepts_arguments(value, len(SLOT_ARGUMENTS["transform"])):
        raise ConfigError(
            f"{spec.key}: {spec.target or spec.name} gave {type(value).__name__}, not a gradient transform "
            "(a function of gradients, variables, context)"
        )
    return value


def _chain(specs: Sequence[PartSpec]) -> Any:
    from composeloop import step

    return step.chain(*(_transform(spec) for spec in specs))


def _group_transform(spec: PartSpec) -> Any:
    """A configured `masked` or `partition` (see `composeloop.config.parts.group_specs`)."""
    from composeloop import step

    groups, default = parts.group_specs(spec)
    if spec.name == "masked":
        return step.masked(_chain(groups[0].transforms), list(groups[0].patterns), name=f"{spec.key}.masked")
    seen: dict[str, str] = {}
    for group in groups:
        pattern = group.patterns[0]
        if pattern in seen:
            raise ConfigError(f"{group.key}.pattern: {pattern!r} is already the pattern of {seen[pattern]}")
        seen[pattern] = group.key
    chains = {group.patterns[0]: _chain(group.transforms) for group in groups}
    default_chain = None if default is None else _chain(default)
    return step.partition(chains, default=default_chain, name=f"{spec.key}.partition")


def _transform(spec: PartSpec) -> Any:
    """A transform from a spec: a built-in factory's, or a target that is a transform (three
    required arguments), a function of the gradient list (one), or a factory (none, or args)."""
    from composeloop import step

    if spec.name in parts.GROUP_TRANSFORMS:
        return _group_transform(spec)
    if spec.name:
        return _as_transform(call_with(getattr(step, spec.name), spec.key, spec.args), spec)
    target = resolve(spec.target, f"{spec.key}._target_")
    required = parts.required_positional(target)
    if not spec.args and required == 3:
        return target
    if not spec.args and required == 1:
        return step.map_gradients(target)
    return _as_transform(call_with(target, f"{spec.key}._target_", spec.args), spec)


def transform_factory(config: GradientConfig) -> Callable[[], Any]:
    """A function making the configured gradient transform chain, fresh for each phase.

    The chain: `skip_nonfinite` (always first: the clips turn NaN into 0, which would hide a
    non-finite step), then `gradient.transforms` in order, then the clip keys that are set.

    Example:
      >>> make = transform_factory(config.gradient)
      >>> phase = classifier_phase(optimizer, transform=make())
    """
    from composeloop import step

    specs = [
        spec
        for spec in parts.part_specs(config.transforms, "gradient.transforms", parts.BUILTIN_TRANSFORMS)
        if spec.name != "skip_nonfinite"
    ]
    parts.transform_specs(config.transforms, "gradient.transforms")  # the nested lists too

    def make() -> Any:
        transforms = [step.skip_nonfinite(), *(_transform(spec) for spec in specs)]
        if config.clip_value is not None:
            transforms.append(step.clip_by_value(-config.clip_value, config.clip_value))
        if config.clip_norm is not None:
            transforms.append(step.clip_by_norm(config.clip_norm))
        if config.clip_global_norm is not None:
            transforms.append(step.clip_by_global_norm(config.clip_global_norm))
        return step.chain(*transforms)

    make()  # a bad transform fails now, not when the step is built
    return make


def build_metrics(entries: list[Any]) -> tuple[Any, ...]:
    """The configured extra metrics (`metrics`): built-in names or ``{_target_: ...}`` giving a `Metric`."""
    from composeloop import step

    metrics = []
    for spec in parts.part_specs(entries, "metrics", parts.BUILTIN_METRICS):
        if spec.name:
            metric = call_with(getattr(step, spec.name), spec.key, spec.args)
        else:
            target = resolve(spec.target, f"{spec.key}._target_")
            metric = target if isinstance(target, step.Metric) else call_with(target, f"{spec.key}._target_", spec.args)
        if not isinstance(metric, step.Metric):
            raise ConfigError(
                f"{spec.key}: {spec.target or spec.name} gave {type(metric).__name__}, not a composeloop.step.Metric"
            )
        metrics.append(metric)
    return tuple(metrics)


# ---------------------------------------------------------------------------- run-wide settings


def check_cluster(config: StrategyConfig) -> None:
    """For strategy=multi_worker: checks the cluster environment there is (TF_CONFIG, or srun's
    SLURM variables) before TensorFlow loads, a ConfigError naming the variable. None at all
    is not an error here: a sweep may submit its jobs to a scheduler from a shell outside any
    cluster; the worker that finds none says so when it makes its strategy."""
    if config.name is StrategyKind.multi_worker:
        from composeloop.cluster import described, resolve

        if described():
            resolve()


def set_precision(precision: Precision) -> None:
    """Sets Keras's global dtype policy; models built afterwards compute in it (float32 too,
    so that one job of a multirun does not leak its policy into the next)."""
    import keras

    keras.mixed_precision.set_global_policy(precision.value)


def wrap_apply(step: Any, optimizer: OptimizerConfig, train: TrainConfig) -> Any:
    """Weight decay, lookahead and EMA around every phase's apply stage; see
    `composeloop.config.stages.wrap_apply`. Apply it before `adapt_step`."""
    from composeloop.config import stages

    return stages.wrap_apply(step, optimizer, train)


def adapt_step(step: Any, config: TrainConfig) -> Any:
    """The step with accumulation (train.accumulate) and float16 loss scaling (train.precision)
    wired into every phase; the step itself, untouched, for accumulate=1 and no float16."""
    from composeloop.step import compose
    from composeloop.step.accumulate import accumulated
    from composeloop.step.precision import loss_scaled

    if config.accumulate == 1 and config.precision is not Precision.mixed_float16:
        return step
    phases = [accumulated(phase, config.accumulate) for phase in step.phases]
    if config.precision is Precision.mixed_float16:
        phases = [loss_scaled(phase) for phase in phases]
    return compose(*phases, models=step.models)
