"""Run-directory locks (`composeloop.locking`): one writer per directory, across processes.

flock is per open file, so two locks in one process already conflict: the fast tests use
that. The slow ones use real processes: a holder that a second process cannot displace,
and a SIGKILLed holder whose lock the kernel releases.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from composeloop.errors import ConfigError
from composeloop.locking import LOCK_NAME, RunDirectoryInUse, RunDirectoryLock, lock_run_directory


def snapshot(directory) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime (ns): what 'nothing written' compares."""
    return {
        name: ((directory / name).read_bytes(), (directory / name).stat().st_mtime_ns) for name in os.listdir(directory)
    }


def test_a_second_lock_is_refused_naming_the_holder_and_writes_nothing(tmp_path):
    with lock_run_directory(tmp_path) as held:
        assert held.held and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        before = snapshot(tmp_path)
        with pytest.raises(RunDirectoryInUse) as refused:
            RunDirectoryLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message and str(tmp_path) in message
        assert "\n" not in message and isinstance(refused.value, ConfigError)
        assert snapshot(tmp_path) == before
    assert not held.held and (tmp_path / LOCK_NAME).read_text() == ""  # released: no stale name
    RunDirectoryLock(tmp_path).acquire().release()  # free again


def test_a_stale_lock_file_is_harmless_and_release_is_idempotent(tmp_path):
    (tmp_path / LOCK_NAME).write_text('{"pid": 1, "host": "elsewhere"}\n')
    lock = RunDirectoryLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == socket.gethostname()
    with pytest.raises(RuntimeError, match="already held"):
        lock.acquire()
    lock.release()
    lock.release()
    (tmp_path / LOCK_NAME).write_text("not json")
    with RunDirectoryLock(tmp_path):
        pass


def test_a_missing_directory_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot lock run directory .*nowhere: it is not a directory"):
        lock_run_directory(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_the_module_loads_without_tensorflow():
    code = "import sys, composeloop.locking; print([m for m in sys.modules if m.startswith(('tensorflow', 'keras'))])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


HOLDER = """
import sys
from composeloop.locking import lock_run_directory
lock = lock_run_directory(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()  # holds until stdin closes or the process is killed
lock.release()
"""
SECOND = """
import sys
from composeloop.errors import ConfigError
from composeloop.locking import lock_run_directory
try:
    lock_run_directory(sys.argv[1])
except ConfigError as error:
    print(error)
    sys.exit(2)
print("acquired")
"""


def hold(directory) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "locked\n"
    return holder


def second(directory) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SECOND, str(directory)], capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_another_process_is_refused_until_the_holder_is_killed(tmp_path):
    holder = hold(tmp_path)
    try:
        before = snapshot(tmp_path)
        refused = second(tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert f"pid {holder.pid} on host {socket.gethostname()}" in refused.stdout
        assert refused.stdout.count("\n") == 1 and snapshot(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid  # the killed holder's name stays
    after = second(tmp_path)  # ... and does not block
    assert (after.returncode, after.stdout) == (0, "acquired\n"), after.stderr


@pytest.mark.slow
def test_a_released_lock_lets_the_next_process_in(tmp_path):
    holder = hold(tmp_path)
    holder.communicate("", timeout=60)  # stdin closed: the holder releases and exits
    assert holder.returncode == 0
    assert second(tmp_path).stdout == "acquired\n"
