"""The compiled program: one trace per function, chunks, jit, metrics, skips, phases."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import dataset, tiny_data, tiny_model, tiny_step, weights

from composeloop import step as cs
from composeloop.engine import RetraceWarning, compile_step, fit, run_epoch


def train_epochs(steps_per_execution, epochs=2, jit_compile=False, batch_size=7, examples=40):
    x, y = tiny_data(examples)
    model = tiny_model(l2=0.01)
    program = compile_step(
        tiny_step(model, transform=cs.clip_by_global_norm(0.5)),
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    history = fit(
        program,
        lambda epoch: dataset(x, y, batch_size),
        epochs=epochs,
        validation_data=lambda: dataset(x, y, batch_size),
    )
    return program, model, history


@pytest.fixture(scope="module")
def reference():
    return train_epochs(steps_per_execution=1)


def test_one_trace_each_with_a_partial_last_batch(reference):
    program, _, history = reference
    # 40 examples in batches of 7: 5 full batches and one of 5, twice over.
    assert program.trace_counts == {"train": 1, "val": 1}
    assert int(program.global_step) == 12
    assert set(history[-1]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"}


@pytest.mark.parametrize("steps_per_execution", [4, 100])
def test_steps_per_execution_gives_the_same_weights_in_one_trace(reference, steps_per_execution):
    """6 batches per epoch in chunks of 4 (a partial last chunk) or one chunk of 100."""
    program, model, history = train_epochs(steps_per_execution)
    assert program.trace_counts == {"train": 1, "val": 1}
    for ours, theirs in zip(weights(model), weights(reference[1]), strict=False):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    assert history[-1]["val_accuracy"] == pytest.approx(reference[2][-1]["val_accuracy"])


def test_jit_compile_matches_the_graph_step(reference):
    program, model, _ = train_epochs(steps_per_execution=4, jit_compile=True)
    assert program.trace_counts == {"train": 1, "val": 1}
    for ours, theirs in zip(weights(model), weights(reference[1]), strict=False):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)  # XLA fuses and reorders float ops


def test_a_retrace_is_reported_by_name():
    x, y = tiny_data(8)
    program = compile_step(tiny_step(tiny_model()))
    program.train(iter(dataset(x, y, 4)), 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # float64 features change the iterator's element spec: a genuine retrace.
        program.train(iter(dataset(x.astype(np.float64), y, 4)), 1)
    assert program.trace_counts["train"] == 2
    assert any(
        issubclass(w.category, RetraceWarning) and "'train' was traced 2 times" in str(w.message) for w in caught
    )


def test_metrics_reset_and_count_every_example(reference):
    program, _, history = reference
    states = program.states("val")
    assert states["loss"]["count"] == 40 and states["accuracy"]["count"] == 40
    program.reset("val")
    assert program.states("val")["accuracy"] == {"total": 0.0, "count": 0.0}
    assert 0.0 <= history[-1]["train_accuracy"] <= 1.0


def test_run_epoch_without_a_known_length_stops_when_the_data_ends():
    x, y = tiny_data(10)
    program = compile_step(tiny_step(tiny_model()), steps_per_execution=4)
    unknown = dataset(x, y, 3).filter(lambda batch: True)  # filter hides the cardinality
    assert int(unknown.cardinality()) < 0
    assert run_epoch(program, "train", unknown) == 4
    assert int(program.global_step) == 4


def test_skip_nonfinite_leaves_variables_and_adam_slots_untouched():
    """Invariant 5 through the compiled step: a NaN batch changes nothing."""
    x, y = tiny_data(8)
    model = tiny_model()
    optimizer = keras.optimizers.Adam(0.1)
    phase = cs.Phase(
        "p",
        cs.call_model(),
        cs.sparse_categorical_crossentropy(),
        cs.global_mean(),
        cs.optimizer_apply(optimizer),
        transform=cs.chain(cs.skip_nonfinite(), cs.clip_by_global_norm(1.0)),
    )
    program = compile_step(cs.compose(phase, models={"model": model}))
    program.train(iter(dataset(x, y, 4)), 1)  # one good step, so Adam's slots are non-zero
    before = weights(model) + [v.numpy() for v in optimizer.variables]
    poisoned = x.copy()
    poisoned[0, 0] = np.nan
    program.train(iter(dataset(poisoned, y, 4)), 1)
    after = weights(model) + [v.numpy() for v in optimizer.variables]
    for old, new in zip(before, after, strict=False):
        np.testing.assert_array_equal(old, new)
    assert int(program.withheld_updates) == 1 and int(program.global_step) == 2


def test_each_phase_changes_only_its_own_models_and_sees_earlier_outputs():
    """Invariant 6 for two phases over two models; the second reads the first's outputs."""
    x, y = tiny_data(8)
    first, second = tiny_model(seed=1), tiny_model(seed=2)
    seen = {}

    def forward_second(context):
        seen["earlier"] = sorted(context.outputs)
        return {"logits": context.models["second"](context.batch["x"]) + 0.0 * context.outputs["one"]["logits"]}

    def make(name, model_name, forward):
        return cs.Phase(
            name,
            forward,
            cs.sparse_categorical_crossentropy(),
            cs.global_mean(),
            cs.optimizer_apply(keras.optimizers.SGD(0.1)),
            trains=(model_name,),
        )

    step = cs.compose(
        make("one", "first", cs.call_model("first")),
        make("two", "second", forward_second),
        models={"first": first, "second": second},
    )
    program = compile_step(step)
    before_first, before_second = weights(first), weights(second)
    program.train(iter(dataset(x, y, 8)), 1)
    assert seen["earlier"] == ["one"]
    assert all((a != b).any() for a, b in zip(before_first, weights(first), strict=False))
    assert all((a != b).any() for a, b in zip(before_second, weights(second), strict=False))
    # Now freeze phase one's model by giving it a zero learning rate: only 'second' moves.
    step.phases[0].apply.optimizer.learning_rate.assign(0.0)
    before_first, before_second = weights(first), weights(second)
    program.train(iter(dataset(x, y, 8)), 1)
    assert all((a == b).all() for a, b in zip(before_first, weights(first), strict=False))
    assert all((a != b).any() for a, b in zip(before_second, weights(second), strict=False))


def test_seeds_differ_by_step_and_phase_and_repeat_exactly():
    seeds = []

    def forward(context):
        seeds.append(context.seed)
        noise = tf.random.stateless_uniform([1], context.seed)
        return {"logits": context.models["model"](context.batch["x"]) + 0.0 * noise}

    x, y = tiny_data(4)
    phase = cs.Phase(
        "p",
        forward,
        cs.sparse_categorical_crossentropy(),
        cs.global_mean(),
        cs.optimizer_apply(keras.optimizers.SGD(0.0)),
        repeats=2,
    )
    step = cs.compose(phase, models={"model": tiny_model()})
    context = cs.Context(
        {"x": tf.constant(x), "y": tf.constant(y)},
        step.models,
        True,
        tf.constant([7, 0], tf.int64),
        tf.constant(3, tf.int64),
        tf.constant(4.0),
    )
    step(context, step.empty_states())
    step(context, step.empty_states())
    values = [tuple(s.numpy()) for s in seeds]
    assert values[0] != values[1] and values[:2] == values[2:]  # repeats differ; reruns agree
