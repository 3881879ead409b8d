"""Fuzz of every config key, generated from the schema: any value is accepted in bounds, or refused in one line.

The keys are not listed here: `schema_keys` walks `attrs.fields` of `Config`, its sections
and the attrs records of its open sections (`TARGET_SECTIONS`), so a key added to the
schema is fuzzed from then on. Each key gets adversarial values written as a person types
them on the command line: wrong types, huge and negative integers, zero, NaN, Inf,
float32's edges, empty and odd strings, lists, dicts, unknown enum members, missing
values and unresolvable interpolations; plus unknown keys in every section.

Three properties, from fast to real:
- `test_..._in_process` (most examples): the override applied to a composed config as
  Hydra applies it, then `to_config`. A value is either accepted, and then every number of
  the config fits its use (integers int64, floats finite in float32), or refused with a
  ConfigError or Hydra/OmegaConf error whose one line names the key.
- `test_..._preflight` (fewer): the command line's own preflight (`preflight.parse` and
  `check`, with an existing run directory) must give the same outcome, and write nothing.
- `test_through_the_cli_...` (a few): the real command line in a subprocess: exit 2 and
  the preflight's one line for a refused value, nothing written into the existing run
  directory; an accepted small value runs (exit 0) or is refused in one line; never a
  traceback.
Examples per profile (`settings.default.max_examples`, ci 25, thorough 500): 4x, 1/2x and
1/10x (at least 2) of it.
"""

from __future__ import annotations

import copy
import enum
import functools
import math
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from composeloop.app import cli, plugins, preflight
from composeloop.config.schema import FLOAT32_MAX, INT64_MAX, TARGET_SECTIONS, Config
from composeloop.config.store import register, to_config
from composeloop.errors import ConfigError

pytestmark = pytest.mark.property
PROFILE_EXAMPLES = settings.default.max_examples
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

# ---------------------------------------------------------------------------- the keys, from the schema


@attrs.frozen
class Key:
    """One config key: its full path and its type as the schema declares it."""

    path: str
    hint: typing.Any  # int, float, str, bool, an Enum, Optional[...], List[...], Any


def schema_keys(section: type = Config, prefix: str = "") -> list[Key]:
    """Every leaf key of `section`, recursing into nested schemas and the open sections' records."""
    hints = typing.get_type_hints(section)
    keys = []
    for field in attrs.fields(section):
        if field.name == "args":  # not a key: an open section's other keys
            continue
        path, hint = prefix + field.name, hints[field.name]
        nested = TARGET_SECTIONS.get(field.name) if section is Config else None
        if nested is None and isinstance(hint, type) and attrs.has(hint):
            nested = hint
        keys += schema_keys(nested, f"{path}.") if nested is not None else [Key(path, hint)]
    return keys


KEYS = schema_keys()
SECTIONS = sorted({key.path.rsplit(".", 1)[0] for key in KEYS if "." in key.path})


def _scalar(hint: typing.Any) -> typing.Any:
    """X for Optional[X], else the hint itself."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def _is_enum(hint: typing.Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, enum.Enum)


SCALAR_KEYS = [key for key in KEYS if _scalar(key.hint) in (int, float, bool) or _is_enum(_scalar(key.hint))]


def test_the_walk_finds_every_section_and_the_open_sections_keys():
    paths = {key.path for key in KEYS}
    assert {"seed", "train.accumulate", "data.batch_size", "model._target_", "optimizer.learning_rate"} <= paths
    assert {"step._target_", "gan.n_critic", "checkpoint.keep", "strategy.logical_cpus", "report.curves"} <= paths
    assert not any(path.endswith(".args") for path in paths)
    assert len(paths) == len(KEYS) > 60


# ---------------------------------------------------------------------------- adversarial values


def typed(value: typing.Any) -> str:
    """A Python value as a person types it in a Hydra override."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # nan, inf, -inf, 1e+39, 5e-324
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ", ".join(typed(item) for item in value) + "]"
    return "{" + ", ".join(f"{name}: {typed(item)}" for name, item in value.items()) + "}"


EDGES = [0, -1, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, -(2**63) - 1, 10**20, -(10**20), 10**400]
FLOAT_EDGES = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-39, 5e-324, 1.2e-38, 3.4e38, 3.5e38, 1e308, -1.5, 0.5, 1.0]
RAW = ["", "null", "???", "[]", "{}", "abc", "${oc.env:COMPOSELOOP_FUZZ_UNSET}", "${no.such.key}", "[1,", "{a:"]
simple = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(EDGES),
    st.integers(),
    st.sampled_from(FLOAT_EDGES),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["", " ", "bogus", "raise", "auto", "adam", "float32", "os.path.join", "no.such.module", "$VALUE"]),
)
values = st.recursive(
    simple,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "_target_", "max_norm"]), inner, max_size=2)
    ),
    max_leaves=4,
)


