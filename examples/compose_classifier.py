"""Compose and train a digits classifier from Python, without Hydra.

Every slot of the step is written out, so this is also the map of the step algebra: a
forward stage, a per-example loss, the aggregation (global-batch mean plus the model's own
regularisation losses), a gradient transform chain, the optimizer as the apply stage, and
two mergeable metrics. `compile_step` makes it one `tf.function`; `fit` runs the epochs.

    python examples/compose_classifier.py            # 10 epochs on the embedded digits
    python examples/compose_classifier.py --smoke    # 1 epoch, for the test suite
"""

import argparse

import keras

from composeloop import step as cs
from composeloop.engine import compile_step, fit
from composeloop.parts.data import batches, digits


def main(epochs: int, seed: int = 0) -> dict:
    data = digits(seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(data.example_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-4)),
            keras.layers.Dense(10),
        ]
    )
    phase = cs.Phase(
        name="classifier",
        forward=cs.call_model("model", inputs="x", output="logits"),
        loss=cs.sparse_categorical_crossentropy(labels="y", logits="logits"),
        aggregate=cs.total(cs.global_mean(), cs.model_losses("model")),
        transform=cs.chain(cs.skip_nonfinite(), cs.clip_by_global_norm(1.0)),
        apply=cs.optimizer_apply(keras.optimizers.Adam(3e-3)),
        trains=("model",),
        metrics=(cs.mean_loss("loss"), cs.accuracy("accuracy")),
    )
    program = compile_step(cs.compose(phase, models={"model": model}), steps_per_execution=8, seed=seed)
    history = fit(
        program,
        lambda epoch: batches(data.x_train, data.y_train, 32, seed=seed, epoch=epoch),
        validation_data=lambda: batches(data.x_val, data.y_val, 128, shuffle=False),
        epochs=epochs,
        on_epoch_end=[lambda logs: print({k: round(v, 4) for k, v in logs.items()})],
    )
    print(f"traces: {program.trace_counts}")
    return history[-1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one epoch, for the test suite")
    parser.add_argument("--epochs", type=int, default=10)
    arguments = parser.parse_args()
    main(epochs=1 if arguments.smoke else arguments.epochs)
