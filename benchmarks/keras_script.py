"""The plain Keras script the default `python -m composeloop` run is compared with.

    python -m benchmarks.keras_script OUTPUT_DIR [--epochs 10]

What a user writes without composeloop for the same job: the embedded digits (same split),
the CLI's default MLP (Flatten, 2 x Dense 128 ReLU, Dense 10), Adam(3e-3), batch 32,
`model.fit` with validation for 10 epochs, then `model.save`. The digits are read with
numpy from the file composeloop ships; nothing of composeloop that imports TensorFlow is
loaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.keras_script")
    parser.add_argument("output", type=Path)
    parser.add_argument("--epochs", type=int, default=10)
    arguments = parser.parse_args(argv)

    from composeloop.parts.data import digits  # numpy only

    data = digits(val_fraction=0.2, seed=0)
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(data.x_train.shape[1:]),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        data.x_train,
        data.y_train,
        batch_size=32,
        epochs=arguments.epochs,
        validation_data=(data.x_val, data.y_val),
        verbose=0,
    )
    arguments.output.mkdir(parents=True, exist_ok=True)
    model.save(arguments.output / "model.keras")
    return 0


if __name__ == "__main__":
    sys.exit(main())
