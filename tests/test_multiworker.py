"""Multi-device and multi-worker runs end where a one-device run on the same global batches ends.

Each run is a subprocess (a process holds one strategy, and multi-worker collectives must
be set up before TensorFlow starts) of conftest's MULTI_RUN, whose one-process weights are
the `one_process_weights` fixture. Two workers over TF_CONFIG are test_stops' (stopped
and resumed), over SLURM test_slurm's; here one logical-CPU pair and one worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MULTI_RUN as RUN
from test_cli import cli

from composeloop.launch import worker_commands


def final_weights(directory: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(directory / "model.keras").get_weights()


def assert_same_weights(directory: Path, reference: list[np.ndarray]) -> None:
    for a, b in zip(final_weights(directory), reference, strict=True):
        # Replicas sum their gradients in another order: float32 rounding only.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def summary(directory: Path) -> dict:
    return json.loads((directory / "summary.json").read_text())


def without_cluster() -> dict[str, str]:
    """This environment without a cluster of its own: workers get theirs from the launcher or srun."""
    return {key: value for key, value in os.environ.items() if key not in ("TF_CONFIG", "HYDRA_FULL_ERROR")}


def started(command: list[str], cwd: Path) -> subprocess.Popen:
    """`command` started in `cwd` without a cluster of its own, stdout and stderr in one text stream."""
    return subprocess.Popen(
        command, cwd=cwd, env=without_cluster(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_multi_gpu_on_cpu_runs_two_logical_devices(tmp_path, one_process_weights):
    directory = tmp_path / "run"
    result = cli("+experiment=multi_gpu", *RUN, f"hydra.run.dir={directory}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    notes = [line for line in result.stdout.splitlines() if "logical CPU" in line]
    assert notes == ["composeloop: no GPU visible: MirroredStrategy over 2 logical CPU devices (strategy.logical_cpus)"]
    assert summary(directory)["replicas"] == 2
    assert summary(directory)["traces"] == {"train": 1, "val": 1}
    assert_same_weights(directory, one_process_weights)


@pytest.mark.slow
def test_one_worker_on_loopback_ends_with_the_one_process_weights(tmp_path, one_process_weights):
    directory = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "composeloop.launch", "--workers", "1", "--", "+experiment=multi_gpu"]
        + ["strategy=multi_worker", *RUN, f"hydra.run.dir={directory}"],
        cwd=tmp_path,
        env=without_cluster(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[worker 0] composeloop: MultiWorkerMirroredStrategy: worker 0 of 1 workers" in result.stdout
    assert summary(directory)["replicas"] == 1
    assert_same_weights(directory, one_process_weights)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_a_failing_worker_fails_the_launch(tmp_path):
    launch = [sys.executable, "-m", "composeloop.launch", "--workers", "2", "--"]
    result = subprocess.run(
        [*launch, "strategy=multi_worker", "train.epochs=-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "train.epochs" in result.stdout  # the workers' own lines, prefixed
    assert "a worker failed (exit 2)" in result.stderr


def test_one_worker_failing_stops_the_others(monkeypatch, capsys):
    """A worker waiting for a dead peer's collectives would wait forever: the launcher stops it."""
    import composeloop.launch as launcher

    waiting = [sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(120)"]
    failing = [sys.executable, "-c", "import sys, time; time.sleep(1); sys.exit(3)"]
    monkeypatch.setattr(launcher, "worker_commands", lambda args, workers: [waiting, failing])
    started = time.monotonic()
    assert launcher.launch([], workers=2) == 3
    assert time.monotonic() - started < 60
    assert "[worker 0] waiting" in capsys.readouterr().out


def test_workers_share_the_run_directory_and_only_the_chief_records_the_config():
    commands = worker_commands(["hydra.run.dir=elsewhere", "strategy=multi_worker", "hydra.run.dir=out"], 3)
    assert commands[0][-2:] == ["strategy=multi_worker", "hydra.run.dir=out"]
    assert [c[-2:] for c in commands[1:]] == [["hydra.run.dir=out", "hydra.output_subdir=null"]] * 2


def test_bad_launcher_arguments_are_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "composeloop.launch", "--workers", "0", "--", "strategy=multi_worker"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "composeloop.launch: error: --workers must be >= 1, got 0"
