"""Users' own parts from config: `_target_` on data, model, optimizer, schedule, transforms,
metrics and the step builder; built-ins keep their types; bad parts are one line.

Most cases compose a config in process (`composeloop.app.load_config`) and build parts
from it, which is where they are checked; the command-line cases that need no
TensorFlow run as subprocesses (fast: the preflight refuses before TensorFlow loads).
"""

from __future__ import annotations

import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_cli import assert_one_line_error, cli

from composeloop import step as cs
from composeloop.app import Composition, load_config
from composeloop.app.compositions import build_composition
from composeloop.config import build
from composeloop.errors import ComposeloopError, ConfigError
from composeloop.parts.data import synthetic

TINY = ["data=synthetic", "data.synthetic_examples=48", "data.synthetic_shape=[4]", "data.synthetic_classes=3"]


# ---------------------------------------------------------------------------- a module of user parts


def tiny_dense(input_shape, num_classes, units: int = 4):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(units), keras.layers.Dense(num_classes)])


def not_a_model(input_shape, num_classes):
    return [input_shape, num_classes]


def halve(gradients, variables, context):
    return gradients.replace([g * 0.5 for g in gradients.values])


def negate_list(values):
    return [-v for v in values]


def make_scaler(factor: float = 2.0):
    return cs.scale(factor)


def mean_logit(name: str = "mean_logit"):
    return cs.mean_output(name, "logits")


def my_data(seed: int, examples: int = 30):
    data = synthetic(examples=examples, shape=(4,), classes=3, seed=seed)
    return {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_val, "y_test": data.y_val}


def my_step(model, optimizer, transform, metrics, temperature: float = 1.0):
    step = cs.compose(
        cs.Phase(
            name="classifier",
            forward=cs.call_model("model", inputs="x", output="logits"),
            loss=cs.sparse_categorical_crossentropy(labels="y", logits="logits"),
            aggregate=cs.global_mean(),
            apply=cs.optimizer_apply(optimizer),
            transform=transform,
            metrics=(cs.mean_loss("loss"), *metrics),
        ),
        models={"model": model},
    )
    return Composition(step, main_metric="val_loss") if temperature else step


def halved_crossentropy(scale: float = 0.5):
    base = cs.sparse_categorical_crossentropy(labels="y", logits="logits", name="loss")
    return lambda context, outputs: {"loss": base(context, outputs)["loss"] * scale}


def warm_schedule(peak: float = 0.1):
    return lambda step: peak * tf.minimum(1.0, tf.cast(step + 1, tf.float32) / 10.0)


@pytest.fixture(scope="module", autouse=True)
def user_module():
    """These functions, importable as `userparts.<name>` for `_target_`."""
    module = types.ModuleType("userparts")
    for name, value in dict(globals()).items():
        if callable(value) and getattr(value, "__module__", None) == __name__:
            setattr(module, name, value)
    sys.modules["userparts"] = module
    yield module
    del sys.modules["userparts"]


def composed(*overrides: str):
    config = load_config([*TINY, *overrides])
    data = build.load_data(config.data, config.seed)
    return config, build_composition(config, data, overrides=list(overrides))


# ---------------------------------------------------------------------------- each part by _target_


def test_the_issues_adamw_command_line_builds_adamw_decayed_once_by_composeloop():
    # optimizer.weight_decay is composeloop's decoupled decay (maskable); AdamW's own is off.
    config, composition = composed("optimizer._target_=keras.optimizers.AdamW", "++optimizer.weight_decay=0.01")
    optimizer = composition.step.phases[0].apply.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay is None
    assert float(optimizer.learning_rate) == pytest.approx(config.optimizer.learning_rate)
    wrapped = build.wrap_apply(composition.step, config.optimizer, config.train).phases[0].apply
    assert wrapped.rate == pytest.approx(0.01) and wrapped.inner.optimizer is optimizer


def test_optimizer_keys_reach_a_target_that_takes_them_and_refuse_one_that_does_not():
    _, composition = composed("optimizer._target_=keras.optimizers.SGD", "optimizer.momentum=0.5")
    assert composition.step.phases[0].apply.optimizer.momentum == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"optimizer.beta_1: SGD failed: Argument\(s\) not recognized"):
        composed("optimizer._target_=keras.optimizers.SGD", "optimizer.beta_1=0.5")


def test_a_model_target_gets_its_arguments_and_the_datas_shape():
    _, composition = composed("model._target_=userparts.tiny_dense", "++model.units=7")
    model = composition.step.models["model"]
    assert [tuple(w.shape) for w in model.trainable_weights[:2]] == [(4, 7), (7,)]
    assert model.output_shape == (None, 3)


def test_a_data_target_is_offered_the_seed_and_may_return_keras_style_keys():
    config = load_config(["data._target_=userparts.my_data", "++data.examples=20"])
    data = build.load_data(config.data, config.seed)
    assert data.x_train.shape == (15, 4) and data.x_val.shape == (5, 4)


