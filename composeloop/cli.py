"""`python -m composeloop`: the Hydra app, with errors a person can read.

This module owns the command line: it checks the config BEFORE Hydra starts a job (each job
of a multirun included), so that a bad override, an unknown group option or an invalid value
is one line on stderr and a non-zero exit rather than a traceback, then hands over to Hydra.
In a multirun each job starts from clean Keras/TensorFlow state, a job that fails is recorded
and the sweep goes on, and the exit status says whether every job finished (the sweep's
summary itself is `composeloop.config.sweep`'s). Set HYDRA_FULL_ERROR=1 to get tracebacks
instead. Nothing imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from composeloop.config import sweep
from composeloop.config.schema import Resume
from composeloop.config.store import register, to_config
from composeloop.errors import ComposeloopError

EXIT_BAD_INPUT = 2
EXIT_JOBS_FAILED = 1  # a multirun finished, but some of its jobs failed
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
# Flags after which Hydra prints something and runs nothing: no preflight needed.
INFO_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info", "--shell-completion", "-sc"}
MULTIRUN_FLAGS = {"-m", "--multirun"}


def config_dir() -> str:
    """conf/ beside the package (a source checkout or editable install) or inside it (a wheel)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"composeloop: no conf/config.yaml near {package}")


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(error: BaseException) -> str:
    """One line for an error: its first line and that of the error it was raised from."""
    parts: list[str] = []
    options: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(parts) < 2:
        text = str(seen)
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        # OmegaConf chains a templated copy of its message ("Value '$VALUE' ..."): skip it.
        if first and "$" not in first and first not in parts:
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


def _job_overrides(argv: list[str]) -> tuple[list[list[str]], Path | None]:
    """The override list of every job the command line would run, and a multirun's directory.

    A multirun (`-m`, or `hydra.mode: MULTIRUN` from a `+sweep=...` config) runs the product
    of `hydra.sweeper.params` and the command line's sweeps, as Hydra's basic sweeper does.
    A single run's directory is None.
    """
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [arg for arg in argv if not arg.startswith("-")]
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(overrides) if not o.is_sweep_override()]
    hydra_config = compose(config_name="config", overrides=fixed, return_hydra_config=True).hydra
    if not (any(arg in MULTIRUN_FLAGS for arg in argv) or hydra_config.mode == RunMode.MULTIRUN):
        return [overrides], None
    params = [f"{key}={value}" for key, value in (hydra_config.sweeper.get("params") or {}).items()]
    parsed = parser.parse_overrides(params + overrides)
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    return jobs, Path(str(hydra_config.sweep.dir))


def preflight(argv: list[str]) -> None:
    """Composes and validates the config of every job; raises on the first bad one.

    With ``resume=never``, a multirun into a directory that already holds a sweep's results
    is refused too; with ``resume=auto`` (the default) its jobs resume from their checkpoints.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        jobs, sweep_dir = _job_overrides(argv)
        configs = [to_config(compose(config_name="config", overrides=overrides)) for overrides in jobs]
    if sweep_dir is not None and any(config.resume is Resume.never for config in configs):
        sweep.refuse_earlier_sweep(sweep_dir)


@contextlib.contextmanager
def _quiet_native_logs() -> Iterator[None]:
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


def _job(tree: DictConfig) -> dict[str, Any]:
    from composeloop.config import build
    from composeloop.config.experiments import run
    from composeloop.config.runner import exit_code

    # TensorFlow's checkpoint code logs every save at INFO through absl; Hydra would print it.
    logging.getLogger("absl").setLevel(logging.WARNING)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    directory = Path(HydraConfig.get().runtime.output_dir)
    # A directory holding an earlier run's results is refused by `run`; it must not be marked failed.
    had_results = any((directory / name).exists() for name in ("summary.json", "metrics.jsonl"))
    started = time.perf_counter()
    try:
        config = to_config(tree)
        logging.getLogger("tensorflow").setLevel(logging.WARNING)  # Hydra's INFO root would show its chatter
        with _quiet_native_logs():
            import tensorflow as tf

            tf.config.list_physical_devices()  # probes drivers: its complaints stay quiet too
            # Logical CPUs and multi-worker collectives must be set up before any device starts.
            build.build_strategy(config.strategy)
        sweep.fresh_state(config.seed)
        summary = run(config, directory)
    except Exception as error:
        if not multirun:
            if full_errors() or not isinstance(error, ComposeloopError):
                raise  # a bug, not bad input: Hydra shows where
            fail(str(error))
        # A failed job is recorded and the sweep goes on; `main` exits non-zero at its end.
        if full_errors():
            traceback.print_exc()
        line = one_line(error)
        print(f"composeloop: error: job {HydraConfig.get().job.num}: {line}", file=sys.stderr, flush=True)
        if not had_results:
            sweep.record_failure(directory, line, time.perf_counter() - started, tree.get("experiment"))
        return {"status": "failed", "error": line}
    code = exit_code(summary)
    if multirun and summary.get("status") == "interrupted":
        raise KeyboardInterrupt  # the run caught Ctrl-C itself; the sweep must stop too
    if code:
        job = f"job {HydraConfig.get().job.num}: " if multirun else ""
        print(
            f"composeloop: {job}{summary['status']} ({summary['reason']}); outputs and the last checkpoint are in "
            f"{directory}: run the same command again to resume",
            file=sys.stderr,
            flush=True,
        )
        if not multirun:
            sys.exit(code)
        return summary  # the sweep summary counts it as failed; the sweep goes on
    how = summary["status"] + (f": {summary['reason']}" if summary.get("reason") else "")
    print(f"composeloop: {config.experiment} finished in {summary['wall_s']:.1f}s ({how}); outputs in {directory}")
    return summary


def _end_of_sweep(interrupted: bool) -> None:
    """Summarises a sweep cut short, and exits non-zero when any job failed or was cut."""
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m composeloop`."""
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    register()
    if not any(arg.split("=")[0] in INFO_FLAGS for arg in argv):
        try:
            preflight(argv)
        except Exception as error:  # composition errors come in many Hydra/OmegaConf types
            if full_errors():
                raise
            fail(one_line(error))
    app = hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")(_job)
    sys.argv = [sys.argv[0], *argv]
    try:
        app()
    except KeyboardInterrupt:
        if sweep.current_sweep() is None:
            raise
        _end_of_sweep(interrupted=True)
    _end_of_sweep(interrupted=False)
