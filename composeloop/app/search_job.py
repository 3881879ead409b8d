"""A search trial's side inside its job: which trial it is, reporting epochs to it, pruning.

This module owns how a job of a search finds its Optuna trial and what it does with it:
the sweeper sets environment variables for every job through Hydra's ``hydra.job.env_set``
(`job_overrides`; they reach jobs in the sweeper's process and in a parallel launcher's
workers alike), the job reads them back (`current_trial`, `trial_number`), reports each
epoch's validation metric to its trial and stops with status ``pruned`` when the study's
pruner says so (`pruning_handlers`, which the runner adds). The study itself, the
objective and a trial's outcome are `composeloop.app.search`'s. Optuna is imported only
when a trial is opened.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from composeloop.app.search import PRUNED, SETTINGS_ATTR, finite, make_pruner, open_storage
from composeloop.errors import ConfigError

if TYPE_CHECKING:  # the engine imports TensorFlow: the sweeper's process does without it
    from composeloop.engine.events import Handler, RunState

ENV_STORAGE = "COMPOSELOOP_OPTUNA_STORAGE"
ENV_STUDY = "COMPOSELOOP_OPTUNA_STUDY"
ENV_TRIAL = "COMPOSELOOP_OPTUNA_TRIAL"


@attrs.frozen
class TrialRef:
    """Where a job's trial lives: the study's storage URL, its name, and the trial's number."""

    storage: str
    study: str
    number: int


def job_overrides(storage: str | None, study: str | None) -> list[str]:
    """Hydra overrides that tell every job of a search where its trial is.

    They set environment variables through ``hydra.job.env_set``, which Hydra applies
    around each job in whatever process runs it; the trial number is the job's number
    (``${hydra.job.num}``, resolved per job), which the sweeper keeps equal to it. Added to
    the master config's Hydra overrides, they reach every job without showing in its
    task overrides (so the sweep summary's columns and a job's own command stay clean).
    Without a storage (the first trials, before the study exists) only the number is set.
    """
    values = {ENV_STORAGE: storage, ENV_STUDY: study} if storage is not None else {}
    return [f"++hydra.job.env_set.{name}={override_value(value)}" for name, value in values.items()] + [
        f"++hydra.job.env_set.{ENV_TRIAL}='${{hydra.job.num}}'"
    ]


def trial_number(environ: Mapping[str, str] = os.environ) -> int | None:
    """The number of the search trial this process's job is, or None outside a search."""
    try:
        return int(environ[ENV_TRIAL])
    except (KeyError, ValueError):
        return None


def override_value(text: str) -> str:
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
        study_name=ref.study, storage=open_storage(ref.storage), sampler=optuna.samplers.RandomSampler()
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
        value = finite(state.logs.get(metric))
        if value is None:
            return  # not logged per epoch (a GAN's score) or not finite: nothing to judge by
        trial.report(value, step=state.epoch)
        if state.epoch < state.epochs and trial.should_prune():
            state.stop(
                PRUNED,
                f"{metric} {value:.4g} at epoch {state.epoch}: worse than the other trials there (Optuna pruner)",
            )

    return [on_run_begin(open_), on_epoch_end(report)]
