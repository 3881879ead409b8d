"""Search with Optuna: the study, the objective, a trial's outcome, and pruning inside a job.

This module owns composeloop's side of a search (the Hydra sweeper that drives it lives in
``hydra_plugins/composeloop_optuna``): which metric a trial is judged by and in which
direction (the experiment's main metric and the one higher-is-better rule), the persistent
study (SQLite ``optuna.db`` in the sweep directory, so a rerun continues it), how a job's
summary becomes a trial's state (``complete``, ``pruned``, ``fail``), the trials a killed
search left running, and the job side of pruning: a job finds its trial through
environment variables the sweeper sets for it (Hydra's ``hydra.job.env_set``, which
reaches jobs in this process and in a parallel launcher's workers alike), reports each
epoch's validation metric to it, and stops with status ``pruned`` when Optuna says so.
Optuna is imported only when a search runs (the ``composeloop[search]`` extra).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from composeloop.errors import ConfigError

if TYPE_CHECKING:  # the engine imports TensorFlow: the sweeper's process does without it
    from composeloop.engine.events import Handler, RunState

STUDY_FILE = "optuna.db"
DEFAULT_STUDY = "composeloop"
ENV_STORAGE = "COMPOSELOOP_OPTUNA_STORAGE"
ENV_STUDY = "COMPOSELOOP_OPTUNA_STUDY"
ENV_TRIAL = "COMPOSELOOP_OPTUNA_TRIAL"
SETTINGS_ATTR = "composeloop"  # the study's user attribute holding its metric and pruner
# The quality score each built-in experiment reports; a user's experiment sets hydra.sweeper.metric.
EXPERIMENT_METRICS = {"classifier": "val_accuracy", "gan": "digit_confidence", "wgan_gp": "digit_confidence"}
COMPLETED = ("completed", "stopped_early")  # summary statuses whose metric is the trial's value
PRUNED = "pruned"
PRUNERS = ("median", "successive_halving", "none")
SAMPLERS = ("tpe", "random")


# ---------------------------------------------------------------------------- the objective


def objective(experiment: str | None, metric: str | None = None, direction: str | None = None) -> tuple[str, str]:
    """The metric a search optimizes and its direction ("maximize" or "minimize").

    Args:
      experiment: the configured experiment (picks its main metric when `metric` is None).
      metric: a metric the summary reports, e.g. "val_loss"; None: the experiment's.
      direction: "maximize" or "minimize"; None: from the metric's name by the one
        higher-is-better rule (`composeloop.engine.stopping.resolve_mode`).

    Raises:
      ConfigError: no metric known for the experiment, or an unknown direction.

    Example:
      >>> objective("classifier")
      ('val_accuracy', 'maximize')
    """
    from composeloop.engine.stopping import Mode, resolve_mode  # the one higher-is-better rule (imports TF)

    metric = metric or EXPERIMENT_METRICS.get(str(experiment))
    if not metric:
        raise ConfigError(
            f"hydra.sweeper.metric: experiment '{experiment}' has no known main metric; set hydra.sweeper.metric=NAME"
        )
    if direction is None:
        direction = "maximize" if resolve_mode(metric, Mode.auto) is Mode.max else "minimize"
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"hydra.sweeper.direction: must be maximize, minimize or null, got {direction!r}")
    return metric, direction


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@attrs.frozen
class Outcome:
    """How a trial ended: ``state`` "complete", "pruned" or "fail"; its value when complete."""

    state: str
    value: float | None = None
    status: str = ""  # the run's own status (completed, stopped_early, pruned, failed, ...)
    note: str = ""


def outcome(summary: Any, metric: str) -> Outcome:
    """A trial's outcome from what its job returned (its summary) or a row read back from disk.

    A completed run (also one stopped early) is ``complete`` with the final value of
    `metric` (from ``summary["metrics"]``, else the summary's top level, where a GAN's
    ``digit_confidence`` is); a run that stopped itself as pruned is ``pruned``; anything
    else (an exception, a failed or non-finite run, a missing or NaN metric) is ``fail``.

    Example:
      >>> outcome({"status": "completed", "metrics": {"val_accuracy": 0.9}}, "val_accuracy")
      Outcome(state='complete', value=0.9, status='completed', note='')
    """
    if isinstance(summary, BaseException):
        return Outcome("fail", status="failed", note=f"{type(summary).__name__}: {summary}")
    if not isinstance(summary, Mapping):
        return Outcome("fail", status="failed", note=f"the job returned {type(summary).__name__}, not a summary")
    status = str(summary.get("status", "completed"))
    if status == PRUNED:
        return Outcome("pruned", status=status, note=str(summary.get("reason", "")))
    if status not in COMPLETED:
        return Outcome("fail", status=status, note=str(summary.get("error") or summary.get("reason") or status))
    metrics = summary.get("metrics") or {}
    raw = metrics.get(metric, summary.get(metric))
    value = _finite(raw)
    if value is None:
        found = ", ".join(name for name in metrics if name not in ("epoch", "seconds"))
        why = f"{metric} is {raw}" if raw is not None else f"no {metric} in the summary (found: {found})"
        return Outcome("fail", status=status, note=why)
    return Outcome("complete", value, status)


def distributions(space: Any) -> dict[str, Any]:
    """Optuna's distribution for each dimension of a `composeloop.app.search_space.SearchSpace`.

    Example:
      >>> distributions(search_space(parsed))
      {'optimizer.learning_rate': FloatDistribution(high=0.03, log=True, low=0.0001, step=None)}
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    made: dict[str, Any] = {}
    for d in space.dimensions:
        if d.kind == "float":
            made[d.name] = FloatDistribution(d.low, d.high, log=d.log, step=d.step)
        elif d.kind == "int":
            made[d.name] = IntDistribution(d.low, d.high, log=d.log, step=d.step or 1)
        else:
            made[d.name] = CategoricalDistribution(d.choices)
    return made


