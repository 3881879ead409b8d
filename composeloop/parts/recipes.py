"""Recipes: the phases of common training steps, built from the step algebra's stages.

A recipe is only a convenience that picks stages; everything it returns can be written by
hand with `composeloop.step`, and `examples/compose_classifier.py` does so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from composeloop.step import (
    Metric,
    Phase,
    Step,
    accuracy,
    call_model,
    compose,
    identity,
    mean_and_model_losses,
    mean_loss,
    optimizer_apply,
    sparse_categorical_crossentropy,
)
from composeloop.step.aggregate import Aggregate
from composeloop.step.apply import Apply
from composeloop.step.forward import Forward
from composeloop.step.gradients import Transform
from composeloop.step.losses import Loss


def classifier_phase(
    optimizer: Any,
    *,
    model: str = "model",
    transform: Transform | None = None,
    metrics: Sequence[Metric] = (),
    forward: Forward | None = None,
    loss: Loss | None = None,
    aggregate: Aggregate | None = None,
    apply: Apply | None = None,
) -> Phase:
    """One phase: logits from `model`, sparse cross-entropy averaged over the global batch
    plus the model's own losses, optional gradient transforms, the optimizer, and mean
    loss and accuracy metrics, then any extra `metrics`.

    Any slot's stage can be replaced: `forward` (must give ``logits``), `loss` (must give
    per-example ``loss``), `aggregate`, and `apply` (then `optimizer` is not used).

    Example:
      >>> from composeloop.step import clip_by_global_norm
      >>> phase = classifier_phase(keras.optimizers.Adam(1e-3), transform=clip_by_global_norm(1.0))
      >>> phase.name, phase.trains, [metric.name for metric in phase.metrics]
      ('classifier', ('model',), ['loss', 'accuracy'])
    """
    return Phase(
        name="classifier",
        forward=forward or call_model(model, inputs="x", output="logits"),
        loss=loss or sparse_categorical_crossentropy(labels="y", logits="logits", name="loss"),
        aggregate=aggregate or mean_and_model_losses(),
        apply=apply or optimizer_apply(optimizer),
        trains=(model,),
        transform=transform or identity(),
        metrics=(mean_loss("loss"), accuracy("accuracy", labels="y", logits="logits"), *metrics),
    )


def classifier_step(
    model: Any, optimizer: Any, *, transform: Transform | None = None, metrics: Sequence[Metric] = (), **stages: Any
) -> Step:
    """The composed classifier step for one built Keras model (the default ``step._target_``).

    `stages` replace a slot's stage as in `classifier_phase` (`forward`, `loss`,
    `aggregate`, `apply`); from the command line, Hydra-style:
    ``'++step.loss={_target_: my_pkg.focal_loss, gamma: 2.0}'``.

    Example:
      >>> from composeloop.engine import compile_step, fit
      >>> from composeloop.parts.data import batches
      >>> program = compile_step(classifier_step(model, keras.optimizers.Adam(1e-2)), steps_per_execution=2)
      >>> history = fit(program, lambda epoch: batches(x, y, 4, epoch=epoch), epochs=3)
      >>> len(history), sorted(history[-1])
      (3, ['epoch', 'seconds', 'train_accuracy', 'train_loss'])
    """
    phase = classifier_phase(optimizer, transform=transform, metrics=metrics, **stages)
    return compose(phase, models={"model": model})
