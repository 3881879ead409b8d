"""Builders: validated config sections -> data, models, optimizers, transforms, strategies.

This module owns the mapping from config values to objects; it holds no training logic.
Imports of TensorFlow and Keras happen here, after the config has been validated, so that
a bad config is reported without waiting for TensorFlow to load.
"""

from __future__ import annotations

from typing import Any

from composeloop.config.schema import (
    DataConfig,
    DataSource,
    GradientConfig,
    ModelConfig,
    OptimizerConfig,
    OptimizerName,
    Precision,
    Schedule,
    StrategyConfig,
    StrategyName,
    TrainConfig,
)
from composeloop.errors import ConfigError
from composeloop.parts import data as datasets


def load_data(config: DataConfig, seed: int) -> datasets.ArrayData:
    """Loads the configured arrays; a DataError names the file or shapes at fault."""
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


def build_model(config: ModelConfig, data: datasets.ArrayData) -> Any:
    """A built classifier for the data's example shape; checks the labels fit its classes."""
    from composeloop.parts.models import build_classifier

    num_classes = config.num_classes or data.num_classes
    datasets.check_labels(data, num_classes)
    return build_classifier(
        config.name.value,
        data.example_shape,
        num_classes,
        width=config.width,
        depth=config.depth,
        l2=config.l2,
        dropout=config.dropout,
    )


def build_schedule(config: OptimizerConfig, total_steps: int) -> Any:
    """The configured learning rate: a float for `constant` without warmup, else a schedule.

    Args:
      config: the optimizer section.
      total_steps: the run's update count; cosine decays over what follows the warmup.
    """
    from composeloop.step import schedules

    if config.schedule is Schedule.constant and config.warmup_steps == 0:
        return config.learning_rate
    peak, floor = config.learning_rate, config.min_learning_rate
    if config.schedule is Schedule.cosine:
        main = schedules.cosine(peak, max(total_steps - config.warmup_steps, 1), floor)
    elif config.schedule is Schedule.cyclic:
        main = schedules.triangular(floor, peak, config.cycle_steps)
    else:
        main = schedules.constant(peak)
    description = f"{config.schedule.value} peak={peak} warmup={config.warmup_steps}"
    return schedules.keras_schedule(schedules.warmup(main, config.warmup_steps), description)


def build_optimizer(config: OptimizerConfig, total_steps: int = 1) -> Any:
    """A fresh Keras 3 optimizer with the configured learning-rate schedule."""
    import keras

    learning_rate = build_schedule(config, total_steps)
    if config.name is OptimizerName.sgd:
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=config.momentum)
    return keras.optimizers.Adam(learning_rate=learning_rate)


def build_transform(config: GradientConfig) -> Any:
    """The chain of configured gradient transforms: skip non-finite, then value, norm, global norm.

    A step whose gradients are not finite is always withheld (`train.nan_policy` decides
    what the run does next), and first in the chain, because the clips turn NaN into 0.
    """
    from composeloop import step

    transforms = [step.skip_nonfinite()]
    if config.clip_value is not None:
        transforms.append(step.clip_by_value(-config.clip_value, config.clip_value))
    if config.clip_norm is not None:
        transforms.append(step.clip_by_norm(config.clip_norm))
    if config.clip_global_norm is not None:
        transforms.append(step.clip_by_global_norm(config.clip_global_norm))
    return step.chain(*transforms)


_announced: set[str] = set()


def build_strategy(config: StrategyConfig) -> Any:
    """The configured strategy, made once per process, with its note printed the first time.

    The CLI calls this before anything touches a device (logical CPUs and multi-worker
    collectives must be set up before TensorFlow initialises); later calls, such as the
    experiment's, get the same strategy.

    Returns:
      A `composeloop.engine.strategies.Placed` (``.strategy``, ``.replicas``, ``.note``).
    """
    from composeloop.engine import strategies

    placed = strategies.place(config.name.value, config.devices, config.logical_cpus)
    if config.name is not StrategyName.default and placed.note not in _announced:
        _announced.add(placed.note)
        print(f"composeloop: {placed.note}", flush=True)
    return placed


def check_cluster(config: StrategyConfig) -> None:
    """For strategy=multi_worker: checks the cluster environment there is (TF_CONFIG, or srun's
    SLURM variables) before TensorFlow loads, a ConfigError naming the variable. None at all
    is not an error here: a sweep may submit its jobs to a scheduler from a shell outside any
    cluster; the worker that finds none says so when it makes its strategy."""
    if config.name is StrategyName.multi_worker:
        from composeloop.cluster import described, resolve

        if described():
            resolve()


def set_precision(precision: Precision) -> None:
    """Sets Keras's global dtype policy; models built afterwards compute in it (float32 too,
    so that one job of a multirun does not leak its policy into the next)."""
    import keras

    keras.mixed_precision.set_global_policy(precision.value)


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
