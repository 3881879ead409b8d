"""A sweep in MLflow: a parent run made at the sweep's start, one nested run per job.

This module owns the sweep's side of tracking: `SweepTracking`, the Hydra callback that
opens the parent run (or continues it, when a search is rerun into the same sweep
directory) and ends it with the sweep's summary files as artifacts, and `parent_run_id`,
by which a job finds its parent: an environment variable set in the sweep's process
(inherited by a parallel launcher's workers), else ``mlflow_parent.json`` in the sweep
directory. One run's tracking is `composeloop.app.tracking`'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from composeloop.app.tracking import DEFAULT_URI, Tracker, end_run, flatten, read_json, start_run

PARENT_FILE = "mlflow_parent.json"
ENV_PARENT = "COMPOSELOOP_MLFLOW_PARENT"


def parent_run_id(sweep_dir: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The MLflow run of the sweep this job belongs to: from the environment, else the sweep directory."""
    if environ.get(ENV_PARENT):
        return environ[ENV_PARENT]
    found = read_json(Path(sweep_dir) / PARENT_FILE) if sweep_dir is not None else None
    return (found or {}).get("run_id")


def tracking_settings(config: Any) -> tuple[str, str] | None:
    """(uri, MLflow experiment) when the config turns MLflow tracking on, else None."""
    from omegaconf import OmegaConf

    backend = OmegaConf.select(config, "tracking.backend", default=None)
    if str(getattr(backend, "name", backend)) != "mlflow":
        return None
    uri = OmegaConf.select(config, "tracking.uri", default=None) or DEFAULT_URI
    name = OmegaConf.select(config, "tracking.experiment", default=None) or OmegaConf.select(config, "experiment")
    return str(uri), str(name or "composeloop")


class SweepTracking(Callback):
    """A Hydra callback: a sweep's parent MLflow run, made at its start and ended at its end.

    A rerun into the same sweep directory (a search continued) continues the same parent.
    List it BEFORE the sweep summary's callback: Hydra calls ``on_multirun_end`` in reverse
    order, and the parent's artifacts are the summary's files.

    Example (conf/config.yaml):
      hydra.callbacks.tracking._target_: composeloop.app.tracking_sweep.SweepTracking
    """

    def __init__(self) -> None:
        self.tracker: Tracker | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        settings = tracking_settings(config)
        if settings is None:
            return
        uri, experiment = settings
        sweep_dir = Path(str(config.hydra.sweep.dir))
        tree = {key: value for key, value in OmegaConf.to_container(config, resolve=False).items() if key != "hydra"}
        overrides = " ".join(OmegaConf.to_container(config.hydra.overrides.task))
        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default="")).rsplit(".", 1)[-1]
        self.tracker = start_run(uri, sweep_dir, experiment=experiment, params={**flatten(tree), "sweep": overrides},
                                 tags={"composeloop.sweeper": sweeper}, run_name=f"sweep {sweep_dir.name}",
                                 run_file=PARENT_FILE)  # fmt: skip
        if self.tracker.active:
            os.environ[ENV_PARENT] = str(self.tracker.run_id)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        os.environ.pop(ENV_PARENT, None)
        if self.tracker is not None:
            end_run(self.tracker, Path(str(config.hydra.sweep.dir)), {"status": "completed"})
            self.tracker = None
