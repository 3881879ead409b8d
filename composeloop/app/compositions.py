"""Compositions: what an experiment is, and how a step builder gets the parts it asks for.

This module owns the contract between the application and a step builder, the built-in
ones (the classifier recipe, the GAN) and a user's own alike. ``step._target_`` names a
function; the application calls it with the section's extra keys and, by parameter name,
whatever else it declares from `OFFERED`: the configured ``model``, a fresh ``optimizer``
and ``transform`` (or the ``make_optimizer``/``make_transform`` factories, one per variable
group), the configured ``metrics``, the ``data``, the ``seed``, the ``batch_size``, the whole
``config`` or any of its sections by name (``gan``, ``train``, ...). The builder returns a
`Step` (from `composeloop.step.compose`) or a `Composition`: the step plus the services
only it knows (its own data pipeline, handlers such as sample grids, the outputs it
writes at the end, its main metric). A key the user set for a part the builder never
asks for is refused in one line: nothing is silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from composeloop.config import build
from composeloop.config.parts import Deferred, call_with, declares, resolve
from composeloop.errors import ConfigError

# What a builder may ask for by parameter name -> the config keys that configure it.
OFFERED = {
    "model": ("model",),
    "optimizer": ("optimizer",),
    "make_optimizer": ("optimizer",),
    "transform": ("gradient",),
    "make_transform": ("gradient",),
    "metrics": ("metrics",),
    "data": (),
    "seed": (),
    "batch_size": (),
    "config": (),
}


@attrs.frozen
class Composition:
    """A step and the services that come with it; what a step builder may return.

    Attributes:
      step: the composed `Step`.
      train_data: epoch -> that epoch's batches; None: the configured data's arrays,
        shuffled by (seed, epoch), in batches of ``data.batch_size``.
      validation_data: () -> validation batches; None: the configured data's validation
        arrays (no validation when `validate` is False).
      validate: whether epochs end with a validation pass.
      handlers: loop event handlers of the composition's own, or a function of the run's
        outputs directory giving them (e.g. a sample grid per epoch).
      log_names: renames of log keys in files and on the console (``train_d_loss`` -> ``d_loss``).
      images: state -> images for TensorBoard, or None.
      finish: ``(state, outputs directory) -> dict`` run after training: writes the
        composition's own outputs and returns what it adds to summary.json.
      main_metric: the metric sweeps and search judge the run by (None: the usual rule).

    Example:
      >>> def build_step(model, optimizer, transform):
      ...     return Composition(classifier_step(model, optimizer, transform=transform), main_metric="val_accuracy")
    """

    step: Any
    train_data: Callable[[int], Any] | None = None
    validation_data: Callable[[], Any] | None = None
    validate: bool = True
    handlers: Sequence[Any] | Callable[[Path], Sequence[Any]] = ()
    log_names: Mapping[str, str] = attrs.field(factory=dict)
    images: Callable[[Any], Any] | None = None
    finish: Callable[[Any, Path], Mapping[str, Any]] | None = None
    main_metric: str | None = None


@attrs.frozen
class Parts:
    """Objects that replace configured parts when a run is started from Python.

    Every field is optional; one that is set wins over its config section (the object is
    used as it is, so build it in the strategy's scope when a strategy is configured).

    Attributes:
      data: `ArrayData`, `Datasets` or anything `composeloop.parts.data.as_data` accepts.
      model: a built Keras model.
      make_optimizer: ``(learning_rate=None) -> optimizer``, called once per variable group.
      make_transform: ``() -> gradient transform``, called once per phase.
      metrics: extra metrics.
      step: a step builder (called as a ``step._target_`` would be).
    """

    data: Any = None
    model: Any = None
    make_optimizer: Callable[..., Any] | None = None
    make_transform: Callable[[], Any] | None = None
    metrics: Sequence[Any] | None = None
    step: Callable[..., Any] | None = None


# Keys the application itself wires into every phase of any step (composeloop.config.stages),
# so they are used whatever the builder asks for.
WIRED_BY_THE_APP = ("optimizer.weight_decay", "optimizer.weight_decay_exclude")


def _section_overridden(section: str, overrides: Sequence[str]) -> str | None:
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in WIRED_BY_THE_APP:
            continue
        if key == section or key.startswith(f"{section}."):
            return key
    return None


def check_used(builder: Callable, name: str, overrides: Sequence[str]) -> None:
    """Refuses an override of a part `builder` never asks for (one line naming the key)."""
    if declares(builder, "config"):
        return  # it reads whatever it wants from the whole config
    for section in dict.fromkeys(s for sections in OFFERED.values() for s in sections):
        key = _section_overridden(section, overrides)
        offers = [offer for offer, sections in OFFERED.items() if section in sections]
        if key and not declares(builder, section) and not any(declares(builder, offer) for offer in offers):
            raise ConfigError(
                f"{key}: the step builder {name} does not use {section} (it asks for none of "
                f"{', '.join(offers)}); remove the override"
            )


def build_composition(config: Any, data: Any, *, overrides: Sequence[str] = (), given: Parts = Parts()) -> Composition:  # noqa: B008
    """Calls the configured step builder with what it asks for; returns its `Composition`.

    Call it inside the run's strategy scope: models and optimizers are made here.

    Args:
      config: the validated `Config`.
      data: the loaded data (`ArrayData` or `Datasets`).
      overrides: the command line's overrides, to refuse keys the builder would ignore.
      given: objects that replace configured parts (from Python).

    Raises:
      ConfigError: naming the key of a part that is missing, of the wrong kind, or unused.
    """
    from composeloop.step.compose import Step

    key = "step._target_"
    builder = given.step or resolve(config.step._target_, key)
    name = getattr(builder, "__qualname__", config.step._target_)
    check_used(builder, name, overrides)
    updates = build.total_updates(_train_examples(data), config.data.batch_size, config.train)
    make_optimizer = given.make_optimizer or build.optimizer_factory(config.optimizer, updates)
    make_transform = given.make_transform or build.transform_factory(config.gradient)
    metrics = tuple(given.metrics) if given.metrics is not None else build.build_metrics(config.metrics)
    offered = {
        "model": Deferred(lambda: given.model or build.build_model(config.model, data)),
        "optimizer": Deferred(make_optimizer),
        "make_optimizer": make_optimizer,
        "transform": Deferred(make_transform),
        "make_transform": make_transform,
        "metrics": metrics,
        "data": data,
        "seed": config.seed,
        "batch_size": config.data.batch_size,
        "config": config,
        **{
            field.name: getattr(config, field.name) for field in attrs.fields(type(config)) if field.name not in OFFERED
        },
    }
    result = call_with(builder, key, config.step.args, offered)
    composition = result if isinstance(result, Composition) else Composition(result)
    if not isinstance(composition.step, Step):
        raise ConfigError(
            f"{key}: {name} gave {type(composition.step).__name__}, not a Step (composeloop.step.compose(...)) "
            "or a composeloop.app.Composition"
        )
    return composition


def _train_examples(data: Any) -> int:
    x_train = getattr(data, "x_train", None)
    return len(x_train) if x_train is not None else 1
