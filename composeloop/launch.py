"""`python -m composeloop.launch --workers N -- ARGS`: a multi-worker run on this machine.

This module owns starting N local `python -m composeloop ARGS` worker processes, each with
a TF_CONFIG naming all of them on free loopback ports, streaming their output with a
``[worker i]`` prefix, and exiting non-zero when any of them fails (the others are then
stopped: they would wait forever for the missing worker's collectives). Every worker is
given the same run directory (``hydra.run.dir`` if given, else Hydra's usual
``outputs/DATE/TIME``), as on a cluster with a shared file system: worker 0 is the chief
and writes the run's files there; the others read its checkpoints to resume and write
their own copies elsewhere (`composeloop.engine.strategies.output_directory`).

SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 sent to the launcher are passed on to every worker
once; the workers agree to stop after the same step, the chief checkpoints, and all exit
with 128 + the signal, which the launcher then exits with. A worker that exits with such
a status leaves the others time to finish their own stop; any other failure stops them at
once. On a real cluster there is no launcher: start one ``python -m composeloop ...
strategy=multi_worker`` per machine, each with its own TF_CONFIG, or use srun under SLURM.
Nothing imports this module; it imports neither TensorFlow nor Hydra.

Example:
  python -m composeloop.launch --workers 2 -- +experiment=multi_gpu strategy=multi_worker
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from composeloop.cluster import local_tf_configs

POLL_S = 0.2
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOPPED = {128 + int(number) for number in FORWARDED}  # a worker's exit after an agreed stop
STOP_GRACE_S = 120.0  # how long the others may take to reach the same stop and save


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (the OS picks them)."""
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def _run_directory(args: Sequence[str]) -> str:
    given = [arg.split("=", 1)[1] for arg in args if arg.startswith("hydra.run.dir=")]
    return given[-1] if given else os.path.join("outputs", datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))


def worker_commands(args: Sequence[str], workers: int) -> list[list[str]]:
    """The command line of each worker: all share the run directory; only the chief keeps
    Hydra's record of the config in it (``.hydra/``)."""
    others = [arg for arg in args if not arg.startswith("hydra.run.dir=")]
    base = [sys.executable, "-m", "composeloop", *others, f"hydra.run.dir={_run_directory(args)}"]
    return [base] + [[*base, "hydra.output_subdir=null"] for _ in range(1, workers)]


def _stream(prefix: str, source: IO[str], sink: IO[str], lock: threading.Lock) -> None:
    for line in source:
        with lock:
            sink.write(f"{prefix}{line}")
            sink.flush()


def _stop(processes: Sequence[subprocess.Popen], grace_s: float = 0.0) -> None:
    """Waits up to `grace_s` for the workers to end by themselves, then terminates the rest."""
    deadline = time.monotonic() + grace_s
    while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(args: Sequence[str], workers: int) -> int:
    """Runs `workers` local workers of ``python -m composeloop ARGS``; returns the exit status.

    Args:
      args: composeloop's command-line arguments (they should select strategy=multi_worker).
      workers: how many processes; worker 0 is the chief.

    Returns:
      0 when every worker succeeded; otherwise the first failing worker's exit status.

    Example:
      >>> launch(["+experiment=multi_gpu", "strategy=multi_worker"], workers=2)
      0
    """
    configs = local_tf_configs(free_ports(workers))
    lock = threading.Lock()
    processes: list[subprocess.Popen] = []
    threads = []
    grace_s = 0.0
    try:
        with _forwarding_signals(processes):
            for index, command in enumerate(worker_commands(args, workers)):
                environment = {**os.environ, "TF_CONFIG": configs[index], "PYTHONUNBUFFERED": "1"}
                process = subprocess.Popen(
                    command,
                    env=environment,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    bufsize=1,
                    start_new_session=True,  # Ctrl-C reaches the launcher only, which passes it on once
                )
                processes.append(process)
                thread = threading.Thread(target=_stream, args=(f"[worker {index}] ", process.stdout, sys.stdout, lock))
                thread.start()
                threads.append(thread)
            while True:
                running = [process.poll() is None for process in processes]
                failed = [process.returncode for process in processes if process.returncode not in (None, 0)]
                if failed or not any(running):
                    grace_s = STOP_GRACE_S if failed and failed[0] in STOPPED else 0.0
                    return failed[0] if failed else 0  # `finally` stops whoever still runs
                time.sleep(POLL_S)
    finally:
        _stop(processes, grace_s)
        for thread in threads:
            thread.join()


@contextmanager
def _forwarding_signals(processes: Sequence[subprocess.Popen]) -> Iterator[None]:
    """While the block runs, SIGTERM, SIGINT and SIGUSR1 to the launcher go to every worker."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(number: int, frame: Any) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in FORWARDED}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class _Parser(argparse.ArgumentParser):
    """Bad launcher arguments are one line and exit 2, like composeloop's own."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"composeloop.launch: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m composeloop.launch`."""
    parser = _Parser(
        prog="python -m composeloop.launch",
        description="Run N local composeloop workers (MultiWorkerMirroredStrategy) on loopback ports.",
        epilog="example: python -m composeloop.launch --workers 2 -- +experiment=multi_gpu strategy=multi_worker",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes to start (>= 1); worker 0 is chief")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then python -m composeloop's arguments")
    options = parser.parse_args(argv)
    if options.workers < 1:
        parser.error(f"--workers must be >= 1, got {options.workers}")
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    status = launch(args, options.workers)
    if status in STOPPED:
        name = signal.Signals(status - 128).name
        print(f"composeloop.launch: the workers stopped together on {name} (exit {status})", file=sys.stderr)
    elif status:
        print(f"composeloop.launch: a worker failed (exit {status}); stopped the others", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
