"""Multirun sweeps: preflight of every job, isolation, failed and interrupted jobs, the summary.

The summary and picture are checked on job directories written here (no TensorFlow); the
end-to-end cases run the CLI as subprocesses once each (marked slow): one 4-job sweep with
two failing jobs, the same job run alone, and a sweep stopped with SIGINT.
"""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_cli import assert_one_line_error, cli

from composeloop.app import sweep, sweep_rows

TINY = ("train.epochs=2", "data.synthetic_examples=64", "model.dropout=0.2")  # dropout: seeded noise too


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def decode_png(path: Path) -> np.ndarray:
    from matplotlib.image import imread

    image = imread(path, format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(image[..., :3].std()) > 0.01  # something is drawn on it
    return image


# ---------------------------------------------------------------------------- bad input before any job


def test_a_bad_value_in_a_sweep_stops_before_any_job(tmp_path):
    result = cli("-m", "optimizer.learning_rate=1e-3,0", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert_one_line_error(result, "optimizer.learning_rate", "0.0")
    assert not (tmp_path / "sweep").exists()


def test_a_bad_value_in_a_named_sweep_stops_before_any_job(tmp_path):
    (tmp_path / "conf" / "sweep").mkdir(parents=True)
    params = {"hydra": {"mode": "MULTIRUN", "sweeper": {"params": {"seed": "0,-1"}}}}
    (tmp_path / "conf" / "sweep" / "bad.yaml").write_text("# @package _global_\n" + yaml.safe_dump(params))
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    result = cli(search, "+sweep=bad", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)  # no -m: the config says
    assert_one_line_error(result, "seed", "-1")
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("earlier", ["multirun.yaml", "0/summary.json", "3/metrics.jsonl"])
def test_with_resume_never_a_sweep_into_an_earlier_sweeps_directory_is_refused(tmp_path, earlier):
    (tmp_path / "sweep" / earlier).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "sweep" / earlier).write_text("{}\n")
    args = ("-m", "seed=0,1", "train.epochs=1", "resume=never")
    result = cli(*args, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert_one_line_error(result, "hydra.sweep.dir", earlier)
    assert sorted(path.name for path in (tmp_path / "sweep").rglob("*")) == sorted(Path(earlier).parts)


@pytest.mark.slow
def test_rerunning_a_sweep_resumes_its_jobs(tmp_path):
    args = ("-m", "seed=0,1", "data=synthetic", "data.synthetic_examples=64", "train.epochs=1")
    first = cli(*args, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = cli(*args, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    for job in ("0", "1"):
        summary = json.loads((tmp_path / "sweep" / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["resumed_from_step"] == summary["steps"] > 0
    assert len((tmp_path / "sweep" / "sweep_summary.csv").read_text().splitlines()) == 3


def test_named_sweep_params_and_command_line_make_the_jobs():
    from composeloop.app import preflight
    from composeloop.app.cli import config_dir
    from composeloop.config.store import register

    register()

    def jobs(argv):
        planned = preflight.plan(preflight.parse(argv, config_dir(), "config", calling_file=preflight.__file__))
        return planned.jobs, planned.sweep_dir

    named, named_dir = jobs(["+experiment=classifier", "+sweep=lr_clip", "hydra.sweep.dir=here"])
    one_seed, _ = jobs(["-m", "+sweep=lr_clip", "seed=0", "train.epochs=1,2"])
    single, single_dir = jobs(["seed=3"])
    assert len(named) == 4 * 2 * 3
    assert len({tuple(job) for job in named}) == len(named)
    assert named[0][:3] == ["optimizer.learning_rate=0.001", "gradient.clip_global_norm=null", "seed=0"]
    assert len(one_seed) == 4 * 2 * 2 and all("seed=0" in job for job in one_seed)
    assert single == [["seed=3"]] and single_dir is None
    assert named_dir == Path("here")


# ---------------------------------------------------------------------------- the summary, on written job dirs


def write_job(root: Path, number: int, overrides: list[str], summary: dict | None, history: list[dict]) -> Path:
    job = root / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": number}}}))
    if summary is not None:
        (job / "summary.json").write_text(json.dumps(summary))
    (job / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in history))
    return job


def classifier_job(root: Path, number: int, lr: str, seed: int, accuracies: list[float], **summary) -> Path:
    history = [
        {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0 - a, "val_accuracy": a, "seconds": 0.1}
        for e, a in enumerate(accuracies, start=1)
    ]
    final = {k: v for k, v in history[-1].items() if k != "epoch"}
    record = {"experiment": "classifier", "status": "completed", "metrics": final, "wall_s": 1.5 + number, **summary}
    return write_job(root, number, ["+experiment=classifier", f"optimizer.learning_rate={lr}", f"seed={seed}"],
                     record, history)  # fmt: skip


@pytest.fixture(scope="module")
def written_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    classifier_job(root, 0, "1e-3", 0, [0.5, 0.7, 0.6])
    classifier_job(root, 1, "1e-3", 1, [0.4, 0.8, 0.75], best_epoch=3)  # the summary's own best epoch wins
    classifier_job(root, 2, "1e-2", 0, [0.9, 0.95, 0.97])
    write_job(
        root, 3, ["+experiment=classifier", "optimizer.learning_rate=1e-2", "seed=1"],
        {"experiment": "classifier", "status": "failed", "error": "data.path: no such | file", "wall_s": 0.2}, [],
    )  # fmt: skip
    write_job(root, 10, ["+experiment=classifier", "optimizer.learning_rate=1e-1", "seed=0"], None,
              [{"epoch": 1, "val_accuracy": 0.3, "val_loss": 2.0}])  # fmt: skip
    classifier_job(root, 11, "1e-1", 1, [0.2], status="stopped_nonfinite", reason="train_loss is NaN at step 3")
    outcome = sweep.write_summary(root)
    return root, outcome


def test_summary_has_one_row_per_job_in_job_order(written_sweep):
    root, outcome = written_sweep
    rows = read_csv(root / sweep.SUMMARY_CSV)
    assert [row["job"] for row in rows] == ["0", "1", "2", "3", "10", "11"]
    assert (outcome.jobs, outcome.failed, outcome.unfinished) == (6, 3, 0)
    assert list(rows[0])[:4] == ["job", "optimizer.learning_rate", "seed", "val_accuracy"]  # swept keys, main metric
    assert "+experiment" not in rows[0] and "experiment" not in rows[0]  # not swept: only in `overrides`
    assert rows[2]["overrides"] == "+experiment=classifier optimizer.learning_rate=1e-2 seed=0"
    assert float(rows[2]["val_accuracy"]) == pytest.approx(0.97)
    assert float(rows[2]["wall_s"]) == pytest.approx(3.5)
    assert "seconds" not in rows[0]


def test_best_epoch_comes_from_the_summary_or_the_metrics(written_sweep):
    rows = read_csv(written_sweep[0] / sweep.SUMMARY_CSV)
    assert [row["best_epoch"] for row in rows] == ["2", "3", "3", "", "1", "1"]


def test_failed_and_unwritten_jobs_are_rows_with_their_error(written_sweep):
    root, _ = written_sweep
    rows = read_csv(root / sweep.SUMMARY_CSV)
    statuses = ["completed", "completed", "completed", "failed", "failed", "stopped_nonfinite"]
    assert [row["status"] for row in rows] == statuses
    assert rows[3]["error"] == "data.path: no such | file" and rows[3]["val_accuracy"] == ""
    assert "summary.json" in rows[4]["error"]
    assert rows[5]["error"] == "train_loss is NaN at step 3"  # a run that stopped itself says why
    markdown = (root / sweep.SUMMARY_MD).read_text()
    assert "6 jobs: 3 finished, 3 failed" in markdown
    assert "no such \\| file" in markdown  # a pipe in an error does not break the table
    assert markdown.count("\n| ") == 1 + 6 and "(sweep.png)" in markdown


def test_after_an_interrupt_a_job_without_summary_is_interrupted(written_sweep):
    root, _ = written_sweep
    row = sweep_rows.read_sweep(root, missing="interrupted")[4]
    assert row["job"] == 10 and row["status"] == "interrupted" and row["error"] == ""
    assert row["metrics"]["val_accuracy"] == pytest.approx(0.3)  # its last finished epoch


def test_sweep_png_decodes(written_sweep):
    decode_png(written_sweep[0] / sweep.PLOT)


def test_main_metric_per_experiment():
    assert sweep_rows.main_metric({"train_loss": 1, "val_loss": 2, "val_accuracy": 0.5}) == "val_accuracy"
    assert sweep_rows.main_metric({"d_loss": 1, "g_loss": 2, "digit_confidence": 0.6}) == "digit_confidence"
    assert sweep_rows.main_metric({"train_loss": 1, "val_loss": 2, "val_auc": 0.5}) == "val_loss"
    assert sweep_rows.main_metric({"d_loss": 1}) == "d_loss"
    assert sweep_rows.main_metric({}) is None


def test_a_gan_sweep_is_judged_by_its_quality_score(tmp_path):
    for number, (lr, score) in enumerate([("1e-4", 0.5), ("2e-4", 0.7), ("4e-4", float("nan"))]):
        summary = {"status": "completed", "metrics": {"d_loss": 1.2, "g_loss": 0.8}, "digit_confidence": score,
                   "classes_covered": 9, "wall_s": 3.0}  # fmt: skip
        write_job(tmp_path, number, ["+experiment=gan", f"gan.d_learning_rate={lr}"], summary, [])
    sweep.write_summary(tmp_path)
    rows = read_csv(tmp_path / sweep.SUMMARY_CSV)
    assert list(rows[0])[:3] == ["job", "gan.d_learning_rate", "digit_confidence"]
    assert [row["classes_covered"] for row in rows] == ["9", "9", "9"]
    assert math.isnan(float(rows[2]["digit_confidence"]))
    decode_png(tmp_path / sweep.PLOT)  # the NaN job is left out of the picture, not fatal


def test_jobs_without_hydra_files_are_still_rows(tmp_path):
    """hydra.output_subdir=null leaves no .hydra/: the results themselves mark the jobs."""
    classifier_job(tmp_path, 0, "1e-3", 0, [0.5, 0.6])
    classifier_job(tmp_path, 1, "1e-2", 0, [0.7, 0.8])
    for job in ("0", "1"):
        for name in ("overrides.yaml", "hydra.yaml"):
            (tmp_path / job / ".hydra" / name).unlink()
    rows = sweep_rows.read_sweep(tmp_path)
    found = [(row["job"], row["overrides"], row["metrics"]["val_accuracy"]) for row in rows]
    assert found == [(0, [], 0.6), (1, [], 0.8)]


def test_record_failure_keeps_what_the_run_wrote(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"experiment": "classifier", "epochs": 3, "wall_s": 9.0}))
    sweep.record_failure(tmp_path, "train_loss is NaN at epoch 3", 1.0, "classifier")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {
        "experiment": "classifier",
        "epochs": 3,
        "wall_s": 9.0,
        "status": "failed",
        "error": "train_loss is NaN at epoch 3",
    }


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """A 4-job sweep whose npz jobs fail at run time, and job 1 of it run alone."""
    cwd = tmp_path_factory.mktemp("real")
    common = ("+experiment=classifier", "data.path=missing.npz", *TINY)
    swept = cli("-m", *common, "data=synthetic,npz", "seed=0,1", f"hydra.sweep.dir={cwd / 'sweep'}", cwd=cwd)
    alone = cli(*common, "data=synthetic", "seed=1", f"hydra.run.dir={cwd / 'alone'}", cwd=cwd)
    return cwd, swept, alone


@pytest.mark.slow
def test_sweep_runs_every_job_and_exits_1_when_some_failed(real_sweep):
    cwd, swept, _ = real_sweep
    context = swept.stdout + swept.stderr
    assert swept.returncode == 1, context
    assert "Traceback" not in context
    errors = [line for line in swept.stderr.splitlines() if line.strip() and "composeloop: warning:" not in line]
    assert errors[:2] == [f"composeloop: error: job {n}: data.path: no such file: missing.npz" for n in (2, 3)]
    assert errors[2].startswith("composeloop: 2 of 4 sweep jobs failed")
    rows = read_csv(cwd / "sweep" / sweep.SUMMARY_CSV)
    assert [(row["job"], row["data"], row["seed"], row["status"]) for row in rows] == [
        ("0", "synthetic", "0", "completed"),
        ("1", "synthetic", "1", "completed"),
        ("2", "npz", "0", "failed"),
        ("3", "npz", "1", "failed"),
    ]
    assert all(float(row["val_accuracy"]) > 0 and row["best_epoch"] in ("1", "2") for row in rows[:2])
    failed = json.loads((cwd / "sweep" / "2" / "summary.json").read_text())
    assert failed["status"] == "failed" and "missing.npz" in failed["error"]
    decode_png(cwd / "sweep" / sweep.PLOT)


@pytest.mark.slow
def test_a_job_in_a_sweep_equals_the_job_run_alone(real_sweep):
    cwd, _, alone = real_sweep
    assert alone.returncode == 0, alone.stdout + alone.stderr
    in_sweep = json.loads((cwd / "sweep" / "1" / "summary.json").read_text())["metrics"]
    by_itself = json.loads((cwd / "alone" / "summary.json").read_text())["metrics"]
    names = [name for name in by_itself if name != "seconds"]
    assert set(names) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    for name in names:
        assert in_sweep[name] == pytest.approx(by_itself[name], abs=1e-6), name


@pytest.mark.slow
def test_sigint_still_writes_the_summary_of_finished_jobs(tmp_path):
    root = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, "-m", "composeloop", "-m", "data=synthetic", "data.synthetic_examples=64",
         "train.epochs=1,100000", f"hydra.sweep.dir={root}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (root / "1" / "metrics.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)  # polls for job 1's first epoch; it bounds the wait, it times nothing
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stdout + stderr
    assert "composeloop: sweep interrupted after 1 job(s)" in stderr
    rows = read_csv(root / sweep.SUMMARY_CSV)
    assert [(row["job"], row["train.epochs"], row["status"]) for row in rows] == [
        ("0", "1", "completed"),
        ("1", "100000", "interrupted"),
    ]
    assert float(rows[0]["val_accuracy"]) > 0
    decode_png(root / sweep.PLOT)
