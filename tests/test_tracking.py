"""Tracking in MLflow, read back with MLflow's own client from the SQLite store.

The runs here are composeloop's loop handlers over epochs that take no time (no
TensorFlow training), in-process: a run's params, per-epoch metrics, summary and
artifacts; a run killed and resumed continuing the same MLflow run; a sweep's parent run
with its nested runs; an unreachable tracker and bad URIs. Sweeps across processes are in
tests/test_search.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from composeloop.app import tracking, tracking_sweep
from composeloop.engine.events import Event, RunState, dispatch
from composeloop.errors import ConfigError

CONFIG = {"experiment": "classifier", "seed": 0, "optimizer": {"learning_rate": 0.001}, "data": {"shape": [8, 8]}}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module: making MLflow's tables takes seconds."""
    return tracking.resolve_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


def make_run_dir(directory: Path) -> Path:
    (directory / "samples").mkdir(parents=True)
    (directory / ".hydra").mkdir()
    for name in ("curves.png", "samples/epoch_001.png", "model.keras"):
        (directory / name).write_bytes(b"not really " + name.encode())
    (directory / ".hydra" / "config.yaml").write_text("seed: 0\n")
    return directory


def train(tracker: tracking.Tracker, epochs: int, history: list[dict] | None = None, until: int | None = None):
    """Runs epochs after `history` (a restored one) up to `until`, logging through the handlers."""
    state = RunState(program=None, epochs=epochs, history=list(history or []))
    state.epoch = len(state.history)
    handlers = tracking.tracking_handlers(tracker)
    dispatch(handlers, Event.RUN_BEGIN, state)
    while state.epoch < (until or epochs):
        state.epoch += 1
        state.history.append({"epoch": state.epoch, "val_accuracy": state.epoch / 10, "train_loss": 1 / state.epoch})
        dispatch(handlers, Event.EPOCH_END, state)
    return state


def summary_of(state: RunState, status: str = "completed") -> dict:
    return {"status": status, "epochs": len(state.history), "metrics": state.history[-1], "wall_s": 1.5, "traces": {}}


