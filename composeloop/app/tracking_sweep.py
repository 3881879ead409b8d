"""A sweep in MLflow: a parent run made at the sweep's start, one nested run per job.

This module owns the sweep's side of tracking: `SweepTracking`, the Hydra callback that
opens the parent run (or continues it, when a search is rerun into the same sweep
directory), hands its id to every job through ``hydra.job.env_set`` (so jobs in this
process and in a launcher's workers alike find it: `composeloop.app.tracking.parent_run_id`),
and ends it with the sweep's summary files as artifacts. One run's tracking is
`composeloop.app.tracking`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from composeloop.app.tracking import (
    DEFAULT_URI,
    ENV_PARENT,
    PARENT_FILE,
    Tracker,
    end_run,
    flatten,
    parent_run_id,
    start_run,
)

__all__ = ["ENV_PARENT", "PARENT_FILE", "SweepTracking", "parent_run_id", "tracking_settings"]


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
            from omegaconf import OmegaConf, open_dict, read_write

            from composeloop.app.search_job import override_value

            # Each job composes its config from the master config's Hydra overrides, in this
            # process or a launcher's workers alike: through them it gets its parent's id.
            env = f"++hydra.job.env_set.{ENV_PARENT}={override_value(str(self.tracker.run_id))}"
            with read_write(config.hydra.overrides), open_dict(config.hydra.overrides):
                earlier = OmegaConf.to_container(config.hydra.overrides.hydra, resolve=False)
                config.hydra.overrides.hydra = [*earlier, env]

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self.tracker is not None:
            end_run(self.tracker, Path(str(config.hydra.sweep.dir)), {"status": "completed"})
            self.tracker = None
