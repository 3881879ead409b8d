"""`python -m composeloop`: the Hydra app, with errors a person can read.

This module owns the command line: it checks the config BEFORE Hydra starts a job (each job
of a multirun included), so that a bad override, an unknown group option or an invalid value
is one line on stderr and a non-zero exit rather than a traceback, then hands over to Hydra.
Set HYDRA_FULL_ERROR=1 to get tracebacks instead. Nothing imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from composeloop.config.store import register, to_config
from composeloop.errors import ComposeloopError

EXIT_BAD_INPUT = 2
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


def _job_overrides(argv: list[str]) -> list[list[str]]:
    """The override list of every job the command line would run."""
    overrides = [arg for arg in argv if not arg.startswith("-")]
    if not any(arg in MULTIRUN_FLAGS for arg in argv):
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def preflight(argv: list[str]) -> None:
    """Composes and validates the config of every job; raises on the first bad one."""
    from hydra import compose, initialize_config_dir

    for overrides in _job_overrides(argv):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            to_config(compose(config_name="config", overrides=overrides))


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


def _job(tree: DictConfig) -> None:
    from composeloop.config import build
    from composeloop.config.experiments import run

    try:
        config = to_config(tree)
        logging.getLogger("tensorflow").setLevel(logging.WARNING)  # Hydra's INFO root would show its chatter
        with _quiet_native_logs():
            import tensorflow as tf

            tf.config.list_physical_devices()  # probes drivers: its complaints stay quiet too
            # Logical CPUs and multi-worker collectives must be set up before any device starts.
            build.build_strategy(config.strategy)
        directory = Path(HydraConfig.get().runtime.output_dir)
        summary = run(config, directory)
        print(f"composeloop: {config.experiment} finished in {summary['wall_s']:.1f}s; outputs in {directory}")
    except ComposeloopError as error:
        if full_errors():
            raise
        fail(str(error))


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
    app()
