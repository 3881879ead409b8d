"""A Hydra app whose job is a loop of epochs without TensorFlow, for the search tests.

Each "epoch" logs ``val_accuracy``, best at a learning rate of 3e-3 and growing with the
epochs, through composeloop's real loop handlers: `pruning_handlers` of the job's trial
(found as the runner finds it, from the environment) and the metric files. The job
writes summary.json and returns the summary, as composeloop's runner does, so the sweep
summary and the sweeper read it exactly as they read a real run. With
``tracking.backend=mlflow`` each job is an MLflow run nested under the sweep's, wired
as the runner wires it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from composeloop.app import search, tracking, tracking_sweep
from composeloop.engine.events import Event, RunState, dispatch
from composeloop.engine.report import metric_files, write_json_atomically


def accuracy(learning_rate: float, epoch: int, epochs: int) -> float:
    closeness = max(0.0, 1.0 - abs(math.log10(learning_rate / 3e-3)) / 2.0)
    return round(0.1 + 0.85 * closeness * epoch / epochs, 6)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(config) -> dict:
    directory = Path(HydraConfig.get().runtime.output_dir)
    trial = search.current_trial()
    handlers = [*(search.pruning_handlers(trial) if trial else []), *metric_files(directory)]
    tracked = tracking_sweep.tracking_settings(config)
    if tracked:
        uri, experiment = tracked
        params = tracking.flatten(OmegaConf.to_container(config))
        parent = tracking_sweep.parent_run_id(HydraConfig.get().sweep.dir)
        tags = {"optuna.trial": trial.number} if trial else {}
        tracker = tracking.start_run(
            uri, directory, experiment=experiment, params=params, tags=tags, parent_run_id=parent
        )
        handlers += tracking.tracking_handlers(tracker)
    state = RunState(program=None, epochs=config.train.epochs)
    dispatch(handlers, Event.RUN_BEGIN, state)
    while state.epoch < state.epochs and not state.stopping:
        state.epoch += 1
        value = accuracy(config.optimizer.learning_rate, state.epoch, state.epochs)
        state.history.append({"epoch": state.epoch, "val_accuracy": value, "pid": os.getpid()})
        dispatch(handlers, Event.EPOCH_END, state)
    status = state.status if state.stopping else "completed"
    summary = {
        "experiment": config.experiment,
        "status": status,
        "reason": state.reason,
        "epochs": state.epoch,
        "metrics": {"val_accuracy": state.history[-1]["val_accuracy"]},
        "wall_s": time.process_time(),
    }
    write_json_atomically(directory / "summary.json", summary)
    if tracked:
        tracking.end_run(tracker, directory, summary)
    return summary


if __name__ == "__main__":
    main()
