"""Per-variable-group transforms: `masked` and `partition`, and the masks that pick the groups.

This module owns how a stage picks variables: a mask is a regular-expression pattern (or a
list of them) searched in each variable's Keras 3 ``path`` (``"mlp/dense_1/bias"``; a plain
`tf.Variable`'s ``name`` otherwise), or a predicate ``variable -> bool``. A mask is resolved
against the phase's variable list in Python, when the stage is built and again while
tracing: the choice is static, so it costs nothing in the graph. A pattern that matches no
variable is almost always a typo, so it warns, naming the pattern. Keras numbers default
layer names per process (``dense_3``): name the layers a pattern must find, e.g.
``Dense(10, name="head")``. The module also owns the two group combinators; weight decay
(`composeloop.step.decay`) uses the same masks.

A transform inside a group sees only that group's gradients and variables: a global-norm
clip inside a group bounds that group's norm, not the phase's. The update of the phase is
applied only if every group lets it through (`Gradients.apply` is the AND of the groups').
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tensorflow as tf

from composeloop.step.gradients import Transform
from composeloop.step.records import Context, Gradients
from composeloop.step.stateful import build_stage

Mask = str | Sequence[str] | Callable[[Any], bool]


class MaskWarning(UserWarning):
    """A mask pattern (or predicate) picks none of a phase's variables: most likely a typo."""


def variable_path(variable: Any) -> str:
    """What a mask pattern is searched in: Keras 3's ``variable.path``, else ``variable.name``."""
    return getattr(variable, "path", None) or variable.name


class Selector:
    """A resolved mask: which of a variable list it picks, with a warning per idle pattern."""

    def __init__(self, mask: Mask, stage: str, argument: str) -> None:
        self.stage, self.argument = stage, argument
        if callable(mask) and not isinstance(mask, str):
            self.patterns: tuple[str, ...] = ()
            self.predicate: Callable[[Any], bool] | None = mask
        else:
            patterns = (mask,) if isinstance(mask, str) else tuple(mask)
            for pattern in patterns:
                if not isinstance(pattern, str):
                    raise TypeError(f"{stage}: {argument} patterns must be strings, got {type(pattern).__name__}")
                try:
                    re.compile(pattern)
                except re.error as error:
                    message = f"{stage}: {argument} pattern {pattern!r} is not a regular expression: {error}"
                    raise ValueError(message) from None
            self.patterns, self.predicate = patterns, None
        self._resolved: tuple[list[Any], list[bool]] | None = None

    def __bool__(self) -> bool:
        return bool(self.patterns) or self.predicate is not None

    def describe(self) -> str:
        if self.predicate is not None:
            return getattr(self.predicate, "__name__", "predicate")
        return repr(self.patterns[0]) if len(self.patterns) == 1 else repr(list(self.patterns))

    def picks(self, variables: Sequence[Any]) -> list[bool]:
        """For each variable, whether the mask picks it; warns once per pattern that picks none."""
        if self._resolved is not None and [id(v) for v in self._resolved[0]] == [id(v) for v in variables]:
            return self._resolved[1]
        if not variables:
            raise ValueError(f"{self.stage}: {self.argument} needs the phase's variables to match, got none")
        paths = [variable_path(v) for v in variables]
        if self.predicate is not None:
            chosen = [bool(self.predicate(v)) for v in variables]
            idle = [] if any(chosen) else [self.describe()]
        else:
            hits = {p: [re.search(p, path) is not None for path in paths] for p in self.patterns}
            chosen = [any(hits[p][i] for p in self.patterns) for i in range(len(variables))]
            idle = [repr(p) for p in self.patterns if not any(hits[p])]
        for pattern in idle:
            warnings.warn(
                f"{self.stage}: {self.argument} pattern {pattern} matches no variable of "
                f"{len(paths)} ({', '.join(paths[:4])}{', ...' if len(paths) > 4 else ''})",
                MaskWarning,
                stacklevel=4,
            )
        self._resolved = (list(variables), chosen)
        return chosen


def _subset(items: Sequence[Any], indices: Sequence[int]) -> list[Any]:
    return [items[i] for i in indices]


