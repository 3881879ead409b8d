"""The preflight: every job's config composed and validated before Hydra starts a job.

This module owns reading the command line as Hydra reads it (Hydra's own argument parser,
so ``--config-dir/-cd``, ``--config-path/-cp``, ``--config-name/-cn``, ``-m`` and the
``--flag value``/``--flag=value`` spellings all mean what they mean to Hydra), composing
the config of each job with the same search path Hydra will use, and checking it: the
schema's types and validators, users' parts (`_target_` imports), a sweep's every job (the
basic sweeper's grid) or an Optuna search's space (unexpanded, and one example job), the
tracking URI, and the run directory a mode other than train needs. A bad config is thus
one line before anything is written.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from composeloop.config.schema import Config, Resume, TrackingBackend
from composeloop.config.store import to_config
from composeloop.errors import ConfigError

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA_SWEEPER = "hydra_plugins.composeloop_optuna.optuna_sweeper.OptunaSweeper"  # composeloop's (hydra/sweeper=optuna)


@attrs.frozen
class CommandLine:
    """A command line as Hydra reads it, and where the primary config lives."""

    args: argparse.Namespace
    config_path: str  # the primary config directory (absolute) or pkg:// path
    config_name: str
    calling_file: str  # what Hydra resolves a relative --config-path against

    @property
    def overrides(self) -> list[str]:
        return list(self.args.overrides)

    @property
    def shows_only(self) -> bool:
        """--help, --cfg, --info and the like: Hydra prints something and runs nothing."""
        a = self.args
        return bool(a.help or a.hydra_help or a.cfg or a.info or a.shell_completion)


def parse(argv: Sequence[str], config_path: str, config_name: str, calling_file: str) -> CommandLine:
    """Reads `argv` with Hydra's own parser; a bad flag is a ConfigError, not argparse's exit."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        args, unknown = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as error:
        raise ConfigError(f"command line: {error}") from None
    if unknown:
        raise ConfigError(f"command line: unknown flag {unknown[0]}; see --help")
    path = args.config_path if args.config_path is not None else config_path
    return CommandLine(args, path, args.config_name or config_name, calling_file)


def _hydra(command: CommandLine) -> Any:
    """Hydra's config loader over the search path `hydra.main` would build for `command`."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import compute_search_path_dir, create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    search_path = create_config_search_path(compute_search_path_dir(command.calling_file, None, command.config_path))
    if command.args.config_dir is not None:
        directory = os.path.abspath(command.args.config_dir)
        if not os.path.isdir(directory):
            raise ConfigError(f"--config-dir: {directory} is not a directory")
        search_path.prepend("command-line", f"file://{directory}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    return Hydra.create_main_hydra2(task_name="composeloop", config_search_path=search_path)


def _compose(hydra: Any, command: CommandLine, overrides: Sequence[str]) -> Any:
    """One job's config as its task function will see it (without the `hydra` section)."""
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    config = hydra.compose_config(command.config_name, list(overrides), run_mode=RunMode.RUN)
    with read_write(config), open_dict(config):
        del config["hydra"]
    return config


@attrs.frozen
class Plan:
    """What the command will run: each job's config (the first job's alone for a search)."""

    configs: list[Config]
    jobs: list[list[str]]  # each job's overrides
    sweep_dir: Path | None  # None for a single run
    run_dir: Path | None  # a single run's directory
    search: bool = False  # a sweeper other than the grid: its space was validated, not expanded


def _jobs(hydra: Any, command: CommandLine) -> tuple[list[list[str]], Any, bool]:
    """Every job's overrides, the composed hydra section, and whether it is a multirun."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    parser = OverridesParser.create()
    overrides = command.overrides
    parsed = read_overrides(hydra, overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    first = hydra.compose_config(
        command.config_name, fixed, run_mode=RunMode.RUN, with_log_configuration=False, validate_sweep_overrides=False
    )
    multirun = bool(command.args.multirun) or first.hydra.mode == RunMode.MULTIRUN
    if not multirun:
        return [overrides], first.hydra, False
    params = [f"{key}={value}" for key, value in (first.hydra.sweeper.get("params") or {}).items()]
    if first.hydra.sweeper.get("_target_") == OPTUNA_SWEEPER:
        return [_search_example(hydra, first.hydra.sweeper, params + overrides)], first.hydra, True
    if first.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return [fixed], first.hydra, True  # another sweeper: its space is its own business
    parsed = parser.parse_overrides(params + overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch], first.hydra, True


def read_overrides(hydra: Any, overrides: Sequence[str]) -> list[Any]:
    """The overrides parsed by Hydra's grammar, with what Hydra's own messages do not name named.

    Raises:
      ConfigError: an override that does not parse, or a config group set to something other
        than option names (null, a number, a dict): one line naming the override or the group.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        lines = [line.strip() for line in str(error.message).splitlines() if line.strip()]
        reasons = [line for line in lines if not line.startswith("Error parsing override")]  # names no cause
        reason = (reasons or lines or ["unreadable"])[0]
        raise ConfigError(f"{error.override}: not a valid override ({reason})") from None
    for override in parsed:  # Hydra's own says no key ("Config group override must be a string or a list")
        group = override.key_or_group
        if override.is_delete() or override.value_type is None or override.is_sweep_override():
            continue
        value = override.value()
        names = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not names and hydra.config_loader.repository.group_exists(group.replace(".", "/")):
            options = hydra.config_loader.get_group_options(group)
            shown = "null" if value is None else repr(value)
            raise ConfigError(f"{group}: a config group takes an option ({', '.join(options)}), got {shown}")
    return parsed


