"""The learning-rate range test: a short run whose learning rate grows exponentially, and its picture.

This module owns `lr_range_test` (any composed step: every phase's Keras optimizer follows
one exponential ramp from `start` to `end`, one training step per point; the loss is
smoothed; the test stops when the smoothed loss diverges; every variable is put back
afterwards), the rule that suggests a learning rate from the curve (`suggest`), and
`plot_range_test` (lr_find.png). It writes no other file and knows nothing of configs.

The ramp reaches each optimizer through its learning rate: Keras 3 optimizers read the rate
through one attribute (a float variable, a schedule or a function), which the test points at
``start * (end / start) ** (step / (steps - 1))`` of the program's global step for its
duration, and then points back. So it works for every Keras optimizer, made by composeloop
or by your step builder, with every apply wrapper around it (decoupled weight decay reads
the same rate). An apply stage that holds no Keras optimizer has no learning rate to ramp:
the test refuses such a step (`ComposeError` naming the phase).

The loss of a point is the step's objective summed over its phases (what each phase's tape
differentiates, the model's own losses included, a float16 loss scale divided out). For
one phase that is the training loss; for an adversarial pair the sum says little, and a
range test of each player alone is more telling.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import tensorflow as tf

from composeloop.engine.compile import Program, compile_step
from composeloop.errors import ComposeError
from composeloop.files import write_atomically
from composeloop.step.compose import Step
from composeloop.step.wrapping import optimizer_of


@attrs.frozen
class RangeTest:
    """What a range test measured, and the learning rate it suggests.

    Attributes:
      learning_rates: the rate of each step run.
      losses: each step's loss (the objective summed over the phases).
      smoothed: the bias-corrected exponential moving average of the losses.
      suggested: the suggested learning rate (see `suggest`), or None when too few points.
      minimum: the rate at the lowest smoothed loss.
      diverged: whether the test stopped early because the smoothed loss diverged.
    """

    learning_rates: tuple[float, ...]
    losses: tuple[float, ...]
    smoothed: tuple[float, ...]
    suggested: float | None
    minimum: float | None
    diverged: bool

    def summary(self) -> dict[str, Any]:
        """The numbers summary.json holds."""
        return {
            "suggested_learning_rate": self.suggested,
            "minimum_loss_learning_rate": self.minimum,
            "diverged": self.diverged,
            "steps": len(self.losses),
            "learning_rates": list(self.learning_rates),
            "losses": list(self.losses),
            "smoothed_losses": list(self.smoothed),
        }


def _check(name: str, value: float, condition: bool, requirement: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not condition:
        raise ValueError(f"lr_range_test: {name} must be {requirement}, got {value!r}")


def ramp_rate(start: float, end: float, steps: int, step: Any) -> Any:
    """The learning rate of step `step` (0-based; a number or a tensor): start, ..., end in `steps` steps."""
    return start * (end / start) ** (step / (steps - 1))


def smooth(losses: Sequence[float], weight: float) -> list[float]:
    """The bias-corrected exponential moving average: ``a_i = w a_(i-1) + (1 - w) x_i``, over ``1 - w^(i+1)``."""
    average, smoothed = 0.0, []
    for index, loss in enumerate(losses):
        average = weight * average + (1 - weight) * loss
        smoothed.append(average / (1 - weight ** (index + 1)))
    return smoothed


def suggest(learning_rates: Sequence[float], smoothed: Sequence[float]) -> tuple[float | None, float | None]:
    """The suggested learning rate, and the rate at the lowest smoothed loss.

    The suggestion is the rate where the smoothed loss falls fastest against the log of the
    rate, looked for before the lowest point (past it the loss is on its way up): the middle
    of the range where training makes the most progress per step. None with fewer than 5 points.
    """
    if len(smoothed) < 5:
        return None, (learning_rates[int(np.argmin(smoothed))] if smoothed else None)
    values = np.asarray(smoothed, np.float64)
    lowest = int(np.argmin(values))
    slopes = np.gradient(values, np.log(np.asarray(learning_rates, np.float64)))
    before = slopes[: max(lowest, 1)]
    return float(learning_rates[int(np.argmin(before))]), float(learning_rates[lowest])


def _optimizers(step: Step) -> list[Any]:
    found: dict[int, Any] = {}
    for phase in step.phases:
        optimizer = optimizer_of(phase.apply)
        if optimizer is None or not hasattr(optimizer, "_learning_rate"):
            raise ComposeError(
                f"lr_find: phase '{phase.name}' applies its update with {type(phase.apply).__name__}, which holds no "
                "Keras optimizer, so it has no learning rate to ramp; wrap a Keras optimizer with optimizer_apply"
            )
        found[id(optimizer)] = optimizer
    return list(found.values())


@contextlib.contextmanager
def _ramped(optimizers: Sequence[Any], rate: Callable[[], Any]) -> Iterator[None]:
    """Points every optimizer's learning rate at `rate` for the duration, then back (the
    optimizers' variables, and so their checkpoints, are not touched)."""
    saved = [optimizer._learning_rate for optimizer in optimizers]
    try:
        for optimizer in optimizers:
            optimizer._learning_rate = rate
        yield
    finally:
        for optimizer, original in zip(optimizers, saved, strict=True):
            optimizer._learning_rate = original


@contextlib.contextmanager
def _restored(program: Program) -> Iterator[None]:
    """Puts every variable of the program (models, optimizers, stages) back as it was."""
    variables = [v for group in program.checkpoint_variables().values() for v in group.values()]
    with program.strategy.scope():
        saved = [tf.identity(tf.convert_to_tensor(v)) for v in variables]
    try:
        yield
    finally:
        with program.strategy.scope():
            for variable, value in zip(variables, saved, strict=True):
                variable.assign(value)


