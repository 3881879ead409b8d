"""Running a user's step once, from the same start, as often as a property needs.

This module owns what the step checkers share: the process-wide CPU replicas and the one
`MirroredStrategy` over them, hand-made `Context`s for calling stages directly, and
`StepRunner`, which compiles a step ONCE and then runs steps on any batches (split over
the replicas) from a snapshot of every variable, stage state (optimizer slots, EMA shadows,
accumulators, loss scales) included. Batches reach the compiled function
through a dataset whose batch dimension is unknown, so no batch size retraces it. It asserts
nothing: the checkers do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from composeloop.engine import Program, compile_step
from composeloop.step import Context, Replication, Step
from composeloop.step.apply import apply_variables

Batch = Mapping[str, Any]
_STRATEGIES: dict[int, tf.distribute.Strategy] = {}


def configure_cpu_replicas(count: int = 2) -> None:
    """Splits the CPU into `count` logical devices so `MirroredStrategy` can run `count`
    replicas on one machine. Call it before TensorFlow first uses a device (e.g. at the top
    of ``conftest.py``); calling it again, or after enough devices exist, does nothing.

    Example:
      >>> configure_cpu_replicas(2)  # at the top of conftest.py, before TensorFlow uses a device
      >>> len(tf.config.list_logical_devices("CPU")) >= 2
      True
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) >= count:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) < count:
            raise RuntimeError(
                f"composeloop.testing needs {count} logical CPUs for {count} replicas, but TensorFlow is "
                f"already initialised with fewer; call composeloop.testing.configure_cpu_replicas({count}) "
                "before TensorFlow first runs (e.g. at the top of conftest.py)"
            ) from None


def mirrored_strategy(replicas: int = 2) -> tf.distribute.MirroredStrategy:
    """The process's one `MirroredStrategy` over `replicas` logical CPUs.

    Two MirroredStrategy objects in one process can reuse collective keys and abort each
    other's all-reduces, so every test and checker shares this cached one.

    Example:
      >>> strategy = mirrored_strategy(2)
      >>> strategy.num_replicas_in_sync, strategy is mirrored_strategy(2)
      (2, True)
      >>> with strategy.scope():  # models and optimizers for 2 replicas are made in its scope
      ...     net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    """
    if replicas not in _STRATEGIES:
        configure_cpu_replicas(replicas)
        _STRATEGIES[replicas] = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    return _STRATEGIES[replicas]


def context_for(
    batch: Batch, models: Mapping[str, Any] | None = None, *, replicas: int = 1, global_batch_size: float | None = None
) -> Context:
    """A `Context` for calling stages by hand: seed 0, step 0, training mode.

    Args:
      batch: this replica's examples by feature name (arrays or tensors).
      models: the models stages may call, by name.
      replicas: the replica count stages see (only `num_replicas`; sums stay local).
      global_batch_size: examples over all replicas; default: this batch's size.

    Example:
      >>> from composeloop.step import global_mean
      >>> context = context_for({"x": x, "y": y}, {"model": model}, replicas=2, global_batch_size=16)
      >>> context.replication.num_replicas, float(context.global_batch_size)
      (2, 16.0)
      >>> float(global_mean()(context, {"loss": tf.ones([8])}))  # this replica's 8 of the 16 examples
      0.5
    """
    tensors = {name: tf.convert_to_tensor(value) for name, value in batch.items()}
    size = global_batch_size if global_batch_size is not None else batch_size(batch)
    return Context(
        batch=tensors,
        models=dict(models or {}),
        training=True,
        seed=tf.constant([0, 0], tf.int64),
        step=tf.constant(0, tf.int64),
        global_batch_size=tf.constant(float(size)),
        replication=Replication(num_replicas=replicas),
    )


def batch_size(batch: Batch) -> int:
    """The number of examples in a batch (the first dimension of its features)."""
    return int(np.shape(next(iter(batch.values())))[0])


