"""Write your own gradient transforms and chain them with the built-in ones.

Two user-written transforms, each a small factory returning a function:
`centralise()` (gradient centralisation: every weight gradient gets the mean over its
fan-in removed) is a function of the gradient list, lifted by `map_gradients`;
`adaptive_clip(0.05)` (adaptive gradient clipping: a unit's gradient norm is held to a
fraction of that unit's weight norm) needs the variables too, so it is written against
the full transform signature ``(Gradients, variables, context) -> Gradients``. Both run
after the all-reduce, in one chain with `skip_nonfinite` and `clip_by_global_norm`.

    python examples/custom_transform.py            # 15 epochs on the embedded digits
    python examples/custom_transform.py --smoke    # 1 epoch, for the test suite
"""

import argparse

import keras
import tensorflow as tf

from composeloop import step as cs
from composeloop.engine import compile_step, fit
from composeloop.parts.data import batches, digits
from composeloop.parts.models import mlp
from composeloop.parts.recipes import classifier_phase
from composeloop.step.gradients import Transform


def _unit_axes(tensor: tf.Tensor) -> list[int]:
    """Every axis but the last (the output units); none for biases and scales."""
    return list(range(tensor.shape.rank - 1))


def centralise() -> Transform:
    """Gradient centralisation (Yong et al., 2020) for kernels; biases pass unchanged."""

    def centre(g: tf.Tensor) -> tf.Tensor:
        return g - tf.reduce_mean(g, axis=_unit_axes(g), keepdims=True) if g.shape.rank > 1 else g

    return cs.map_gradients(lambda values: [centre(g) for g in values])


def unit_norms(tensor: tf.Tensor) -> tf.Tensor:
    """L2 norm per output unit (per element for rank <= 1), broadcastable to `tensor`."""
    return tf.sqrt(tf.reduce_sum(tf.square(tensor), axis=_unit_axes(tensor), keepdims=True))


def adaptive_clip(clipping: float, epsilon: float = 1e-3) -> Transform:
    """Adaptive gradient clipping (Brock et al., 2021): per unit, ||G|| <= clipping * max(||W||, epsilon)."""

    def transform(grads: cs.Gradients, variables, context) -> cs.Gradients:
        clipped = []
        for g, w in zip(grads.values, variables, strict=True):
            bound = clipping * tf.maximum(unit_norms(w), epsilon)
            norm = unit_norms(g)
            clipped.append(tf.where(norm > bound, g * bound / tf.maximum(norm, 1e-12), g))
        return grads.replace(clipped)  # keeps the apply flag that skip_nonfinite may have set

    return transform


def largest_ratio(values, variables) -> float:
    """max over units of ||G|| / max(||W||, 1e-3): what adaptive_clip bounds."""
    pairs = zip(values, variables, strict=True)
    ratios = [tf.reduce_max(unit_norms(g) / tf.maximum(unit_norms(w), 1e-3)) for g, w in pairs]
    return float(tf.reduce_max(ratios))


def main(epochs: int, seed: int = 0) -> dict:
    data = digits(seed=seed)
    keras.utils.set_random_seed(seed)
    model = mlp(data.example_shape, 10, width=128, depth=1)
    transform = cs.chain(cs.skip_nonfinite(), centralise(), adaptive_clip(0.05), cs.clip_by_global_norm(1.0))

    # A transform is a plain function: call it eagerly on made-up gradients to see what it does.
    variables = model.trainable_variables
    noise = cs.Gradients([tf.random.normal(v.shape, seed=seed) for v in variables])
    print(
        f"largest unit ratio ||G||/||W||: {largest_ratio(noise.values, variables):.3f} before, "
        f"{largest_ratio(transform(noise, variables, None).values, variables):.3f} after (bound 0.05)"
    )

    # The built-in classifier recipe, with our chain in its transform slot.
    phase = classifier_phase(keras.optimizers.SGD(0.1, momentum=0.9), transform=transform)
    program = compile_step(cs.compose(phase, models={"model": model}), steps_per_execution=16, seed=seed)
    history = fit(
        program,
        lambda epoch: batches(data.x_train, data.y_train, 32, seed=seed, epoch=epoch),
        validation_data=lambda: batches(data.x_val, data.y_val, 256, shuffle=False),
        epochs=epochs,
        on_epoch_end=[lambda logs: print({k: round(v, 4) for k, v in logs.items()})],
    )
    print(f"val accuracy: {history[-1]['val_accuracy']:.4f}")
    return history[-1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one epoch, for the test suite")
    parser.add_argument("--epochs", type=int, default=15)
    arguments = parser.parse_args()
    main(epochs=1 if arguments.smoke else arguments.epochs)