def _loss_scales(step: Step) -> list[Any]:
    """Each phase's float16 loss scale (`composeloop.step.precision`), or None."""
    return [getattr(phase.aggregate, "loss_scale", None) for phase in step.phases]


def _step_loss(program: Program, divisors: Sequence[float]) -> float:
    """The last step's objective summed over the phases, each divided by the scale it was computed with."""
    values = [float(program.last_logs[f"{phase.name}/objective"].numpy()) for phase in program.step.phases]
    return sum(value / divisor for value, divisor in zip(values, divisors, strict=True))


def lr_range_test(
    step: Step,
    train_data: Callable[[int], tf.data.Dataset],
    *,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.9,
    divergence: float = 4.0,
    strategy: tf.distribute.Strategy | None = None,
    seed: int = 0,
    jit_compile: bool = False,
) -> RangeTest:
    """Trains `step` for up to `steps` steps with the learning rate ramped from `start` to `end`.

    Every variable (weights, optimizer slots, stage state) is put back afterwards, and every
    optimizer's own learning rate: the step trains afterwards as if the test never ran.

    Args:
      step: any composed step whose phases apply their updates with Keras optimizers
        (wrapped or not); its models built in `strategy`'s scope.
      train_data: epoch -> that epoch's batches; epochs follow one another as needed.
      start: the first learning rate (0 < start < end).
      end: the last learning rate.
      steps: training steps from `start` to `end` (>= 2). With gradient accumulation, one
        update per k steps: give k times as many.
      smoothing: the weight of the moving average of the loss, in [0, 1).
      divergence: stop once the smoothed loss exceeds this many times its lowest value (> 1),
        or a loss is not finite.
      strategy: the step's strategy (None: the default).
      seed: the run seed the step's random draws derive from.
      jit_compile: compile the step with XLA.

    Returns:
      A `RangeTest`.

    Raises:
      ValueError: naming the argument; ComposeError: a phase without a Keras optimizer.

    Example:
      >>> test = lr_range_test(step, lambda epoch: batches(x, y, 32, seed=0, epoch=epoch), start=1e-6, end=1.0)
      >>> test.suggested
    """
    _check("start", start, isinstance(start, int | float) and start > 0, "> 0")
    _check("end", end, isinstance(end, int | float) and end > start, f"> start ({start})")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"lr_range_test: steps must be an integer >= 2, got {steps!r}")
    _check("smoothing", smoothing, 0 <= smoothing < 1, "in [0, 1)")
    _check("divergence", divergence, divergence > 1, "> 1")
    optimizers = _optimizers(step)
    program = compile_step(step, strategy=strategy, seed=seed, jit_compile=jit_compile, record_logs=True)

    def rate() -> tf.Tensor:
        position = tf.cast(program.global_step, tf.float32)
        return tf.constant(start, tf.float32) * tf.pow(tf.constant(end / start, tf.float32), position / (steps - 1))

    scales = _loss_scales(step)
    rates: list[float] = []
    losses: list[float] = []
    diverged = False
    with _restored(program), _ramped(optimizers, rate):
        epoch, iterator = 0, iter(program.distribute(train_data(0)))
        while len(losses) < steps:
            divisors = [1.0 if scale is None else float(scale.scale.numpy()) for scale in scales]
            if program.train(iterator, 1) == 0:
                epoch += 1
                if epoch > steps:  # no data at all
                    raise ValueError("lr_range_test: train_data gives no batches")
                iterator = iter(program.distribute(train_data(epoch)))
                continue
            rates.append(float(ramp_rate(start, end, steps, len(losses))))
            losses.append(_step_loss(program, divisors))
            smoothed = smooth(losses, smoothing)
            if not math.isfinite(losses[-1]) or smoothed[-1] > divergence * min(smoothed):
                diverged = True
                break
    smoothed = smooth(losses, smoothing)
    finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
    suggested, minimum = suggest([rates[i] for i in finite], [smoothed[i] for i in finite])
    return RangeTest(tuple(rates), tuple(losses), tuple(smoothed), suggested, minimum, diverged)


def plot_range_test(test: RangeTest, path: str | Path, title: str = "") -> None:
    """Draws the loss against the learning rate (log axis), the suggestion marked, into `path` (PNG).

    Example:
      >>> plot_range_test(lr_range_test(step, data), "lr_find.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    rates = np.asarray(test.learning_rates)
    axis.plot(rates, test.losses, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    axis.plot(rates, test.smoothed, color="tab:blue", linewidth=2, label="smoothed loss")
    if test.suggested is not None:
        at = test.smoothed[test.learning_rates.index(test.suggested)]
        axis.axvline(test.suggested, color="tab:red", linestyle="--", linewidth=1)
        axis.plot([test.suggested], [at], "o", color="tab:red", label=f"suggested {test.suggested:.2g}")
    if test.minimum is not None:
        at = test.smoothed[test.learning_rates.index(test.minimum)]
        axis.plot([test.minimum], [at], "v", color="gray", label=f"lowest loss at {test.minimum:.2g}")
    axis.set_xscale("log")
    finite = [value for value in (*test.losses, *test.smoothed) if math.isfinite(value)]
    if finite and math.isfinite(test.smoothed[0]):  # a divergence can be huge: keep the descent in view
        low, high = min(finite), min(max(finite), 1.5 * test.smoothed[0])
        if high > low:
            axis.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    axis.set_xlabel("learning rate")
    axis.set_ylabel("loss")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    axis.set_title(title or "learning-rate range test")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    plt.close(figure)
    write_atomically(Path(path), png.getvalue())