def check_overrides(command: CommandLine) -> None:
    """`read_overrides` alone: for --cfg, --help and the like, which Hydra composes itself."""
    from hydra.core.global_hydra import GlobalHydra

    hydra = _hydra(command)
    try:
        read_overrides(hydra, command.overrides)
    finally:
        GlobalHydra.instance().clear()


def _search_example(hydra: Any, sweeper: Any, overrides: list[str]) -> list[str]:
    """The overrides of one job of an Optuna search, once its whole space is checked unexpanded.

    Each bound and choice is checked against its key's type and validator, and the trial
    budget; the returned job (each dimension at its low bound or first choice) is composed
    and validated like a grid's, so a bad fixed override is caught too.
    """
    from composeloop.app.search_space import check_search_space, parse

    space = check_search_space(parse(overrides), sweeper.n_trials, group_options=hydra.config_loader.get_group_options)
    return space.examples()


def plan(command: CommandLine) -> Plan:
    """Composes and validates the config of every job `command` would run.

    Raises:
      ConfigError (or Hydra's composition errors): the first bad job's problem, in one line.
    """
    from hydra.core.global_hydra import GlobalHydra

    hydra = _hydra(command)
    try:
        jobs, hydra_section, multirun = _jobs(hydra, command)
        configs = [to_config(_compose(hydra, command, overrides)) for overrides in jobs]
        searching = multirun and hydra_section.sweeper.get("_target_") != BASIC_SWEEPER
    finally:
        GlobalHydra.instance().clear()
    sweep_dir = Path(str(hydra_section.sweep.dir)) if multirun else None
    run_dir = None if multirun else Path(str(hydra_section.run.dir))
    return Plan(configs, jobs, sweep_dir, run_dir, searching)


def pinned_directory(planned: Plan) -> list[str]:
    """The override that fixes the run (or sweep) directory to the one `planned` holds.

    Hydra's default directory is spelt with ``${now:...}``: composed again when Hydra starts,
    it may fall in the next second. The command line locks and guards the planned one, so
    Hydra must use that one. Empty when the path does not survive Hydra's quoting.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key, directory = ("hydra.run.dir", planned.run_dir) if planned.run_dir else ("hydra.sweep.dir", planned.sweep_dir)
    if directory is None:
        return []
    override = f"{key}='{str(directory).replace(chr(39), chr(92) + chr(39))}'"
    try:
        same = OverridesParser.create().parse_override(override).value() == str(directory)
    except Exception:  # a path Hydra's grammar cannot spell back
        same = False
    return [override] if same else []


def check(command: CommandLine) -> Plan:
    """`plan`, then what needs the plan whole: the tracking URI (``tracking=mlflow``), an
    earlier sweep under resume=never, and the checkpoint a mode other than train restores
    from the given run directory."""
    from composeloop.app import sweep
    from composeloop.app.run import check_directory
    from composeloop.app.tracking_store import check_tracking_uri

    planned = plan(command)
    for uri in dict.fromkeys(c.tracking.uri for c in planned.configs if c.tracking.backend is TrackingBackend.mlflow):
        check_tracking_uri(uri)
    if planned.sweep_dir is not None and any(config.resume is Resume.never for config in planned.configs):
        sweep.refuse_earlier_sweep(planned.sweep_dir)
    if planned.run_dir is not None:
        config = planned.configs[0]
        if config.mode.value != "train":
            check_directory(config, planned.run_dir)
    return planned


def load_config(
    overrides: Sequence[str] = (), *, config_path: str | None = None, config_name: str = "config"
) -> Config:
    """A validated `Config` composed as the command line would compose it (no Hydra run).

    Args:
      overrides: Hydra overrides (``["+experiment=gan", "train.epochs=2"]``).
      config_path: an extra config directory (your project's), as ``--config-dir``.
      config_name: the primary config.

    Example:
      >>> config = load_config(["data=synthetic", "train.epochs=1"])
      >>> run(config, "runs/a")["status"]
      'completed'
    """
    from hydra.core.global_hydra import GlobalHydra

    from composeloop.app import plugins
    from composeloop.app.cli import config_dir
    from composeloop.config.store import register

    register()
    plugins.register()
    argv = [*(["--config-dir", str(config_path)] if config_path else []), *overrides]
    command = parse(argv, config_dir(), config_name, calling_file=__file__)
    hydra = _hydra(command)
    try:
        read_overrides(hydra, command.overrides)
        return to_config(_compose(hydra, command, command.overrides))
    finally:
        GlobalHydra.instance().clear()
