"""Search with Optuna: the objective, the persistent study, and how a trial ended.

This module owns composeloop's side of a search (the Hydra sweeper that drives it lives in
``hydra_plugins/composeloop_optuna``; a trial's side inside its job is
`composeloop.app.search_job`'s): which metric a trial is judged by and in which direction
(``hydra.sweeper.metric``, else the config's ``main_metric``, else the main metric the
first trials' summaries name; the one higher-is-better rule), the persistent study
(SQLite ``optuna.db`` in the sweep directory, so a rerun continues it), how a job's
summary becomes a trial's state (``complete``, ``pruned``, ``fail``), and the trials a
killed search left running. Optuna is imported only when a search runs (the
``composeloop[search]`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from composeloop.errors import ConfigError
from composeloop.vocabulary import higher_is_better

STUDY_FILE = "optuna.db"
DEFAULT_STUDY = "composeloop"
SETTINGS_ATTR = "composeloop"  # the study's user attribute holding its metric and pruner
COMPLETED = ("completed", "stopped_early")  # summary statuses whose metric is the trial's value
PRUNED = "pruned"
PRUNERS = ("median", "successive_halving", "none")
SAMPLERS = ("tpe", "random")


# ---------------------------------------------------------------------------- the objective


def objective(metric: str, direction: str | None = None, declared: Mapping[str, bool] | None = None) -> tuple[str, str]:
    """A search's metric and its direction ("maximize" or "minimize").

    Args:
      metric: a metric the runs' summaries report, e.g. "val_accuracy" or "val_loss".
      direction: "maximize" or "minimize"; None: by the one higher-is-better rule
        (`composeloop.vocabulary.higher_is_better`), with `declared` directions first.
      declared: metric name -> higher is better, as a run's summary.json records them.

    Raises:
      ConfigError: an unknown direction.

    Example:
      >>> objective("val_accuracy"), objective("val_loss")
      (('val_accuracy', 'maximize'), ('val_loss', 'minimize'))
    """
    if direction is None:
        direction = "maximize" if higher_is_better(metric, declared) else "minimize"
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"hydra.sweeper.direction: must be maximize, minimize or null, got {direction!r}")
    return metric, direction


def reported_objective(summaries: Sequence[Any], direction: str | None = None) -> tuple[str, str] | None:
    """The objective the runs themselves name: the first summary's ``main_metric`` and its
    recorded direction (``directions``), or None when no summary names one.

    A composition names its main metric (a GAN's ``digit_confidence``) only once its job
    runs, so a search that was not told its metric learns it from its first trials.

    Example:
      >>> reported_objective([{"main_metric": "val_loss", "directions": {"val_loss": "min"}}])
      ('val_loss', 'minimize')
    """
    for summary in summaries:
        if isinstance(summary, Mapping) and summary.get("main_metric"):
            declared = {name: way == "max" for name, way in (summary.get("directions") or {}).items()}
            return objective(str(summary["main_metric"]), direction, declared)
    return None


def finite(value: Any) -> float | None:
    """`value` as a finite float, else None (bools, text, NaN and inf included)."""
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
    value = finite(raw)
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


def open_storage(url: str) -> Any:
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
        storage=open_storage(storage),
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


def stored_objective(storage: str, name: str) -> tuple[str, str] | None:
    """The metric and direction of the study `name` in `storage`; None when there is no such study.

    Raises:
      ConfigError: the storage cannot be opened, or its study does not say its metric.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:  # Optuna's "Record does not exist": a new study
        return None
    metric = (study.user_attrs.get(SETTINGS_ATTR) or {}).get("metric")
    if not metric:
        raise ConfigError(
            f"hydra.sweeper.metric: the study '{name}' in {storage} does not say what it optimizes; "
            "set hydra.sweeper.metric=NAME"
        )
    return str(metric), study.direction.name.lower()


def add_trial(
    study: Any, params: Mapping[str, Any], fixed: Mapping[str, Any], result: Outcome, intermediate: Mapping[int, float]
) -> None:
    """Adds a trial run before `study` existed (one of the first trials, which named its metric)."""
    import optuna

    states = {"complete": "COMPLETE", "pruned": "PRUNED", "fail": "FAIL"}
    attributes = {"status": result.status, **({"note": result.note[:500]} if result.note else {})}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState[states[result.state]],
            value=result.value if result.state == "complete" else None,
            params=dict(params),
            distributions={name: fixed[name] for name in params},
            user_attrs=attributes,
            intermediate_values=dict(intermediate),
        )
    )


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