def test_transforms_list_runs_in_order_with_targets_lists_and_factories():
    make = build.transform_factory(
        load_config(
            [
                *TINY,
                "gradient.transforms=[{clip_by_value:{min_value:-1.0,max_value:1.0}},"
                "{_target_:userparts.halve},{_target_:userparts.negate_list},"
                "{_target_:userparts.make_scaler,factor:3.0}]",
            ]
        ).gradient
    )
    grads = cs.Gradients([tf.constant([4.0, -0.5])])
    result = make()(grads, [], None)
    np.testing.assert_allclose(result.values[0].numpy(), [-1.5, 0.75])  # clip, halve, negate, x3
    bad = make()(cs.Gradients([tf.constant([np.nan, 1.0])]), [], None)
    assert not bool(bad.apply)  # skip_nonfinite always first


def test_metrics_and_the_step_builder_by_target_with_its_own_argument():
    config, composition = composed(
        "step._target_=userparts.my_step", "++step.temperature=0.5", "metrics=[{_target_:userparts.mean_logit}]"
    )
    assert composition.main_metric == "val_loss"
    assert [m.name for m in composition.step.metrics] == ["loss", "mean_logit"]


def test_any_slots_stage_of_the_classifier_recipe_by_a_nested_target():
    _, composition = composed("++step.loss={_target_:userparts.halved_crossentropy,scale:0.25}")
    batch, outputs = {"y": tf.constant([0])}, {"logits": tf.constant([[0.0, 0.0, 0.0]])}
    seed, step = tf.constant([0, 0], tf.int64), tf.constant(0, tf.int64)
    context = cs.Context(batch, {}, True, seed, step, tf.constant(1.0))
    loss = composition.step.phases[0].loss(context, outputs)["loss"]
    np.testing.assert_allclose(loss.numpy(), [0.25 * np.log(3.0)], rtol=1e-6)
    with pytest.raises(ConfigError, match=r"step.loss._target_: cannot import 'userparts.nope'"):
        composed("++step.loss={_target_:userparts.nope}")


def test_a_user_schedule_by_target():
    config = load_config([*TINY, "optimizer=sgd", "optimizer.schedule={_target_:userparts.warm_schedule,peak:0.2}"])
    optimizer = build.optimizer_factory(config.optimizer, 100)()
    assert float(optimizer.learning_rate) == pytest.approx(0.02)


# ---------------------------------------------------------------------------- bad parts: one line naming the key


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["model._target_=userparts.not_a_model"],
            "model._target_: userparts.not_a_model gave list, not a Keras model",
        ),
        (
            ["model._target_=userparts.tiny_dense", "++model.colour=red"],
            "model._target_: tiny_dense does not take 'colour'",
        ),
        (["optimizer._target_=userparts.tiny_dense"], "optimizer._target_"),
        (["optimizer._target_=keras.optimizers.Adam", "++optimizer.nesterov=true"], "optimizer.nesterov: Adam failed"),
        (["gradient.transforms=[{_target_:userparts.mean_logit}]"], "gradient.transforms[0]"),
        (["metrics=[{_target_:userparts.halve}]"], "metrics[0]"),
        (["step._target_=userparts.tiny_dense"], "step._target_"),
        (["step._target_=userparts.my_step", "++step.colour=1"], "step._target_: my_step does not take 'colour'"),
        (["model._target_=userparts.missing"], "model._target_: cannot import 'userparts.missing'"),
        (["++model.blocks=3"], "model.blocks: not a key of the built-in model"),
    ],
)
def test_a_bad_part_is_one_line_naming_the_key(overrides, expected):
    with pytest.raises(ComposeloopError) as raised:
        composed(*overrides)
    message = str(raised.value)
    assert expected in message and "\n" not in message


def test_a_composition_refuses_an_override_of_a_part_it_never_uses():
    # The GAN builds its players from gan.*: a model.* override would be silently ignored.
    with pytest.raises(ConfigError, match="model.width: the step builder gan_composition does not use model"):
        composed("+experiment=gan", "model.width=16")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("model._target_=does.not.exist",), "model._target_: cannot import 'does.not.exist'"),
        (("optimizer._target_=keras.optimizers.NoSuchThing",), "keras.optimizers has no 'NoSuchThing'"),
        (("gradient.transforms=[no_such_transform]",), "gradient.transforms[0]: unknown 'no_such_transform'"),
        (("++optimizer.amsgrad=true",), "optimizer.amsgrad: not a key of the built-in optimizer"),
        (("train.accumulate=99999999999999999999",), "train.accumulate: must be an integer in [1, 2147483647]"),
    ],
)
def test_command_line_refuses_bad_parts_before_anything_is_written(tmp_path, args, expected):
    result = cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, expected)
    assert not (tmp_path / "run").exists()
