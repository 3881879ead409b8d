"""The step algebra: pure stages in six slots, composed into phases and steps.

Nothing here knows about Hydra, files, printing or `tf.distribute`; the engine turns a
`Step` into a running program.
"""

from composeloop.step.aggregate import global_mean, mean_and_model_losses, model_losses, total, weighted
from composeloop.step.apply import OptimizerApply, optimizer_apply
from composeloop.step.compose import Step, compose, fold_seed
from composeloop.step.decay import DecoupledWeightDecay, add_decayed_weights, decoupled_weight_decay
from composeloop.step.ema import ExponentialMovingAverage, ema, ema_stages, ema_weights
from composeloop.step.forward import call_model
from composeloop.step.gan import (
    GAN_LOSSES,
    combine,
    discriminate,
    discriminator_loss,
    generate,
    generator_loss,
    gradient_penalty,
    latent_noise,
)
from composeloop.step.gradients import (
    all_finite,
    chain,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_value,
    global_norm,
    identity,
    map_gradients,
    scale,
    skip_nonfinite,
)
from composeloop.step.groups import MaskWarning, masked, partition
from composeloop.step.lookahead import Lookahead, lookahead
from composeloop.step.losses import sparse_categorical_crossentropy
from composeloop.step.metrics import Metric, accuracy, mean_loss, mean_output, merge
from composeloop.step.phase import Phase
from composeloop.step.records import LOCAL, Context, Gradients, Replication
from composeloop.step.wrapping import ApplyWrapper

__all__ = [
    "ApplyWrapper",
    "Context",
    "DecoupledWeightDecay",
    "ExponentialMovingAverage",
    "GAN_LOSSES",
    "Gradients",
    "LOCAL",
    "Lookahead",
    "MaskWarning",
    "Metric",
    "OptimizerApply",
    "Phase",
    "Replication",
    "Step",
    "accuracy",
    "add_decayed_weights",
    "all_finite",
    "call_model",
    "chain",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_value",
    "combine",
    "compose",
    "decoupled_weight_decay",
    "discriminate",
    "discriminator_loss",
    "ema",
    "ema_stages",
    "ema_weights",
    "fold_seed",
    "generate",
    "generator_loss",
    "global_mean",
    "global_norm",
    "gradient_penalty",
    "identity",
    "latent_noise",
    "lookahead",
    "map_gradients",
    "masked",
    "mean_and_model_losses",
    "mean_loss",
    "mean_output",
    "merge",
    "model_losses",
    "optimizer_apply",
    "partition",
    "scale",
    "skip_nonfinite",
    "sparse_categorical_crossentropy",
    "total",
    "weighted",
]