def split_batch(batch: Batch, sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Cuts a batch into consecutive pieces of the given sizes (which must add up)."""
    total = batch_size(batch)
    if sum(sizes) != total or min(sizes, default=0) < 0:
        raise ValueError(f"piece sizes {list(sizes)} do not split a batch of {total} examples")
    cuts = np.cumsum(sizes)[:-1]
    pieces = {name: np.split(np.asarray(values), cuts) for name, values in batch.items()}
    return [{name: pieces[name][i] for name in batch} for i in range(len(sizes))]


def _padded_dataset(parts: Sequence[Batch]) -> tf.data.Dataset:
    """One dataset element per part, each of unknown batch size (so sizes never retrace);
    an empty part is an element too, unlike with ``batch()``."""
    longest = max(max(batch_size(part) for part in parts), 1)
    lengths = np.array([batch_size(part) for part in parts], np.int64)

    def padded(values: np.ndarray) -> np.ndarray:
        pad = [(0, longest - len(values))] + [(0, 0)] * (values.ndim - 1)
        return np.pad(values, pad)

    stacked = {name: np.stack([padded(np.asarray(part[name])) for part in parts]) for name in parts[0]}
    dataset = tf.data.Dataset.from_tensor_slices((stacked, lengths))
    return dataset.map(lambda features, length: {name: value[:length] for name, value in features.items()})


def step_variables(step: Step, program: Program | None = None) -> list[tf.Variable]:
    """Every variable a step owns: the models' weights, then each phase's apply stage's state
    (an optimizer's slots, an EMA's shadows), then, given the compiled `program`, what its
    other stateful stages made (accumulators, loss scales)."""
    variables, seen = [], set()
    owners = [model.weights for model in step.models.values()]
    owners += [apply_variables(phase.apply) for phase in step.phases]
    if program is not None:
        owners += [program.stage_variables[phase.name] for phase in step.phases]
    for group in owners:
        for variable in group or ():
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
    return variables


def variable_name(variable: tf.Variable) -> str:
    return getattr(variable, "path", None) or variable.name


class StepRunner:
    """A step compiled once, run one step at a time from the same starting variables.

    Example:
      >>> from composeloop.parts.recipes import classifier_step
      >>> runner = StepRunner(classifier_step(model, keras.optimizers.SGD(0.1)))
      >>> after = runner.run([batch])  # one replica, one step, from the snapshot
      >>> sorted(after), bool(np.any(after["weights"][0] != runner.initial[0]))
      (['states', 'weights', 'withheld'], True)
      >>> np.array_equal(runner.run([batch])["weights"][0], after["weights"][0])  # from the same start again
      True
    """

    def __init__(
        self,
        step: Step,
        strategy: tf.distribute.Strategy | None = None,
        *,
        variables: Sequence[tf.Variable] | None = None,
        start: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Compiles `step`; snapshots `variables` (default: all of the step's) after setting
        them to `start`, if given."""
        self.step = step
        self.program: Program = compile_step(step, strategy=strategy)
        self.variables = list(variables) if variables is not None else step_variables(step, self.program)
        self.names = [variable_name(v) for v in self.variables]
        if start is not None:
            self._assign(start)
        self.initial = [v.numpy() for v in self.variables]

    @property
    def replicas(self) -> int:
        return self.program.strategy.num_replicas_in_sync

    def _assign(self, values: Sequence[np.ndarray]) -> None:
        if len(values) != len(self.variables):
            raise ValueError(f"{len(values)} values for {len(self.variables)} variables")
        for variable, value in zip(self.variables, values, strict=True):
            variable.assign(value)

    def restore(self, values: Sequence[np.ndarray] | None = None, at_step: int = 0) -> None:
        """Puts every variable back (to the snapshot by default) and sets the global step
        (from which every stage's random seed derives) to `at_step`."""
        self._assign(self.initial if values is None else values)
        self.program.global_step.assign(at_step)
        self.program.withheld_updates.assign(0)
        self.program.reset("train")

    def train_once(self, parts: Sequence[Batch]) -> None:
        """Runs one training step from the variables as they are, replica i reading ``parts[i]``."""
        self.train_steps([parts])

    def train_steps(self, steps: Sequence[Sequence[Batch]]) -> None:
        """Runs ``len(steps)`` training steps in one call, replica i of step s reading ``steps[s][i]``."""
        for parts in steps:
            if len(parts) != self.replicas:
                raise ValueError(f"give one part per replica: {self.replicas} replicas, {len(parts)} parts")
        # Replica i takes every replicas-th element from the i-th on: the parts in order.
        dataset = _padded_dataset([part for parts in steps for part in parts])
        if self.replicas == 1:
            iterator = iter(dataset)
        else:
            iterator = iter(self.program.strategy.distribute_datasets_from_function(lambda _: dataset))
        self.program.train(iterator, len(steps))

    def run(
        self, parts: Sequence[Batch], start: Sequence[np.ndarray] | None = None, at_step: int = 0
    ) -> dict[str, Any]:
        """Runs ONE training step from the snapshot (or `start`), replica i reading ``parts[i]``,
        as global step `at_step` (a different step draws different random numbers), then puts
        the variables back.

        Returns:
          ``weights`` (every variable's value after the step, as in `variables`), ``states``
          (the train metric states) and ``withheld`` (updates withheld by a transform).
        """
        self.restore(start, at_step)
        self.train_once(parts)
        result = {
            "weights": [v.numpy() for v in self.variables],
            "states": self.program.states("train"),
            "withheld": int(self.program.withheld_updates.numpy()),
        }
        self.restore(start)
        return result


_RUNNERS: dict[Any, tuple[Any, StepRunner]] = {}


def cached_runner(key: Any, owner: Any, make: Any) -> StepRunner:
    """The runner made by ``make()`` for `key`, made once per process; `owner` (the
    object the key is derived from) is kept alive so its id is never reused."""
    if key not in _RUNNERS:
        _RUNNERS[key] = (owner, make())
    return _RUNNERS[key][1]


def runner_for(step: Step) -> StepRunner:
    """The process's one single-replica runner of `step` (compiled on first use)."""
    return cached_runner(("step", id(step)), step, lambda: StepRunner(step))


def cached_programs() -> list[Program]:
    """Every program the checkers compiled in this process (to assert that none retraced).

    Example:
      >>> from composeloop.parts.recipes import classifier_step
      >>> from composeloop.testing import check_reset_gives_empty
      >>> check_reset_gives_empty(classifier_step(model, keras.optimizers.SGD(0.1)), batch)
      >>> all(program.trace_counts.get("train", 0) <= 1 for program in cached_programs())  # none retraced
      True
    """
    programs = []
    for _, made in _RUNNERS.values():
        # A pair of runners (replicas, accumulation) holds them as attributes.
        held = [made] if isinstance(made, StepRunner) else list(vars(made).values())
        runners = [runner for runner in held if isinstance(runner, StepRunner)]
        programs += [runner.program for runner in runners]
    return programs
