"""Run-directory locks: one process writes into a run directory at a time.

This module owns the lock itself: an advisory `fcntl.flock` on a lock file inside the
directory, held for as long as a run writes there, and the one-line error a second process
gets, naming the holder's pid and host (which the holder writes into the lock file). The
kernel drops a flock when its holder exits, however it exits, so a lock left by a killed
process never blocks, and a lock file left behind is harmless: it is overwritten by the next
holder. `RunDirectoryLock` never deletes its file; `holding` removes the one it created,
while still holding the lock (`acquire` opens the path again when its file was unlinked
under it), so that a run leaves no trace of the lock in its directory.

`holding` is the form the application uses: re-entrant within the thread that holds the
lock, so the command line can take it before Hydra writes anything and the run it starts
take it again without refusing itself. It does not decide which directory to lock or when
(the application does: the chief only in a multi-worker run, each job its own directory in
a sweep). Plain Python, no TensorFlow, so
the lock can be taken before TensorFlow loads. POSIX only (`fcntl`); on NFS, Linux emulates
flock with byte-range locks that the server enforces across hosts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from composeloop.errors import ConfigError

LOCK_NAME = ".composeloop.lock"
_HOLDER_WAIT_S = 0.2  # how long a refused process waits for a new holder to write its name


class RunDirectoryInUse(ConfigError):
    """Another live process holds the run directory's lock (names its pid and host)."""


class RunDirectoryLock:
    """An exclusive, advisory lock on a run directory, held until released.

    Args:
      directory: the run directory; it must exist (creating it is the caller's business).
      name: the lock file's name inside `directory`.

    A process that is refused writes nothing into the directory: it only opens the lock
    file the holder created. Locks are per open file, so a second lock on the same
    directory is refused within one process too.

    Example:
      >>> with RunDirectoryLock(run_dir):
      ...     train()  # a second process on run_dir gets RunDirectoryInUse
    """

    def __init__(self, directory: str | os.PathLike[str], name: str = LOCK_NAME) -> None:
        self.directory = Path(directory)
        self.path = self.directory / name
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def acquire(self) -> RunDirectoryLock:
        """Takes the lock without waiting; returns self.

        Raises:
          RunDirectoryInUse: another process (or another lock in this one) holds it.
          ConfigError: the directory does not exist or the lock file cannot be opened.
        """
        if self.held:
            raise RuntimeError(f"{self.path} is already held by this RunDirectoryLock")
        while True:
            descriptor = self._open()
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(descriptor)
                os.close(descriptor)
                raise RunDirectoryInUse(self._refusal(holder)) from None
            except OSError as error:
                os.close(descriptor)
                raise ConfigError(f"cannot lock run directory {self.directory}: {error.strerror}") from None
            if _same_file(descriptor, self.path):
                break
            os.close(descriptor)  # the file was replaced between open and flock: lock the new one
        _write_holder(descriptor)
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        """Lets the next process in; releasing a lock not held does nothing."""
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        try:
            os.ftruncate(descriptor, 0)  # no stale name for the next reader
        finally:
            os.close(descriptor)  # closing the last descriptor releases the flock

    def __enter__(self) -> RunDirectoryLock:
        return self if self.held else self.acquire()  # `with lock_run_directory(d):` has taken it

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()

    def _open(self) -> int:
        if not self.directory.is_dir():
            raise ConfigError(f"cannot lock run directory {self.directory}: it is not a directory")
        try:
            # O_RDWR: NFS emulates an exclusive flock with a write lock, which needs it.
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise ConfigError(f"cannot lock run directory {self.directory}: {error.strerror}") from None

    def _refusal(self, holder: dict[str, object]) -> str:
        if not holder:
            who = "another process (it has not written its name yet)"
        elif holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            who = f"this process (pid {holder['pid']} on host {holder['host']})"
        else:
            who = f"another run: pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
            if holder.get("since"):
                who += f", since {holder['since']}"
        return (
            f"run directory {self.directory} is in use by {who}; wait for it to end, "
            "or choose another directory (lock file: " + self.path.name + ")"
        )


def lock_run_directory(directory: str | os.PathLike[str]) -> RunDirectoryLock:
    """Takes `directory`'s lock; use the result as a context manager or call `release()`.

    Example:
      >>> with lock_run_directory(run_dir):
      ...     train()
    """
    return RunDirectoryLock(directory).acquire()


# The locks `holding` took in this process: real path of the directory -> (lock, thread id).
_held: dict[str, tuple[RunDirectoryLock, int]] = {}


@contextlib.contextmanager
def holding(directory: str | os.PathLike[str], *, create: bool = False) -> Iterator[RunDirectoryLock]:
    """Holds `directory`'s lock for the block; re-entrant in the thread that took it.

    A `holding` nested in another for the same directory, in the same thread, shares the
    outer one's lock (the command line holds it, the run it starts asks again); another
    thread or process is refused.

    Args:
      directory: the run directory.
      create: make `directory` (and its parents) when it is missing; it is removed again on
        the way out if the block left nothing in it. A lock file `holding` creates is
        removed on the way out too.

    Raises:
      RunDirectoryInUse: another process or thread holds the lock (names the holder).
      ConfigError: the directory cannot be made or locked.

    Example:
      >>> with holding(run_dir, create=True):
      ...     with holding(run_dir):  # the same thread: shares the lock
      ...         train()
    """
    directory = Path(directory)
    made = False
    if create and not directory.is_dir():
        try:
            directory.mkdir(parents=True)
            made = True
        except FileExistsError:
            pass  # another process made it meanwhile, or it is a file: `acquire` says which
        except OSError as error:
            raise ConfigError(f"cannot make run directory {directory}: {error.strerror or error}") from None
    key = os.path.realpath(directory)
    outer = _held.get(key)
    if outer is not None and outer[1] == threading.get_ident():
        yield outer[0]  # the outer `holding` releases it
        return
    fresh = not (directory / LOCK_NAME).exists()
    try:
        lock = RunDirectoryLock(directory).acquire()
    except ConfigError:
        if made:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    _held[key] = (lock, threading.get_ident())
    try:
        yield lock
    finally:
        del _held[key]
        _leave_as_found(lock, lock_file=fresh, directory=made)
        lock.release()


def _leave_as_found(lock: RunDirectoryLock, lock_file: bool, directory: bool) -> None:
    """Removes the lock file `holding` created, and the directory it made if that is now empty.

    Done while the lock is still held: a process that opened the file before is refused (or,
    locking it after the release, finds it unlinked and `acquire` opens the path again); one
    that comes after finds no lock file, or no directory, and makes its own.
    """
    with contextlib.suppress(OSError):
        if lock_file:
            lock.path.unlink()
        if directory:
            lock.directory.rmdir()  # only if empty


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def _write_holder(descriptor: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps(holder) + "\n").encode(), 0)


def _read_holder(descriptor: int) -> dict[str, object]:
    """The holder's pid, host and start time; {} when it has not written them (yet)."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        with contextlib.suppress(OSError, ValueError):
            holder = json.loads(os.pread(descriptor, 4096, 0))
            if isinstance(holder, dict):
                return holder
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.01)
