"""A search space from Hydra's sweep syntax, checked against the config schema without expanding it.

This module owns the meaning of ``interval(...)``, ``tag(log, interval(...))``,
``choice(...)``, ``a,b,c`` and ``range(...)`` for a search: each swept key becomes one
`Dimension` (a float or int interval, possibly log-scaled, or a list of choices), typed by
the key's field in the attrs schema (``model.width=interval(8,64)`` is an int dimension
because ``ModelConfig.width`` is an int, whatever the literals look like). Every bound and
choice is checked against the field's type and validator before any trial runs, and each
problem is ONE `ConfigError` line naming the key. It does not sample (Optuna does, see
`composeloop.app.search`) and imports neither Optuna nor TensorFlow.
"""

from __future__ import annotations

import enum
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, OverrideType, RangeSweep, ValueType

from composeloop.config.schema import TARGET_SECTIONS, Config
from composeloop.errors import ConfigError

KNOWN_TAGS = frozenset({"log"})
KNOWN = "known: interval, tag(log, interval), choice, range"
Primitive = None | bool | int | float | str


@attrs.frozen
class Dimension:
    """One searched key: ``kind`` "float", "int" or "choice"; bounds inclusive; choices in order.

    ``texts`` holds each choice as an override writes it (``null``, ``[8,8]``, ``a\\ b``);
    ``choices`` the values Optuna stores (the text itself for a list or dict).
    """

    key: str  # the override's key as written, with its + prefix or @package
    name: str  # the config key, as Optuna names the parameter
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Primitive, ...] = ()
    texts: tuple[str, ...] = ()

    def override(self, value: Any) -> str:
        """The override that sets this key to `value`, a value Optuna sampled.

        Example:
          >>> Dimension("optimizer.learning_rate", "optimizer.learning_rate", "float", 1e-4, 3e-2).override(0.001)
          'optimizer.learning_rate=0.001'
        """
        if self.kind == "choice":
            return f"{self.key}={self.texts[_index(self.choices, value)]}"
        return f"{self.key}={int(value) if self.kind == 'int' else float(value)!r}"

    def example(self) -> str:
        """One valid override of this key (its low bound or first choice), for a preflight composition."""
        return self.override(self.choices[0] if self.kind == "choice" else self.low)


@attrs.frozen
class SearchSpace:
    """The searched dimensions and the fixed overrides every trial gets (as written)."""

    dimensions: tuple[Dimension, ...]
    fixed: tuple[str, ...]

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's overrides: the fixed ones, then each dimension set to its sampled value."""
        return [*self.fixed, *(d.override(params[d.name]) for d in self.dimensions)]

    def examples(self) -> list[str]:
        """Overrides of one valid job of the search: the preflight composes and validates it."""
        return [*self.fixed, *(d.example() for d in self.dimensions)]


def _index(choices: Sequence[Primitive], value: Any) -> int:
    # 1 == 1.0 == True in Python: match the type too, so choice(1, true) keeps both apart.
    for index, choice in enumerate(choices):
        if type(choice) is type(value) and choice == value:
            return index
    raise ValueError(f"{value!r} is not one of the choices {list(choices)}")


# ---------------------------------------------------------------------------- the schema side


@attrs.frozen
class _Field:
    """A schema field a key names: its type (hints resolved) and its validator, if any."""

    type: Any
    attribute: attrs.Attribute | None


def schema_field(key: str, schema: type = Config) -> _Field | None:
    """The field of the attrs `schema` that the dotted `key` names; None when there is none.

    Example:
      >>> schema_field("optimizer.learning_rate").type
      <class 'float'>
    """
    cls: Any = schema
    found: _Field | None = None
    for depth, part in enumerate(key.split(".")):
        if not (isinstance(cls, type) and attrs.has(cls)):
            return None
        hints = typing.get_type_hints(cls)
        attribute = getattr(attrs.fields(cls), part, None)
        if attribute is None:
            return None
        found = _Field(hints[part], attribute)
        cls = hints[part]
        if depth == 0 and schema is Config and part in TARGET_SECTIONS:
            cls = TARGET_SECTIONS[part]  # an open section: a dict to Hydra, this record once validated
    return found


