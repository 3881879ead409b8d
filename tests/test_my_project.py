"""examples/my_project end to end: a user's own project gets the whole application.

Its README's three commands, as a user runs them from the project's directory: a run; a
run stopped with SIGTERM and run again, ending with the weights of a straight run; and a
2-job sweep with its summary. Real processes, so slow.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parent.parent / "examples" / "my_project"
SHORT = (
    "+experiment=mine",
    "train.epochs=3",
    "data.batch_size=16",
    "checkpoint.every_steps=5",
    "report.tensorboard=false",
)


def train(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, str(PROJECT / "train.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def weights(run_dir: Path) -> list[np.ndarray]:
    return [w.numpy() for w in keras.models.load_model(run_dir / "model.keras").weights]


@pytest.mark.slow
def test_run_resume_after_sigterm_and_sweep(tmp_path):
    straight = train(*SHORT, "hydra.run.dir=straight", cwd=tmp_path)  # alongside the interrupted one
    stopped = train(*SHORT, "hydra.run.dir=stopped", cwd=tmp_path)
    index = tmp_path / "stopped" / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + 300
    while not index.exists() and stopped.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)
    first = finished(stopped)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-2000:]
    assert "run the same command again to resume" in first.stderr
    resumed = finished(train(*SHORT, "hydra.run.dir=stopped", cwd=tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert finished(straight).returncode == 0

    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert summary["experiment"] == "mine" and summary["status"] == "completed" and summary["resumed_from_step"] > 0
    assert "val_top2_accuracy" in summary["metrics"] and summary["directions"]["val_top2_accuracy"] == "max"
    for got, want in zip(weights(tmp_path / "stopped"), weights(tmp_path / "straight"), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

    sweep = finished(train("-m", *SHORT, "train.epochs=1", "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path))
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    with open(tmp_path / "sweep" / "sweep_summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["seed"] for row in rows] == ["0", "1"] and {row["status"] for row in rows} == {"completed"}
    assert (tmp_path / "sweep" / "sweep.png").is_file()