def for_hint(hint: typing.Any) -> st.SearchStrategy[typing.Any]:
    """Values near the key's own type, where a bound is most likely to be missing."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return st.one_of(st.none(), for_hint(args[0]))
    if typing.get_origin(hint) is list:
        return st.lists(for_hint(args[0]) if args else values, max_size=4)
    if hint is int:
        return st.one_of(st.sampled_from(EDGES), st.integers(), st.integers(-4, 64))
    if hint is float:
        return st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(), st.floats(-2.0, 2.0))
    if _is_enum(hint):
        return st.one_of(st.sampled_from([member.name for member in hint]), st.text(max_size=6))
    return values


@st.composite
def overrides(draw) -> tuple[str, str]:
    """(the key a message must name, one override), for a schema key or an unknown one."""
    if draw(st.integers(0, 19)) == 0:
        section = draw(st.sampled_from(SECTIONS))
        prefix = draw(st.sampled_from(["", "+", "++"]))
        return f"{section}.no_such_key", f"{prefix}{section}.no_such_key={typed(draw(simple))}"
    key = draw(st.sampled_from(KEYS))
    how = draw(st.integers(0, 9))
    if how == 0:
        text = draw(st.sampled_from(RAW))
    elif how < 5:
        text = typed(draw(for_hint(key.hint)))
    else:
        text = typed(draw(values))
    return key.path, f"{key.path}={text}"


@st.composite
def small_overrides(draw) -> tuple[str, str]:
    """A small, mostly valid value of a scalar key: cheap to run end to end."""
    key = draw(st.sampled_from(SCALAR_KEYS))
    hint = _scalar(key.hint)
    if _is_enum(hint):
        return key.path, f"{key.path}={draw(st.sampled_from([member.name for member in hint]))}"
    small = {int: st.integers(0, 3), float: st.sampled_from([0.0, 0.1, 0.5, 1.0]), bool: st.booleans()}[hint]
    return key.path, f"{key.path}={typed(draw(small))}"


# Contexts the value is set in: the defaults, and groups whose cross-field checks differ.
CONTEXTS = [(), ("data=synthetic",), ("+experiment=gan",), ("data=npz", "data.path=missing.npz"), ("mode=evaluate",)]
# A value of one key may make another key the one at fault (data.source=npz needs data.path).
ALSO_NAMED = {
    "data.source": ("data.path",),
    "strategy.name": ("TF_CONFIG",),
    "data.synthetic_shape": ("data.synthetic_examples", "data.synthetic_classes"),
    "optimizer.schedule": ("optimizer.min_learning_rate",),
    "optimizer.learning_rate": ("optimizer.min_learning_rate",),
}


# ---------------------------------------------------------------------------- outcomes


def _expected_error(error: Exception) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(error, ConfigError | HydraException | OmegaConfBaseException)


def numbers(value: typing.Any, path: str) -> list[tuple[str, typing.Any]]:
    """Every number in a validated config (not inside the free-form parts), with its key."""
    if attrs.has(type(value)):
        hints = typing.get_type_hints(type(value))
        found = []
        for field in attrs.fields(type(value)):
            if field.name != "args" and hints[field.name] is not typing.Any and "Any" not in str(hints[field.name]):
                found += numbers(getattr(value, field.name), f"{path}{field.name}.")
        return found
    if isinstance(value, list):
        return [pair for item in value for pair in numbers(item, path)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(path.rstrip("."), value)]
    return []


def outcome(attempt: typing.Callable[[], Config], named: str) -> str | None:
    """None for an accepted value (its numbers checked), else the one line the CLI would print."""
    try:
        config = attempt()
    except Exception as error:
        line = cli.one_line(error)
        assert _expected_error(error), f"{type(error).__name__} is a bug, not bad input: {line}"
        assert "\n" not in line and line.strip(), repr(line)
        mentioned = (named, *ALSO_NAMED.get(named, ()))
        assert any(key in line for key in mentioned), f"the line does not name {named}: {line}"
        event(f"refused by {type(error).__name__}")
        return line
    for key, number in numbers(config, ""):
        if isinstance(number, int):
            assert -INT64_MAX - 1 <= number <= INT64_MAX, f"{key}={number} does not fit int64"
        else:
            assert math.isfinite(number) and abs(number) <= FLOAT32_MAX, f"{key}={number} is not a finite float32"
    event("accepted")
    return None


# ---------------------------------------------------------------------------- the fast path: one compose per context


def _command(argv: list[str]) -> preflight.CommandLine:
    register()
    plugins.register()
    return preflight.parse(argv, cli.config_dir(), "config", calling_file=cli.__file__)


@functools.cache
def composed(context: tuple[str, ...]) -> typing.Any:
    """The context's config with its hydra section, as Hydra composes it before value overrides."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    hydra = preflight._hydra(_command(list(context)))
    try:
        return hydra.compose_config("config", list(context), run_mode=RunMode.RUN), hydra
    finally:
        GlobalHydra.instance().clear()


