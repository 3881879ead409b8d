"""Tracking in MLflow: each run an MLflow run, each sweep a parent run with one nested run per job.

This module owns what composeloop sends to an MLflow tracking store and when: at a run's
start, the flattened config as params and its tags (experiment, status, composeloop
version); after each epoch, that epoch's metrics with the epoch as their step; at its end,
the summary's numbers, its status, and the run directory's artifacts (curves.png,
summary.json, metrics.csv, models, GAN sample grids, the Hydra config). The MLflow run id
is kept in the run directory (``mlflow_run.json``), so a resumed run continues the same
MLflow run and logs only the epochs it has not logged yet. A sweep's parent run is made at
its start by `SweepTracking` (a Hydra callback); its id reaches jobs in this process and
in a parallel launcher's workers through an environment variable set for each job.

Tracking never blocks training: every MLflow call goes through `Tracker._call`, which
gives up after the first failure with one line on stderr, and the run goes on untracked
(its own files stay complete, and `upload_run` sends them later). It talks to MLflow
through `MlflowClient` only (no global active run, so jobs in one process never mix),
and imports MLflow (about 1.5 s, pandas included; TensorFlow untouched) only when
tracking is on (the ``composeloop[tracking]`` extra). URIs and the client are
`composeloop.app.tracking_store`'s.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from composeloop.app.tracking_store import (  # noqa: F401 - check_tracking_uri and resolve_uri are public here too
    _first_line,
    _quiet_and_quick,
    check_tracking_uri,
    mlflow_client,
    resolve_uri,
)
from composeloop.config.schema import Config, TrackingBackend, TrackingConfig
from composeloop.files import read_json, read_jsonl, write_json_atomically

if TYPE_CHECKING:
    from composeloop.engine.events import Handler, RunState

DEFAULT_URI = attrs.fields(TrackingConfig).uri.default  # a SQLite file in the working directory
RUN_FILE = "mlflow_run.json"
PARENT_FILE = "mlflow_parent.json"  # a sweep's parent run, at the sweep root
ENV_PARENT = "COMPOSELOOP_MLFLOW_PARENT"  # a sweep's parent run id, for its jobs (hydra.job.env_set)
LOGGED_EPOCH_TAG = "composeloop.logged_epoch"
# How a run's status reads in MLflow (composeloop's own status is the `status` tag).
MLFLOW_STATUS = {"interrupted": "KILLED", "failed": "FAILED", "stopped_nonfinite": "FAILED"}
ARTIFACTS = ("curves.png", "summary.json", "metrics.csv", "*.keras")
SWEEP_ARTIFACTS = ("sweep_summary.*", "sweep.png", "search.png", "optimization_results.yaml", "multirun.yaml")
ARTIFACT_DIRS = {"samples": "samples", ".hydra": "hydra"}  # run directory -> artifact path


def _warn(message: str) -> None:
    print(f"composeloop: tracking: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- one run


@attrs.define
class Tracker:
    """An MLflow run this process logs to; `client` is None once tracking is off for the run."""

    client: Any
    run_id: str | None
    uri: str
    logged_epoch: int = 0
    # The first failure turns tracking off; later calls are skipped (a timeout each would block training).

    @property
    def active(self) -> bool:
        return self.client is not None

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, retries: int = 1, **kwargs: Any) -> Any:
        if self.client is None:
            return None
        try:
            with _quiet_and_quick(retries=retries, timeout=10):
                return fn(*args, **kwargs)
        except Exception as error:  # MLflow, SQLAlchemy, requests: many kinds, all mean "not now"
            _warn(f"{what} failed on {self.uri} ({_first_line(error)}); the run goes on untracked")
            self.client = None
            return None

    def log(self, metrics: Mapping[str, Any] = {}, step: int = 0, tags: Mapping[str, Any] = {}) -> None:  # noqa: B006
        from mlflow.entities import Metric, RunTag

        stamp = int(time.time() * 1000)
        numbers = [
            Metric(key, value, stamp, step) for key, raw in metrics.items() if (value := _number(raw)) is not None
        ]
        self._call("logging", self.client and self.client.log_batch, self.run_id, metrics=numbers,
                   tags=[RunTag(key, str(value)[:5000]) for key, value in tags.items()])  # fmt: skip

    def log_epochs(
        self, history: Sequence[Mapping[str, Any]], rename: Callable[[Mapping[str, Any]], dict] = dict
    ) -> None:
        """Logs each epoch of `history` not logged yet, its number as the step."""
        for logs in history:
            epoch = int(logs.get("epoch", 0))
            if epoch <= self.logged_epoch or not self.active:
                continue
            metrics = {key: value for key, value in rename(logs).items() if key != "epoch"}
            self.log(metrics, step=epoch, tags={LOGGED_EPOCH_TAG: epoch})
            self.logged_epoch = epoch if self.active else self.logged_epoch


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)  # NaN and inf too: MLflow stores them, and they matter
    except ValueError:
        return None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, values as text (lists as written).

    Example:
      >>> flatten({"optimizer": {"learning_rate": 0.001}, "seed": 0})
      {'optimizer.learning_rate': '0.001', 'seed': '0'}
    """
    flat: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = "null" if value is None else str(getattr(value, "name", value))[:6000]
    return flat


