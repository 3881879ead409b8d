"""`python -m composeloop`, run as a subprocess: a tiny training run, composition, and bad input.

A config mistake is reported before TensorFlow loads (well under a second or two); a data
mistake or a training run pays TensorFlow's import (about 5 s), so those are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
TINY_RUN = ("data=synthetic", "train.epochs=2", "data.synthetic_examples=64")


def cli(*args: str, cwd: Path, full_error: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "composeloop", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 2, one `composeloop: error:` line on stderr naming `expected`, no traceback."""
    context = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, context
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, context
    assert lines[0].startswith("composeloop: error:"), context
    for text in expected:
        assert text in lines[0], context
    assert "Traceback" not in result.stdout + result.stderr, context
    return lines[0]


def write_npz(path: Path, *, labels_up_to: int = 9) -> None:
    rng = np.random.default_rng(0)
    y_train = rng.integers(0, labels_up_to + 1, size=20)
    y_train[0] = labels_up_to
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(20, 6, 6), dtype=np.uint8),
        y_train=y_train,
        x_test=rng.integers(0, 256, size=(8, 6, 6), dtype=np.uint8),
        y_test=rng.integers(0, labels_up_to + 1, size=8),
    )


def read_run(directory: Path) -> tuple[list[dict], dict]:
    metrics = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((directory / "summary.json").read_text())
    return metrics, summary


def check_run(directory: Path, epochs: int) -> dict:
    metrics, summary = read_run(directory)
    assert len(metrics) == epochs
    for number, line in enumerate(metrics, start=1):
        assert set(line) == {"epoch", *METRICS}
        assert line["epoch"] == number
    assert summary["experiment"] == "classifier"
    assert summary["epochs"] == epochs
    assert set(METRICS) <= set(summary["metrics"])
    assert summary["wall_s"] > 0
    assert summary["traces"] == {"train": 1, "val": 1}
    assert (directory / "model.keras").is_file()
    return summary


