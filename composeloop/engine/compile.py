"""`compile_step`: a `Step` made into one `tf.function` for training and one for evaluation.

This module owns the compiled programs: the multi-step loop inside the graph (the step
count passed as a tensor, so a partial last chunk never retraces; batches drawn from an
iterator inside the graph, so a partial last batch never retraces), `strategy.run` per
replica, `jit_compile`, the stateful storage of metric states and the global step, and the
trace counter that reports a retrace. It does not iterate over epochs: that is `loop`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from composeloop.engine.distribute import replica_id, replication_for
from composeloop.step.apply import apply_variables
from composeloop.step.compose import Step, fold_seed
from composeloop.step.phase import build_phase
from composeloop.step.records import Context
from composeloop.vocabulary import TRAIN, VAL, NanPolicy


class RetraceWarning(UserWarning):
    """A compiled function was traced again after its first trace: a performance bug."""


class TraceCounter:
    """Counts the traces of each compiled function and warns on a retrace."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        if self.counts[name] > 1:
            warnings.warn(
                f"composeloop: '{name}' was traced {self.counts[name]} times; every retrace "
                "recompiles the step (check for Python values or changing shapes passed in)",
                RetraceWarning,
                stacklevel=3,
            )


def _state_variables(step: Step, prefix: str) -> dict[str, dict[str, tf.Variable]]:
    # ONLY_FIRST_REPLICA: every replica assigns the same all-reduced state.
    return {
        name: {
            field: tf.Variable(
                value,
                trainable=False,
                name=f"{prefix}_{name}_{field}",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            for field, value in state.items()
        }
        for name, state in step.empty_states().items()
    }


def _read(variables: Mapping[str, Mapping[str, tf.Variable]]) -> dict[str, dict[str, tf.Tensor]]:
    return {name: {field: v.read_value() for field, v in fields.items()} for name, fields in variables.items()}


def _add(variables: Mapping[str, Mapping[str, tf.Variable]], states: Mapping[str, Mapping[str, tf.Tensor]]) -> None:
    for name, fields in variables.items():
        for field, variable in fields.items():
            variable.assign_add(states[name][field])


def _withheld(logs: Mapping[str, Any]) -> list[tf.Tensor]:
    """1 for each phase whose update was withheld this step; phases that always apply
    (a static True flag) are left out, so the common step counts nothing."""
    flags = [v for k, v in logs.items() if k.endswith("/applied")]
    return [
        tf.cast(tf.logical_not(v), tf.int64)
        for v in flags
        if tf.get_static_value(v) is None or not tf.get_static_value(v)
    ]


def _counter(name: str, dtype: tf.DType = tf.int64, initial: Any = 0) -> tf.Variable:
    # ONLY_FIRST_REPLICA: every replica computes the same value from all-reduced inputs.
    return tf.Variable(
        initial, dtype=dtype, trainable=False, name=name, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA
    )


def _compiled(fn: Any, jit_compile: bool = False) -> Any:
    """`tf.function` without AutoGraph, as `model.fit` compiles a train step: converting the
    loop and every stage it reaches, source and all, took about 90% of the first trace of
    a classifier step (2.2 s of 2.4 s). Stages use TensorFlow control flow (`tf.cond`,
    `composeloop.step.records.when`), not Python `if`/`for` on tensors."""
    return tf.function(fn, autograph=False, jit_compile=jit_compile)


def _batch_size(batch: Mapping[str, tf.Tensor]) -> tf.Tensor:
    first = next(iter(batch.values()))
    return tf.cast(tf.shape(first)[0], tf.float32)


class Program:
    """A compiled step: call `train` and `evaluate` with an iterator and a step count.

    Build it with `compile_step`. Its state (global step, metric states, the models'
    and optimizers' variables, and `stage_variables`: by phase, what stateful aggregation
    and transform stages such as accumulators and loss scales created) lives in variables,
    so it can be checkpointed.

    With a `nan_policy`, a training step whose objective is not finite is counted in
    `nonfinite_steps`; under "raise" and "stop" the compiled loop also returns right after
    it (so it was step ``global_step - 1``) and the Python loop can act before another step
    runs, while under "skip" it carries on; with None (the default) the step pays for no
    check. With
    `record_logs`, the last step's objective and gradient norm per phase are kept in
    `last_logs` (for TensorBoard); without, they are pruned from the graph.
    """

    def __init__(
        self,
        step: Step,
        strategy: tf.distribute.Strategy | None = None,
        steps_per_execution: int = 1,
        jit_compile: bool = False,
        seed: int = 0,
        nan_policy: NanPolicy | str | None = None,
        record_logs: bool = False,
    ) -> None:
        if steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be >= 1, got {steps_per_execution}")
        if isinstance(nan_policy, str):
            if nan_policy not in NanPolicy.__members__:
                choices = ", ".join(NanPolicy.__members__)
                raise ValueError(f"nan_policy must be None or one of {choices}, got {nan_policy!r}")
            nan_policy = NanPolicy[nan_policy]
        elif nan_policy is not None and not isinstance(nan_policy, NanPolicy):
            raise TypeError(f"nan_policy must be a NanPolicy, its name or None, got {type(nan_policy).__name__}")
        self.step = step
        self.strategy = strategy or tf.distribute.get_strategy()
        self.steps_per_execution = steps_per_execution
        self.jit_compile = jit_compile
        self.seed = seed
        self.nan_policy = nan_policy
        self.record_logs = record_logs
        self.replication = replication_for(self.strategy)
        self.traces = TraceCounter()
        with self.strategy.scope():
            self.global_step = _counter("global_step")
            self.withheld_updates = _counter("withheld_updates")
            self.nonfinite_steps = _counter("nonfinite_steps")
            self.last_logs = {
                f"{phase.name}/{key}": _counter(f"last_{phase.name}_{key}", tf.float32)
                for phase in step.phases
                for key in ("objective", "grad_norm")
            }
            self.metric_states = {kind: _state_variables(step, kind) for kind in (TRAIN, VAL)}
            # Optimizer slots and other stage state (accumulators, loss scales) cannot be
            # created inside a trace; the latter are kept, by phase, for checkpoints.
            self.stage_variables = {phase.name: build_phase(phase, step.variables(phase)) for phase in step.phases}
        on_batch = {TRAIN: self._train_on_batch, VAL: self._evaluate_on_batch}
        if jit_compile:
            on_batch = {kind: _compiled(fn, jit_compile=True) for kind, fn in on_batch.items()}
        self._on_batch = on_batch
        self._counts: dict[int, tf.Tensor] = {}
        self._last_call: dict[int, tuple[Any, Any]] = {}
        self._train = _compiled(self._train_loop)
        self._evaluate = _compiled(self._evaluate_loop)

    # -- per replica ---------------------------------------------------------------------

    def _context(self, batch: Mapping[str, tf.Tensor], training: bool) -> Context:
        step = self.global_step.read_value()
        run_seed = tf.constant([self.seed, 0], tf.int64)
        return Context(
            batch=batch,
            models=self.step.models,
            training=training,
            seed=fold_seed(run_seed, step, replica_id()),
            step=step,
            global_batch_size=self.replication.sum(_batch_size(batch)),
            replication=self.replication,
        )

    # Metric states are sums: a step run from the empty states gives this batch's
    # contribution, which is added to the stored states (no read of them per step).

    def _train_on_batch(self, batch: Mapping[str, tf.Tensor]) -> None:
        contribution, logs = self.step(self._context(batch, training=True), self.step.empty_states())
        _add(self.metric_states[TRAIN], contribution)
        withheld = _withheld(logs)
        if withheld:
            self.withheld_updates.assign_add(tf.add_n(withheld))
        objectives = [v for k, v in logs.items() if k.endswith("/objective")]
        if objectives and self.nan_policy is not None:
            finite = tf.math.is_finite(tf.add_n([tf.cast(v, tf.float32) for v in objectives]))
            self.nonfinite_steps.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
        if self.record_logs:
            for name, variable in self.last_logs.items():
                value = logs[name]() if callable(logs[name]) else logs[name]  # grad_norm is computed on demand
                variable.assign(tf.cast(value, tf.float32))

    def _evaluate_on_batch(self, batch: Mapping[str, tf.Tensor]) -> None:
        _add(
            self.metric_states[VAL],
            self.step.evaluate(self._context(batch, training=False), self.step.empty_states()),
        )

    # -- compiled loops ------------------------------------------------------------------

    def _loop(self, kind: str, iterator: Any, num_steps: tf.Tensor) -> tf.Tensor:
        """Up to `num_steps` steps while the iterator has batches (and, under the policies
        "raise" and "stop", while steps stay finite); returns the steps run. Written as a
        plain `tf.while_loop`: the functions are traced without AutoGraph (see `_compiled`)."""
        halt = kind == TRAIN and self.nan_policy not in (None, NanPolicy.skip)

        def step(batch: Any) -> tf.Tensor:
            nonfinite_before = self.nonfinite_steps.read_value() if halt else None
            self.strategy.run(self._on_batch[kind], args=(batch,))
            if kind == TRAIN:
                self.global_step.assign_add(1)
            if halt:
                return tf.logical_not(self.nonfinite_steps.read_value() > nonfinite_before)
            return tf.constant(True)

        def body(done: tf.Tensor, going: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            optional = iterator.get_next_as_optional()
            ran = optional.has_value()
            going = tf.cond(ran, lambda: step(optional.get_value()), lambda: tf.constant(False))
            return done + tf.cast(ran, tf.int64), going

        done, _ = tf.while_loop(
            lambda done, going: tf.logical_and(going, done < num_steps),
            body,
            (tf.constant(0, tf.int64), tf.constant(True)),
        )
        return done

    def _train_loop(self, iterator: Any, num_steps: tf.Tensor) -> tf.Tensor:
        self.traces.count(TRAIN)
        return self._loop(TRAIN, iterator, num_steps)

    def _evaluate_loop(self, iterator: Any, num_steps: tf.Tensor) -> tf.Tensor:
        self.traces.count(VAL)
        return self._loop(VAL, iterator, num_steps)

    # -- public --------------------------------------------------------------------------

    def distribute(self, dataset: tf.data.Dataset) -> Any:
        """The dataset as this program's strategy wants it (split over replicas); data read
        per worker (`composeloop.engine.sources.PerWorker`) goes its own way."""
        if hasattr(dataset, "distribute_over"):
            return dataset.distribute_over(self.strategy)
        if self.strategy.num_replicas_in_sync == 1:
            return dataset
        # Each global batch is split over the replicas (of every worker), a short last
        # batch included; DATA sharding because in-memory datasets have no files to split.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    def train(self, iterator: Any, num_steps: int | None = None) -> int:
        """Runs up to `num_steps` (default: steps_per_execution) training steps.

        Returns the number of steps run: fewer when the iterator ran out.
        """
        count = self.steps_per_execution if num_steps is None else num_steps
        return int(self._call(self._train, iterator, self._count(count)))

    def evaluate(self, iterator: Any, num_steps: int | None = None) -> int:
        """Adds up to `num_steps` batches to the evaluation metrics; returns batches seen."""
        count = self.steps_per_execution if num_steps is None else num_steps
        return int(self._call(self._evaluate, iterator, self._count(count)))

    def _call(self, function: Any, iterator: Any, count: tf.Tensor) -> tf.Tensor:
        # A tf.function call binds its arguments and hashes the iterator's type spec to
        # find its concrete function, a measurable cost at one step per call. An epoch
        # calls with the same iterator many times, so the concrete function found on the
        # first call is kept with that iterator (held, so its id cannot be reused) and
        # called directly until another iterator comes.
        held, concrete = self._last_call.get(id(function), (None, None))
        if held is iterator:
            return concrete(iterator, count)
        result = function(iterator, count)
        self._last_call[id(function)] = (iterator, function.get_concrete_function(iterator, count))
        return result

    def _count(self, count: int) -> tf.Tensor:
        # One tensor per distinct count, made once: a new constant per call costs time at spe=1.
        if count not in self._counts:
            self._counts[count] = tf.constant(count, tf.int64)
        return self._counts[count]

    def _kind(self, kind: str) -> dict[str, dict[str, tf.Variable]]:
        if kind not in self.metric_states:
            raise ValueError(f"kind must be {TRAIN!r} or {VAL!r}, got {kind!r}")
        return self.metric_states[kind]

    def results(self, kind: str = TRAIN) -> dict[str, float]:
        """Current metric values, by metric name (kind: "train" or "val")."""
        states = _read(self._kind(kind))
        return {metric.name: float(metric.result(states[metric.name])) for metric in self.step.metrics}

    def states(self, kind: str = TRAIN) -> dict[str, dict[str, float]]:
        """Current raw metric states (sums), by metric name (kind: "train" or "val")."""
        return {name: {f: float(v) for f, v in fields.items()} for name, fields in _read(self._kind(kind)).items()}

    def reset(self, kind: str = TRAIN) -> None:
        """Resets one kind's metric states ("train" or "val") to empty."""
        for fields in self._kind(kind).values():
            for variable in fields.values():
                variable.assign(tf.zeros_like(variable))

    def checkpoint_variables(self) -> dict[str, dict[str, Any]]:
        """Everything a checkpoint must hold to resume this program exactly, in named groups.

        ``model_<name>``: each model's variables (weights and seed-generator states);
        ``apply_<phase>``: the state of each phase's apply stage (an optimizer's slots and
        update count); ``stages_<phase>``: what its other stateful stages made
        (accumulators, loss scales); ``counters``; ``metrics_<kind>``: the metric states. Within a group
        variables are keyed by position, which depends only on the architecture, not on
        the layer names Keras numbers per process.
        """

        def indexed(variables: Any) -> dict[str, Any]:
            return {f"{index:03d}": variable for index, variable in enumerate(variables)}

        groups = {f"model_{name}": indexed(model.variables) for name, model in self.step.models.items()}
        for phase in self.step.phases:
            state = apply_variables(phase.apply)
            if state:
                groups[f"apply_{phase.name}"] = indexed(state)
            if self.stage_variables[phase.name]:
                groups[f"stages_{phase.name}"] = indexed(self.stage_variables[phase.name])
        groups["counters"] = {
            "global_step": self.global_step,
            "withheld_updates": self.withheld_updates,
            "nonfinite_steps": self.nonfinite_steps,
        }
        for kind, metrics in self.metric_states.items():
            groups[f"metrics_{kind}"] = {
                f"{name}.{field}": variable for name, fields in metrics.items() for field, variable in fields.items()
            }
        return groups

    @property
    def trace_counts(self) -> dict[str, int]:
        return dict(self.traces.counts)


def compile_step(
    step: Step,
    *,
    strategy: tf.distribute.Strategy | None = None,
    steps_per_execution: int = 1,
    jit_compile: bool = False,
    seed: int = 0,
    nan_policy: NanPolicy | str | None = None,
    record_logs: bool = False,
) -> Program:
    """Compiles a `Step` into one training and one evaluation `tf.function`.

    Args:
      step: from `composeloop.step.compose`.
      strategy: a `tf.distribute` strategy; models must have been built in its scope.
        None: the default (one device).
      steps_per_execution: steps run per call, looped inside the graph.
      jit_compile: compile each step with XLA.
      seed: the run seed that every stage's stateless seed derives from.
      nan_policy: what follows a step whose objective is not finite
        (`composeloop.vocabulary.NanPolicy` or its name). None (the default): no check, no
        extra ops. "skip": count such steps in `Program.nonfinite_steps` and carry on in
        the graph. "raise" or "stop": count, and end the `train` call right after such a
        step, so that `composeloop.engine.nan_policy`'s handler acts before another runs.
      record_logs: keep the last step's objective and gradient norm per phase in
        `Program.last_logs` (TensorBoard reads them).

    Returns:
      A `Program`.

    Example:
      >>> program = compile_step(step, steps_per_execution=8)
      >>> program.train(iter(dataset))
    """
    return Program(step, strategy, steps_per_execution, jit_compile, seed, nan_policy, record_logs)
