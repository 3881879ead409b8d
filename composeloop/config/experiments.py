"""Experiments: a validated `Config` and a run directory -> a finished run and its outputs.

This module owns what the classifier experiment writes into its run directory beyond what
every run writes (see `runner`): the trained model. It also dispatches to the other
experiments, and checks the run directory before anything loads. The CLI calls `run`; so
can Python code that wants the CLI's behaviour without Hydra.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from composeloop.config import build, runner
from composeloop.config.gan import train_gan
from composeloop.config.schema import Config
from composeloop.errors import ConfigError


def train_classifier(config: Config, directory: Path) -> dict[str, Any]:
    """Trains the configured classifier and writes its outputs; returns the summary."""
    started = time.perf_counter()
    data = build.load_data(config.data, config.seed)  # before TensorFlow loads: bad files fail fast

    import keras

    from composeloop.engine import strategies
    from composeloop.engine.compile import compile_step
    from composeloop.engine.report import write_json_atomically
    from composeloop.parts.data import batches
    from composeloop.parts.recipes import classifier_step

    keras.utils.set_random_seed(config.seed)
    build.set_precision(config.train.precision)
    placed = build.build_strategy(config.strategy)
    outputs = strategies.output_directory(placed.strategy, directory)  # only the chief writes the run's
    batch_size = config.data.batch_size
    updates = math.ceil(len(data.x_train) / batch_size) * config.train.epochs // config.train.accumulate
    with placed.strategy.scope():
        model = build.build_model(config.model, data)
        optimizer = build.build_optimizer(config.optimizer, max(updates, 1))
        step = classifier_step(model, optimizer, transform=build.build_transform(config.gradient))
    program = compile_step(build.adapt_step(step, config.train), **runner.compile_options(config, placed.strategy))
    training = runner.Training(
        program,
        lambda epoch: batches(data.x_train, data.y_train, batch_size, seed=config.seed, epoch=epoch),
        lambda: batches(data.x_val, data.y_val, batch_size, shuffle=False),
    )
    state = runner.train(config, outputs, training, restore_from=directory)
    model.save(outputs / "model.keras")  # the best epoch's weights when early stopping restored them
    summary = runner.summary(config, state, started)
    write_json_atomically(outputs / "summary.json", summary)
    return summary


EXPERIMENTS: dict[str, Callable[[Config, Path], dict[str, Any]]] = {
    "classifier": train_classifier,
    "gan": train_gan,
    "wgan_gp": train_gan,
}


def run(config: Config, directory: str | Path) -> dict[str, Any]:
    """Runs the configured experiment into `directory`; returns its summary."""
    directory = Path(directory)
    if config.experiment not in EXPERIMENTS:
        raise ConfigError(f"experiment: unknown '{config.experiment}'; known: {', '.join(EXPERIMENTS)}")
    directory.mkdir(parents=True, exist_ok=True)
    runner.check_run_directory(config, directory)
    return EXPERIMENTS[config.experiment](config, directory)
