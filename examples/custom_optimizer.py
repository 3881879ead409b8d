"""A new optimisation algorithm as an apply stage, with no Keras optimizer subclass.

`signum(learning_rate, beta)` is sign-SGD with momentum (Bernstein et al., 2018):
``m <- beta * m + (1 - beta) * g``, then ``w <- w - learning_rate * sign(m)``. An apply
stage is any callable ``(gradients, variables) -> None`` that updates the variables. One
with state also offers ``build(variables)``: the engine calls it before tracing, because
variables (here the momentum slots) cannot be created inside a `tf.function`. Its
``variables`` are its state: checkpoints save them, so a resumed run is exact.

The stage never looks at `Gradients.apply`: the engine calls it only when the update is
to be applied, so a step withheld by `skip_nonfinite()` (or any transform) leaves both the
weights and the momentum untouched. The end of the run checks exactly that with a NaN batch.

    python examples/custom_optimizer.py            # 15 epochs on the embedded digits
    python examples/custom_optimizer.py --smoke    # 1 epoch, for the test suite
"""

import argparse

import attrs
import keras
import numpy as np
import tensorflow as tf

from composeloop import step as cs
from composeloop.engine import compile_step, fit
from composeloop.engine.report import format_epoch
from composeloop.parts.data import batches, digits
from composeloop.parts.models import mlp


@attrs.define
class Signum:
    """Sign-SGD with momentum over one variable group; build it on that group before use."""

    learning_rate: float
    beta: float
    momentum: list = attrs.field(factory=list)

    def build(self, variables) -> None:
        if not self.momentum:
            self.momentum = [tf.Variable(tf.zeros_like(v), trainable=False, name="momentum") for v in variables]

    @property
    def variables(self) -> list:
        return self.momentum

    def __call__(self, gradients, variables) -> None:
        for g, m, v in zip(gradients, self.momentum, variables, strict=True):
            m.assign(self.beta * m + (1.0 - self.beta) * g)
            v.assign_sub(self.learning_rate * tf.sign(m))


def signum(learning_rate: float = 1e-3, beta: float = 0.9) -> Signum:
    """The Signum apply stage; one per variable group (it owns that group's momentum)."""
    return Signum(learning_rate, beta)


def main(epochs: int, seed: int = 0) -> dict:
    data = digits(seed=seed)
    keras.utils.set_random_seed(seed)
    model = mlp(data.example_shape, 10, width=128, depth=1)
    apply = signum(learning_rate=1e-3, beta=0.9)
    phase = cs.Phase(  # the stages' defaults read batch "x" and "y" and call model "model"
        name="signum",
        forward=cs.call_model(),
        loss=cs.sparse_categorical_crossentropy(),
        aggregate=cs.global_mean(),
        apply=apply,
        transform=cs.skip_nonfinite(),
        metrics=(cs.mean_loss(), cs.accuracy()),
    )
    program = compile_step(cs.compose(phase, models={"model": model}), steps_per_execution=16, seed=seed)
    history = fit(
        program,
        lambda epoch: batches(data.x_train, data.y_train, 32, seed=seed, epoch=epoch),
        validation_data=lambda: batches(data.x_val, data.y_val, 256, shuffle=False),
        epochs=epochs,
        on_epoch_end=[lambda logs: print(format_epoch(logs, epochs))],
    )
    print(f"val accuracy: {history[-1]['val_accuracy']:.4f}")

    # A NaN batch: skip_nonfinite withholds the update, so the stage is never called.
    before = [v.numpy() for v in (*model.trainable_variables, *apply.momentum)]
    poisoned = np.full((4, *data.example_shape), np.nan, np.float32)
    program.train(iter(batches(poisoned, data.y_train[:4], 4, shuffle=False)), 1)
    after = [v.numpy() for v in (*model.trainable_variables, *apply.momentum)]
    untouched = all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    print(
        f"NaN batch withheld: {int(program.withheld_updates.numpy())} update(s); weights and momentum untouched: "
        f"{untouched}"
    )
    if not untouched:
        raise SystemExit("a withheld update changed the weights or the momentum")
    return history[-1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one epoch, for the test suite")
    parser.add_argument("--epochs", type=int, default=15)
    arguments = parser.parse_args()
    main(epochs=1 if arguments.smoke else arguments.epochs)
