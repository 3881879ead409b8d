"""Communication per training step: elements all-reduced across replicas / trainable parameters.

    python -m benchmarks.communication [--json FILE]

Its own process: MirroredStrategy needs two logical CPUs, and those must be made before
TensorFlow first touches a device (the timing benchmarks run on the undivided CPU).

Counted, not assumed: the strategy's cross-device ops are a `ReductionToOneDevice` that
adds up the elements of every value handed to it for reduction (`reduce`, `batch_reduce`)
while a variant's training function is traced. A training function is traced once and its
loop body holds one step, so the count is the elements one step sends into the reduce.
Variants, on the same model and global batch: composeloop's classifier step (plain, and
with a global-norm clip between the all-reduce and the optimizer), `model.fit`, and a
hand-written `strategy.run` step that calls `optimizer.apply_gradients`. Gradients are the
bulk; a few scalars (loss and metric sums, the global batch size) come on top.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPLICAS = 2
BATCH = 64
WIDTHS = (64, 64)  # the seed MLP: 784-64-64-10
FEATURES, CLASSES = 784, 10


class CountingReduction(tf.distribute.ReductionToOneDevice):
    """`ReductionToOneDevice` that counts the elements (one replica's share) of every value
    it is asked to reduce."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def _add(self, value: Any) -> None:
        parts = getattr(value, "values", None) or (value,)
        self.elements += int(np.prod(parts[0].shape))

    def reduce(self, reduce_op: Any, per_replica_value: Any, destinations: Any, options: Any = None) -> Any:
        self._add(per_replica_value)
        return super().reduce(reduce_op, per_replica_value, destinations, options)

    def batch_reduce(self, reduce_op: Any, value_destination_pairs: Any, options: Any = None) -> Any:
        pairs = list(value_destination_pairs)
        for value, _ in pairs:
            self._add(value)
        return super().batch_reduce(reduce_op, pairs, options)


def _model() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    layers = [keras.Input((FEATURES,))] + [keras.layers.Dense(w, activation="relu") for w in WIDTHS]
    return keras.Sequential([*layers, keras.layers.Dense(CLASSES)])


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((BATCH, FEATURES), dtype=np.float32), rng.integers(0, CLASSES, BATCH).astype(np.int32)


def composed(strategy: tf.distribute.Strategy, clip: bool = False) -> tuple[Any, int]:
    """composeloop's classifier step, steps_per_execution 1; returns (model, traces)."""
    import keras

    from composeloop import step as cs
    from composeloop.engine import compile_step
    from composeloop.parts.recipes import classifier_step

    x, y = _data()
    with strategy.scope():
        model = _model()
        transform = cs.clip_by_global_norm(1.0) if clip else None
        step = classifier_step(model, keras.optimizers.SGD(0.01), transform=transform)
        program = compile_step(step, strategy=strategy)
    dataset = tf.data.Dataset.from_tensor_slices({"x": x, "y": y}).batch(BATCH)
    program.train(iter(program.distribute(dataset)), 1)
    return model, program.trace_counts["train"]


def fit(strategy: tf.distribute.Strategy) -> tuple[Any, int]:
    """`model.fit` for one step; traces from its train function."""
    import keras

    x, y = _data()
    with strategy.scope():
        model = _model()
        model.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    from benchmarks.variants import _fit_traces

    return model, sum((_fit_traces(model) or {"?": 1}).values())


def hand_written(strategy: tf.distribute.Strategy) -> tuple[Any, int]:
    """`strategy.run` of a tape step that ends in `optimizer.apply_gradients`."""
    import keras

    x, y = _data()
    with strategy.scope():
        model = _model()
        optimizer = keras.optimizers.SGD(0.01)
        optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function
    def train_step(batch: Any) -> None:
        def replica(batch: Any) -> None:
            with tf.GradientTape() as tape:
                loss = loss_fn(batch[1], model(batch[0], training=True)) / BATCH
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        strategy.run(replica, args=(batch,))

    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH))
    train_step(next(iter(dataset)))
    return model, train_step.experimental_get_tracing_count()


VARIANTS: dict[str, Callable[[tf.distribute.Strategy], tuple[Any, int]]] = {
    "composed": composed,
    "composed_clip": lambda strategy: composed(strategy, clip=True),
    "fit": fit,
    "hand_written": hand_written,
}


def measure(replicas: int = REPLICAS) -> dict[str, Any]:
    """Elements all-reduced in one training step, per variant, on `replicas` logical CPUs.

    Returns:
      {"replicas", "devices", "parameters", "variants": {name: {"elements",
      "per_parameter", "traces"}}, "composed_vs_fit"}.
    """
    from composeloop.testing import configure_cpu_replicas

    configure_cpu_replicas(replicas)
    devices = [f"/cpu:{index}" for index in range(replicas)]
    counter = CountingReduction()
    strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=counter)
    out: dict[str, Any] = {"replicas": replicas, "devices": devices, "variants": {}}
    for name, variant in VARIANTS.items():
        counter.elements = 0
        model, traces = variant(strategy)
        parameters = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        out["parameters"] = parameters
        out["variants"][name] = {
            "elements": counter.elements,
            "per_parameter": counter.elements / parameters,
            "traces": traces,
        }
    figures = out["variants"]
    out["composed_vs_fit"] = figures["composed"]["per_parameter"] / figures["fit"]["per_parameter"]
    return out


def table(report: dict[str, Any]) -> str:
    lines = [
        f"MirroredStrategy over {report['replicas']} logical CPUs, {report['parameters']} trainable parameters, "
        f"global batch {BATCH}",
        f"{'variant':<16} {'elements':>10} {'/ params':>9} {'traces':>6}",
    ]
    for name, entry in report["variants"].items():
        lines.append(f"{name:<16} {entry['elements']:>10} {entry['per_parameter']:>9.4f} {entry['traces']:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.communication", description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    arguments = parser.parse_args(argv)
    report = measure()
    print(table(report))
    if arguments.json:
        with open(arguments.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