def applied(context: tuple[str, ...], override: str) -> Config:
    """`override` applied to the composed context as Hydra applies a value override, then validated."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import open_dict, read_write

    base, hydra = composed(context)
    [parsed] = preflight.read_overrides(hydra, [override])
    if hydra.config_loader.repository.group_exists(parsed.key_or_group.replace(".", "/")):  # `experiment`: a group too
        return preflight.load_config([*context, override])
    config = copy.deepcopy(base)
    ConfigLoaderImpl._apply_overrides_to_config([parsed], config)
    with read_write(config), open_dict(config):
        del config["hydra"]
    return to_config(config)


@settings(max_examples=PROFILE_EXAMPLES * 4, suppress_health_check=SLOW_OK)
@given(overrides(), st.sampled_from(CONTEXTS))
def test_any_value_of_any_key_is_accepted_in_bounds_or_refused_naming_the_key_in_process(drawn, context):
    named, override = drawn
    outcome(lambda: applied(context, override), named)


# ---------------------------------------------------------------------------- the command line's preflight


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A run directory holding an earlier attempt's files (no results): nothing may be written there."""
    directory = tmp_path_factory.mktemp("earlier") / "run"
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "config.yaml").write_text("earlier: true\n")
    (directory / "notes.txt").write_text("mine\n")
    return directory


@settings(max_examples=max(2, PROFILE_EXAMPLES // 2), suppress_health_check=SLOW_OK)
@given(drawn=overrides(), context=st.sampled_from(CONTEXTS[:4]))
def test_the_preflight_agrees_and_writes_nothing(drawn, context, earlier_run):
    named, override = drawn
    before = snapshot(earlier_run)
    argv = [*context, override, f"hydra.run.dir={earlier_run}"]
    real = outcome(lambda: preflight.check(_command(argv)).configs[0], named)
    assert real == outcome(lambda: applied(context, override), named)
    assert snapshot(earlier_run) == before


# ---------------------------------------------------------------------------- the real command line


TINY = ("data=synthetic", "data.synthetic_examples=32", "train.epochs=1", "report.tensorboard=false")
SMALL = re.compile(r"-?\d(\.\d+)?")  # an accepted value cheap enough to run: one digit


@settings(max_examples=max(2, PROFILE_EXAMPLES // 10), suppress_health_check=SLOW_OK)
@given(drawn=st.one_of(small_overrides(), overrides()))
@pytest.mark.slow
def test_through_the_cli_a_value_runs_or_is_refused_in_one_line_writing_nothing(drawn, tmp_path_factory):
    named, override = drawn
    expected = outcome(lambda: applied(TINY, override), named)
    value = override.split("=", 1)[1]
    assume(expected is not None or SMALL.fullmatch(value) or value in ("true", "false", "null"))
    directory = tmp_path_factory.mktemp("cli") / "run"
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "config.yaml").write_text("earlier: true\n")
    before = snapshot(directory)
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    result = subprocess.run(
        [sys.executable, "-m", "composeloop", *TINY, "report.curves=false", override, f"hydra.run.dir={directory}"],
        cwd=directory.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    context = f"{override}: exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr, context
    errors = [line for line in result.stderr.splitlines() if line.startswith("composeloop: error:")]
    if expected is not None:
        assert result.returncode == 2 and errors == [f"composeloop: error: {expected}"], context
    else:
        assert result.returncode in (0, 2), context
        assert result.returncode == 0 or len(errors) == 1, context
    if result.returncode == 2:
        assert snapshot(directory) == before, context
    event(f"exit {result.returncode}")