def _experiment_id(client: Any, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        # Beside the database (MLflow's default is ./mlruns in whatever the working directory is).
        folder = "".join(char if char.isalnum() or char in "-_." else "_" for char in name)
        location = (Path(uri[len("sqlite:///") :]).parent / "mlruns" / folder).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another job created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def start_run(
    uri: str,
    run_dir: str | Path,
    *,
    experiment: str,
    params: Mapping[str, Any],
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    run_file: str = RUN_FILE,
) -> Tracker:
    """Opens the MLflow run of the run directory `run_dir`: the one it had (a resume) or a new one.

    Args:
      uri: the tracking URI (`DEFAULT_URI`: a SQLite file in the working directory).
      run_dir: the run directory; the run id is kept there in `run_file`.
      experiment: the MLflow experiment (made when missing) and the ``experiment`` tag.
      params: the flattened config (see `flatten`). A resumed run logs only new keys;
        a changed value is kept as the tag ``resumed_with.<key>`` (MLflow params are fixed).
      tags: more tags, e.g. ``{"optuna.trial": 3}``.
      run_name: the name shown in MLflow (default: the run directory's name).
      parent_run_id: a sweep's run (see `parent_run_id`): this run is nested under it.

    Returns:
      A `Tracker`; inactive (and one line on stderr) when the store cannot be reached.

    Example:
      >>> tracker = start_run("sqlite:///mlflow.db", run_dir, experiment="classifier", params=flatten(tree))
      >>> handlers += tracking_handlers(tracker)
      >>> ...  # train, then:
      >>> end_run(tracker, run_dir, summary)
    """
    import composeloop

    run_dir, uri = Path(run_dir), resolve_uri(uri)
    tracker = Tracker(None, None, uri)
    try:
        with _quiet_and_quick(retries=0, timeout=5):
            client = mlflow_client(uri)
            previous = read_json(run_dir / run_file) or {}
            run = None
            if previous.get("uri") == uri and previous.get("run_id"):
                with contextlib.suppress(Exception):  # deleted, or another store: start a new run
                    run = client.get_run(previous["run_id"])
            if run is None:
                run_tags = {
                    "experiment": experiment,
                    "status": "running",
                    "composeloop.version": composeloop.__version__,
                    "composeloop.run_dir": str(run_dir.resolve()),
                    **(tags or {}),
                }
                if parent_run_id:
                    run_tags["mlflow.parentRunId"] = parent_run_id
                run = client.create_run(_experiment_id(client, experiment, uri), run_name=run_name or run_dir.name,
                                        tags={key: str(value) for key, value in run_tags.items()})  # fmt: skip
            run_id = run.info.run_id
            old = run.data.params
            new = {key: str(value) for key, value in params.items() if key not in old}
            changed = {
                f"resumed_with.{key}": value for key, value in params.items() if key in old and old[key] != value
            }
            _log_params(client, run_id, new, {**changed, "status": "running"})
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            tracker = Tracker(client, run_id, uri, int(run.data.tags.get(LOGGED_EPOCH_TAG, 0)))
    except Exception as error:  # an unreachable server, a locked or unreadable database, ...
        _warn(f"cannot reach {uri} ({_first_line(error)}); this run continues untracked")
        return tracker
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(run_dir / run_file, {"uri": uri, "run_id": tracker.run_id})
    return tracker


def parent_run_id(sweep_dir: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The MLflow run of the sweep this job belongs to: from the environment, else the sweep directory."""
    if environ.get(ENV_PARENT):
        return environ[ENV_PARENT]
    found = read_json(Path(sweep_dir) / PARENT_FILE) if sweep_dir is not None else None
    return (found or {}).get("run_id")


def config_params(config: Config) -> dict[str, str]:
    """A validated `Config` as MLflow params: dotted keys, a part's own arguments beside its known keys.

    Example:
      >>> config_params(config)["optimizer.learning_rate"]
      '0.001'
    """

    def plain(value: Any) -> Any:
        if attrs.has(type(value)):
            fields = {field.name: plain(getattr(value, field.name)) for field in attrs.fields(type(value))}
            return {**{key: item for key, item in fields.items() if key != "args"}, **(fields.get("args") or {})}
        return {key: plain(item) for key, item in value.items()} if isinstance(value, Mapping) else value

    return flatten(plain(config))


def open_run(config: Config, directory: str | Path) -> Tracker | None:
    """The MLflow run of the run directory `directory` when ``tracking.backend=mlflow``, else None.

    A resumed run gets the MLflow run it had; a job of a sweep is nested under the sweep's
    run (`parent_run_id`), a search trial tagged ``optuna.trial``. The store unreachable:
    one line on stderr and an inactive tracker; the run goes on.

    Example:
      >>> tracker = open_run(config, run_dir)  # then tracking_handlers(tracker), and end_run at the end
    """
    if config.tracking.backend is not TrackingBackend.mlflow:
        return None
    from composeloop.app.search_job import trial_number

    trial = trial_number()
    return start_run(
        config.tracking.uri,
        directory,
        experiment=config.tracking.experiment or config.experiment,
        params=config_params(config),
        tags={"optuna.trial": trial} if trial is not None else None,
        parent_run_id=parent_run_id(),
    )


def _log_params(client: Any, run_id: str, params: Mapping[str, str], tags: Mapping[str, Any]) -> None:
    from mlflow.entities import Param, RunTag

    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, max(len(items), 1), 100):  # MLflow takes at most 100 params a batch
        batch_tags = [RunTag(key, str(value)) for key, value in tags.items()] if start == 0 else []
        client.log_batch(run_id, params=items[start : start + 100], tags=batch_tags)


def tracking_handlers(tracker: Tracker, rename: Callable[[Mapping[str, Any]], dict] = dict) -> list[Handler]:
    """Loop handlers that log each finished epoch's metrics (step = epoch) to the tracker's run.

    At the run's begin they log the epochs of a resumed history that the MLflow run has
    not seen (a run killed between an epoch and its log); after each epoch, that epoch.

    Args:
      tracker: from `start_run`.
      rename: maps an epoch's logs to the names shown (as the metric files do).
    """
    from composeloop.engine.events import on_epoch_end, on_run_begin

    def catch_up(state: RunState) -> None:
        tracker.log_epochs(state.history, rename)

    return [on_run_begin(catch_up), on_epoch_end(catch_up)]


def _artifacts(run_dir: Path) -> list[tuple[Path, str | None]]:
    patterns = (*ARTIFACTS, *SWEEP_ARTIFACTS)
    found: list[tuple[Path, str | None]] = [
        (path, None) for pattern in patterns for path in sorted(run_dir.glob(pattern)) if path.is_file()
    ]
    found += [(run_dir / name, target) for name, target in ARTIFACT_DIRS.items() if (run_dir / name).is_dir()]
    return found


def end_run(tracker: Tracker, run_dir: str | Path, summary: Mapping[str, Any]) -> None:
    """Logs what a finished (or stopped) run leaves: epochs not yet logged, the summary, the artifacts.

    The summary's numbers (``best_epoch``, ``wall_s``, a GAN's ``digit_confidence``, ...)
    become metrics at the last epoch's step, its status and reason tags; the MLflow run
    ends FINISHED, KILLED (interrupted: a resume continues it) or FAILED.

    Example:
      >>> end_run(tracker, run_dir, summary)
    """
    run_dir = Path(run_dir)
    if not tracker.active:
        if tracker.run_id is None:
            _warn(f"{run_dir} was not tracked; upload it later with composeloop.app.tracking.upload_run")
        return
    tracker.log_epochs(read_jsonl(run_dir / "metrics.jsonl"))
    status = str(summary.get("status", "completed"))
    # The summary's own numbers, and its final metrics apart from the per-epoch histories.
    numbers = {key: value for key, value in summary.items() if key not in ("epochs", "metrics")}
    numbers.update({f"final_{key}": value for key, value in (summary.get("metrics") or {}).items() if key != "epoch"})
    step = int(summary.get("epochs") or tracker.logged_epoch or 0)
    tags = {"status": status, **{key: summary[key] for key in ("reason", "error") if summary.get(key)}}
    tracker.log(numbers, step=step, tags=tags)
    for path, target in _artifacts(run_dir):
        upload = tracker.client and (tracker.client.log_artifacts if path.is_dir() else tracker.client.log_artifact)
        tracker._call(f"uploading {path.name}", upload, tracker.run_id, str(path), target, retries=2)
    tracker._call("ending the run", tracker.client and tracker.client.set_terminated, tracker.run_id,
                  MLFLOW_STATUS.get(status, "FINISHED"))  # fmt: skip


def upload_run(uri: str, run_dir: str | Path, experiment: str | None = None) -> Tracker:
    """Sends a run directory that was not tracked (or only in part) to MLflow, from its files.

    The params come from ``.hydra/config.yaml``, the epochs from metrics.jsonl, the rest
    from summary.json; a directory already tracked continues its MLflow run.

    Example:
      >>> upload_run("sqlite:///mlflow.db", "outputs/2026-01-01/12-00-00")
    """
    import yaml

    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json") or {}
    config_file = run_dir / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    name = experiment or str(summary.get("experiment") or config.get("experiment") or "composeloop")
    tracker = start_run(uri, run_dir, experiment=name, params=flatten(config))
    tracker.log_epochs(read_jsonl(run_dir / "metrics.jsonl"))
    end_run(tracker, run_dir, summary)
    return tracker
