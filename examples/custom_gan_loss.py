"""A GAN trained with your own loss: the relativistic average GAN (Jolicoeur-Martineau, 2018).

The discriminator does not score "is this real?" but "is this real image more real than
the average fake?" (and the reverse for fakes); the generator is trained on the same
question with the answers swapped, so it also pushes real images' scores down. The built-in
pieces do the rest: `composeloop.step.gan.discriminate` and `generate` draw latent vectors
from `context.seed` and call the models, `composeloop.parts.gan` builds the two models and
scores samples. The user writes one loss factory, and a forward stage that wraps
`generate` to score a real batch as well (the generator's loss needs both sides).

    python examples/custom_gan_loss.py            # 120 epochs on the embedded digits, then a sample score
    python examples/custom_gan_loss.py --smoke    # 1 epoch, for the test suite
"""

import argparse

import keras
import tensorflow as tf

from composeloop import step as cs
from composeloop.engine import compile_step, fit
from composeloop.engine.report import format_epoch
from composeloop.parts import gan as parts
from composeloop.parts.data import batches, digits
from composeloop.parts.models import mlp
from composeloop.parts.recipes import classifier_step
from composeloop.step import gan as gs

LATENT = 32


def relativistic_average(player: str, name: str):
    """Per-example RaGAN loss for "discriminator" or "generator" from real and fake logits.

    The batch means are this replica's: with several replicas each compares against its own share.
    """
    sign = {"discriminator": 1.0, "generator": -1.0}[player]

    def loss(context, outputs):
        real, fake = outputs["real_logits"], outputs["fake_logits"]
        real_vs_fakes, fake_vs_reals = real - tf.reduce_mean(fake), fake - tf.reduce_mean(real)
        return {name: tf.nn.softplus(-sign * real_vs_fakes) + tf.nn.softplus(sign * fake_vs_reals)}

    return loss


def generate_and_score_real(latent_dim: int):
    """`gs.generate`'s fakes and fake logits, plus the discriminator's logits on the real batch."""
    fakes = gs.generate(latent_dim)

    def forward(context):
        critic = context.models["discriminator"]
        return {**fakes(context), "real_logits": gs.scores(critic(context.batch["x"], training=context.training))}

    return forward


def phase(player: str, forward, trains: str) -> cs.Phase:
    return cs.Phase(
        name=player,
        forward=forward,
        loss=relativistic_average(player, name=f"{player[0]}_loss"),
        aggregate=cs.global_mean(),
        apply=cs.optimizer_apply(keras.optimizers.Adam(2e-4, beta_1=0.5)),
        trains=(trains,),
        metrics=(cs.mean_loss(f"{player[0]}_loss"),),
    )


def main(epochs: int, classifier_epochs: int, samples: int, seed: int = 0) -> dict[str, float]:
    data = digits(seed=seed)
    x_train, x_val = data.x_train * 2.0 - 1.0, data.x_val * 2.0 - 1.0  # the generator's tanh range
    keras.utils.set_random_seed(seed)
    models = {"generator": parts.generator(LATENT, image_size=8), "discriminator": parts.discriminator(image_size=8)}
    step = cs.compose(
        phase("discriminator", gs.discriminate(LATENT), trains="discriminator"),
        phase("generator", generate_and_score_real(LATENT), trains="generator"),
        models=models,
    )
    untrained = parts.generate_images(models["generator"], parts.fixed_latents(samples, LATENT, seed + 1))
    program = compile_step(step, steps_per_execution=32, seed=seed)

    def report(logs: dict) -> None:
        if logs["epoch"] == 1 or logs["epoch"] % 20 == 0:
            print(format_epoch(logs, epochs))

    fit(
        program,
        lambda epoch: batches(x_train, data.y_train, 64, seed=seed, epoch=epoch),
        epochs=epochs,
        on_epoch_end=[report],
    )

    # Score samples as composeloop's GAN experiment does: a digit classifier's confidence.
    classifier = mlp(data.example_shape, 10, width=128, depth=1)
    judge = compile_step(classifier_step(classifier, keras.optimizers.Adam(3e-3)), steps_per_execution=32, seed=seed)
    fit(judge, lambda epoch: batches(x_train, data.y_train, 32, seed=seed, epoch=epoch), epochs=classifier_epochs)
    generated = parts.generate_images(models["generator"], parts.fixed_latents(samples, LATENT, seed + 1))
    scores = {
        "RaGAN samples": parts.digit_quality(classifier, generated),
        "untrained generator": parts.digit_quality(classifier, untrained),
        "real held-out digits": parts.digit_quality(classifier, x_val),
    }
    for name, score in scores.items():
        print(f"{name}: digit_confidence {score['digit_confidence']:.3f}, classes_covered {score['classes_covered']}")
    return {name: score["digit_confidence"] for name, score in scores.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one epoch, for the test suite")
    parser.add_argument("--epochs", type=int, default=120)
    arguments = parser.parse_args()
    if arguments.smoke:
        main(epochs=1, classifier_epochs=1, samples=64)
    else:
        main(epochs=arguments.epochs, classifier_epochs=20, samples=1000)
