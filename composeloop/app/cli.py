"""`python -m composeloop` and `composeloop.app.main`: the Hydra app, with errors a person can read.

This module owns the command line's behaviour: the preflight (`composeloop.app.preflight`)
runs before Hydra starts any job, so that a bad override, flag, group option, value or
part is one line on stderr and exit 2 rather than a traceback; then the run (or sweep)
directory is locked, before Hydra writes there, so that a second process on it is refused
in one line and writes nothing; then Hydra runs the jobs, each locking its own directory.
Each job starts from clean Keras/TensorFlow state and runs `composeloop.app.run`; in a
multirun a failed job is recorded and the sweep goes on, and the exit status says whether
every job finished (the sweep's summary is `composeloop.app.sweep`'s). A job that fails on
bad input leaves its run directory as it found it. Set HYDRA_FULL_ERROR=1 for tracebacks.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from composeloop.errors import ComposeloopError
from composeloop.locking import RunDirectoryInUse

EXIT_BAD_INPUT = 2
EXIT_JOBS_FAILED = 1  # a multirun finished, but some of its jobs failed
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it


def config_dir() -> str:
    """conf/ beside the package (a source checkout or editable install) or inside it (a wheel)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"composeloop: no conf/config.yaml near {package}")


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


_TEMPLATE = re.compile(r"\$(VALUE_TYPE|VALUE|FULL_KEY|KEY|OBJECT_TYPE|REF_TYPE)\b")  # OmegaConf's placeholders


def one_line(error: BaseException) -> str:
    """One line for an error: its first line and that of the error it was raised from."""
    parts: list[str] = []
    options: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(parts) < 2:
        text = str(seen)
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        # OmegaConf chains a templated copy of its message ("Value '$VALUE' ..."): skip it.
        templated = seen is not error and _TEMPLATE.search(first)
        if first and not templated and first not in parts:
            parts.append(first)
        # Hydra lists a group's options on tab-indented lines: keep them, they help.
        options += [line.strip() for line in text.splitlines() if line.startswith("\t") and "=" not in line]
        seen = seen.__cause__ if seen.__suppress_context__ else (seen.__cause__ or seen.__context__)
    message = ": ".join(parts) or type(error).__name__
    if options:
        message += f" (available: {', '.join(options)})"
    return message


