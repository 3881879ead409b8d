"""Search and tracking through `python -m composeloop`: the real CLI, preflight, runner and sweeper.

A search of a few trials of 3 epochs on tiny synthetic data, rerun into the same sweep
directory with parallel trials in joblib's workers, tracked in MLflow and read back with
MLflow's own client; a tracked run killed with SIGKILL and resumed; and the bad inputs of a
search or of tracking, each one line and exit 2 before any trial runs. The study's own
mechanics (pruning inside a job, settling trials a killed search left) are checked
in-process in tests/test_search.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import optuna
import pytest
from test_cli import assert_one_line_error, cli

from composeloop.app import tracking

TINY = ("data=synthetic", "train.epochs=3", "data.synthetic_examples=64")
SPACE = ("optimizer.learning_rate=tag(log,interval(1e-4,3e-2))", "gradient.clip_global_norm=choice(0.5,1.0,5.0)")


@pytest.mark.slow
def test_a_search_prunes_continues_its_study_and_is_tracked(tmp_path):
    sweep = tmp_path / "sweep"
    args = ("-m", "hydra/sweeper=optuna", *SPACE, *TINY, f"hydra.sweep.dir={sweep}", "hydra.sweeper.startup_trials=1")
    first = cli(*args, "hydra.sweeper.n_trials=4", "tracking=mlflow", cwd=tmp_path)
    assert first.returncode == 0, first.stderr  # a pruned trial is no failure
    # Again into the same sweep directory: two more trials, at once, in joblib's worker processes.
    parallel = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    again = cli(*args, "hydra.sweeper.n_trials=2", *parallel, "tracking=mlflow", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="composeloop", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = [trial.state.name for trial in study.trials]
    assert len(states) == 6 and "PRUNED" in states and set(states) <= {"COMPLETE", "PRUNED"}
    assert study.user_attrs["composeloop"]["metric"] == "val_accuracy"  # learned from the first trial's summary
    # Each job reported its epochs to its trial, also from joblib's workers (the first trial's read from its files).
    assert all(trial.intermediate_values for trial in study.trials)
    assert len({tuple(trial.params.items()) for trial in study.trials}) == 6  # the rerun drew new trials
    assert sorted(int(p.name) for p in sweep.iterdir() if p.name.isdigit()) == list(range(6))  # job == trial
    assert len((sweep / "sweep_summary.csv").read_text().splitlines()) == 1 + 6
    pruned = states.count("PRUNED")
    assert f"6 jobs: {6 - pruned} finished, {pruned} pruned, 0 failed" in (sweep / "sweep_summary.md").read_text()

    client = tracking.mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("classifier").experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]  # continued by the rerun
    nested = {int(run.data.tags["optuna.trial"]): run for run in runs if run is not parent}
    assert sorted(nested) == list(range(6))
    assert {run.data.tags["mlflow.parentRunId"] for run in nested.values()} == {parent.info.run_id}
    assert [nested[n].data.tags["status"] for n in range(6)] == [
        s.lower().replace("complete", "completed") for s in states
    ]
    first = nested[0]
    assert first.data.params["optimizer.learning_rate"] == str(study.trials[0].params["optimizer.learning_rate"])
    assert first.data.params["data.source"] == "synthetic" and first.data.params["tracking.backend"] == "mlflow"
    history = client.get_metric_history(first.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3] and history[-1].value == first.data.metrics["final_val_accuracy"]
    assert {"curves.png", "summary.json", "model.keras", "hydra"} <= {
        a.path for a in client.list_artifacts(first.info.run_id)
    }
    assert {"sweep_summary.csv", "search.png", "optimization_results.yaml"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("optimizer.learning_rate=normal(0,1)",), "Unknown function 'normal'"),
        (("optimizer.learning_rate=interval(-1,0.1)",), "optimizer.learning_rate: lower bound -1.0: must be > 0"),
        (("optimizer.learning_rate=interval(0.1,0.01)",), "interval(0.1, 0.01) is reversed"),
        (("gradient.clip_global_norm=choice(0.5,abc)",), "gradient.clip_global_norm: choice 'abc': expected float"),
        (("hydra.sweeper.n_trials=0",), "hydra.sweeper.n_trials: must be >= 1, got 0"),
        (("train.epochs=-1",), "train.epochs: must be an integer"),  # a fixed override: the example job is composed
    ],
)
def test_a_bad_search_stops_before_any_trial(tmp_path, args, expected):
    result = cli("-m", "hydra/sweeper=optuna", *SPACE, *args, f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert_one_line_error(result, expected)
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_named_search_is_checked_as_one(tmp_path):
    # conf/sweep/lr_search.yaml's space is parsed and checked with the command line's, which replaces its clip.
    sweep = f"hydra.sweep.dir={tmp_path / 's'}"
    result = cli("+sweep=lr_search", "gradient.clip_global_norm=choice(0.5,abc)", sweep, cwd=tmp_path)
    assert_one_line_error(result, "gradient.clip_global_norm: choice 'abc': expected float")


@pytest.mark.slow
def test_a_bad_tracking_uri_stops_a_single_run_before_it_starts(tmp_path):
    result = cli(
        *TINY, "tracking=mlflow", "tracking.uri=sqlite:/mlflow.db", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert_one_line_error(result, "tracking.uri: 'sqlite:/mlflow.db': write sqlite:///relative.db")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_run_killed_and_resumed_is_one_mlflow_run(tmp_path):
    run = tmp_path / "run"
    epochs = 12
    args = ("data=synthetic", f"train.epochs={epochs}", "data.synthetic_examples=512", "tracking=mlflow",
            f"hydra.run.dir={run}")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "composeloop", *args], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 2:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] > 0

    client = tracking.mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.get_run(json.loads((run / tracking.RUN_FILE).read_text())["run_id"])
    assert found.info.status == "FINISHED" and found.data.tags["status"] == "completed"
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "val_accuracy")]
    assert steps == list(range(1, epochs + 1))  # each epoch once, across the kill
    assert len(client.search_runs([found.info.experiment_id])) == 1
