"""The run-directory lock in the application: one process writes into a run directory at a time.

The command line takes the lock after its preflight and before Hydra writes anything, and
holds it for the whole run; `composeloop.app.run` takes it too (re-entrant for the command
line's own job). The fast tests use threads and `holding` in this process; the slow ones
real processes: two command lines on one directory, a SIGKILLed holder and the rerun that
resumes, a sweep whose job directories another process holds, and two sweeps on one root.
Runs are gated by a data target of the test's own (`gate.py`), so no test depends on timing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, check_run
from test_locking import hold

from composeloop import locking
from composeloop.app.preflight import Plan, pinned_directory
from composeloop.errors import ConfigError
from composeloop.locking import LOCK_NAME, RunDirectoryInUse, holding

GATE = '''
import os, time
from pathlib import Path

from composeloop.parts.data import Datasets, batches, synthetic


def waits(gate):
    """Synthetic arrays, once `gate` exists (it writes gate + ".waiting" first)."""
    Path(gate + ".waiting").write_text(str(os.getpid()))
    while not Path(gate).exists():
        time.sleep(0.05)
    return synthetic(examples=64, shape=(4,), classes=3)


def stalls(marker):
    """Streamed data whose second epoch never comes unless GATE_OPEN is set: writes `marker` and sleeps."""
    data = synthetic(examples=64, shape=(4,), classes=3)

    def train(epoch):
        if epoch >= 1 and not os.environ.get("GATE_OPEN"):
            Path(marker).write_text(str(os.getpid()))
            time.sleep(600)
        return batches(data.x_train, data.y_train, 16, seed=0, epoch=epoch)

    return Datasets(train, lambda: batches(data.x_val, data.y_val, 16, shuffle=False), (4,), 3)
'''


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `directory` (recursively) with its bytes and mtime: what 'nothing written' compares."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# ---------------------------------------------------------------------------- in this process


def test_holding_is_reentrant_in_its_thread_and_refuses_other_threads(tmp_path):
    refused: list[BaseException] = []

    def other_thread() -> None:
        try:
            with holding(tmp_path):
                pass
        except RunDirectoryInUse as error:
            refused.append(error)

    with holding(tmp_path) as outer:
        with holding(tmp_path) as inner:  # the command line's lock, taken again by `run`
            assert inner is outer and outer.held
        assert outer.held  # the inner exit does not release the outer's lock
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert not outer.held
    assert len(refused) == 1 and f"this process (pid {os.getpid()}" in str(refused[0])
    with holding(tmp_path):  # free again
        pass


def test_holding_makes_the_directory_and_removes_it_when_nothing_else_was_written(tmp_path):
    empty, used = tmp_path / "a" / "empty", tmp_path / "used"
    with holding(empty, create=True):
        assert (empty / LOCK_NAME).is_file()
    assert not empty.exists() and (tmp_path / "a").is_dir()  # parents stay
    with holding(used, create=True):
        (used / "summary.json").write_text("{}")
    assert os.listdir(used) == ["summary.json"]  # the lock file it created is gone too
    (used / LOCK_NAME).write_text('{"pid": 1, "host": "elsewhere"}\n')  # a killed holder's
    with holding(used):
        pass
    assert sorted(os.listdir(used)) == [LOCK_NAME, "summary.json"]  # not ours to remove: left (emptied)
    (tmp_path / "file").write_text("")
    refused = pytest.raises(ConfigError, match="cannot lock run directory .*file: it is not a directory")
    with refused, holding(tmp_path / "file", create=True):
        pass


def test_the_planned_directory_is_pinned_for_hydra(tmp_path):
    odd = tmp_path / "it's a dir, with=signs"
    plan = Plan([], [[]], None, odd)
    assert pinned_directory(plan) == [f"hydra.run.dir='{str(odd).replace(chr(39), chr(92) + chr(39))}'"]
    assert pinned_directory(Plan([], [[]], tmp_path / "sweep", None)) == [f"hydra.sweep.dir='{tmp_path / 'sweep'}'"]


@pytest.mark.slow
def test_run_from_python_is_refused_while_another_process_holds_the_directory(tmp_path):
    from composeloop.app import load_config, run

    holder = hold(tmp_path)
    try:
        before = snapshot(tmp_path)
        config = load_config(["data=synthetic", "train.epochs=1"])
        with pytest.raises(RunDirectoryInUse, match=f"pid {holder.pid} on host {socket.gethostname()}"):
            run(config, tmp_path)
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    assert locking._held == {}


# ---------------------------------------------------------------------------- real processes


def composeloop(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    environment["PYTHONPATH"] = os.pathsep.join([str(cwd), environment.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "composeloop", *args],
        cwd=cwd,
        env={**environment, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            result = finished(process)
            raise AssertionError(f"{path} never appeared: exit {result.returncode}\n{result.stderr}")
        time.sleep(0.05)


@pytest.fixture
def project(tmp_path) -> Path:
    (tmp_path / "gate.py").write_text(textwrap.dedent(GATE))
    return tmp_path


TINY = ("train.epochs=2", "report.tensorboard=false", "report.curves=false")


@pytest.mark.slow
def test_a_second_command_line_on_a_running_directory_is_refused_and_changes_nothing(project):
    """Fails before the lock was wired in: the second run started writing into the first's directory."""
    run_dir, gate = project / "run", project / "open"
    args = (*TINY, "data._target_=gate.waits", f"++data.gate={gate}", f"hydra.run.dir={run_dir}")
    first = composeloop(*args, cwd=project)
    try:
        wait_for(Path(f"{gate}.waiting"), first)  # the first holds the lock and has loaded TensorFlow
        before = snapshot(run_dir)
        assert ".hydra/config.yaml" in before
        second = finished(composeloop(*TINY, "data=synthetic", f"hydra.run.dir={run_dir}", cwd=project), 120)
        line = assert_one_line_error(second, f"pid {first.pid} on host {socket.gethostname()}", str(run_dir))
        assert "is in use by another run" in line
        assert snapshot(run_dir) == before
    finally:
        gate.write_text("")
    result = finished(first)
    assert result.returncode == 0, result.stderr
    summary = check_run(run_dir, 2)
    assert summary["status"] == "completed" and summary["resumed_from_step"] is None


