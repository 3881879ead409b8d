"""composeloop's shared vocabulary: each named choice and each rule, defined once.

This module owns the concepts that the config schema, the engine, the application and
the sweep summary all speak of: what a run does after a non-finite step, which way a
metric improves, the kinds of strategy and cluster, the GAN losses, the numeric
precisions, and the one rule that says whether a metric is better higher or lower. It is
plain Python (no TensorFlow, no Hydra) so that every layer may import it, the config
preflight included, without paying for TensorFlow's import.

The members' values are the spellings users type (``train.nan_policy=skip``) and read
(``"mode": "max"`` in summary.json); OmegaConf matches enum members by NAME, which is why
`NanPolicy` is spelled functionally ("raise" is a Python keyword).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

# What a run does after a step whose loss or gradients are not finite. The step's update
# is always withheld (the gradient chain starts with `skip_nonfinite`); this is what next.
NanPolicy = enum.Enum("NanPolicy", {"raise": "raise", "skip": "skip", "stop": "stop"})
NanPolicy.__doc__ = (
    "raise: stop with an error; skip: carry on and count it; stop: end the run, keep the last checkpoint."
)


class Direction(enum.Enum):
    """Which way a monitored metric improves; `auto` asks `higher_is_better`."""

    auto = "auto"
    min = "min"
    max = "max"


class StrategyKind(enum.Enum):
    """The `tf.distribute` strategies composeloop places a run on."""

    default = "default"  # no distribution: one replica on TensorFlow's default device
    one_device = "one_device"
    mirrored = "mirrored"  # synchronous replicas on one machine (GPUs, else logical CPUs)
    multi_worker = "multi_worker"  # synchronous replicas over processes or machines


class Cluster(enum.Enum):
    """Where a multi-worker run learns its cluster: `auto` picks SLURM inside a SLURM job
    step with more than one task, else TF_CONFIG (see `composeloop.cluster.resolve`)."""

    auto = "auto"
    tf_config = "tf_config"  # TF_CONFIG: composeloop.launch, Kubeflow's TFJob, by hand
    slurm = "slurm"  # srun's SLURM_* variables


class Precision(enum.Enum):
    """Keras dtype policies a run computes in."""

    float32 = "float32"
    mixed_bfloat16 = "mixed_bfloat16"
    mixed_float16 = "mixed_float16"  # adds dynamic loss scaling


class GanLoss(enum.Enum):
    """The adversarial losses of `composeloop.step.gan`, for both players."""

    non_saturating = "non_saturating"
    minimax = "minimax"
    least_squares = "least_squares"
    hinge = "hinge"
    wasserstein = "wasserstein"


class Mode(enum.Enum):
    """What a command does with a run directory."""

    train = "train"
    evaluate = "evaluate"  # the checkpointed weights on the validation data: evaluation.json
    predict = "predict"  # the model on predict.input: predictions.npz
    export = "export"  # a SavedModel for serving: export/
    lr_find = "lr_find"  # the learning-rate range test: lr_find.png, summary.json


class Weights(enum.Enum):
    """Which checkpoint the modes other than train restore."""

    latest = "latest"
    best = "best"  # the best epoch's, kept apart when early stopping watched a metric


# The prefixes epoch logs carry: a metric `accuracy` is logged as `train_accuracy` and, on
# the validation data, `val_accuracy`. "val" is the one word for validation everywhere.
TRAIN, VAL = "train", "val"

# Words that mark a metric that improves upward, matched as whole words of the name
# (`val_accuracy`, `top_k_acc`, `digit_confidence`); every other metric improves downward,
# losses and errors (`val_loss`, `val_mse`) included, as in Keras's EarlyStopping.
_HIGHER_IS_BETTER = (
    "acc",
    "accuracy",
    "auc",
    "confidence",
    "covered",
    "f1",
    "iou",
    "precision",
    "quality",
    "recall",
    "return",
    "reward",
    "score",
)
_WORDS = re.compile(r"[a-z0-9]+")


def higher_is_better(metric: str, declared: Mapping[str, bool] | None = None) -> bool:
    """Whether `metric` improves upward: THE rule early stopping, sweeps and search share.

    A direction a metric declares (`composeloop.step.Metric(higher_is_better=...)`, recorded
    in summary.json as ``directions``) wins; otherwise a name containing one of the words
    accuracy, acc, auc, confidence, covered, f1, iou, precision, quality, recall, return,
    reward or score improves upward and every other name (losses, errors, mse) downward.

    Args:
      metric: a logged name, with or without its ``train_``/``val_`` prefix.
      declared: directions declared by the metrics themselves, by logged or bare name.

    Example:
      >>> higher_is_better("val_accuracy"), higher_is_better("val_mse")
      (True, False)
    """
    if declared:
        bare = metric.split("_", 1)[1] if metric.startswith((f"{TRAIN}_", f"{VAL}_")) else metric
        for name in (metric, bare):
            if name in declared:
                return bool(declared[name])
    words = _WORDS.findall(metric.lower())
    return any(word in _HIGHER_IS_BETTER for word in words)


def resolve_direction(metric: str, direction: Direction | str = Direction.auto, declared=None) -> Direction:
    """`direction` itself, or for `auto` the direction `higher_is_better` gives.

    Example:
      >>> resolve_direction("val_loss").value
      'min'
    """
    direction = Direction(direction) if isinstance(direction, str) else direction
    if direction is not Direction.auto:
        return direction
    return Direction.max if higher_is_better(metric, declared) else Direction.min
