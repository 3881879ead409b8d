"""composeloop on a real SLURM cluster: srun multi-worker runs and Hydra's submitit sweeps.

The cluster is the one-node cluster of scripts/slurm-cluster.sh on 127.0.0.1 (started by
the `slurm_cluster` fixture, or by CI before the tests). Every run here goes through the
scheduler, so the file is marked `slurm` and `slow`.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import MULTI_RUN
from test_multiworker import assert_same_weights, started, summary, without_cluster
from test_stops import checkpoints, signal_after_the_first_epoch

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def task_pid(job_name: str, rank: int) -> int:
    """The pid of task `rank` of the running job step named `job_name` (scontrol listpids)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = subprocess.run(["squeue", "-h", "-n", job_name, "-o", "%i"], capture_output=True, text=True).stdout
        listed = subprocess.run(["scontrol", "listpids", job.strip()], capture_output=True, text=True).stdout
        pids = [row.split() for row in listed.splitlines()[1:]]
        found = [int(row[0]) for row in pids if len(row) == 5 and row[4] == str(rank)]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no task {rank} in job {job_name}")


def test_srun_two_tasks_stop_together_on_sigusr1_to_one_and_resume_to_the_one_process_weights(
    tmp_path, one_process_weights
):
    """No TF_CONFIG: each task finds its place in srun's variables (strategy.cluster=auto)."""
    directory, name = tmp_path / "run", f"composeloop-{uuid.uuid4().hex[:8]}"
    command = ["srun", "-N1", "-n2", f"--job-name={name}", sys.executable, "-m", "composeloop"]
    command += ["+experiment=multi_gpu", "strategy=multi_worker", *MULTI_RUN, f"hydra.run.dir={directory}"]

    first = started(command, tmp_path)
    output = signal_after_the_first_epoch(first, "epoch 1/", lambda: os.kill(task_pid(name, 1), signal.SIGUSR1))
    # srun exits with its tasks' status: 128 + SIGUSR1, what an sbatch script requeues on.
    assert first.returncode == 128 + signal.SIGUSR1, output
    notes = [line for line in output.splitlines() if "MultiWorkerMirroredStrategy" in line]
    assert len(notes) == 1 and notes[0].startswith(
        "composeloop: MultiWorkerMirroredStrategy: worker 0 of 2 workers, 2 replicas (cluster from SLURM job step "
    ), output  # the chief alone speaks
    stopped_at = summary(directory)["steps"]
    assert 50 < stopped_at < 100 and summary(directory)["signal"] == "SIGUSR1", output
    assert f"interrupted (SIGUSR1 on another worker at step {stopped_at})" in output
    assert checkpoints(directory) == [50, stopped_at], output
    assert sorted(path.name for path in (directory / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    rerun = started(command, tmp_path)
    output, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, output
    done = summary(directory)
    assert (done["resumed_from_step"], done["steps"], done["replicas"]) == (stopped_at, 100, 2), output
    assert_same_weights(directory, one_process_weights)


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


def sweep(
    directory: Path, *args: str, examples: int = 64, wait: bool = True
) -> subprocess.CompletedProcess | subprocess.Popen:
    """A sweep through Hydra's submitit launcher into `directory` (run, or started when not `wait`)."""
    command = [sys.executable, "-m", "composeloop", "-m", "hydra/launcher=submitit_slurm", *args]
    command += [f"data.synthetic_examples={examples}", f"hydra.sweep.dir={directory}"]
    if not wait:
        return started(command, directory.parent)
    return subprocess.run(
        command, cwd=directory.parent, env=without_cluster(), capture_output=True, text=True, timeout=600
    )


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


def job_logs(directory: Path, kind: str = "out") -> str:
    return "".join(path.read_text() for path in sorted((directory / ".submitit").glob(f"*/*_log.{kind}")))


def test_a_two_task_submitit_job_stops_on_sigusr2_is_requeued_and_resumes_to_the_one_process_weights(
    tmp_path, one_process_weights
):
    """A sweep job of 2 tasks is a 2-worker run; submitit's warning (SIGUSR2, before a time limit or
    on pre-emption) stops both at one step, the chief checkpoints, then submitit's own handler
    requeues the job, which resumes there."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install composeloop[slurm]")
    directory = tmp_path / "sweep"
    args = ["hydra.launcher.tasks_per_node=2", "+experiment=multi_gpu", "strategy=multi_worker", *MULTI_RUN]
    running = sweep(
        directory, *[a for a in args if not a.startswith("data.synthetic_examples")], examples=600, wait=False
    )
    deadline = time.monotonic() + 300
    while "epoch 1/" not in job_logs(directory) and time.monotonic() < deadline:
        time.sleep(0.2)
    job = next((directory / ".submitit").glob("*/*_0_log.out")).name.split("_0_log")[0]  # an array task: ID_0
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    while (
        "PENDING" not in subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
    ):
        assert time.monotonic() < deadline and running.poll() is None, job_logs(directory) + job_logs(directory, "err")
        time.sleep(0.2)
    stopped = summary(directory / "0")
    # SLURM holds a requeued job back for two minutes or so: let it start now.
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    output, _ = running.communicate(timeout=600)
    assert running.returncode == 0, output + job_logs(directory) + job_logs(directory, "err")
    assert (stopped["status"], stopped["signal"]) == ("interrupted", "SIGUSR2") and 50 < stopped["steps"] < 100
    logs = job_logs(directory)
    assert f"Requeued job {job}" in logs
    notes = [line.split(" (")[0] for line in logs.splitlines() if "MultiWorkerMirroredStrategy" in line]
    assert notes == ["composeloop: MultiWorkerMirroredStrategy: worker 0 of 2 workers, 2 replicas"] * 2  # twice started
    done = summary(directory / "0")
    assert (done["status"], done["resumed_from_step"], done["steps"], done["replicas"]) == (
        "completed",
        stopped["steps"],
        100,
        2,
    )
    with open(directory / "sweep_summary.csv") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["completed"]
    assert_same_weights(directory / "0", one_process_weights)
