"""Cyclic learning rate, early stopping and checkpoints from Python, through loop events.

The learning rate follows triangular cycles (a schedule is a pure function of the
optimizer's update count); early stopping watches the validation loss and saves the best
checkpoint apart; a handler of our own records the learning rate every 20 steps. Every
service is a plain function attached to a loop event, the same mechanism the CLI uses.

    python examples/cyclic_lr_early_stopping.py            # up to 40 epochs on the embedded digits
    python examples/cyclic_lr_early_stopping.py --smoke    # 2 epochs, for the test suite
"""

import argparse
import tempfile
from pathlib import Path

import keras

from composeloop.engine import Checkpoints, compile_step, early_stopping, every_steps, on_epoch_end, run_loop
from composeloop.parts.data import batches, digits
from composeloop.parts.models import mlp
from composeloop.parts.recipes import classifier_step
from composeloop.step.schedules import keras_schedule, triangular


def main(epochs: int, directory: Path, seed: int = 0) -> dict:
    data = digits(seed=seed)
    keras.utils.set_random_seed(seed)
    model = mlp(data.example_shape, data.num_classes, width=64, depth=2)
    steps_per_epoch = -(-len(data.x_train) // 32)
    rate = triangular(low=1e-4, high=1e-2, cycle_steps=4 * steps_per_epoch)  # one cycle every 4 epochs
    optimizer = keras.optimizers.SGD(learning_rate=keras_schedule(rate), momentum=0.9)
    program = compile_step(classifier_step(model, optimizer), steps_per_execution=8, seed=seed)

    checkpoints = Checkpoints(directory / "checkpoints", program, keep=2)
    rates: list[tuple[int, float]] = []
    handlers = [
        every_steps(20, lambda state: rates.append((state.step, float(optimizer.learning_rate)))),
        on_epoch_end(lambda state: print(f"epoch {state.epoch}: val_loss {state.logs['val_loss']:.4f}")),
        *early_stopping("val_loss", patience=6, min_delta=1e-3, on_improve=checkpoints.save_best),
        on_epoch_end(checkpoints.save),
    ]
    state = run_loop(
        program,
        lambda epoch: batches(data.x_train, data.y_train, 32, seed=seed, epoch=epoch),
        epochs=epochs,
        validation_data=lambda: batches(data.x_val, data.y_val, 256, shuffle=False),
        handlers=handlers,
    )
    best = state.extras.get("best_epoch")
    low, high = min(r for _, r in rates), max(r for _, r in rates)
    print(f"status: {state.status} after {len(state.history)} epochs; best epoch {best}")
    print(f"learning rate ranged over [{low:.2e}, {high:.2e}] in {len(rates)} samples")
    checkpoints.restore(checkpoints.latest_best, models_only=True)  # the best epoch's weights
    return {"status": state.status, "best_epoch": best, "best_val_loss": state.history[best - 1]["val_loss"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="two epochs, for the test suite")
    parser.add_argument("--epochs", type=int, default=40)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        print(main(epochs=2 if arguments.smoke else arguments.epochs, directory=Path(scratch)))
