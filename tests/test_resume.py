"""Interrupted CLI runs: SIGKILL and SIGTERM at random moments, rerun, same weights as a straight run.

Each run is a real `python -m composeloop` process (TensorFlow's import is most of its
cost), so this file is marked slow; the reference run goes alongside the interrupted ones.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from test_cli import assert_one_line_error, cli

RUN = ("data.batch_size=16", "train.epochs=3", "checkpoint.every_steps=3", "checkpoint.keep=2")


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-m", "composeloop", *RUN, *extra, f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def latest_step(run_dir: Path) -> int:
    index = run_dir / "checkpoints" / "checkpoint"
    if not index.exists():
        return -1
    first = index.read_text().splitlines()[0]  # model_checkpoint_path: "ckpt-42"
    return int(first.rsplit("-", 1)[1].rstrip('"'))


def interrupt_after_progress(run_dir: Path, how: signal.Signals, rng: random.Random) -> subprocess.CompletedProcess:
    """Starts a run, waits for a checkpoint newer than the last, then sends `how` after a random delay."""
    before = latest_step(run_dir)
    process = start(run_dir)
    deadline = time.monotonic() + 240
    while latest_step(run_dir) <= before and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.4))
    process.send_signal(how)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def model_weights(run_dir: Path) -> list[np.ndarray]:
    return [w.numpy() for w in keras.models.load_model(run_dir / "model.keras").weights]


def epochs_without_time(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.mark.slow
def test_killed_and_terminated_runs_resume_to_the_weights_of_a_straight_run(tmp_path):
    straight_dir, interrupted_dir = tmp_path / "straight", tmp_path / "interrupted"
    straight = start(straight_dir)  # runs alongside the interrupted ones
    rng = random.Random(7)
    # SIGTERM first, while most of the run is still ahead, so that it surely lands mid-run.
    for how in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
        result = interrupt_after_progress(interrupted_dir, how, rng)
        if how is signal.SIGTERM:
            assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
            assert "Traceback" not in result.stderr
            summary = json.loads((interrupted_dir / "summary.json").read_text())
            assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
            assert "run the same command again to resume" in result.stderr
        else:
            assert result.returncode in (-signal.SIGKILL, 0), result.stderr[-2000:]
    final = start(interrupted_dir)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-2000:]
    assert straight.wait(timeout=300) == 0, straight.stderr.read()[-2000:]

    summary = json.loads((interrupted_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] > 0
    for got, want in zip(model_weights(interrupted_dir), model_weights(straight_dir), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)  # CPU kernels: bitwise in practice
    got, want = epochs_without_time(interrupted_dir), epochs_without_time(straight_dir)
    assert [line["epoch"] for line in got] == [1, 2, 3]
    for line_got, line_want in zip(got, want, strict=True):
        assert line_got == pytest.approx(line_want, rel=1e-6)

    # The finished run's checkpoint does not fit a wider model: refused, nothing touched.
    before = sorted(p.name for p in (straight_dir / "checkpoints").iterdir())
    refused = cli(*RUN, "model.width=32", f"hydra.run.dir={straight_dir}", cwd=tmp_path)
    assert_one_line_error(refused, "does not fit this run", "(mlp/dense/kernel) has shape [64, 128] there but [64, 32]")
    assert sorted(p.name for p in (straight_dir / "checkpoints").iterdir()) == before
    never = cli(*RUN, "resume=never", f"hydra.run.dir={straight_dir}", cwd=tmp_path)
    assert_one_line_error(never, "resume=never", "already holds a run")