class _Groups:
    """Routes each variable to one group's transform (or past all of them); see `partition`."""

    def __init__(
        self, groups: Sequence[tuple[Selector, Transform]], default: Transform | None, stage: str, every: bool
    ) -> None:
        for selector, transform in groups:
            if not callable(transform):
                raise TypeError(f"{stage}: the transform for {selector.describe()} must be callable")
        if default is not None and not callable(default):
            raise TypeError(f"{stage}: default must be a transform (a callable), got {type(default).__name__}")
        self.groups, self.default, self.stage = list(groups), default, stage
        # every=True: a variable no group picks is an error unless there is a default.
        self.every = every

    def route(self, variables: Sequence[Any]) -> list[list[int]]:
        """The variable indices of each group, then of the default (or pass-through) rest."""
        picks = [selector.picks(variables) for selector, _ in self.groups]
        members: list[list[int]] = [[] for _ in range(len(self.groups) + 1)]
        for i, variable in enumerate(variables):
            claims = [g for g, chosen in enumerate(picks) if chosen[i]]
            if len(claims) > 1:
                owners = " and ".join(self.groups[g][0].describe() for g in claims)
                raise ValueError(
                    f"{self.stage}: variable '{variable_path(variable)}' matches more than one group ({owners}); "
                    "make the patterns exclusive"
                )
            if not claims and self.every and self.default is None:
                raise ValueError(
                    f"{self.stage}: variable '{variable_path(variable)}' matches no group "
                    f"({', '.join(s.describe() for s, _ in self.groups)}) and there is no default; "
                    "add a pattern or give default="
                )
            members[claims[0] if claims else -1].append(i)
        return members

    def build(self, variables: Sequence[tf.Variable]) -> None:
        members = self.route(variables)
        for (_, transform), indices in zip(self.groups, members, strict=False):
            build_stage(transform, _subset(variables, indices))
        if self.default is not None:
            build_stage(self.default, _subset(variables, members[-1]))

    def __call__(self, grads: Gradients, variables: Sequence[tf.Variable], context: Context) -> Gradients:
        members = self.route(variables)
        values, applied = list(grads.values), grads.apply
        transforms = [transform for _, transform in self.groups] + [self.default]
        for transform, indices in zip(transforms, members, strict=True):
            if transform is None or not indices:
                continue
            part = transform(Gradients(_subset(values, indices), grads.apply), _subset(variables, indices), context)
            for index, value in zip(indices, part.values, strict=True):
                values[index] = value
            applied = _both(applied, part.apply)
        return Gradients(values, applied)


def _both(first: tf.Tensor | bool, second: tf.Tensor | bool) -> tf.Tensor | bool:
    if first is True:
        return second
    if second is True:
        return first
    return tf.logical_and(first, second)


def masked(transform: Transform, mask: Mask, *, name: str = "masked") -> Transform:
    """Runs `transform` on the variables `mask` picks; the others' gradients pass unchanged.

    The transform sees only the picked gradients and variables: a global-norm clip inside
    bounds the norm of the picked group alone. If it withholds the update (e.g.
    `skip_nonfinite`), the whole phase's update is withheld.

    Args:
      transform: any gradient transform or chain; a stateful one (an accumulator) is built
        on the picked variables only.
      mask: a pattern searched in each variable's path, a list of patterns (any may match),
        or a predicate ``variable -> bool``. A pattern matching no variable warns.
      name: what its messages call the stage (e.g. the config key that made it).

    Returns:
      A gradient transform.

    Example:
      >>> transform = masked(clip_by_global_norm(1.0), ["kernel"])  # biases are not clipped
    """
    return _Groups([(Selector(mask, name, "mask"), transform)], None, name, every=False)


def partition(
    groups: Mapping[str, Transform], default: Transform | None = None, *, name: str = "partition"
) -> Transform:
    """Runs a different transform on each group of variables, picked by path pattern (optax's ``multi_transform``).

    Every variable must be matched by exactly one pattern, or by none when a `default`
    transform takes the rest (``default=identity()`` lets them pass unchanged). Each group's
    transform sees only its own gradients and variables: a global-norm clip in a group
    bounds that group's norm, not the phase's (put the clip after the partition to bound
    the whole update). The phase's update is applied only if every group lets it through.

    Args:
      groups: pattern -> transform, e.g. ``{"embedding": identity(), "dense": clip_by_global_norm(1.0)}``;
        patterns are regular expressions searched in each variable's path.
      default: the transform for the variables no pattern matches; None makes such a
        variable an error.
      name: what its messages call the stage (e.g. the config key that made it).

    Returns:
      A gradient transform.

    Raises:
      ValueError: for an empty `groups` or a bad pattern (here), and when the phase's
        variables are first seen (at build): a variable in two groups, or in none without
        a default. A pattern matching no variable warns.

    Example:
      >>> transform = partition({"backbone": scale(0.1), "head": clip_by_global_norm(1.0)})
    """
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError(f"{name}: groups must be a non-empty dict of pattern -> transform")
    selectors = [(Selector(pattern, name, "groups"), transform) for pattern, transform in groups.items()]
    return _Groups(selectors, default, name, every=True)