def _optional(hint: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``; anything else -> ``(hint, False)``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [arg for arg in args if arg is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def _coerce(value: Any, hint: Any) -> Any:
    """`value` as the schema type `hint` holds it; raises TypeError naming the expected type."""
    inner, optional = _optional(hint)
    if value is None:
        if optional:
            return None
        raise TypeError("null is not allowed")
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif inner is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif inner is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        by_name = {member.name: member for member in inner}
        by_value = {str(member.value): member for member in inner}
        if isinstance(value, str) and (value in by_name or value in by_value):
            return by_name.get(value) or by_value[value]
        raise TypeError(f"expected one of {', '.join(by_name)}")
    elif typing.get_origin(inner) in (list, typing.List):  # noqa: UP006
        (element,) = typing.get_args(inner) or (Any,)
        if isinstance(value, list):
            return [value if element is Any else _coerce(item, element) for item in value]
    else:
        return value  # a type this check does not know: the composition will tell
    raise TypeError(f"expected {_type_name(inner)}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint)).lower()


def _check_value(key: str, field: _Field | None, value: Any, what: str) -> Any:
    """`value` coerced to the field's type and passed through its validator, else a ConfigError."""
    if field is None:
        return value
    try:
        value = _coerce(value, field.type)
        if field.attribute is not None and field.attribute.validator is not None:
            field.attribute.validator(None, field.attribute, value)
    except (TypeError, ValueError) as error:
        reason = getattr(error, "reason", None) or str(error)
        raise ConfigError(f"{key}: {what} {_show(value)}: {reason}") from None
    return value


def _show(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return value.name
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


# ---------------------------------------------------------------------------- the overrides side


def _dimension(override: Override, schema: type, group_options: Callable[[str], Sequence[str]] | None) -> Dimension:
    key = override.get_key_element()
    name = override.key_or_group + (f"@{override.package}" if override.package else "")
    value = override.value()
    unknown = sorted(set(getattr(value, "tags", ()) or ()) - KNOWN_TAGS)
    if override.type is OverrideType.DEL:
        raise ConfigError(f"{key}: a deletion cannot be searched; search a value instead")
    if unknown:
        raise ConfigError(f"{key}: unknown tag '{unknown[0]}' (known: {', '.join(sorted(KNOWN_TAGS))})")
    options = list(group_options(override.key_or_group)) if group_options else []
    field = None if options else schema_field(override.key_or_group, schema)
    if isinstance(value, IntervalSweep):
        return _interval(key, name, field, value)
    if isinstance(value, RangeSweep) and not value.shuffle:
        return _range(key, name, field, value, override)
    if isinstance(value, ChoiceSweep | RangeSweep):
        return _choice(key, name, field, override, options)
    kind = "glob(...)" if override.value_type is ValueType.GLOB_CHOICE_SWEEP else str(override.value_type)
    raise ConfigError(f"{key}: unknown distribution {kind} ({KNOWN})")


def _interval(key: str, name: str, field: _Field | None, sweep: IntervalSweep) -> Dimension:
    log = "log" in sweep.tags
    text = f"{'tag(log, ' if log else ''}interval({sweep.start}, {sweep.end}){')' if log else ''}"
    if sweep.start is None or sweep.end is None or not (math.isfinite(sweep.start) and math.isfinite(sweep.end)):
        raise ConfigError(f"{key}: {text} needs two finite bounds")
    if sweep.start >= sweep.end:
        what = "is empty" if sweep.start == sweep.end else "is reversed"
        raise ConfigError(f"{key}: {text} {what}: the lower bound must be below the upper bound")
    if log and sweep.start <= 0:
        raise ConfigError(f"{key}: {text}: a log interval needs a lower bound > 0")
    inner = _optional(field.type)[0] if field else float
    if inner not in (int, float):
        raise ConfigError(f"{key}: {text}: an interval needs a number, and {key} is a {_type_name(inner)}")
    low = _check_value(key, field, sweep.start, "lower bound")
    high = _check_value(key, field, sweep.end, "upper bound")
    return Dimension(key, name, "int" if inner is int else "float", low, high, log)


def _range(key: str, name: str, field: _Field | None, sweep: RangeSweep, override: Override) -> Dimension:
    values = list(override.sweep_iterator())
    text = f"range({sweep.start}, {sweep.stop}, {sweep.step})"
    if not values:
        raise ConfigError(f"{key}: {text} is empty")
    inner = _optional(field.type)[0] if field else (int if all(isinstance(v, int) for v in values) else float)
    if inner not in (int, float):
        raise ConfigError(f"{key}: {text}: a range needs a number, and {key} is a {_type_name(inner)}")
    low = _check_value(key, field, values[0], "range start")
    high = _check_value(key, field, values[-1], "range end")
    if len(values) == 1:
        return Dimension(key, name, "choice", choices=(low,), texts=(str(low),))
    step = _check_value(key, field, sweep.step, "range step") if inner is int else float(sweep.step)
    return Dimension(key, name, "int" if inner is int else "float", low, high, step=step)


def _choice(key: str, name: str, field: _Field | None, override: Override, options: Sequence[str]) -> Dimension:
    values = list(override.sweep_iterator())
    texts = list(override.sweep_string_iterator())
    if not values:
        raise ConfigError(f"{key}: the choice is empty")
    if len({text for text in texts}) < len(texts):
        raise ConfigError(f"{key}: the choice lists a value twice")
    for value in values:
        if options and value not in options:
            raise ConfigError(f"{key}: choice {_show(value)}: no such option (available: {', '.join(options)})")
        _check_value(key, field, value, "choice")
    # Optuna stores None, bool, int, float and str; a list or dict is stored as its override text.
    stored = tuple(v if isinstance(v, Primitive) else t for v, t in zip(values, texts, strict=True))
    return Dimension(key, name, "choice", choices=stored, texts=tuple(texts))


def parse(lines: Sequence[str]) -> list[Override]:
    """Hydra's parse of override `lines`, with an unknown sweep function named as a distribution.

    Raises:
      ConfigError: ``"<key>: unknown distribution normal(...) (known: ...)"`` for a
        function Hydra does not know; Hydra's own one-line error for any other mistake.

    Example:
      >>> parse(["optimizer.learning_rate=normal(0,1)"])
      Traceback (most recent call last):
      ConfigError: optimizer.learning_rate: unknown distribution normal(...) (known: interval, ...)
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for line in lines:
        try:
            parsed.append(parser.parse_override(line))
        except HydraException as error:
            unknown = re.search(r"Unknown function '([^']+)'", str(error))
            if unknown is None:
                raise
            raise ConfigError(
                f"{line.split('=', 1)[0]}: unknown distribution {unknown.group(1)}(...) ({KNOWN})"
            ) from None
    return parsed


def search_space(
    overrides: Sequence[Override],
    schema: type = Config,
    group_options: Callable[[str], Sequence[str]] | None = None,
) -> SearchSpace:
    """The dimensions of a search, each bound and choice checked against `schema`.

    Args:
      overrides: parsed ``hydra.sweeper.params`` then the command line's overrides
        (`hydra.core.override_parser.overrides_parser.OverridesParser.parse_overrides`);
        a later sweep of a key replaces an earlier one, as with the basic sweeper.
      schema: the attrs root schema the keys belong to.
      group_options: config group name -> its options (empty for a key that is not a
        group), e.g. Hydra's ``config_loader.get_group_options``; None skips group checks.

    Returns:
      The `SearchSpace`: one `Dimension` per swept key, and the fixed overrides.

    Raises:
      ConfigError: one line naming the key: an unknown distribution or tag, an empty or
        reversed interval, a value of the wrong type or one the key's validator refuses.

    Example:
      >>> parsed = OverridesParser.create().parse_overrides(["optimizer.learning_rate=interval(-1,0.1)"])
      >>> search_space(parsed)
      Traceback (most recent call last):
      ConfigError: optimizer.learning_rate: lower bound -1.0: must be > 0, got -1.0
    """
    swept: dict[str, Dimension] = {}
    fixed: dict[str, str] = {}
    for override in overrides:
        name = override.get_key_element().lstrip("+~")
        if override.is_sweep_override() and not override.is_hydra_override():  # hydra.*: Hydra's settings
            fixed.pop(name, None)
            swept[name] = _dimension(override, schema, group_options)
        else:
            swept.pop(name, None)
            fixed[name] = override.input_line or f"{override.get_key_element()}={override.get_value_element_as_str()}"
    return SearchSpace(tuple(swept.values()), tuple(fixed.values()))


def check_search_space(
    overrides: Sequence[Override],
    n_trials: int,
    schema: type = Config,
    group_options: Callable[[str], Sequence[str]] | None = None,
) -> SearchSpace:
    """The preflight of a search: `search_space` plus the trial budget, without running anything.

    Raises:
      ConfigError: as `search_space`, or ``hydra.sweeper.n_trials`` below 1.

    Example:
      >>> check_search_space(parsed, n_trials=12).examples()  # compose and validate this one job
      ['optimizer.learning_rate=0.0001']
    """
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials: must be >= 1, got {n_trials!r}")
    return search_space(overrides, schema, group_options)