# ---------------------------------------------------------------------------- the study


def storage_url(sweep_dir: str | Path, storage: str | None = None) -> str:
    """`storage` when given, else the SQLite file `STUDY_FILE` in `sweep_dir` (absolute)."""
    return storage or f"sqlite:///{Path(sweep_dir).resolve() / STUDY_FILE}"


def _storage(url: str) -> Any:
    import optuna

    # Jobs in other processes write to the same SQLite file: wait for its lock, do not fail.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as error:  # SQLAlchemy's many errors: a bad URL, a missing driver, no server
        line = next((text.strip() for text in str(error).splitlines() if text.strip()), type(error).__name__)
        raise ConfigError(f"hydra.sweeper.storage: cannot open the study storage {url}: {line}") from None


def make_sampler(name: str, seed: int | None) -> Any:
    """Optuna's sampler by `name` ("tpe" or "random"); TPE lies about running trials (constant liar)."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"hydra.sweeper.sampler: unknown '{name}' (known: {', '.join(SAMPLERS)})")


def make_pruner(name: str, warmup_epochs: int = 1, startup_trials: int = 5) -> Any:
    """Optuna's pruner by `name`: "median", "successive_halving" or "none".

    Args:
      warmup_epochs: epochs a trial always runs before it may be pruned.
      startup_trials: finished trials the median pruner waits for before it prunes any.
    """
    import optuna

    if name == "median":
        # Steps are 1-based epoch numbers: epoch warmup_epochs + 1 is the first one judged.
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs + 1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup_epochs + 1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"hydra.sweeper.pruner: unknown '{name}' (known: {', '.join(PRUNERS)})")


def open_study(
    storage: str,
    name: str,
    *,
    metric: str,
    direction: str,
    sampler: Any = None,
    pruner: Mapping[str, Any] | None = None,
) -> Any:
    """Creates the study, or loads it when `storage` already holds one called `name`.

    The metric and pruner settings are stored with the study (jobs in other processes
    read them from there). A study that optimizes another metric or direction is refused.

    Raises:
      ConfigError: the storage cannot be opened, or the stored study disagrees.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = {"metric": metric, "pruner": dict(pruner or {"name": "none"})}
    study = optuna.create_study(
        storage=_storage(storage),
        study_name=name,
        direction=direction,
        sampler=sampler,
        pruner=make_pruner(**settings["pruner"]),
        load_if_exists=True,
    )
    stored = study.user_attrs.get(SETTINGS_ATTR)
    stored_direction = study.direction.name.lower()
    if (stored and stored.get("metric") != metric) or stored_direction != direction:
        was = f"{stored.get('metric') if stored else '?'} ({stored_direction})"
        raise ConfigError(
            f"hydra.sweeper.metric: the study '{name}' in {storage} optimizes {was}, not {metric} ({direction}); "
            "choose another hydra.sweep.dir or hydra.sweeper.study_name"
        )
    study.set_user_attr(SETTINGS_ATTR, settings)
    return study


def settle_stale_trials(study: Any, rows: Sequence[Mapping[str, Any]], metric: str) -> int:
    """Finishes the trials an earlier, killed search left running, from their job directories.

    A trial's job number is its trial number, so its row (from
    `composeloop.config.sweep.read_sweep`) says how its run ended: a finished run is told
    as such; a run that never finished is marked failed (its trial cannot be resumed).

    Returns:
      How many trials were settled.
    """
    import optuna

    by_job = {row["job"]: row for row in rows if row.get("job") is not None}
    settled = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        row = by_job.get(trial.number)
        result = outcome(row, metric) if row else Outcome("fail", status="interrupted", note="no job directory")
        if row is not None and row.get("status") == "interrupted":
            result = Outcome("fail", status="interrupted", note="the search was stopped during this trial")
        tell(study, trial, result)
        settled += 1
    return settled


