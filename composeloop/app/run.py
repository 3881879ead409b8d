"""`run`: a validated config and a run directory -> a finished run in its mode.

This module owns the order in which a run is set up, the same for every composition and
every front door (the command line, a sweep job, a user's own script, Python): check the
run directory (resume or refuse; a mode other than train needs a checkpoint), load the
data (before TensorFlow, so a bad file fails fast), seed, set the precision and place the
strategy, build the composition in the strategy's scope, compile its step once with the
configured stages wired into every phase (weight decay, lookahead and EMA around the apply
stage; accumulation and loss scaling), then hand it to the mode.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from composeloop.app import lr_find, modes, runner
from composeloop.app.compositions import Parts, build_composition
from composeloop.config import build
from composeloop.config.schema import Config, StrategyConfig
from composeloop.errors import ComposeError
from composeloop.vocabulary import Mode, StrategyKind

_announced: set[str] = set()


def place_strategy(config: StrategyConfig) -> Any:
    """The configured strategy, made once per process, with its note printed the first time.

    The CLI calls this before anything touches a device (logical CPUs and multi-worker
    collectives must be set up before TensorFlow initialises); later calls get the same one.

    Returns:
      A `composeloop.engine.strategies.Placed` (``.strategy``, ``.replicas``, ``.note``).
    """
    from composeloop.engine import strategies

    placed = strategies.place(config.name.value, config.devices, config.logical_cpus)
    if config.name is not StrategyKind.default and placed.note not in _announced:
        _announced.add(placed.note)
        print(f"composeloop: {placed.note}", flush=True)
    return placed


def check_directory(config: Config, directory: Path) -> None:
    """What a directory must (not) hold for this run, checked before anything is written."""
    if config.mode is Mode.train:
        runner.check_run_directory(config, directory)
    elif config.mode is Mode.lr_find:
        lr_find.check_directory(config, directory)
    else:
        modes.check_checkpoint(config, directory)


def _compiled(composition: Any, config: Config, strategy: Any) -> Any:
    """The composition's step with the configured stages wired into every phase, compiled
    once. A mask pattern that picks no variable is one warning line (`MaskWarning`)."""
    from composeloop.engine.compile import compile_step
    from composeloop.step.groups import MaskWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MaskWarning)
        step = build.wrap_apply(composition.step, config.optimizer, config.train)
        step = build.adapt_step(step, config.train)
        try:
            program = compile_step(step, **runner.compile_options(config, strategy))
        except ValueError as error:  # a stage refusing the phase's variables (a mask that fits none)
            raise ComposeError(str(error).splitlines()[0]) from None
    for seen in caught:
        if issubclass(seen.category, MaskWarning):
            print(f"composeloop: warning: {seen.message}", file=sys.stderr, flush=True)
        else:  # not ours to reword
            warnings.warn_explicit(seen.message, seen.category, seen.filename, seen.lineno)
    return program


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
    data = parts.data if parts.data is not None else build.load_data(config.data, config.seed)
    if parts.data is not None:
        from composeloop.parts.data import as_data

        data = as_data(data, "parts.data")

    import keras

    from composeloop.engine import strategies

    keras.utils.set_random_seed(config.seed)
    build.set_precision(config.train.precision)
    placed = place_strategy(config.strategy)
    outputs = strategies.output_directory(placed.strategy, directory)  # only the chief writes the run's
    with placed.strategy.scope():
        composition = build_composition(config, data, overrides=overrides, given=parts)
    program = _compiled(composition, config, placed.strategy)
    prepared = modes.Run(config, directory, outputs, composition, program, data, started)
    return modes.MODES[config.mode](prepared)
