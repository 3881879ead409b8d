"""`run`: a validated config and a run directory -> a finished run in its mode.

This module owns the order in which a run is set up, the same for every composition and
every front door (the command line, a sweep job, a user's own script, Python): lock the
run directory (one process writes there at a time), check it (resume or refuse; a mode
other than train needs a checkpoint), load array data (before TensorFlow, so a bad file
fails fast), seed, set the precision and place the strategy, load data streamed from files
(each worker of several reads its own), check the first streamed batches and warn of
class sets that differ, build the composition in the strategy's scope, compile its step
once with the configured stages wired into every phase (weight decay, lookahead and EMA
around the apply stage; accumulation and loss scaling), then hand it to the mode. Notes
are printed once, by the chief.
"""

from __future__ import annotations

import contextlib
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


def run_directory_lock(config: Config, directory: str | Path) -> contextlib.AbstractContextManager:
    """The lock this process holds on `directory` while it runs `config` there.

    Every process takes it but a multi-worker run's non-chief workers (they write into
    scratch directories; the chief writes the run's). Re-entrant in one thread: the command
    line takes it before Hydra writes anything, and `run` takes it again.

    Raises:
      RunDirectoryInUse: another process holds it (one line naming its pid and host).

    Example:
      >>> with run_directory_lock(config, "runs/a"):
      ...     run(config, "runs/a")
    """
    from composeloop import cluster, locking

    strategy = config.strategy
    if strategy.name is StrategyKind.multi_worker and not cluster.is_chief_process(strategy.cluster):
        return contextlib.nullcontext()  # TF_CONFIG or srun's variables: another worker's directory
    return locking.holding(directory, create=True)


def data_warnings(data: Any, source: str) -> tuple[str, ...]:
    """What loaded but looks wrong in the data (train and validation classes differ).

    Shown (`runner.warning`) only once the run is built: a run refused on bad input says
    so in one line, with no warning before it.
    """
    from composeloop.parts.checks import class_set_difference

    if not hasattr(data, "y_val"):
        return ()  # streamed: not in memory to compare
    note = class_set_difference(data.y_train, data.y_val, source)
    return (note,) if note else ()


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
    elif config.mode is Mode.lr_find:
        lr_find.check_directory(config, directory)
    else:
        modes.check_checkpoint(config, directory)


def _compiled(composition: Any, config: Config, strategy: Any) -> tuple[Any, tuple[str, ...]]:
    """The composition's step with the configured stages wired into every phase, compiled
    once, and the run's warnings from building it (a mask pattern that picks no variable:
    `MaskWarning`)."""
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
    notes = []
    for seen in caught:
        if issubclass(seen.category, MaskWarning):
            notes.append(str(seen.message))
        else:  # not ours to reword
            warnings.warn_explicit(seen.message, seen.category, seen.filename, seen.lineno)
    return program, tuple(notes)


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
      ComposeloopError: a bad config, data, composition or checkpoint, in one line;
        `composeloop.locking.RunDirectoryInUse` when another process runs in `directory`.

    Example:
      >>> summary = run(to_config(compose(config_name="config", overrides=["train.epochs=2"])), "runs/a")
      >>> summary["status"], summary["metrics"]["val_accuracy"]
    """
    started = time.perf_counter()
    directory = Path(directory)
    with run_directory_lock(config, directory):  # held until the mode has written everything
        return _run(config, directory, overrides, parts, started)


def _run(config: Config, directory: Path, overrides: Sequence[str], parts: Parts, started: float) -> dict[str, Any]:
    from composeloop.parts.data import as_data

    check_directory(config, directory)
    data = None
    if parts.data is not None:
        data = as_data(parts.data, "parts.data")
    elif not build.reads_files(config.data):
        data = build.load_data(config.data, config.seed)  # arrays: before TensorFlow, so a bad file fails fast
    source = "parts.data" if parts.data is not None else build.data_source(config.data)

    import keras
    import tensorflow as tf

    from composeloop.parts.streams import bad_record

    keras.utils.set_random_seed(config.seed)
    build.set_precision(config.train.precision)
    placed = place_strategy(config.strategy)
    if data is None:  # files: each worker of several reads its own, so found once the strategy is
        data = build.load_data(config.data, config.seed, placed.strategy)
    announce(getattr(data, "description", ""), placed.strategy)
    try:  # a streamed record of another shape fails where it is read: name its file
        return _built_and_run(config, directory, data, source, placed, overrides, parts, started)
    except tf.errors.InvalidArgumentError as error:
        bad = bad_record(error)
        if bad is None:
            raise
        raise bad from None


def _built_and_run(
    config: Config,
    directory: Path,
    data: Any,
    source: str,
    placed: Any,
    overrides: Sequence[str],
    parts: Parts,
    started: float,
) -> dict[str, Any]:
    from composeloop.engine import strategies
    from composeloop.parts.checks import check_streamed

    check_streamed(data, config.data.check_batches, source)  # arrays were checked whole at load
    notes = data_warnings(data, source)
    outputs = strategies.output_directory(placed.strategy, directory)  # only the chief writes the run's
    with placed.strategy.scope():
        composition = build_composition(config, data, overrides=overrides, given=parts)
    program, build_notes = _compiled(composition, config, placed.strategy)
    shown = tuple(runner.warning(note) for note in (*notes, *build_notes))
    prepared = modes.Run(config, directory, outputs, composition, program, data, started, shown)
    return modes.MODES[config.mode](prepared)