def tell(study: Any, trial: Any, result: Outcome) -> None:
    """Tells the study how `trial` (an asked Trial, or a FrozenTrial found running) ended.

    The run's own status (e.g. ``stopped_early``) and a note on why are kept as the
    trial's user attributes ``status`` and ``note``.
    """
    import optuna

    if not isinstance(trial, optuna.trial.Trial):
        trial = optuna.trial.Trial(study, trial._trial_id)  # Optuna's own way to reopen a stored trial
    trial.set_user_attr("status", result.status)
    if result.note:
        trial.set_user_attr("note", result.note[:500])
    state = {
        "complete": optuna.trial.TrialState.COMPLETE,
        "pruned": optuna.trial.TrialState.PRUNED,
        "fail": optuna.trial.TrialState.FAIL,
    }[result.state]
    study.tell(trial, result.value if result.state == "complete" else None, state=state, skip_if_finished=True)


# ---------------------------------------------------------------------------- inside a job


@attrs.frozen
class TrialRef:
    """Where a job's trial lives: the study's storage URL, its name, and the trial's number."""

    storage: str
    study: str
    number: int


def job_overrides(storage: str, study: str) -> list[str]:
    """Hydra overrides that tell every job of a search where its trial is.

    They set environment variables through ``hydra.job.env_set``, which Hydra applies
    around each job in whatever process runs it; the trial number is the job's number
    (``${hydra.job.num}``, resolved per job), which the sweeper keeps equal to it. Added to
    the master config's Hydra overrides, they reach every job without showing in its
    task overrides (so the sweep summary's columns and a job's own command stay clean).
    """
    values = {ENV_STORAGE: storage, ENV_STUDY: study}
    return [f"++hydra.job.env_set.{name}={_quoted(value)}" for name, value in values.items()] + [
        f"++hydra.job.env_set.{ENV_TRIAL}='${{hydra.job.num}}'"
    ]


def _quoted(text: str) -> str:
    """`text` as a single-quoted Hydra override value (backslashes before a quote doubled)."""
    text = re.sub(r"(\\+)(?='|$)", lambda match: match.group(1) * 2, text)
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


def current_trial(environ: Mapping[str, str] = os.environ) -> TrialRef | None:
    """The trial this process's job belongs to, or None outside a search.

    Example:
      >>> trial = current_trial()
      >>> handlers += pruning_handlers(trial) if trial else []
    """
    try:
        return TrialRef(environ[ENV_STORAGE], environ[ENV_STUDY], int(environ[ENV_TRIAL]))
    except (KeyError, ValueError):
        return None


def open_trial(ref: TrialRef) -> tuple[Any, str]:
    """The job's Optuna trial (with the study's pruner) and the metric it reports."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=ref.study, storage=_storage(ref.storage), sampler=optuna.samplers.RandomSampler()
    )
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    study.pruner = make_pruner(**(settings.get("pruner") or {"name": "none"}))
    found = [trial for trial in study.get_trials(deepcopy=False) if trial.number == ref.number]
    if not found:
        raise ConfigError(f"{ENV_TRIAL}: the study '{ref.study}' in {ref.storage} has no trial {ref.number}")
    # Optuna's own way to reopen a stored trial in another process: Trial(study, trial id).
    return optuna.trial.Trial(study, found[0]._trial_id), str(settings.get("metric", ""))


def pruning_handlers(ref: TrialRef) -> list[Handler]:
    """Loop handlers that report each epoch's metric to the job's trial and stop it when pruned.

    At the end of each epoch the study's metric (e.g. ``val_accuracy``) is reported with
    the epoch number as its step; when the study's pruner says so, the run stops with
    status ``pruned`` (before its last epoch only: a run that trained every epoch is
    complete). Its checkpoint and summary are written as for any stop.

    Args:
      ref: the job's trial, from `current_trial`.

    Returns:
      Handlers for `composeloop.engine.loop.run_loop`: one at run begin (opens the
      trial), one at each epoch's end.

    Example:
      >>> trial = current_trial()
      >>> state = run_loop(program, data, epochs=10, handlers=[*pruning_handlers(trial), *handlers])
      >>> state.status  # "pruned" when Optuna stopped it
    """
    from composeloop.engine.events import on_epoch_end, on_run_begin

    opened: dict[str, Any] = {}

    def open_(state: RunState) -> None:
        opened["trial"], opened["metric"] = open_trial(ref)

    def report(state: RunState) -> None:
        trial, metric = opened["trial"], opened["metric"]
        value = _finite(state.logs.get(metric))
        if value is None:
            return  # not logged per epoch (a GAN's score) or not finite: nothing to judge by
        trial.report(value, step=state.epoch)
        if state.epoch < state.epochs and trial.should_prune():
            state.stop(
                PRUNED,
                f"{metric} {value:.4g} at epoch {state.epoch}: worse than the other trials there (Optuna pruner)",
            )

    return [on_run_begin(open_), on_epoch_end(report)]
