"""Different gradient transforms per layer group, and an EMA of the weights, in one composed step.

The step is the built-in classifier recipe with two stages changed:

- its transform is a `partition`: the backbone's gradients are scaled by 0.3 (a smaller
  learning rate for the backbone) and the head's are clipped to global norm 0.1, the norm
  of the head's gradients alone (a clip inside a group sees only that group);
- its apply stage is `ema(optimizer_apply(sgd), 0.99)`: after every update a shadow copy of
  the weights moves 1% of the way towards them, while the raw weights keep training.

Validation reads the EMA weights (`validation_weights=lambda: ema_weights(program)`); a
handler also validates the raw weights after each epoch. The figure printed: each group's
gradient norm before and after the partition on one batch, then validation accuracy and
loss per epoch with the raw and the EMA weights.

    python examples/partition_and_ema.py            # 12 epochs on the embedded digits
    python examples/partition_and_ema.py --smoke    # 1 epoch, for the test suite
"""

import argparse

import attrs
import keras
import tensorflow as tf

from composeloop import step as cs
from composeloop.engine import compile_step, fit, on_epoch_end, run_epoch
from composeloop.parts.data import batches, digits
from composeloop.parts.recipes import classifier_phase
from composeloop.step.gradients import Transform

GROUPS = {"backbone": 0.3, "head": 0.1}  # the backbone's gradient scale, the head's clip


def model(example_shape) -> keras.Model:
    """Named layers, so that path patterns pick them: mlp/backbone/kernel, mlp/head/bias, ..."""
    return keras.Sequential(
        [
            keras.Input(example_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", name="backbone"),
            keras.layers.Dense(10, name="head"),
        ],
        name="mlp",
    )


def per_group_transform() -> Transform:
    """The partition: every variable is in exactly one group (a missing one would be an error)."""
    return cs.partition({"/backbone/": cs.scale(GROUPS["backbone"]), "/head/": cs.clip_by_global_norm(GROUPS["head"])})


def group_norms(program, transform, batch) -> list[tuple[str, float, float]]:
    """Each group's gradient norm on one batch, before and after the transform."""
    net = program.step.models["model"]
    variables = net.trainable_variables
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(batch["y"], net(batch["x"]), from_logits=True)
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, variables)
    after = transform(cs.Gradients(grads), variables, None).values
    rows = []
    for group in GROUPS:
        picked = [i for i, v in enumerate(variables) if f"/{group}/" in v.path]
        rows.append(
            (
                group,
                float(cs.global_norm([grads[i] for i in picked])),
                float(cs.global_norm([after[i] for i in picked])),
            )
        )
    return rows


def main(epochs: int, seed: int = 0) -> list[dict]:
    data = digits(seed=seed)
    keras.utils.set_random_seed(seed)
    transform = per_group_transform()
    phase = classifier_phase(keras.optimizers.SGD(0.2, momentum=0.9), transform=transform)
    phase = attrs.evolve(phase, apply=cs.ema(phase.apply, 0.99))
    program = compile_step(
        cs.compose(phase, models={"model": model(data.example_shape)}), steps_per_execution=16, seed=seed
    )
    validation = lambda: batches(data.x_val, data.y_val, 256, shuffle=False)  # noqa: E731

    one_batch = next(iter(batches(data.x_train, data.y_train, 64, seed=seed, epoch=0)))
    print("gradient global norm per group on one batch, before -> after the partition:")
    for group, before, after in group_norms(program, transform, one_batch):
        rule = f"scaled by {GROUPS[group]}" if group == "backbone" else f"clipped to {GROUPS[group]}"
        print(f"  {group:9s} {before:8.4f} -> {after:8.4f}   ({rule})")

    rows: list[dict] = []

    def validate_raw(state) -> None:
        program.reset("val")
        run_epoch(program, "val", validation())
        raw = program.results("val")
        rows.append({"epoch": state.logs["epoch"], "raw": raw, "ema": state.logs})

    fit(
        program,
        lambda epoch: batches(data.x_train, data.y_train, 32, seed=seed, epoch=epoch),
        validation_data=validation,
        epochs=epochs,
        validation_weights=lambda: cs.ema_weights(program),
        handlers=[on_epoch_end(validate_raw)],
    )
    print("\nepoch  val_accuracy raw   EMA   val_loss raw    EMA")
    for row in rows:
        raw, ema = row["raw"], row["ema"]
        print(
            f"{row['epoch']:5d}  {raw['accuracy']:16.4f} {ema['val_accuracy']:5.4f}"
            f"   {raw['loss']:12.4f} {ema['val_loss']:6.4f}"
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one epoch, for the test suite")
    parser.add_argument("--epochs", type=int, default=12)
    arguments = parser.parse_args()
    main(epochs=1 if arguments.smoke else arguments.epochs)
