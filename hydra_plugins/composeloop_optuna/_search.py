"""The search loop behind ``hydra/sweeper=optuna``: ask a batch, launch it, tell each outcome.

Imported only when a search runs (Hydra's plugin scan skips ``_`` modules). Each batch
holds `n_jobs` trials asked at once (one with the basic launcher, the joblib launcher's
``n_jobs`` with it); a trial's job number is its trial number, so a rerun into the same
sweep directory adds job directories after the earlier ones and the sweep summary covers
every trial. Each trial is told as soon as its batch returns, so a search killed later
loses none of them; trials a killed search left running are settled from their job
directories when the study is next opened, or at once when the batch is interrupted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict, read_write

from composeloop.app import search, search_report
from composeloop.app.search_space import check_search_space

log = logging.getLogger(__name__)


def _batch_size(settings: dict[str, Any], config: Any) -> int:
    if settings.get("n_jobs"):
        return max(int(settings["n_jobs"]), 1)
    launcher_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
    if launcher_jobs is None:
        return 1
    return os.cpu_count() or 1 if int(launcher_jobs) < 0 else max(int(launcher_jobs), 1)


def _read_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    from composeloop.config.sweep import read_sweep  # moves to composeloop.app with the app layer

    return read_sweep(sweep_dir, missing="interrupted")


def _launch(sweeper: Any, trials: Sequence[Any], batch: list[list[str]]) -> list[JobReturn]:
    """Launches `batch`, numbering each job by its trial (one launch per run of consecutive numbers)."""
    numbers = [trial.number for trial in trials]
    if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
        return list(sweeper.launcher.launch(batch, initial_job_idx=numbers[0]))
    # Another process asked trials of this study meanwhile: keep job number == trial number.
    return [
        ret for trial, job in zip(trials, batch, strict=True) for ret in sweeper.launcher.launch([job], trial.number)
    ]


def _returned(ret: JobReturn) -> Any:
    return ret.return_value if ret.status is JobStatus.COMPLETED else ret._return_value  # the job's exception


def run_search(sweeper: Any, arguments: list[str]) -> list[list[JobReturn]]:
    """Runs `hydra.sweeper.n_trials` trials of the search that `arguments` and ``params`` define."""
    settings, config = sweeper.settings, sweeper.config
    loader = sweeper.hydra_context.config_loader
    params = [f"{key}={value}" for key, value in (settings.get("params") or {}).items()]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *arguments])
    space = check_search_space(parsed, settings["n_trials"], group_options=loader.get_group_options)
    metric, direction = search.objective(
        OmegaConf.select(config, "experiment"), settings["metric"], settings["direction"]
    )

    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    storage = search.storage_url(sweep_dir, settings["storage"])
    pruner = {"name": settings["pruner"], "warmup_epochs": settings["warmup_epochs"]}
    pruner["startup_trials"] = settings["startup_trials"]
    study = search.open_study(storage, settings["study_name"], metric=metric, direction=direction, pruner=pruner)
    settled = search.settle_stale_trials(study, _read_rows(sweep_dir), metric)
    seed = settings["seed"] if settings["seed"] is not None else OmegaConf.select(config, "seed", default=None)
    earlier = len(study.trials)
    # A rerun continues the study: offset the seed so it does not draw the first run's trials again.
    study.sampler = search.make_sampler(settings["sampler"], None if seed is None else int(seed) + earlier)
    log.info(
        f"Optuna study '{study.study_name}' in {storage}: {earlier} earlier trials"
        + (f" ({settled} left running by a stopped search, now settled)" if settled else "")
        + f"; {direction} {metric}; pruner {settings['pruner']}"
    )
    with read_write(config.hydra.overrides), open_dict(config.hydra.overrides):
        # Every job composes its config from these Hydra overrides: this is how it finds its trial.
        config.hydra.overrides.hydra = [*config.hydra.overrides.hydra, *search.job_overrides(storage, study.study_name)]
    fixed = search.distributions(space)
    batch_size = _batch_size(settings, config)
    returns: list[list[JobReturn]] = []
    left = settings["n_trials"]
    while left > 0:
        trials = [study.ask(fixed_distributions=fixed) for _ in range(min(batch_size, left))]
        batch = [space.overrides(trial.params) for trial in trials]
        try:
            sweeper.validate_batch_is_legal(batch)
            results = _launch(sweeper, trials, batch)
        except BaseException:
            # Ctrl-C or a bad composition: settle what finished, mark the rest, then stop.
            search.settle_stale_trials(study, _read_rows(sweep_dir), metric)
            raise
        for trial, ret in zip(trials, results, strict=True):
            result = search.outcome(_returned(ret), metric)
            search.tell(study, trial, result)
            shown = f"{metric} {result.value:.4g}" if result.value is not None else result.note
            log.info(f"trial {trial.number}: {result.state} ({result.status}): {shown}")
        returns.append(results)
        left -= len(trials)

    rows = search_report.trial_rows(study)
    best = search_report.best_row(rows, direction)
    try:
        best_overrides = space.overrides(best["params"]) if best else []
    except (KeyError, ValueError):  # the best trial came from an earlier run's other search space
        best_overrides = [f"{key}={value}" for key, value in best["params"].items()]
    search_report.write_results(
        sweep_dir / search_report.RESULTS_FILE,
        rows,
        study=study.study_name,
        storage=storage,
        metric=metric,
        direction=direction,
        overrides=best_overrides,
    )
    search_report.plot_search(rows, sweep_dir / search_report.PLOT_FILE, metric=metric, direction=direction)
    if best is not None:
        log.info(f"best trial {best['number']}: {metric} {best['value']:.4g} with {' '.join(best_overrides)}")
    return returns