def steps(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_a_run_has_its_params_epoch_metrics_summary_and_artifacts(store, tmp_path):
    run_dir = make_run_dir(tmp_path / "run")
    tracker = tracking.start_run(store, run_dir, experiment="classifier", params=tracking.flatten(CONFIG))
    state = train(tracker, epochs=3)
    tracking.end_run(tracker, run_dir, summary_of(state))

    client = tracking.mlflow_client(store)
    run = client.get_run(json.loads((run_dir / tracking.RUN_FILE).read_text())["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params == {"experiment": "classifier", "seed": "0", "optimizer.learning_rate": "0.001",
                               "data.shape": "[8, 8]"}  # fmt: skip
    assert run.data.tags["experiment"] == "classifier" and run.data.tags["status"] == "completed"
    assert run.data.tags["composeloop.version"]
    assert steps(client, run.info.run_id, "val_accuracy") == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert run.data.metrics["wall_s"] == 1.5 and run.data.metrics["final_val_accuracy"] == 0.3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "model.keras", "samples", "hydra"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/epoch_001.png"]


def test_a_run_killed_and_resumed_appends_to_the_same_mlflow_run(store, tmp_path):
    run_dir = tmp_path / "run"
    params = tracking.flatten(CONFIG)
    first = tracking.start_run(store, run_dir, experiment="resumed", params=params)
    killed = train(first, epochs=5, until=3)  # then SIGKILL: no end_run; its checkpoint had only 2 epochs
    second = tracking.start_run(store, run_dir, experiment="resumed", params={**params, "seed": "1"})
    assert second.run_id == first.run_id and second.logged_epoch == 3
    interrupted = train(second, epochs=5, history=killed.history[:2], until=4)  # retrains epoch 3, then SIGTERM
    tracking.end_run(second, run_dir, summary_of(interrupted, "interrupted"))
    client = tracking.mlflow_client(store)
    assert client.get_run(first.run_id).info.status == "KILLED"
    third = tracking.start_run(store, run_dir, experiment="resumed", params=params)
    tracking.end_run(third, run_dir, summary_of(train(third, epochs=5, history=interrupted.history)))

    run = client.get_run(first.run_id)
    assert third.run_id == first.run_id and run.info.status == "FINISHED"
    assert [step for step, _ in steps(client, first.run_id, "val_accuracy")] == [1, 2, 3, 4, 5]  # each epoch once
    assert run.data.params["seed"] == "0" and run.data.tags["resumed_with.seed"] == "1"  # params are fixed in MLflow
    experiment = client.get_experiment_by_name("resumed").experiment_id
    assert len(client.search_runs([experiment])) == 1


def test_a_sweep_is_a_parent_run_with_one_nested_run_per_job(store, tmp_path, monkeypatch):
    sweep_dir = tmp_path / "sweep"
    hydra = {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": ["seed=0,1"], "hydra": []},
             "sweeper": {"_target_": "hydra.BasicSweeper"}}  # fmt: skip
    config = OmegaConf.create(
        {**CONFIG, "tracking": {"backend": "mlflow", "uri": store, "experiment": "sweeps"}, "hydra": hydra}
    )
    monkeypatch.delenv(tracking.ENV_PARENT, raising=False)
    callback = tracking_sweep.SweepTracking()
    callback.on_multirun_start(config)
    parent = tracking_sweep.parent_run_id(sweep_dir)
    assert parent == json.loads((sweep_dir / tracking_sweep.PARENT_FILE).read_text())["run_id"]
    # Every job gets the parent's id in its environment through the Hydra overrides it is composed from.
    (env_set,) = OverridesParser.create().parse_overrides(list(config.hydra.overrides.hydra))
    assert (env_set.key_or_group, env_set.value()) == (f"hydra.job.env_set.{tracking.ENV_PARENT}", parent)
    for job in range(2):
        job_dir = sweep_dir / str(job)
        params = tracking.flatten({**CONFIG, "seed": job})
        parent_id = tracking.parent_run_id(environ={tracking.ENV_PARENT: parent} if job else {}, sweep_dir=sweep_dir)
        tracker = tracking.start_run(store, job_dir, experiment="sweeps", params=params, parent_run_id=parent_id)
        tracking.end_run(tracker, job_dir, summary_of(train(tracker, epochs=2)))
    (sweep_dir / "sweep_summary.csv").write_text("job,seed\n0,0\n1,1\n")
    callback.on_multirun_end(config)

    client = tracking.mlflow_client(store)
    experiment = client.get_experiment_by_name("sweeps").experiment_id
    nested = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(run.data.params["seed"] for run in nested) == ["0", "1"]
    assert client.get_run(parent).info.status == "FINISHED"
    assert "sweep_summary.csv" in {a.path for a in client.list_artifacts(parent)}
    assert len(client.search_runs([experiment])) == 3


def test_an_unreachable_tracker_is_one_line_and_the_run_goes_on(tmp_path, capsys):
    tracker = tracking.start_run("http://127.0.0.1:9", tmp_path, experiment="x", params={})
    state = train(tracker, epochs=2)
    tracking.end_run(tracker, tmp_path, summary_of(state))
    lines = capsys.readouterr().err.strip().splitlines()
    assert not tracker.active and len(state.history) == 2
    assert lines[0].startswith("composeloop: tracking: cannot reach http://127.0.0.1:9 (")
    assert lines[0].endswith("this run continues untracked") and len(lines) == 2 and "upload_run" in lines[1]
    assert not (tmp_path / tracking.RUN_FILE).exists()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:/mlflow.db", "write sqlite:///relative.db"),
        ("sqlite:///no/such/folder/mlflow.db", "the folder no/such/folder does not exist"),
        ("ftp://host/x", "unknown scheme"),
        ("mlflow.db", "unknown scheme"),
        ("http://", "has no host"),
        ("postgresql+nosuchdriver://u@h/db", "needs the nosuchdriver package"),
    ],
)
def test_a_bad_tracking_uri_is_one_line(uri, expected):
    with pytest.raises(ConfigError) as caught:
        tracking.check_tracking_uri(uri)
    assert str(caught.value).startswith("tracking.uri: ") and expected in str(caught.value)


def test_good_tracking_uris_pass_without_contacting_anything():
    for uri in ("sqlite:///mlflow.db", "http://tracker.example:5000", "file:///tmp/mlruns", "databricks"):
        tracking.check_tracking_uri(uri)
