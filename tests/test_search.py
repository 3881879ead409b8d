"""Search with ``hydra/sweeper=optuna``: a persistent study, pruning inside jobs, parallel trials.

The end-to-end cases run the real sweeper plugin, Optuna's SQLite storage and Hydra's
launchers (basic, and joblib with jobs in other processes) as subprocesses over
tests/search_app, a Hydra app whose job is composeloop's loop handlers over epochs that
take no time (no TensorFlow training; marked slow for the subprocesses), tracked in MLflow. The job side
of pruning and the settling of trials a killed search left running are checked in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from composeloop.app import search, tracking
from composeloop.engine.events import Event, RunState, dispatch

ROOT = Path(__file__).resolve().parents[1]
APP = Path(__file__).resolve().parent / "search_app" / "app.py"
SPACE = ("optimizer.learning_rate=tag(log,interval(1e-4,3e-1))", "gradient.clip_global_norm=choice(0.5,1.0,5.0)")


def run_app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(APP), "-m", "hydra/sweeper=optuna", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def load(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="composeloop", storage=f"sqlite:///{sweep / 'optuna.db'}")


def states(study: optuna.Study) -> list[str]:
    return [trial.state.name.lower() for trial in study.trials]


@pytest.mark.slow
def test_a_search_persists_prunes_and_a_rerun_adds_trials_to_the_same_study(tmp_path):
    sweep = tmp_path / "sweep"
    common = (*SPACE, f"hydra.sweep.dir={sweep}", "hydra.sweeper.startup_trials=2", "tracking.backend=mlflow")
    run_app("hydra.sweeper.n_trials=6", *common, cwd=tmp_path)
    study = load(sweep)
    assert len(study.trials) == 6 and "pruned" in states(study) and "complete" in states(study)
    assert {"fail", "running"}.isdisjoint(states(study))
    pruned = next(trial for trial in study.trials if trial.state.name == "PRUNED")
    assert pruned.user_attrs["status"] == "pruned" and len(pruned.intermediate_values) < 4  # stopped early
    summary = json_lines(sweep / "sweep_summary.csv")
    assert [row["status"] for row in summary] == [trial.user_attrs["status"] for trial in study.trials]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best"]["value"] == study.best_value and results["direction"] == "maximize"
    assert (sweep / "search.png").stat().st_size > 10_000

    first = [trial.params for trial in study.trials]
    # Again into the same sweep directory, two trials at a time in joblib's worker processes.
    run_app("hydra.sweeper.n_trials=4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *common, cwd=tmp_path)
    again = load(sweep)
    assert len(again.trials) == 10
    assert [t.params for t in again.trials[:6]] == first  # the first six untouched
    assert len({tuple(t.params.items()) for t in again.trials}) == 10  # the rerun did not redraw the same trials
    assert sorted(int(p.name) for p in sweep.iterdir() if p.name.isdigit()) == list(range(10))  # job == trial
    assert len(json_lines(sweep / "sweep_summary.csv")) == 10
    # The jobs reported their epochs to their trials themselves, from other processes.
    assert all(trial.intermediate_values for trial in again.trials[6:])
    pids = {json.loads(line)["pid"] for n in range(6, 10) for line in (sweep / str(n) / "metrics.jsonl").open()}
    assert len(pids) >= 2
    # In MLflow: one parent run for the sweep (continued by the rerun), one nested run per trial.
    client = tracking.mlflow_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("classifier").experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    nested = {int(run.data.tags["optuna.trial"]): run for run in runs if run is not parent}
    assert {run.data.tags["mlflow.parentRunId"] for run in nested.values()} == {parent.info.run_id}
    assert sorted(nested) == list(range(10))
    assert [nested[n].data.tags["status"] for n in range(10)] == [t.user_attrs["status"] for t in again.trials]
    assert "optimization_results.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def json_lines(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------- in-process


def new_study(tmp_path: Path, pruner: dict | None = None) -> tuple[optuna.Study, str]:
    storage = search.storage_url(tmp_path)
    study = search.open_study(storage, "s", metric="val_accuracy", direction="maximize", pruner=pruner)
    return study, storage


def run_epochs(ref: search.TrialRef, values: list[float]) -> RunState:
    handlers = search.pruning_handlers(ref)
    state = RunState(program=None, epochs=len(values))
    dispatch(handlers, Event.RUN_BEGIN, state)
    for value in values:
        state.epoch += 1
        state.history.append({"epoch": state.epoch, "val_accuracy": value})
        dispatch(handlers, Event.EPOCH_END, state)
        if state.stopping:
            break
    return state


def test_a_job_reports_each_epoch_and_stops_when_its_trial_is_pruned(tmp_path):
    study, storage = new_study(tmp_path, {"name": "median", "warmup_epochs": 1, "startup_trials": 1})
    good = study.ask()
    assert run_epochs(search.TrialRef(storage, "s", good.number), [0.5, 0.7, 0.9, 0.95]).status == "running"
    search.tell(study, good, search.outcome({"status": "completed", "metrics": {"val_accuracy": 0.95}}, "val_accuracy"))
    bad = study.ask()
    state = run_epochs(search.TrialRef(storage, "s", bad.number), [0.1, 0.2, 0.3, 0.4])
    assert state.status == "pruned" and state.epoch == 2  # epoch 1 is the warm-up; judged at epoch 2
    assert "val_accuracy 0.2 at epoch 2" in state.reason
    assert dict(load_from(storage).trials[1].intermediate_values) == {1: 0.1, 2: 0.2}


def test_a_study_that_optimizes_another_metric_is_refused(tmp_path):
    new_study(tmp_path)
    with pytest.raises(search.ConfigError, match="optimizes val_accuracy \\(maximize\\), not val_loss \\(minimize\\)"):
        search.open_study(search.storage_url(tmp_path), "s", metric="val_loss", direction="minimize")


def test_trials_a_killed_search_left_running_are_settled_from_their_job_directories(tmp_path):
    study, storage = new_study(tmp_path)
    trials = [study.ask() for _ in range(4)]
    rows = [
        {"job": 0, "status": "completed", "metrics": {"val_accuracy": 0.8}},
        {"job": 1, "status": "pruned", "metrics": {"val_accuracy": 0.3}},
        {"job": 2, "status": "interrupted", "metrics": {"val_accuracy": 0.5}},
    ]  # job 3 never wrote anything
    assert search.settle_stale_trials(study, rows, "val_accuracy") == 4
    found = load_from(storage).trials
    assert [t.state.name for t in found] == ["COMPLETE", "PRUNED", "FAIL", "FAIL"]
    assert found[0].value == 0.8 and found[2].user_attrs["status"] == "interrupted"
    assert len(trials) == 4


def load_from(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=storage)


def test_the_search_picture_and_results_take_any_trials(tmp_path):
    from composeloop.app.search_report import best_row, plot_search, write_results

    def row(number, state, value, **params):
        return {"number": number, "state": state, "value": value, "params": params, "intermediate": {1: 0.2}}

    cases = {
        "none": [],
        "no_params": [row(0, "complete", 0.5)],
        "choices_only": [
            row(0, "complete", 0.9, model="mlp"),
            row(1, "pruned", None, model="cnn"),
            row(2, "fail", None),
        ],
        "numbers": [row(0, "complete", 0.3, lr=1e-3, seed=0), row(1, "complete", 0.2, lr=1e-2, seed=1)],
    }
    for name, rows in cases.items():
        plot_search(rows, tmp_path / f"{name}.png", metric="val_loss", direction="minimize")
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert (
        best_row(cases["numbers"], "minimize")["number"] == 1 and best_row(cases["numbers"], "maximize")["number"] == 0
    )
    write_results(tmp_path / "r.yaml", cases["choices_only"], study="s", storage="u", metric="m", direction="maximize")
    written = yaml.safe_load((tmp_path / "r.yaml").read_text())
    assert written["trials"] == {"complete": 1, "pruned": 1, "fail": 1} and written["best"]["params"] == {
        "model": "mlp"
    }