def fail(message: str) -> None:
    print(f"composeloop: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Silences TensorFlow's native start-up chatter (oneDNN, CUDA probes) on stderr.

    TensorFlow writes these from C++ before its log level applies, so the only way to keep
    the console to composeloop's own lines is to point file descriptor 2 elsewhere while
    TensorFlow loads and probes devices. Python errors raised meanwhile still propagate.
    """
    if full_errors():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class DirectoryGuard:
    """Puts a run directory back as the preflight found it when its job fails on bad input.

    Hydra creates the directory and writes ``.hydra/`` and its log file before the job
    runs; a job refused afterwards (a part of the wrong kind, found only when built) must
    not leave a new directory behind, nor an earlier run's ``.hydra/`` overwritten.
    """

    KEPT = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.existed = directory is not None and directory.exists()
        self.saved = {}
        if self.existed:
            self.saved = {name: (directory / name).read_bytes() for name in self.KEPT if (directory / name).is_file()}
            self.saved_log = {path.name for path in directory.glob("*.log")}

    def restore(self) -> None:
        directory = self.directory
        if directory is None or not directory.exists():
            return
        if not self.existed:
            shutil.rmtree(directory, ignore_errors=True)
            return
        for name in self.KEPT:
            if name in self.saved:
                (directory / name).write_bytes(self.saved[name])
            else:
                (directory / name).unlink(missing_ok=True)
        for log in directory.glob("*.log"):
            if log.name not in self.saved_log and log.stat().st_size == 0:
                log.unlink()
        with contextlib.suppress(OSError):
            (directory / ".hydra").rmdir()  # only if it is now empty


_guard: dict[str, DirectoryGuard | None] = {"run": None}
IN_PROCESS_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def _is_chief(config: Any) -> bool:
    """Whether this process speaks for the run: always, but on a multi-worker run's other workers."""
    from composeloop import cluster
    from composeloop.vocabulary import StrategyKind

    strategy = getattr(config, "strategy", None)
    return (
        strategy is None or strategy.name is not StrategyKind.multi_worker or cluster.is_chief_process(strategy.cluster)
    )


def hand_on(summary: dict[str, Any]) -> None:
    """Passes the signal that stopped the run on to the handler installed before composeloop's,
    now that the checkpoint and summary are written, when that handler is a Python function:
    submitit's SIGUSR2 handler (its warning of a time limit or pre-emption) then requeues the
    job, which resumes from that checkpoint. Ctrl-C's default handler is not called (it would
    raise KeyboardInterrupt)."""
    import signal

    name = summary.get("signal")
    if summary.get("status") != "interrupted" or not name:
        return
    number = signal.Signals[name]
    handler = signal.getsignal(number)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(number, None)


def _job(tree: Any) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from composeloop.app import sweep
    from composeloop.app.run import place_strategy, run
    from composeloop.app.runner import exit_code
    from composeloop.config.store import to_config

    # TensorFlow's checkpoint code logs every save at INFO through absl; Hydra would print it.
    logging.getLogger("absl").setLevel(logging.WARNING)
    hydra = HydraConfig.get()
    multirun = hydra.mode == RunMode.MULTIRUN
    directory = Path(hydra.runtime.output_dir)
    # A directory holding an earlier run's results is refused by `run`; it must not be marked failed.
    had_results = any((directory / name).exists() for name in ("summary.json", "metrics.jsonl"))
    started = time.perf_counter()
    config = None
    try:
        config = to_config(tree)
        logging.getLogger("tensorflow").setLevel(logging.WARNING)  # Hydra's INFO root would show its chatter
        with quiet_native_logs():
            import tensorflow as tf

            tf.config.list_physical_devices()  # probes drivers: its complaints stay quiet too
            # Logical CPUs and multi-worker collectives must be set up before any device starts.
            place_strategy(config.strategy)
        sweep.fresh_state(config.seed)
        summary = run(config, directory, overrides=list(hydra.overrides.task))
    except Exception as error:
        if not multirun:
            if full_errors() or not isinstance(error, ComposeloopError):
                raise  # a bug, not bad input: Hydra shows where
            if _guard["run"] is not None and _is_chief(config):  # the chief's directory is not another's to undo
                _guard["run"].restore()
            fail(str(error))
        # A failed job is recorded and the sweep goes on; `main` exits non-zero at its end.
        if full_errors():
            traceback.print_exc()
        line = one_line(error)
        print(f"composeloop: error: job {hydra.job.num}: {line}", file=sys.stderr, flush=True)
        if not had_results and not isinstance(error, RunDirectoryInUse):  # the holder's directory is not ours
            sweep.record_failure(directory, line, time.perf_counter() - started, tree.get("experiment"))
        return {"status": "failed", "error": line}
    if config.mode.value != "train":
        return summary
    code = exit_code(summary)
    in_process = hydra.launcher.get("_target_") == IN_PROCESS_LAUNCHER
    if multirun and in_process and summary.get("status") == "interrupted":
        raise KeyboardInterrupt  # the run caught Ctrl-C itself; the sweep in this process must stop too
    chief = _is_chief(config)  # the other workers of a multi-worker run say nothing the chief says
    if code:
        job = f"job {hydra.job.num}: " if multirun else ""
        if chief:
            print(
                f"composeloop: {job}{summary['status']} ({summary['reason']}); outputs and the last checkpoint are "
                f"in {directory}: run the same command again to resume",
                file=sys.stderr,
                flush=True,
            )
        hand_on(summary)
        if not multirun:
            sys.exit(code)
        return summary  # the sweep summary counts it as unfinished; the sweep goes on
    how = summary["status"] + (f": {summary['reason']}" if summary.get("reason") else "")
    if chief:
        print(f"composeloop: {config.experiment} finished in {summary['wall_s']:.1f}s ({how}); outputs in {directory}")
    return summary


def _end_of_sweep(interrupted: bool) -> None:
    """Summarises a sweep cut short, and exits non-zero when any job failed or was cut."""
    from composeloop.app import sweep

    outcome = sweep.summarize_interrupted() if interrupted else sweep.take_outcome()
    if outcome is None:
        return
    where = outcome.directory / sweep.SUMMARY_MD
    if interrupted:
        finished = outcome.jobs - outcome.unfinished
        print(f"composeloop: sweep interrupted after {finished} job(s); summary in {where}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if outcome.failed:
        print(f"composeloop: {outcome.failed} of {outcome.jobs} sweep jobs failed; see {where}", file=sys.stderr)
        sys.exit(EXIT_JOBS_FAILED)


def main(
    argv: Sequence[str] | None = None,
    *,
    config_path: str | None = None,
    config_name: str = "config",
) -> None:
    """The command line of composeloop, or of your own project built on it.

    `python -m composeloop` calls it with composeloop's own configs. Your project's script
    calls it with its config directory: your experiments, models, data and sweeps there
    join composeloop's (a config of yours with the same name wins), and your runs get
    every service a built-in experiment gets.

    Args:
      argv: the arguments (default: ``sys.argv[1:]``).
      config_path: your config directory, relative to the calling script (as for
        ``@hydra.main``) or absolute; None: composeloop's own.
      config_name: the primary config (composeloop's ``config`` unless you have your own).

    Example (``my_train.py``; then ``python my_train.py +experiment=mine``):
      >>> import composeloop.app
      >>> composeloop.app.main(config_path="conf")
    """
    import hydra

    from composeloop.app import plugins, preflight, sweep
    from composeloop.app.run import run_directory_lock
    from composeloop.config.store import register

    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    primary = config_dir() if config_path is None else config_path
    if config_path is not None and not os.path.isabs(config_path):  # relative to the calling script, as in Hydra
        caller = os.path.abspath(inspect.stack()[1].filename)
        primary = os.path.normpath(os.path.join(os.path.dirname(caller), config_path))
    register()
    plugins.register()
    held = contextlib.ExitStack()  # the run or sweep directory's lock, for the whole command
    try:
        command = preflight.parse(argv, primary, config_name, calling_file=__file__)
        if command.shows_only:
            preflight.check_overrides(command)  # Hydra's own errors for these can be tracebacks
        else:
            with quiet_native_logs():  # a part's import may load TensorFlow
                planned = preflight.check(command)
            _guard["run"] = DirectoryGuard(planned.run_dir)
            argv += preflight.pinned_directory(planned)
            held.enter_context(run_directory_lock(planned.configs[0], planned.run_dir or planned.sweep_dir))
            if planned.run_dir is not None and not _is_chief(planned.configs[0]):
                argv = [*argv, "hydra.output_subdir=null"]  # the chief alone records the config (.hydra/)
    except Exception as error:  # composition errors come in many Hydra/OmegaConf types
        if full_errors():
            raise
        fail(one_line(error))
    app = hydra.main(config_path=command.config_path, config_name=command.config_name, version_base="1.3")(_job)
    sys.argv = [sys.argv[0], *argv]
    with held:
        try:
            app()
        except KeyboardInterrupt:
            if sweep.current_sweep() is None:
                raise
            _end_of_sweep(interrupted=True)
        _end_of_sweep(interrupted=False)
