"""Ready-made Keras models for the recipes: an MLP and a small CNN classifier.

Each factory returns a BUILT model (its variables exist), as `compose` requires, and turns
a model that cannot take the data's shape into a `DataError` naming both shapes.
"""

from __future__ import annotations

import keras

from composeloop.errors import DataError


def _regularizer(l2: float):
    return keras.regularizers.L2(l2) if l2 > 0 else None


def mlp(
    example_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 64,
    depth: int = 2,
    l2: float = 0.0,
    dropout: float = 0.0,
) -> keras.Model:
    """Flatten, then `depth` ReLU layers of `width` units, then logits.

    Example:
      >>> model = mlp((8, 8), 10, width=64, depth=2)
      >>> model.output_shape, len(model.trainable_variables)  # three dense layers' kernels and biases
      ((None, 10), 6)
    """
    layers: list = [keras.Input(example_shape), keras.layers.Flatten()]
    for _ in range(depth):
        layers.append(keras.layers.Dense(width, activation="relu", kernel_regularizer=_regularizer(l2)))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(num_classes, kernel_regularizer=_regularizer(l2)))
    return keras.Sequential(layers, name="mlp")


def cnn(
    example_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 32,
    depth: int = 2,
    l2: float = 0.0,
    dropout: float = 0.0,
) -> keras.Model:
    """`depth` 3x3 same-padded ReLU convolutions (the first `width` filters, doubling), then
    global average pooling and logits. Takes (height, width) or (height, width, channels).

    Example:
      >>> model = cnn((28, 28), 10)
      >>> model.input_shape, model.output_shape
      ((None, 28, 28), (None, 10))
    """
    if len(example_shape) not in (2, 3):
        raise DataError(
            f"model 'cnn' needs images of shape (height, width) or (height, width, channels); "
            f"the data's examples have shape {tuple(example_shape)}"
        )
    layers: list = [keras.Input(example_shape)]
    if len(example_shape) == 2:
        layers.append(keras.layers.Reshape((*example_shape, 1)))
    for index in range(depth):
        layers.append(
            keras.layers.Conv2D(
                width * 2**index, 3, padding="same", activation="relu", kernel_regularizer=_regularizer(l2)
            )
        )
        if index < depth - 1 and min(example_shape[:2]) // 2 ** (index + 1) >= 2:
            layers.append(keras.layers.MaxPooling2D())
    layers.append(keras.layers.GlobalAveragePooling2D())
    if dropout > 0:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(num_classes, kernel_regularizer=_regularizer(l2)))
    return keras.Sequential(layers, name="cnn")


MODELS = {"mlp": mlp, "cnn": cnn}


def build_classifier(name: str, example_shape: tuple[int, ...], num_classes: int, **options: float) -> keras.Model:
    """Builds a named classifier for the data's example shape; DataError if it cannot fit."""
    try:
        return MODELS[name](tuple(example_shape), num_classes, **options)
    except ValueError as error:
        first_line = str(error).strip().splitlines()[0]
        raise DataError(f"model '{name}' does not fit data of shape {tuple(example_shape)}: {first_line}") from None
