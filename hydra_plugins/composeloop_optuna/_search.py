"""The search loop behind ``hydra/sweeper=optuna``: ask a batch, launch it, tell each outcome.

Imported only when a search runs (Hydra's plugin scan skips ``_`` modules). Each batch
holds `n_jobs` trials asked at once (one with the basic launcher, the joblib launcher's
``n_jobs`` with it); a trial's job number is its trial number, so a rerun into the same
sweep directory adds job directories after the earlier ones and the sweep summary covers
every trial. Each trial is told as soon as its batch returns, so a search killed later
loses none of them; trials a killed search left running are settled from their job
directories when the study is next opened, or at once when the batch is interrupted. A
search not told its metric runs its first batch before the study exists and learns the
metric from the summaries (`_first_trials`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict, read_write

from composeloop.app import search, search_job, search_report
from composeloop.app.search_space import check_search_space, parse

log = logging.getLogger(__name__)


def _batch_size(settings: dict[str, Any], config: Any) -> int:
    if settings.get("n_jobs"):
        return max(int(settings["n_jobs"]), 1)
    launcher_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
    if launcher_jobs is None:
        return 1
    return os.cpu_count() or 1 if int(launcher_jobs) < 0 else max(int(launcher_jobs), 1)


def _read_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    from composeloop.app.sweep_rows import read_sweep

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


def _intermediate(ret: JobReturn, metric: str) -> dict[int, float]:
    """The job's per-epoch values of `metric`, from its metrics.jsonl."""
    from composeloop.app.search import finite
    from composeloop.files import read_jsonl

    directory = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default=None) if ret.hydra_cfg else None
    lines = read_jsonl(Path(str(directory)) / "metrics.jsonl") if directory else []
    found = ((line.get("epoch"), finite(line.get(metric))) for line in lines)
    return {int(epoch): value for epoch, value in found if epoch is not None and value is not None}


def _first_trials(sweeper: Any, space: Any, fixed: dict[str, Any], count: int, seed: int | None, direction: Any):
    """Runs the first `count` trials before the study exists; returns their objective, trials and returns.

    Without ``hydra.sweeper.metric`` or a config's ``main_metric``, the metric is the one
    the composition names in its summary (a GAN's ``digit_confidence``), known only once a
    job has run: these trials are asked from a study in memory and run unpruned.
    """
    import optuna

    probe = optuna.create_study(sampler=search.make_sampler(sweeper.settings["sampler"], seed))
    trials = [probe.ask(fixed_distributions=fixed) for _ in range(count)]
    _add_hydra_overrides(sweeper.config, search_job.job_overrides(None, None))  # their number, for tracking
    results = _launch(sweeper, trials, [space.overrides(trial.params) for trial in trials])
    target = search.reported_objective([_returned(ret) for ret in results], direction)
    if target is None:
        log.warning("no trial of the first batch named its main metric: the search optimizes val_accuracy")
        target = search.objective("val_accuracy", direction)
    return target, trials, results


def run_search(sweeper: Any, arguments: list[str]) -> list[list[JobReturn]]:
    """Runs `hydra.sweeper.n_trials` trials of the search that `arguments` and ``params`` define."""
    settings, config = sweeper.settings, sweeper.config
    loader = sweeper.hydra_context.config_loader
    params = [f"{key}={value}" for key, value in (settings.get("params") or {}).items()]
    parsed = parse([*params, *arguments])
    space = check_search_space(parsed, settings["n_trials"], group_options=loader.get_group_options)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")
    storage = search.storage_url(sweep_dir, settings["storage"])
    name = settings["study_name"]
    requested = settings["metric"] or OmegaConf.select(config, "main_metric", default=None)
    target = search.objective(requested, settings["direction"]) if requested else search.stored_objective(storage, name)
    pruner = {key: settings[key] for key in ("warmup_epochs", "startup_trials")} | {"name": settings["pruner"]}
    seed = settings["seed"] if settings["seed"] is not None else OmegaConf.select(config, "seed", default=None)
    fixed = search.distributions(space)
    batch_size = _batch_size(settings, config)
    returns: list[list[JobReturn]] = []
    left = settings["n_trials"]
    probed: tuple[Sequence[Any], Sequence[JobReturn]] = ((), ())
    if target is None:
        target, *probed = _first_trials(sweeper, space, fixed, min(batch_size, left), seed, settings["direction"])
        returns.append(list(probed[1]))
        left -= len(probed[0])
    metric, direction = target
    study = search.open_study(storage, name, metric=metric, direction=direction, pruner=pruner)
    settled = search.settle_stale_trials(study, _read_rows(sweep_dir), metric)
    for trial, ret in zip(*probed, strict=True):
        result = search.outcome(_returned(ret), metric)
        search.add_trial(study, trial.params, fixed, result, _intermediate(ret, metric))
        _log_trial(trial.number, result, metric)
    earlier = len(study.trials)
    # A rerun continues the study: offset the seed so it does not draw the earlier trials again.
    study.sampler = search.make_sampler(settings["sampler"], None if seed is None else int(seed) + earlier)
    log.info(
        f"Optuna study '{study.study_name}' in {storage}: {earlier} earlier trials"
        + (f" ({settled} left running by a stopped search, now settled)" if settled else "")
        + f"; {direction} {metric}; pruner {settings['pruner']}"
    )
    _add_hydra_overrides(config, search_job.job_overrides(storage, study.study_name))
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
            _log_trial(trial.number, result, metric)
        returns.append(results)
        left -= len(trials)
    _report(study, space, storage, sweep_dir, metric, direction)
    return returns


def _add_hydra_overrides(config: Any, overrides: list[str]) -> None:
    with read_write(config.hydra.overrides), open_dict(config.hydra.overrides):
        # Every job composes its config from these Hydra overrides: this is how it finds its trial.
        earlier = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)  # keep ${hydra.job.num}
        config.hydra.overrides.hydra = [*earlier, *overrides]


def _log_trial(number: int, result: Any, metric: str) -> None:
    shown = f"{metric} {result.value:.4g}" if result.value is not None else result.note
    log.info(f"trial {number}: {result.state} ({result.status}): {shown}")


def _report(study: Any, space: Any, storage: str, sweep_dir: Path, metric: str, direction: str) -> None:
    """optimization_results.yaml and search.png at the sweep root, from every trial of the study."""
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
