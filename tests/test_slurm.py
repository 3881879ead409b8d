"""composeloop on a real SLURM cluster: srun multi-worker runs and Hydra's submitit sweeps.

The cluster is the one-node cluster of scripts/slurm-cluster.sh on 127.0.0.1 (started by
the `slurm_cluster` fixture, or by CI before the tests). Every run here goes through the
scheduler, so the file is marked `slurm` and `slow`.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_multiworker import RUN, assert_same_weights, reference, summary  # noqa: F401 (reference: a fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def environment() -> dict[str, str]:
    """This environment without a TF_CONFIG (srun's tasks must find their cluster in SLURM's)."""
    return {key: value for key, value in os.environ.items() if key not in ("TF_CONFIG", "HYDRA_FULL_ERROR")}


def test_srun_with_two_tasks_trains_two_workers_to_the_one_process_weights(tmp_path, reference):  # noqa: F811
    directory = tmp_path / "run"
    command = ["srun", "-N1", "-n2", "--kill-on-bad-exit=1", sys.executable, "-m", "composeloop"]
    command += ["+experiment=multi_gpu", "strategy=multi_worker", *RUN, f"hydra.run.dir={directory}"]
    result = subprocess.run(command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    notes = sorted(line for line in result.stdout.splitlines() if "MultiWorkerMirroredStrategy" in line)
    assert [note.split(" (cluster from SLURM job step ")[0] for note in notes] == [
        f"composeloop: MultiWorkerMirroredStrategy: worker {index} of 2 workers, 2 replicas" for index in (0, 1)
    ], result.stdout
    assert summary(directory)["replicas"] == 2
    assert_same_weights(directory, reference)


def job_states(job: str, timeout: float = 60) -> dict[str, str]:
    """sacct's state of each task of `job`, once none is pending or running (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job], capture_output=True, text=True
        )
        states = dict(line.split("|") for line in listed.stdout.split())
        if time.monotonic() > deadline or states and not {"PENDING", "RUNNING"} & set(states.values()):
            return states
        time.sleep(1)


def sweep(directory: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "composeloop", "-m", "hydra/launcher=submitit_slurm", *args]
    command += ["data.synthetic_examples=64", f"hydra.sweep.dir={directory}"]
    return subprocess.run(command, cwd=directory.parent, env=environment(), capture_output=True, text=True, timeout=600)


def test_a_submitit_sweep_runs_each_job_through_slurm_records_failures_and_resumes(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install composeloop[slurm]")
    directory = tmp_path / "sweep"
    # Job 1 fails: data=npz with a file that does not exist (it passes the preflight).
    jobs = ("data=synthetic,npz", "data.path=missing.npz", "train.epochs=1")
    first = sweep(directory, *jobs)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "sacct" not in first.stdout + first.stderr  # accounting answers: no warnings per poll
    assert f"1 of 2 sweep jobs failed; see {directory / 'sweep_summary.md'}" in first.stderr
    with open(directory / "sweep_summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["job"], row["status"]) for row in rows] == [("0", "completed"), ("1", "failed")]
    assert "data.path: no such file" in rows[1]["error"]
    # Each job is a SLURM array task with its own id, output and error files.
    logs = sorted(path.name for path in (directory / ".submitit").glob("*/*_log.*"))
    ids = sorted({name.split("_0_log")[0] for name in logs})
    assert len(ids) == 2 and logs == sorted(f"{i}_0_log.{kind}" for i in ids for kind in ("err", "out"))
    # sacct knows both array tasks; a job that failed in composeloop still ends COMPLETED for SLURM
    # (composeloop recorded the failure and returned), as soon as the job's own end is accounted.
    assert job_states(ids[0].split("_")[0]) == {i: "COMPLETED" for i in ids}
    # The same sweep with one more epoch: job 0 resumes from its checkpoint.
    again = sweep(directory, *jobs[:2], "train.epochs=2")
    assert again.returncode == 1, again.stdout + again.stderr
    resumed = json.loads((directory / "0" / "summary.json").read_text())
    assert (resumed["status"], resumed["epochs"], resumed["resumed_from_step"]) == ("completed", 2, 2)


def test_a_submitit_job_with_two_tasks_per_node_is_a_two_worker_run(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install composeloop[slurm]")
    directory = tmp_path / "sweep"
    args = ("hydra.launcher.tasks_per_node=2", "+experiment=multi_gpu", "strategy=multi_worker", "data=synthetic")
    result = sweep(directory, *args, "seed=0", "train.epochs=1")
    assert result.returncode == 0, result.stdout + result.stderr
    logs = "".join(path.read_text() for path in (directory / ".submitit").glob("*/*_log.out"))
    assert sorted(line.split(" (")[0] for line in logs.splitlines() if "MultiWorkerMirroredStrategy" in line) == [
        f"composeloop: MultiWorkerMirroredStrategy: worker {index} of 2 workers, 2 replicas" for index in (0, 1)
    ]
    assert summary(directory / "0")["replicas"] == 2
