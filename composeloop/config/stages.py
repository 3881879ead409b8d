"""The configured apply wrappers: weight decay, lookahead and EMA around every phase's apply stage.

This module owns `wrap_apply`, the step adapter that turns ``optimizer.weight_decay`` (with
``optimizer.weight_decay_exclude``), ``train.lookahead`` and ``train.ema`` into apply
wrappers (`composeloop.step.decay`, `lookahead`, `ema`) around the apply stage of every
phase of any composition, built-in or a user's: decay innermost, then lookahead, then EMA
outermost, i.e. ``ema(lookahead(decoupled_weight_decay(apply)))``. So the average follows
the weights lookahead leaves, and lookahead's fast steps include the decay.

Accumulation and loss scaling (`composeloop.config.build.adapt_step`) act on other slots
(the transforms and the aggregation); they decide whether an update is applied at all, and
a wrapper runs only when it is. So with ``train.accumulate=k`` the decay, lookahead's count
and the EMA move once per k micro-batches, and a step whose update is withheld (a loss-scale
overflow, a non-finite gradient) moves none of them.

The exclusion patterns are matched here, against every phase's variables, so that a
pattern matching no variable of any phase is one warning naming its key, and patterns
excluding every variable are one error naming the key (nothing would be decayed). A
weight decay, lookahead or EMA that the phase's apply stage already has (the step builder
put it there, or its optimizer decays weights itself) is refused: never twice.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from composeloop.config.schema import OptimizerConfig, TrainConfig
from composeloop.errors import ConfigError


def _excluder(patterns: Sequence[str]) -> Callable[[Any], bool]:
    from composeloop.step.groups import variable_path

    def excluded(variable: Any) -> bool:
        path = variable_path(variable)
        return any(re.search(pattern, path) for pattern in patterns)

    excluded.__name__ = "optimizer.weight_decay_exclude"
    return excluded


def _check_exclusions(step: Any, patterns: Sequence[str]) -> dict[str, list[bool]]:
    """For each phase, which of its variables are excluded; warns about idle patterns (one
    line each) and refuses patterns that exclude every variable of every phase."""
    from composeloop.step.groups import MaskWarning, variable_path

    paths = {phase.name: [variable_path(v) for v in step.variables(phase)] for phase in step.phases}
    every = [path for phase_paths in paths.values() for path in phase_paths]
    for index, pattern in enumerate(patterns):
        if not any(re.search(pattern, path) for path in every):
            shown = ", ".join(every[:4]) + (", ..." if len(every) > 4 else "")
            warnings.warn(
                f"optimizer.weight_decay_exclude[{index}]: {pattern!r} matches no variable (of {len(every)}: {shown})",
                MaskWarning,
                stacklevel=3,
            )
    excluded = {name: [any(re.search(p, path) for p in patterns) for path in found] for name, found in paths.items()}
    if patterns and all(all(flags) for flags in excluded.values()):
        raise ConfigError(
            f"optimizer.weight_decay_exclude: {list(patterns)} matches every one of the {len(every)} variables; "
            "nothing would be decayed (unset optimizer.weight_decay instead)"
        )
    return excluded


def _refuse_twice(phase: Any, optimizer: OptimizerConfig, train: TrainConfig) -> None:
    from composeloop.step.decay import DecoupledWeightDecay
    from composeloop.step.ema import ExponentialMovingAverage
    from composeloop.step.lookahead import Lookahead
    from composeloop.step.wrapping import optimizer_of, unwrap

    stages = list(unwrap(phase.apply))
    wanted = [
        ("optimizer.weight_decay", optimizer.weight_decay, DecoupledWeightDecay, "decoupled_weight_decay"),
        ("train.lookahead", train.lookahead, Lookahead, "lookahead"),
        ("train.ema", train.ema, ExponentialMovingAverage, "ema"),
    ]
    for key, value, kind, name in wanted:
        if value and any(isinstance(stage, kind) for stage in stages):
            raise ConfigError(
                f"{key}: phase '{phase.name}' already has a {name} stage (its step builder put it there); "
                f"set it in one place, not both"
            )
    own = getattr(optimizer_of(phase.apply), "weight_decay", None)
    if optimizer.weight_decay and own:
        raise ConfigError(
            f"optimizer.weight_decay: phase '{phase.name}''s optimizer decays weights itself (weight_decay={own}); "
            "composeloop switches that off only in optimizers made from optimizer.*: make yours with "
            "weight_decay=None, or leave optimizer.weight_decay unset"
        )


def _wrapped(apply: Any, phase: Any, optimizer: OptimizerConfig, train: TrainConfig, excluded: list[bool]) -> Any:
    from composeloop import step as cs

    if optimizer.weight_decay and not all(excluded):
        try:
            apply = cs.decoupled_weight_decay(
                apply,
                optimizer.weight_decay,
                exclude=_excluder(optimizer.weight_decay_exclude) if any(excluded) else (),
            )
        except ValueError:
            raise ConfigError(
                f"optimizer.weight_decay: phase '{phase.name}' applies its update without a Keras optimizer, so "
                "there is no learning rate to scale the decay by; in your step builder use "
                "decoupled_weight_decay(apply, rate, learning_rate=...) instead"
            ) from None
    if train.lookahead:
        apply = cs.lookahead(apply, k=train.lookahead, alpha=train.lookahead_alpha)
    if train.ema:
        apply = cs.ema(apply, train.ema, warmup=train.ema_warmup)
    return apply


def wrap_apply(step: Any, optimizer: OptimizerConfig, train: TrainConfig) -> Any:
    """The step with the configured apply wrappers around every phase's apply stage.

    Weight decay (``optimizer.weight_decay``, sparing ``optimizer.weight_decay_exclude``)
    innermost, then lookahead (``train.lookahead``, ``train.lookahead_alpha``), then EMA
    (``train.ema``, ``train.ema_warmup``) outermost. Phases that share one apply stage
    share its wrapper. The step itself, untouched, when none is configured.

    Args:
      step: the composition's `Step` (models built: the exclusion patterns are matched now).
      optimizer: the optimizer section (weight decay and its exclusions).
      train: the train section (lookahead, EMA).

    Returns:
      A `Step` with the same models and phases, the phases' apply stages wrapped.

    Raises:
      ConfigError: naming the key: exclusions that spare every variable, a stage the
        phase already has (or an optimizer that decays weights itself), weight decay
        around an apply stage with no learning rate. An exclusion pattern matching no
        variable warns (`composeloop.step.groups.MaskWarning`, one line naming its key).

    Example:
      >>> step = adapt_step(wrap_apply(composition.step, config.optimizer, config.train), config.train)
    """
    from composeloop.step import compose

    if not (optimizer.weight_decay or train.lookahead or train.ema):
        return step
    for phase in step.phases:
        _refuse_twice(phase, optimizer, train)
    patterns = list(optimizer.weight_decay_exclude) if optimizer.weight_decay else []
    excluded = _check_exclusions(step, patterns)
    made: dict[int, Any] = {}  # one wrapper per apply stage, however many phases share it
    phases = []
    for phase in step.phases:
        if id(phase.apply) not in made:
            made[id(phase.apply)] = _wrapped(phase.apply, phase, optimizer, train, excluded[phase.name])
        phases.append(attrs.evolve(phase, apply=made[id(phase.apply)]))
    return compose(*phases, models=step.models)
