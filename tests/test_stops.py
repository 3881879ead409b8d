"""Coordinated stops: a signal to ONE worker of a 2-worker run stops every worker after the same step.

Each run is `python -m composeloop.launch --workers 2` (real processes, real collectives),
so the file is marked slow. Worker 1 gets the signal once worker 0 has finished its first
epoch: mid-run, most likely mid-epoch. The interrupted run's rerun must end where the
one-process run on the same global batches ends (the runs are also in test_multiworker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_multiworker import assert_same_weights, final_weights

pytestmark = pytest.mark.slow

# 450 training examples in global batches of 9: 50 steps per epoch, one step per call.
RUN = ("data=synthetic", "data.synthetic_examples=600", "data.batch_size=9", "train.epochs=3", "optimizer=sgd")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list:
    """The one-device run on the same global batches, in this process."""
    from composeloop.app import load_config, run

    directory = tmp_path_factory.mktemp("one")
    run(load_config(list(RUN)), directory)
    return final_weights(directory)


def launch(directory: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "HYDRA_FULL_ERROR")}
    command = [sys.executable, "-m", "composeloop.launch", "--workers", "2", "--", "+experiment=multi_gpu"]
    command += ["strategy=multi_worker", *RUN, f"hydra.run.dir={directory}"]
    return subprocess.Popen(
        command, cwd=directory.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def worker_pid(launcher: subprocess.Popen, index: int) -> int:
    """The pid of the launcher's worker `index`, found by the TF_CONFIG in its environment."""
    for line in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split():
        environ = Path(f"/proc/{line}/environ").read_bytes().split(b"\0")
        config = next(item for item in environ if item.startswith(b"TF_CONFIG="))
        if json.loads(config.split(b"=", 1)[1])["task"]["index"] == index:
            return int(line)
    raise AssertionError(f"no worker {index} under the launcher")


def signal_worker_1_after_an_epoch(directory: Path, how: signal.Signals) -> tuple[int, str]:
    launcher = launch(directory)
    seen = []
    deadline = time.monotonic() + 300
    for line in launcher.stdout:
        seen.append(line)
        if line.startswith("[worker 0] epoch 1/") or time.monotonic() > deadline:
            os.kill(worker_pid(launcher, 1), how)
            break
    output, _ = launcher.communicate(timeout=300)
    return launcher.returncode, "".join(seen) + output


def summary(directory: Path) -> dict:
    return json.loads((directory / "summary.json").read_text())


def checkpoints(directory: Path) -> list[int]:
    return sorted(int(path.stem.split("-")[1]) for path in (directory / "checkpoints").glob("ckpt-*.index"))


def assert_stopped_together(directory: Path, status: int, output: str, how: signal.Signals) -> int:
    """Both workers stopped after the same step on `how`, exited 128 + it, one checkpoint more."""
    assert status == 128 + how, output
    stops = sorted(line.split("] ", 1)[1] for line in output.splitlines() if "interrupted (" in line)
    step = summary(directory)["steps"]
    assert stops == [
        f"composeloop: interrupted ({how.name} at step {step}); outputs and the last checkpoint are in {directory}: "
        "run the same command again to resume",
        f"composeloop: interrupted ({how.name} on another worker at step {step}); outputs and the last checkpoint "
        f"are in {directory}: run the same command again to resume",
    ], output
    assert f"composeloop.launch: the workers stopped together on {how.name} (exit {128 + how})" in output
    assert 50 <= step < 150 and summary(directory)["signal"] == how.name, output
    # One checkpoint for the stop, at its step, beside the ones at the ends of epochs.
    assert checkpoints(directory) == sorted({50, 100} & set(range(step + 1)) | {step}), output
    assert "Traceback" not in output and "CollectiveReduce" not in output and "E0000" not in output, output
    return step


def test_sigterm_to_one_worker_stops_both_at_the_same_step(tmp_path):
    directory = tmp_path / "run"
    assert_stopped_together(directory, *signal_worker_1_after_an_epoch(directory, signal.SIGTERM), signal.SIGTERM)


def test_sigusr1_to_one_worker_stops_both_and_the_rerun_ends_with_a_straight_runs_weights(tmp_path, reference):
    directory = tmp_path / "run"
    output = signal_worker_1_after_an_epoch(directory, signal.SIGUSR1)
    stopped_at = assert_stopped_together(directory, *output, signal.SIGUSR1)
    rerun = launch(directory)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    assert summary(directory)["resumed_from_step"] == stopped_at
    assert summary(directory)["steps"] == 150 and summary(directory)["replicas"] == 2
    assert_same_weights(directory, reference)
