"""Users' own parts by import path: resolving `_target_`, reading part lists, calling targets.

This module owns the open half of the configuration. A section's ``_target_`` (Hydra's
spelling) names any importable object; `resolve` imports it and names the config key when
it cannot. Lists of parts (``gradient.transforms``, ``metrics``) hold built-in names,
``{name: {arg: value}}`` or ``{_target_: path, arg: value}``, read into `PartSpec`s. And
`call_with` calls a target with its configured arguments plus whatever it asks for by
parameter name (the data's shape, a fresh optimizer, ...), checking the call against the
target's signature first so that a wrong argument is one line naming the key, before any
training. Built-in parts by name are `composeloop.config.build`'s.

Nothing here imports TensorFlow by itself; resolving a target imports the target's module.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from composeloop.errors import ConfigError

# Built-in gradient transform factories of `composeloop.step`, usable by name in
# gradient.transforms, and metric factories usable by name in `metrics`. The group
# transforms take nested transform lists (`GroupSpec`).
GROUP_TRANSFORMS = ("masked", "partition")
BUILTIN_TRANSFORMS = (
    "skip_nonfinite",
    "clip_by_value",
    "clip_by_norm",
    "clip_by_global_norm",
    "scale",
    "identity",
    "add_decayed_weights",
    *GROUP_TRANSFORMS,
)
BUILTIN_METRICS = ("accuracy", "mean_loss", "mean_output")
SCHEDULE_NAMES = ("constant", "cosine", "cyclic")


@attrs.frozen
class PartSpec:
    """One configured part: a built-in `name` or an import `target`, with its arguments.

    Attributes:
      key: the config key it came from, for messages (``gradient.transforms[1]``).
      name: a built-in's name, or None.
      target: an import path, or None.
      args: keyword arguments for the factory or target.
    """

    key: str
    name: str | None = None
    target: str | None = None
    args: Mapping[str, Any] = attrs.field(factory=dict)


def resolve(path: str, key: str) -> Any:
    """The object at import path `path` (``package.module.attribute``).

    Raises:
      ConfigError: ``"<key>: cannot import 'path' (why)"``.

    Example:
      >>> resolve("keras.optimizers.AdamW", "optimizer._target_").__name__
      'AdamW'
    """
    parts = path.strip().split(".")
    last_error: str = "no module part"
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            found: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and not module_name.startswith(error.name):
                raise ConfigError(f"{key}: cannot import '{path}': importing {module_name} failed: {error}") from None
            last_error = str(error)
            continue
        except Exception as error:  # the user's module itself raised on import
            raise ConfigError(f"{key}: cannot import '{path}': {type(error).__name__}: {error}") from None
        for attribute in parts[split:]:
            if not hasattr(found, attribute):
                raise ConfigError(f"{key}: cannot import '{path}': {found.__name__} has no '{attribute}'")
            found = getattr(found, attribute)
        return found
    raise ConfigError(f"{key}: cannot import '{path}' ({last_error})")


def part_specs(entries: Sequence[Any], key: str, builtins: Sequence[str]) -> list[PartSpec]:
    """Reads a configured list of parts; each entry a name, ``{name: args}`` or ``{_target_: ...}``.

    Raises:
      ConfigError: naming ``key[i]`` for an unknown name or a malformed entry.

    Example:
      >>> entries = ["skip_nonfinite", {"clip_by_global_norm": {"max_norm": 1.0}}]
      >>> [spec.name for spec in part_specs(entries, "gradient.transforms", BUILTIN_TRANSFORMS)]
      ['skip_nonfinite', 'clip_by_global_norm']
    """
    if not isinstance(entries, list | tuple):
        raise ConfigError(f"{key}: must be a list of parts, got {entries!r}")
    specs = []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if isinstance(entry, Mapping) and "_target_" in entry:
            target = entry["_target_"]
            if not isinstance(target, str) or not target.strip():
                raise ConfigError(f"{where}._target_: must be an import path, got {target!r}")
            specs.append(PartSpec(where, target=target, args={k: v for k, v in entry.items() if k != "_target_"}))
            continue
        if isinstance(entry, Mapping) and len(entry) == 1:
            name, args = next(iter(entry.items()))
            args = {} if args is None else args
            if not isinstance(args, Mapping):
                raise ConfigError(
                    f"{where}.{name}: the arguments must be a mapping like {{max_norm: 1.0}}, got {args!r}"
                )
        elif isinstance(entry, str):
            name, args = entry, {}
        else:
            raise ConfigError(f"{where}: must be a name, {{name: {{arg: value}}}} or {{_target_: path}}, got {entry!r}")
        if name not in builtins:
            raise ConfigError(f"{where}: unknown '{name}'; built-in: {', '.join(builtins)} (or {{_target_: path}})")
        specs.append(PartSpec(where, name=name, args=dict(args)))
    return specs


@attrs.frozen
class GroupSpec:
    """One group of a configured `masked` or `partition`: which variables, and their transforms.

    Attributes:
      key: the config key of the group (``gradient.transforms[0].partition.groups[1]``).
      patterns: regular expressions searched in each variable's path (a `masked` group may
        have several: any may match; a `partition` group has one).
      transforms: the group's chain, read like ``gradient.transforms`` itself.
    """

    key: str
    patterns: tuple[str, ...]
    transforms: tuple[PartSpec, ...]


def _patterns(value: Any, key: str, several: bool) -> tuple[str, ...]:
    import re

    patterns = list(value) if several and isinstance(value, list | tuple) else [value]
    if not patterns:
        raise ConfigError(f"{key}: must name at least one pattern (a regular expression)")
    for index, pattern in enumerate(patterns):
        where = f"{key}[{index}]" if several and isinstance(value, list | tuple) else key
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{where}: must be a pattern (a regular expression) of variable paths, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(f"{where}: {pattern!r} is not a regular expression: {error}") from None
    return tuple(patterns)


def _arguments(spec: PartSpec, allowed: Sequence[str], required: Sequence[str]) -> None:
    where = f"{spec.key}.{spec.name}"
    for name in spec.args:
        if name not in allowed:
            raise ConfigError(f"{where}.{name}: not an argument of {spec.name} (it takes {', '.join(allowed)})")
    for name in required:
        if name not in spec.args:
            raise ConfigError(f"{where}: needs '{name}' ({spec.name}: {{{', '.join(allowed)}}})")


def group_specs(spec: PartSpec) -> tuple[list[GroupSpec], list[PartSpec] | None]:
    """Reads a configured `masked` or `partition` entry; returns its groups and its default chain.

    ``masked: {mask: PATTERN or [PATTERNS], transforms: [...]}`` has one group and no
    default; ``partition: {groups: [{pattern: P, transforms: [...]}, ...], default: [...]}``
    has one group per entry (at least one) and a default chain for the variables no
    pattern matches (omitted: None, every variable must match a group).

    Raises:
      ConfigError: naming the key of the first malformed part.

    Example:
      >>> entry = {"masked": {"mask": "kernel", "transforms": [{"clip_by_global_norm": {"max_norm": 1.0}}]}}
      >>> groups, _ = group_specs(part_specs([entry], "gradient.transforms", BUILTIN_TRANSFORMS)[0])
      >>> groups[0].patterns, groups[0].transforms[0].name
      (('kernel',), 'clip_by_global_norm')
    """
    where = f"{spec.key}.{spec.name}"

    def chain(value: Any, key: str) -> list[PartSpec]:
        specs = part_specs(value, key, BUILTIN_TRANSFORMS)
        for nested in specs:
            if nested.name in GROUP_TRANSFORMS:
                group_specs(nested)
        return specs

    if spec.name == "masked":
        _arguments(spec, ("mask", "transforms"), ("mask", "transforms"))
        group = GroupSpec(
            where,
            _patterns(spec.args["mask"], f"{where}.mask", several=True),
            tuple(chain(spec.args["transforms"], f"{where}.transforms")),
        )
        return [group], None
    _arguments(spec, ("groups", "default"), ("groups",))
    entries = spec.args["groups"]
    if not isinstance(entries, list | tuple) or not entries:
        raise ConfigError(
            f"{where}.groups: must be a non-empty list of {{pattern: P, transforms: [...]}}, got {entries!r}"
        )
    groups = []
    for index, entry in enumerate(entries):
        key = f"{where}.groups[{index}]"
        if not isinstance(entry, Mapping) or set(entry) != {"pattern", "transforms"}:
            raise ConfigError(f"{key}: must be {{pattern: P, transforms: [...]}}, got {entry!r}")
        patterns = _patterns(entry["pattern"], f"{key}.pattern", several=False)
        groups.append(GroupSpec(key, patterns, tuple(chain(entry["transforms"], f"{key}.transforms"))))
    default = spec.args.get("default")
    return groups, None if default is None else chain(default, f"{where}.default")


def transform_specs(entries: Sequence[Any], key: str) -> list[PartSpec]:
    """`part_specs` for a transform list, the nested lists of its `masked` and `partition`
    entries checked too; returns every spec, nested ones included (to resolve their targets)."""
    return _flatten(part_specs(entries, key, BUILTIN_TRANSFORMS))


def _flatten(specs: Sequence[PartSpec]) -> list[PartSpec]:
    found = []
    for spec in specs:
        found.append(spec)
        if spec.name in GROUP_TRANSFORMS:
            groups, default = group_specs(spec)
            for group in groups:
                found += _flatten(group.transforms)
            found += _flatten(default or [])
    return found


def check_schedule(schedule: Any) -> Any:
    """The `Schedule` member for a schedule name; None for a ``{_target_: ...}`` schedule.

    Raises:
      ConfigError: naming optimizer.schedule.
    """
    from composeloop.config.schema import Schedule

    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str) and schedule in SCHEDULE_NAMES:
        return Schedule[schedule]
    if isinstance(schedule, Mapping) and isinstance(schedule.get("_target_"), str):
        return None
    raise ConfigError(
        f"optimizer.schedule: must be one of {', '.join(SCHEDULE_NAMES)} or {{_target_: path, ...}}, got {schedule!r}"
    )


def check_declared(config: Any) -> None:
    """Checks every configured part that can be checked without building it: the lists'
    shapes and names, and that every ``_target_`` imports.

    Raises:
      ConfigError: naming the first key at fault.
    """
    transform_specs(config.gradient.transforms, "gradient.transforms")
    part_specs(config.metrics, "metrics", BUILTIN_METRICS)
    for section in ("data", "model", "optimizer", "step"):
        target = getattr(config, section)._target_
        if target:
            resolve(target, f"{section}._target_")
        _resolve_nested(getattr(config, section).args, section)
    for spec in [
        *transform_specs(config.gradient.transforms, "gradient.transforms"),
        *part_specs(config.metrics, "metrics", BUILTIN_METRICS),
    ]:
        if spec.target:
            resolve(spec.target, f"{spec.key}._target_")
    if isinstance(config.optimizer.schedule, Mapping):
        resolve(config.optimizer.schedule["_target_"], "optimizer.schedule._target_")


def _resolve_nested(value: Any, key: str) -> None:
    """Imports every ``_target_`` nested in a section's arguments (so a typo fails in the preflight)."""
    if isinstance(value, Mapping):
        if isinstance(value.get("_target_"), str):
            resolve(value["_target_"], f"{key}._target_")
        for name, item in value.items():
            _resolve_nested(item, f"{key}.{name}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _resolve_nested(item, f"{key}[{index}]")


def parameters(target: Callable) -> Mapping[str, inspect.Parameter] | None:
    """The parameters a target is called with (a class's `__init__`'s), or None if unknown."""
    try:
        return inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None


def required_positional(target: Callable) -> int | None:
    """How many positional parameters `target` requires (None when its signature is unknown)."""
    params = parameters(target)
    if params is None:
        return None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional and p.default is inspect.Parameter.empty for p in params.values())


