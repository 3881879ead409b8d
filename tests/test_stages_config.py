"""Issue 18's stages from config, in process: keys and their one-line errors, the wrapping
order, never decaying twice, wrappers under accumulation and withheld updates, and the
group transforms of a transform list.

Configs are composed with Hydra (no process, no training); steps are tiny and each is
compiled once.
"""

from __future__ import annotations

import attrs
import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import tiny_data, tiny_model, tiny_step
from hypothesis import given, settings
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.app.compositions import check_used
from composeloop.app.preflight import load_config
from composeloop.config import build
from composeloop.config.schema import GradientConfig, OptimizerConfig, TrainConfig
from composeloop.engine import compile_step
from composeloop.errors import ConfigError
from composeloop.step.groups import MaskWarning
from composeloop.step.wrapping import unwrap
from composeloop.testing import StepRunner, check_accumulation
from composeloop.vocabulary import Precision

X, Y = tiny_data(examples=16)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.ema=1.0"], "train.ema: must be between 0 and 1 (exclusive), got 1.0"),
        (["train.ema=0"], "train.ema: must be between 0 and 1 (exclusive)"),
        (["train.lookahead=0"], "train.lookahead: must be an integer in [1,"),
        (["train.lookahead=5", "train.lookahead_alpha=1.5"], "train.lookahead_alpha: must be in (0, 1]"),
        (["optimizer.weight_decay=-1"], "optimizer.weight_decay: must be >= 0"),
        (
            ["optimizer.weight_decay=0.1", "optimizer.weight_decay_exclude=[bias,'(']"],
            "optimizer.weight_decay_exclude[1]: '(' is not a regular expression",
        ),
        (["optimizer.weight_decay_exclude=[bias]"], "optimizer.weight_decay_exclude: excludes variables from"),
        (["lr_find.start=1.0", "lr_find.end=1.0"], "lr_find.start: must be below lr_find.end (1.0), got 1.0"),
        (["lr_find.steps=1"], "lr_find.steps: must be an integer in [2,"),
        (["lr_find.divergence=1"], "lr_find.divergence: must be > 1"),
        (
            ["gradient.transforms=[{partition: {groups: []}}]"],
            "gradient.transforms[0].partition.groups: must be a non-empty",
        ),
        (
            ["gradient.transforms=[{partition: {groups: [{pattern: a, transforms: [nope]}]}}]"],
            "gradient.transforms[0].partition.groups[0].transforms[0]: unknown 'nope'",
        ),
        (["gradient.transforms=[{masked: {mask: kernel}}]"], "gradient.transforms[0].masked: needs 'transforms'"),
        (
            ["gradient.transforms=[{masked: {mask: [], transforms: []}}]"],
            "gradient.transforms[0].masked.mask: must name",
        ),
    ],
)
def test_bad_stage_keys_are_one_line_naming_the_key(overrides, expected):
    with pytest.raises(ConfigError) as error:
        load_config(overrides)
    assert expected in str(error.value) and "\n" not in str(error.value)


def _apply_chain(step):
    return [type(stage).__name__ for stage in unwrap(step.phases[0].apply)]


def test_wrappers_nest_decay_innermost_then_lookahead_then_ema_and_nothing_configured_is_untouched():
    step = tiny_step(tiny_model())
    assert build.wrap_apply(step, OptimizerConfig(), TrainConfig()) is step
    wrapped = build.wrap_apply(
        step, OptimizerConfig(weight_decay=0.01), TrainConfig(ema=0.9, lookahead=3, lookahead_alpha=0.5)
    )
    assert _apply_chain(wrapped) == ["ExponentialMovingAverage", "Lookahead", "DecoupledWeightDecay", "OptimizerApply"]
    assert wrapped.models["model"] is step.models["model"]
    ema_only = build.wrap_apply(step, OptimizerConfig(), TrainConfig(ema=0.99, ema_warmup=False))
    (stage,) = cs.ema_stages(ema_only)
    assert (stage.decay, stage.warmup) == (0.99, False)


def test_exclusions_warn_once_per_idle_pattern_and_refuse_excluding_everything():
    step = tiny_step(tiny_model())
    with pytest.warns(
        MaskWarning, match=r"optimizer.weight_decay_exclude\[1\]: 'embedding' matches no variable"
    ) as seen:
        wrapped = build.wrap_apply(
            step, OptimizerConfig(weight_decay=0.1, weight_decay_exclude=["bias", "embedding"]), TrainConfig()
        )
    assert len(seen) == 1
    decay = wrapped.phases[0].apply
    assert decay.decayed(step.variables(step.phases[0])) == [True, False, True, False]  # kernels only
    with pytest.raises(ConfigError, match=r"optimizer.weight_decay_exclude: \['.'\] matches every one of the 4"):
        build.wrap_apply(step, OptimizerConfig(weight_decay=0.1, weight_decay_exclude=["."]), TrainConfig())


def test_a_stage_the_builder_already_put_there_or_an_optimizer_that_decays_itself_is_refused():
    model = tiny_model()
    phase = tiny_step(model).phases[0]
    own_ema = cs.compose(attrs.evolve(phase, apply=cs.ema(phase.apply, 0.9)), models={"model": model})
    with pytest.raises(ConfigError, match="train.ema: phase 'classifier' already has a ema stage"):
        build.wrap_apply(own_ema, OptimizerConfig(), TrainConfig(ema=0.99))
    adamw = cs.compose(attrs.evolve(phase, apply=cs.optimizer_apply(keras.optimizers.AdamW())), models={"model": model})
    with pytest.raises(ConfigError, match=r"optimizer.weight_decay: phase 'classifier''s optimizer decays weights"):
        build.wrap_apply(adamw, OptimizerConfig(weight_decay=0.01), TrainConfig())
    own_apply = cs.compose(attrs.evolve(phase, apply=lambda g, v: None), models={"model": model})
    with pytest.raises(ConfigError, match="no learning rate to scale the decay by"):
        build.wrap_apply(own_apply, OptimizerConfig(weight_decay=0.01), TrainConfig())