# ---------------------------------------------------------------------------- runs that work


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param((), id="default"),
        # 48 train / 16 val examples: batches of 10 end with one of 8 (and 6 for validation),
        # 5 steps in chunks of 3 end with a chunk of 2; neither may retrace.
        pytest.param(("train.steps_per_execution=3", "data.batch_size=10"), id="partial-chunk-and-batch"),
    ],
)
def test_tiny_training_run(tmp_path, extra):
    run_dir = tmp_path / "run"
    result = cli(*TINY_RUN, *extra, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "classifier finished" in result.stdout
    summary = check_run(run_dir, epochs=2)
    if extra:
        assert summary["steps"] == 2 * 5


def test_experiment_classifier_composes_like_the_default(tmp_path):
    default = cli("--cfg", "job", cwd=tmp_path)
    spelled_out = cli("+experiment=classifier", "--cfg", "job", cwd=tmp_path)
    assert default.returncode == 0, default.stderr
    assert spelled_out.returncode == 0, spelled_out.stderr
    assert "experiment: classifier" in default.stdout and "source: digits" in default.stdout
    assert spelled_out.stdout == default.stdout


def test_experiment_then_group_override_still_applies(tmp_path):
    result = cli("+experiment=classifier", "optimizer=sgd", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: sgd" in result.stdout


# ---------------------------------------------------------------------------- bad input


def _malformed_npz(directory: Path) -> None:
    (directory / "broken.npz").write_bytes(b"PK\x03\x04 definitely not a zip archive " * 8)


def _labels_beyond_classes(directory: Path) -> None:
    write_npz(directory / "twelve.npz", labels_up_to=12)


def _a_file_where_a_directory_should_be(directory: Path) -> None:
    (directory / "taken").write_text("a file, not a directory")


slow = pytest.mark.slow  # the case loads TensorFlow before it can fail

BAD_INPUT = [
    pytest.param(["+experiment=nope"], None, ["experiment/nope"], id="unknown-experiment"),
    pytest.param(["optimizer=nope"], None, ["optimizer/nope"], id="unknown-group-option"),
    pytest.param(["train.epochs=abc"], None, ["train.epochs"], id="wrong-type"),
    pytest.param(["optimizer.learning_rate=0"], None, ["optimizer.learning_rate"], id="learning-rate-0"),
    pytest.param(["data.batch_size=0"], None, ["data.batch_size"], id="batch-size-0"),
    pytest.param(["train.epochs=-1"], None, ["train.epochs"], id="epochs-negative"),
    pytest.param(["train.epoch=3"], None, ["train.epoch"], id="unknown-key"),
    pytest.param(["data=npz"], None, ["data.path"], id="npz-without-path", marks=slow),
    pytest.param(["data=npz", "data.path=missing.npz"], None, ["missing.npz"], id="npz-missing-file", marks=slow),
    pytest.param(["data=npz", "data.path=broken.npz"], _malformed_npz, ["broken.npz"], id="npz-malformed", marks=slow),
    pytest.param(
        ["data=npz", "data.path=twelve.npz", "model.num_classes=10"],
        _labels_beyond_classes,
        ["model.num_classes", "12"],
        id="labels-beyond-classes",
        marks=slow,
    ),
    pytest.param(
        ["model=cnn", "data=synthetic", "data.synthetic_shape=[5]"], None, ["(5,)"], id="cnn-on-1d-data", marks=slow
    ),
    pytest.param(
        ["data=synthetic", "checkpoint.directory=taken/checkpoints"],
        _a_file_where_a_directory_should_be,
        ["checkpoint directory taken/checkpoints is not writable"],
        id="checkpoint-directory-not-writable",
        marks=slow,
    ),
    pytest.param(["train.nan_policy=ignore"], None, ["train.nan_policy"], id="unknown-nan-policy"),
    pytest.param(
        ["optimizer.schedule=cosine", "optimizer.min_learning_rate=1"],
        None,
        ["optimizer.min_learning_rate", "below optimizer.learning_rate"],
        id="schedule-floor-above-peak",
    ),
]


@pytest.mark.parametrize(("args", "setup", "expected"), BAD_INPUT)
def test_bad_input_is_one_line(tmp_path, args, setup, expected):
    if setup is not None:
        setup(tmp_path)
    # train.epochs=1 comes first, so a case's own train.epochs wins; it only keeps a wrongly
    # accepted case from training for long.
    result = cli("train.epochs=1", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, *expected)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_bad_value_line_is_exactly_as_documented(tmp_path):
    line = assert_one_line_error(cli("optimizer.learning_rate=-1", cwd=tmp_path))
    assert line == "composeloop: error: optimizer.learning_rate: must be > 0, got -1.0"  # as in the README


def test_wrong_type_line_has_no_unformatted_template(tmp_path):
    line = assert_one_line_error(cli("train.epochs=abc", cwd=tmp_path), "train.epochs", "abc")
    assert "$VALUE" not in line


def test_npz_without_path_fails_in_preflight():
    from composeloop.app import load_config
    from composeloop.errors import ComposeloopError

    with pytest.raises(ComposeloopError, match="data.path"):
        load_config(["data=npz"])


@pytest.mark.slow
def test_a_run_directory_with_results_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    earlier = '{"experiment": "classifier", "note": "an earlier run"}\n'
    (run_dir / "summary.json").write_text(earlier)
    result = cli(
        "data=synthetic", "train.epochs=1", "data.synthetic_examples=32", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert_one_line_error(result, "hydra.run.dir", "summary.json")
    assert (run_dir / "summary.json").read_text() == earlier
    assert not (run_dir / "metrics.jsonl").exists()
    assert not (run_dir / "model.keras").exists()


def test_full_error_shows_a_traceback(tmp_path):
    result = cli("train.epochs=-1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, full_error=True)
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "train.epochs" in result.stderr