def accepts(target: Callable, name: str) -> bool:
    """Whether `target` takes a keyword argument `name` (or any, through ``**kwargs``)."""
    params = parameters(target)
    if params is None:
        return False
    if name in params and params[name].kind is not inspect.Parameter.POSITIONAL_ONLY:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def declares(target: Callable, name: str) -> bool:
    """Whether `target` names a parameter `name` itself (not through ``**kwargs``)."""
    params = parameters(target)
    return params is not None and name in params and params[name].kind is not inspect.Parameter.POSITIONAL_ONLY


def call_with(target: Callable, key: str, args: Mapping[str, Any], offered: Mapping[str, Any] = {}) -> Any:  # noqa: B006
    """Calls `target` with its configured `args` plus each `offered` value it declares.

    Offered values are what composeloop can give a part by parameter name (a model's
    ``input_shape``, a step builder's ``model`` ...); a configured argument of the same name
    wins. An offered value may be a zero-argument function, called only when the target
    declares it (so that, say, a model is built only for a builder that wants one).

    Raises:
      ConfigError: ``"<key>: <target> does not take ..."`` or ``"... needs ..."`` before the call,
        and ``"<key>: <target> failed: ..."`` when the target itself raises TypeError/ValueError.
    """
    name = getattr(target, "__qualname__", None) or repr(target)
    params = parameters(target)
    prefix = key.removesuffix("._target_")
    kwargs = {arg: instantiated(value, f"{prefix}.{arg}") for arg, value in args.items()}
    if params is not None:
        unknown = [arg for arg in kwargs if not accepts(target, arg)]
        if unknown:
            known = ", ".join(p for p in params if params[p].kind not in (inspect.Parameter.VAR_POSITIONAL,))
            raise ConfigError(f"{key}: {name} does not take '{unknown[0]}' (it takes: {known or 'nothing'})")
    for offer, value in offered.items():
        if offer not in kwargs and declares(target, offer):
            kwargs[offer] = value() if isinstance(value, Deferred) else value
    if params is not None:
        try:
            inspect.signature(target).bind(**kwargs)
        except TypeError as error:
            missing = [
                p.name
                for p in params.values()
                if p.default is inspect.Parameter.empty
                and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                and p.name not in kwargs
            ]
            argument = missing[0] if missing else "ARG"
            what = f"needs '{argument}'" if missing else str(error)
            raise ConfigError(
                f"{key}: {name} {what}: give it in the config (++{key.removesuffix('._target_')}.{argument}=...) "
                f"or name one of what composeloop offers ({', '.join(offered) or 'nothing'})"
            ) from None
    try:
        return target(**kwargs)
    except (TypeError, ValueError) as error:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        # A target that takes **kwargs checks them itself: name the argument it refused.
        refused = next((arg for arg in args if f"'{arg}'" in first), None)
        where = f"{key.removesuffix('._target_')}.{refused}" if refused else key
        raise ConfigError(f"{where}: {name} failed: {first}") from None


def instantiated(value: Any, key: str) -> Any:
    """`value` with every nested ``{_target_: ...}`` made into its object (Hydra's
    `instantiate`, recursively), so an argument can itself be a part of yours.

    Raises:
      ConfigError: naming `key` when a nested target cannot be imported or called.
    """
    if isinstance(value, Mapping) and "_target_" in value:
        target = resolve(str(value["_target_"]), f"{key}._target_")
        args = {k: v for k, v in value.items() if k != "_target_"}
        return call_with(target, f"{key}._target_", args)
    if isinstance(value, Mapping):
        return {k: instantiated(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [instantiated(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


@attrs.frozen
class Deferred:
    """An offered value made only when a target asks for it (see `call_with`)."""

    make: Callable[[], Any]

    def __call__(self) -> Any:
        return self.make()
