"""Experiments: a validated `Config` and a run directory -> a finished run and its outputs.

This module owns what each experiment writes into its run directory (metrics.jsonl,
summary.json, the trained model) and refuses to write over an earlier run's results. The
CLI calls `run`; so can Python code that wants the CLI's behaviour without Hydra.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from composeloop.config import build
from composeloop.config.gan import train_gan
from composeloop.config.schema import Config
from composeloop.errors import ConfigError

RESULT_FILES = ("summary.json", "metrics.jsonl")


def _refuse_earlier_results(directory: Path) -> None:
    found = [name for name in RESULT_FILES if (directory / name).exists()]
    if found:
        raise ConfigError(
            f"hydra.run.dir: {directory} already holds a run's results ({', '.join(found)}); choose another directory"
        )


def train_classifier(config: Config, directory: Path) -> dict[str, Any]:
    """Trains the configured classifier and writes its outputs; returns the summary."""
    started = time.perf_counter()
    data = build.load_data(config.data, config.seed)  # before TensorFlow loads: bad files fail fast

    import keras

    from composeloop.engine import strategies
    from composeloop.engine.compile import compile_step
    from composeloop.engine.loop import fit
    from composeloop.engine.report import MetricsLog, write_json_atomically
    from composeloop.parts.data import batches
    from composeloop.parts.recipes import classifier_step

    keras.utils.set_random_seed(config.seed)
    build.set_precision(config.train.precision)
    placed = build.build_strategy(config.strategy)
    directory = strategies.output_directory(placed.strategy, directory)  # only the chief writes the run's
    with placed.strategy.scope():
        model = build.build_model(config.model, data)
        step = classifier_step(
            model, build.build_optimizer(config.optimizer), transform=build.build_transform(config.gradient)
        )
    program = compile_step(
        build.adapt_step(step, config.train),
        strategy=placed.strategy,
        steps_per_execution=config.train.steps_per_execution,
        jit_compile=config.train.jit_compile,
        seed=config.seed,
    )
    batch_size = config.data.batch_size
    history = fit(
        program,
        lambda epoch: batches(data.x_train, data.y_train, batch_size, seed=config.seed, epoch=epoch),
        epochs=config.train.epochs,
        validation_data=lambda: batches(data.x_val, data.y_val, batch_size, shuffle=False),
        on_epoch_end=[MetricsLog(directory, config.train.epochs)],
    )
    model.save(directory / "model.keras")
    summary = {
        "experiment": config.experiment,
        "status": "completed",
        "epochs": len(history),
        "steps": int(program.global_step.read_value()),
        "metrics": {k: v for k, v in (history[-1] if history else {}).items() if k != "epoch"},
        "wall_s": time.perf_counter() - started,
        "traces": program.trace_counts,
        "withheld_updates": int(program.withheld_updates.read_value()),
        "replicas": placed.replicas,
    }
    write_json_atomically(directory / "summary.json", summary)
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
    _refuse_earlier_results(directory)
    return EXPERIMENTS[config.experiment](config, directory)