def test_optimizer_weight_decay_on_adamw_is_adamws_rule_applied_once():
    """AdamW from config with optimizer.weight_decay == Keras's AdamW(weight_decay) itself, step for step."""
    config = OptimizerConfig(_target_="keras.optimizers.AdamW", learning_rate=0.05, weight_decay=0.2)
    made = build.optimizer_factory(config)()
    assert isinstance(made, keras.optimizers.AdamW) and made.weight_decay is None
    ours = build.wrap_apply(
        cs.compose(
            attrs.evolve(tiny_step(tiny_model()).phases[0], apply=cs.optimizer_apply(made)),
            models={"model": tiny_model()},
        ),
        config,
        TrainConfig(),
    )
    keras_own = tiny_step(tiny_model())
    keras_own = cs.compose(
        attrs.evolve(keras_own.phases[0], apply=cs.optimizer_apply(keras.optimizers.AdamW(0.05, weight_decay=0.2))),
        models=keras_own.models,
    )
    runs = [StepRunner(ours), StepRunner(keras_own)]
    batch = {"x": X, "y": Y}
    for runner in runs:
        runner.train_steps([[batch]] * 3)
    for a, b in zip(runs[0].step.models["model"].weights, runs[1].step.models["model"].weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def _wrapped_step():
    return build.wrap_apply(
        tiny_step(tiny_model(), learning_rate=0.1),
        OptimizerConfig(weight_decay=0.05, weight_decay_exclude=["bias"]),
        TrainConfig(ema=0.9, lookahead=2),
    )


@pytest.mark.property
@settings(max_examples=4)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=3))
def test_wrappers_move_once_per_accumulated_update_as_one_big_batch_would(sizes):
    # Invariant 4 with decay, lookahead and EMA around the apply stage: the wrappers run
    # only for an applied update, so k micro-batches move their state as one batch does.
    offsets = np.cumsum([0, *sizes])
    parts = [{"x": X[a:b], "y": Y[a:b]} for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    check_accumulation(_wrapped_step, parts)


def test_accumulation_and_loss_scaling_act_on_other_slots_and_keep_the_wrapped_apply():
    step = build.adapt_step(_wrapped_step(), TrainConfig(accumulate=2, precision=Precision.mixed_float16))
    assert _apply_chain(step) == ["ExponentialMovingAverage", "Lookahead", "DecoupledWeightDecay", "OptimizerApply"]
    assert step.phases[0].aggregate.loss_scale is not None


def test_weight_decay_keys_are_used_by_any_builder_being_wired_by_the_application():
    def builds_its_own_optimizer(model):
        return model

    check_used(builds_its_own_optimizer, "mine", ["optimizer.weight_decay=0.1", "optimizer.weight_decay_exclude=[b]"])
    with pytest.raises(ConfigError, match="optimizer.learning_rate: the step builder mine does not use optimizer"):
        check_used(builds_its_own_optimizer, "mine", ["optimizer.weight_decay=0.1", "optimizer.learning_rate=0.1"])


def test_a_withheld_update_moves_no_wrapper():
    step = _wrapped_step()
    step = cs.compose(attrs.evolve(step.phases[0], transform=cs.skip_nonfinite()), models=step.models)
    runner = StepRunner(step)
    before = [v.numpy() for v in runner.variables]
    runner.train_once([{"x": np.full_like(X, np.nan), "y": Y}])
    for was, now in zip(before, runner.variables, strict=True):
        np.testing.assert_array_equal(was, now.numpy())


def test_group_transforms_from_a_transform_list():
    config = GradientConfig(
        transforms=[
            {
                "partition": {
                    "groups": [{"pattern": "/body/", "transforms": [{"scale": {"factor": 0.5}}]}],
                    "default": [{"masked": {"mask": ["kernel"], "transforms": [{"scale": {"factor": 3.0}}]}}],
                }
            },
            {"add_decayed_weights": {"rate": 1.0, "exclude": ["bias"]}},
        ]
    )
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(4, name="body"), keras.layers.Dense(3, name="head")]
    )
    variables = model.trainable_variables  # .../body/kernel, .../body/bias, .../head/kernel, .../head/bias
    ones = [tf.ones_like(v) for v in variables]
    result = build.transform_factory(config)()(cs.Gradients(ones), variables, None).values
    expected = [0.5 + variables[0].numpy(), 0.5, 3.0 + variables[2].numpy(), 1.0]
    for got, want in zip(result, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), np.broadcast_to(want, got.shape), rtol=1e-6)


def test_a_group_pattern_that_matches_nothing_warns_naming_its_key_when_compiled():
    config = GradientConfig(transforms=[{"masked": {"mask": "embedding", "transforms": ["identity"]}}])
    step = tiny_step(tiny_model(), transform=build.transform_factory(config)())
    with pytest.warns(MaskWarning, match=r"gradient.transforms\[0\].masked: mask pattern 'embedding' matches no"):
        compile_step(step)
