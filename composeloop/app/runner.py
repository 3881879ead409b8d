"""A configured run of a compiled program: run directory, resume, services, summary.

This module owns what every composition shares once its program is compiled: which run
directories may be used (``resume=auto|never``), restoring the latest checkpoint and the
history it has seen, the loop services a config switches on (NaN policy, stop signals,
progress, metric files, tracking, TensorBoard, the composition's own handlers, a search
trial's pruning, early stopping, checkpoints, curves.png) in the order they must run, the
part of summary.json that every run has, and the run's warnings: each one line on stderr
(``composeloop: warning: ...``) and listed in summary.json (``warnings``). It does not
build parts (`composeloop.config.build`, the composition) nor choose what a mode does
(`composeloop.app.modes`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from composeloop.config.schema import Config, Resume
from composeloop.errors import ConfigError
from composeloop.files import read_json
from composeloop.vocabulary import VAL, higher_is_better

RESULT_FILES = ("summary.json", "metrics.jsonl")
UNFINISHED = ("interrupted", "stopped_nonfinite")  # statuses that end the process non-zero


def exit_code(summary: Mapping[str, Any]) -> int:
    """0 for a finished run (also one stopped early), 128 + signal for an interrupted one, else 1."""
    if summary.get("status") not in UNFINISHED:
        return 0
    name = summary.get("signal")
    return 128 + int(signal.Signals[name]) if name else 1


def warning(text: str) -> str:
    """Shows a run's warning as one line on stderr; returns it (for summary.json's ``warnings``)."""
    text = text.removeprefix("composeloop: ")
    print(f"composeloop: warning: {text}", file=sys.stderr, flush=True)
    return text


def compile_options(config: Config, strategy: Any = None) -> dict[str, Any]:
    """`compile_step` keywords every composition takes from its config (and its strategy)."""
    return {
        "strategy": strategy,
        "steps_per_execution": config.train.steps_per_execution,
        "jit_compile": config.train.jit_compile,
        "seed": config.seed,
        "nan_policy": config.train.nan_policy,
        "record_logs": config.report.tensorboard,
    }


def averaged_weights(program: Any) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """() -> a context holding the EMA weights in the models (`composeloop.step.ema_weights`)
    when the program's step keeps an average (``train.ema``, or an `ema` stage of its own);
    else a context that changes nothing. Validation, saved models and modes enter it."""
    from composeloop.step import ema_stages, ema_weights

    return (lambda: ema_weights(program)) if ema_stages(program) else contextlib.nullcontext


def checkpoint_directory(config: Config, directory: Path) -> Path:
    return Path(config.checkpoint.directory) if config.checkpoint.directory else directory / "checkpoints"


def has_checkpoint(config: Config, directory: Path) -> bool:
    return (checkpoint_directory(config, directory) / "checkpoint").is_file()


def check_run_directory(config: Config, directory: Path) -> None:
    """Refuses a run directory whose contents this run would overwrite, before anything loads.

    ``resume=auto`` continues a directory that has a checkpoint and refuses one with
    results but no checkpoint; ``resume=never`` refuses any directory that holds a run.
    """
    found = [name for name in RESULT_FILES if (directory / name).exists()]
    if found == ["summary.json"] and (read_json(directory / "summary.json") or {}).get("status") == "failed":
        found = []  # a job that failed before its first epoch left only the record of that failure
    resumable = has_checkpoint(config, directory)
    if config.resume is Resume.never and (found or resumable):
        held = ", ".join(found + (["checkpoints"] if resumable else []))
        raise ConfigError(
            f"resume=never: {directory} already holds a run ({held}); choose another hydra.run.dir or use resume=auto"
        )
    if found and not resumable:
        raise ConfigError(
            f"hydra.run.dir: {directory} already holds a run's results ({', '.join(found)}) but no checkpoint "
            "to resume from; choose another directory"
        )


@attrs.frozen
class Training:
    """What the runner trains: a program, its data, and the composition's own extras.

    `log_names` shortens log keys in the files and console (e.g. ``train_d_loss`` ->
    ``d_loss``); `images` gives TensorBoard sample images each epoch; `warnings` are those
    the run has shown before training (summary.json lists them with the resume's own).
    """

    program: Any
    train_data: Callable[[int], Any]
    validation_data: Callable[[], Any] | None = None
    handlers: Sequence[Any] = ()
    log_names: Mapping[str, str] = attrs.field(factory=dict)
    images: Callable[[Any], Any] | None = None
    tracker: Any = None  # a `composeloop.app.tracking.Tracker` (the chief's, with tracking=mlflow)
    warnings: Sequence[str] = ()


def _restore_latest(checkpoints: Any, state: Any) -> list[str]:
    """Restores the latest readable checkpoint; its warnings (unreadable ones skipped) as lines."""
    from composeloop.engine.checkpoint import CheckpointWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointWarning)
        checkpoints.restore_latest(state)
    shown = []
    for seen in caught:
        if issubclass(seen.category, CheckpointWarning):
            shown.append(warning(str(seen.message)))
        else:  # not ours to reword: shown as Python shows it
            warnings.warn_explicit(seen.message, seen.category, seen.filename, seen.lineno)
    return shown


def _renamer(names: Mapping[str, str]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    return lambda logs: {names.get(key, key): value for key, value in logs.items()}


def train(config: Config, directory: Path, training: Training, restore_from: Path | None = None) -> Any:
    """Trains `training.program` with every service the config asks for; returns the RunState.

    Resumes from the latest checkpoint of the run directory `restore_from` (default:
    `directory`) when there is one; outputs go to `directory`, which differs only on a
    multi-worker run's non-chief workers (a scratch directory). A stop signal, early
    stopping or the NaN policy may end the run early: see `state.status`.
    """
    from composeloop.app import search_job, tracking
    from composeloop.engine import checkpoint, curves, events, progress, report, stopping, tensorboard
    from composeloop.engine.loop import run_loop
    from composeloop.engine.strategies import is_chief

    program = training.program
    sharing = restore_from is not None and Path(restore_from) != Path(directory)  # a non-chief worker
    checkpoints = checkpoint.Checkpoints(
        directory / "checkpoints" if sharing else checkpoint_directory(config, directory),
        program,
        keep=config.checkpoint.keep,
        restore_from=checkpoint_directory(config, restore_from or directory),
    )
    state = events.RunState(program, config.train.epochs)
    resumed = _restore_latest(checkpoints, state)  # position and history; metric files are rewritten from it
    state.extras["warnings"] = [*training.warnings, *resumed]
    signals = stopping.SignalStop()
    rename = _renamer(training.log_names)

    def save_unless_nonfinite(state: events.RunState) -> None:
        if state.status != "stopped_nonfinite":
            _save_once(checkpoints, state)

    handlers = [*stopping.nan_policy(config.train.nan_policy.value), *signals.handlers()]
    if is_chief(program.strategy):  # the other workers of a multi-worker run train the same steps quietly
        handlers += progress.progress(interactive=config.report.progress_bar, rename=rename)
    handlers += report.metric_files(directory, rename)
    if training.tracker is not None:
        handlers += tracking.tracking_handlers(training.tracker, rename)
    if config.report.tensorboard:
        every = config.report.tensorboard_every_steps
        handlers += tensorboard.tensorboard(directory / "tensorboard", every, training.images)
    handlers += list(training.handlers)
    trial = search_job.current_trial()  # a job of a search: report each epoch, stop when pruned
    if trial is not None:
        handlers += search_job.pruning_handlers(trial)
    stop = config.early_stopping
    if stop.patience is not None:
        handlers += stopping.early_stopping(
            stop.monitor, stop.patience, stop.mode.value, stop.min_delta, on_improve=checkpoints.save_best
        )
    if config.checkpoint.every_steps:
        handlers.append(events.every_steps(config.checkpoint.every_steps, lambda s: _save_once(checkpoints, s)))
    every_epochs = config.checkpoint.every_epochs
    handlers.append(events.on_epoch_end(lambda s: s.epoch % every_epochs == 0 and _save_once(checkpoints, s)))
    handlers.append(events.on_run_end(save_unless_nonfinite))
    if stop.patience is not None and stop.restore_best:
        handlers.append(events.on_run_end(lambda s: _restore_best(checkpoints, s)))
    if config.report.curves:
        handlers.append(curves.curves(directory / "curves.png", title=f"{config.experiment} ({directory.name})"))
    with signals.installed():
        return run_loop(
            program,
            training.train_data,
            epochs=config.train.epochs,
            validation_data=training.validation_data,
            handlers=handlers,
            state=state,
            validation_weights=averaged_weights(program),
        )


def _save_once(checkpoints: Any, state: Any) -> None:
    """Saves unless this exact position was just saved (a step period can end an epoch)."""
    position = (state.step, state.epoch, state.batch)
    if state.extras.get("saved_at") != position:
        checkpoints.save(state)
        state.extras["saved_at"] = position


def _restore_best(checkpoints: Any, state: Any) -> None:
    if checkpoints.latest_best is not None:  # with the apply stages' state: an EMA's shadows of that epoch
        checkpoints.restore(checkpoints.latest_best, models_only=True)
        state.extras["restored_best"] = True


def main_metric(config: Config, logged: Sequence[str], declared: str | None) -> str | None:
    """What a run is judged by: `main_metric` from the config, the composition's, else
    val_accuracy, else the first validation metric, else the first logged one."""
    if config.main_metric:
        return config.main_metric
    if declared:
        return declared
    if f"{VAL}_accuracy" in logged:
        return f"{VAL}_accuracy"
    return next((name for name in logged if name.startswith(f"{VAL}_")), next(iter(logged), None))


def summary(
    config: Config,
    state: Any,
    started: float,
    log_names: Mapping[str, str] = {},  # noqa: B006
    declared_main: str | None = None,
) -> dict[str, Any]:
    """The part of summary.json every run has: status, progress, final metrics, counters,
    the main metric and each metric's direction (by the one higher-is-better rule), and the
    run's warnings."""
    from composeloop.engine.stopping import best_epoch

    program = state.program
    last = {log_names.get(k, k): v for k, v in state.logs.items() if k != "epoch"}
    monitor = config.early_stopping.monitor
    declared = {
        metric.name: metric.higher_is_better for metric in program.step.metrics if metric.higher_is_better is not None
    }
    best = best_epoch(
        state.history, monitor, config.early_stopping.mode.value, config.early_stopping.min_delta, declared
    )
    logged = [name for name in last if name != "seconds"]
    return {
        "experiment": config.experiment,
        "mode": config.mode.value,
        "status": state.status,
        "reason": state.reason,
        "epochs": len(state.history),
        "steps": state.step,
        "metrics": last,
        "main_metric": main_metric(config, logged, declared_main),
        "directions": {name: "max" if higher_is_better(name, declared) else "min" for name in logged},
        "best_epoch": None if best is None else best + 1,
        f"best_{monitor}": None if best is None else state.history[best][monitor],
        "replicas": program.replication.num_replicas,
        "nonfinite_steps": int(program.nonfinite_steps.numpy()),
        "withheld_updates": int(program.withheld_updates.numpy()),
        "resumed_from_step": state.extras.get("resumed_from_step"),
        "warnings": list(state.extras.get("warnings", [])),
        **({"signal": state.extras["signal"]} if "signal" in state.extras else {}),
        "traces": program.trace_counts,
        "wall_s": time.perf_counter() - started,
    }
