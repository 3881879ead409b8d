"""`run`: a validated config and a run directory -> a finished run in its mode.

This module owns the order in which a run is set up, the same for every composition and
every front door (the command line, a sweep job, a user's own script, Python): check the
run directory (resume or refuse; a mode other than train needs a checkpoint), load the
data (arrays before TensorFlow, so a bad file fails fast), seed, set the precision and
place the strategy, load data streamed from files (each worker of several reads its own),
build the composition in the strategy's scope, compile its step once with accumulation
and loss scaling wired in, then hand it to the mode. Notes are printed once, by the chief.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from composeloop.app import modes, runner
from composeloop.app.compositions import Parts, build_composition
from composeloop.config import build
from composeloop.config.schema import Config, StrategyConfig
from composeloop.vocabulary import Mode, StrategyKind

_announced: set[str] = set()


def place_strategy(config: StrategyConfig) -> Any:
    """The configured strategy, made once per process, with its note printed the first time.

    The CLI calls this before anything touches a device (logical CPUs and multi-worker
    collectives must be set up before TensorFlow initialises); later calls get the same one.
    Over several workers only the chief prints.

    Returns:
      A `composeloop.engine.strategies.Placed` (``.strategy``, ``.replicas``, ``.note``).

    Raises:
      ConfigError: a bad cluster environment (naming the variable) or devices;
        ClusterError: a worker did not join within ``strategy.connect_timeout_s``.
    """
    from composeloop.engine import strategies

    placed = strategies.place(
        config.name.value, config.devices, config.logical_cpus, config.cluster, config.connect_timeout_s
    )
    if config.name is not StrategyKind.default:
        announce(placed.note, placed.strategy)
    return placed


def announce(note: str, strategy: Any) -> None:
    """Prints `note` once per process, and only on the chief of a multi-worker run."""
    from composeloop.engine.strategies import is_chief

    if note and note not in _announced:
        _announced.add(note)
        if is_chief(strategy):
            print(f"composeloop: {note}", flush=True)


def check_directory(config: Config, directory: Path) -> None:
    """What a directory must (not) hold for this run, checked before anything is written."""
    if config.mode is Mode.train:
        runner.check_run_directory(config, directory)
    else:
        modes.check_checkpoint(config, directory)


def run(
    config: Config,
    directory: str | Path,
    *,
    overrides: Sequence[str] = (),
    parts: Parts = Parts(),  # noqa: B008 - frozen, never mutated
) -> dict[str, Any]:
    """Runs `config` (its composition, in its mode) into `directory`; returns what it wrote.

    Args:
      config: a validated `Config` (`composeloop.config.store.to_config`).
      directory: the run directory; a train run resumes from its checkpoints.
      overrides: the command line's overrides (keys set for parts the step builder never
        uses are refused).
      parts: objects that replace configured parts (see `composeloop.app.Parts`).

    Returns:
      The run's summary (train) or result (the other modes).

    Raises:
      ComposeloopError: a bad config, data, composition or checkpoint, in one line.

    Example:
      >>> summary = run(to_config(compose(config_name="config", overrides=["train.epochs=2"])), "runs/a")
      >>> summary["status"], summary["metrics"]["val_accuracy"]
    """
    started = time.perf_counter()
    directory = Path(directory)
    check_directory(config, directory)
    data = None
    if parts.data is not None:
        from composeloop.parts.data import as_data

        data = as_data(parts.data, "parts.data")
    elif not build.reads_files(config.data):
        data = build.load_data(config.data, config.seed)  # arrays: before TensorFlow, so a bad file fails fast

    import keras
    import tensorflow as tf

    from composeloop.engine import strategies
    from composeloop.engine.compile import compile_step
    from composeloop.parts.streams import bad_record

    keras.utils.set_random_seed(config.seed)
    build.set_precision(config.train.precision)
    placed = place_strategy(config.strategy)
    if data is None:  # files: each worker of several reads its own, so found once the strategy is
        data = build.load_data(config.data, config.seed, placed.strategy)
    announce(getattr(data, "description", ""), placed.strategy)
    outputs = strategies.output_directory(placed.strategy, directory)  # only the chief writes the run's
    with placed.strategy.scope():
        composition = build_composition(config, data, overrides=overrides, given=parts)
    step = build.adapt_step(composition.step, config.train)
    program = compile_step(step, **runner.compile_options(config, placed.strategy))
    prepared = modes.Run(config, directory, outputs, composition, program, data, started)
    try:
        return modes.MODES[config.mode](prepared)
    except tf.errors.InvalidArgumentError as error:  # a streamed record of another shape names its file
        bad = bad_record(error)
        if bad is None:
            raise
        raise bad from None