@pytest.mark.slow
def test_a_killed_holder_does_not_block_and_the_rerun_resumes(project):
    run_dir, marker = project / "run", project / "stalled"
    args = (*TINY, "data._target_=gate.stalls", f"++data.marker={marker}", f"hydra.run.dir={run_dir}")
    first = composeloop(*args, cwd=project)
    wait_for(marker, first)  # epoch 1 is checkpointed; the second never comes
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == first.pid  # its name stays behind, harmless
    rerun = finished(composeloop(*args, cwd=project, env={"GATE_OPEN": "1"}))
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_step"] == 3  # 48 examples / 16
    assert summary["epochs"] == 2


@pytest.mark.slow
def test_a_sweep_job_on_a_held_directory_is_refused_and_records_nothing_there(project):
    sweep_dir = project / "sweep"
    holders = []
    for job in ("0", "1"):
        (sweep_dir / job).mkdir(parents=True)
        holders.append(hold(sweep_dir / job))
    try:
        result = finished(
            composeloop("-m", "data=synthetic", "train.epochs=1,2", f"hydra.sweep.dir={sweep_dir}", cwd=project)
        )
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    assert result.returncode == 1, result.stderr
    for job, holder in zip(("0", "1"), holders, strict=True):
        assert f"job {job}: run directory {sweep_dir / job} is in use by another run: pid {holder.pid}" in result.stderr
        assert not (sweep_dir / job / "summary.json").exists()  # not recorded as failed in the holder's place
    assert "Traceback" not in result.stderr
    assert "2 of 2 sweep jobs failed" in result.stderr


@pytest.mark.slow
def test_a_second_sweep_on_a_held_sweep_directory_is_refused_before_writing(project):
    sweep_dir = project / "sweep"
    sweep_dir.mkdir()
    holder = hold(sweep_dir)
    try:
        before = snapshot(sweep_dir)
        result = finished(composeloop("-m", "train.epochs=1,2", f"hydra.sweep.dir={sweep_dir}", cwd=project), 120)
        assert_one_line_error(result, f"pid {holder.pid}", str(sweep_dir))
        assert snapshot(sweep_dir) == before
    finally:
        holder.kill()
        holder.wait()
