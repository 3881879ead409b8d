"""Search with Optuna, in-process: pruning inside a job, a study's metric, trials a killed search left.

The job side of pruning runs composeloop's loop handlers over epochs that take no time;
the sweeper end to end (persistence, pruning, a rerun adding trials, joblib's parallel
trials, MLflow) runs through the real CLI in tests/test_search_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from composeloop.app import search, search_job
from composeloop.engine.events import Event, RunState, dispatch


def new_study(tmp_path: Path, pruner: dict | None = None) -> tuple[optuna.Study, str]:
    storage = search.storage_url(tmp_path)
    study = search.open_study(storage, "s", metric="val_accuracy", direction="maximize", pruner=pruner)
    return study, storage


def run_epochs(ref: search_job.TrialRef, values: list[float]) -> RunState:
    handlers = search_job.pruning_handlers(ref)
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
    assert run_epochs(search_job.TrialRef(storage, "s", good.number), [0.5, 0.7, 0.9, 0.95]).status == "running"
    search.tell(study, good, search.outcome({"status": "completed", "metrics": {"val_accuracy": 0.95}}, "val_accuracy"))
    bad = study.ask()
    state = run_epochs(search_job.TrialRef(storage, "s", bad.number), [0.1, 0.2, 0.3, 0.4])
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


def test_pruned_trials_are_counted_apart_and_not_drawn_as_finished(tmp_path):
    from composeloop.app import sweep

    for job, (rate, status, accuracy) in enumerate(
        [(1e-3, "completed", 0.9), (1e-2, "pruned", 0.3), (3e-3, "failed", None)]
    ):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- optimizer.learning_rate={rate}\n")
        metrics = {"val_accuracy": accuracy} if accuracy is not None else {}
        summary = {"status": status, "metrics": metrics, "main_metric": "val_accuracy", "reason": "worse"}
        (tmp_path / str(job) / "summary.json").write_text(json.dumps(summary))
    outcome = sweep.write_summary(tmp_path)
    assert (outcome.jobs, outcome.failed) == (3, 1)  # a pruned trial does not fail the sweep
    assert "3 jobs: 1 finished, 1 pruned, 1 failed, 0 interrupted." in (tmp_path / sweep.SUMMARY_MD).read_text()
    assert (tmp_path / sweep.PLOT).stat().st_size > 10_000
