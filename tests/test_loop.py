"""The production loop in-process: events, exact resume, NaN policies, early stopping, reports."""

from __future__ import annotations

import csv
import glob

import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import tiny_data, tiny_model, weights
from tensorflow.core.util import event_pb2

from composeloop import step as cs
from composeloop.engine import compile_step
from composeloop.engine.checkpoint import Checkpoints
from composeloop.engine.curves import plot_curves
from composeloop.engine.events import Event, RunState, every_steps, on_chunk, on_epoch_end, on_run_begin, on_run_end
from composeloop.engine.loop import run_loop
from composeloop.engine.report import write_history
from composeloop.engine.stopping import best_epoch, early_stopping, nan_policy
from composeloop.engine.tensorboard import tensorboard
from composeloop.errors import CheckpointError, ConfigError, NonFiniteLossError
from composeloop.parts.data import batches
from composeloop.parts.recipes import classifier_phase

X, Y = tiny_data(examples=40)  # batch 8: five steps an epoch
X_VAL, Y_VAL = tiny_data(examples=16, seed=1)


def program_for(seed: int = 0, learning_rate: float = 0.01, spe: int = 1, nan_policy="skip", width_model=None):
    model = width_model or tiny_model(seed=seed)
    phase = classifier_phase(keras.optimizers.Adam(learning_rate), transform=cs.skip_nonfinite())
    step = cs.compose(phase, models={"model": model})
    return compile_step(step, steps_per_execution=spe, seed=seed, nan_policy=nan_policy, record_logs=True), model


def train_data(epoch: int) -> tf.data.Dataset:
    return batches(X, Y, 8, seed=0, epoch=epoch)


def val_data() -> tf.data.Dataset:
    return batches(X_VAL, Y_VAL, 8, shuffle=False)


def with_nan_at(epoch_and_batch: tuple[int, int]):
    """train_data, except that one batch of one epoch holds a NaN input."""

    def data(epoch: int) -> tf.data.Dataset:
        x = X[np.concatenate([np.random.default_rng([0, epoch]).permutation(len(X))])].copy()
        if epoch == epoch_and_batch[0]:
            x[epoch_and_batch[1] * 8] = np.nan
        return batches(x, Y, 8, shuffle=False)

    return data


def test_events_fire_in_order_and_step_events_cut_chunks():
    program, _ = program_for(spe=4)
    seen = []
    handlers = [
        on_run_begin(lambda s: seen.append(("run_begin", s.step))),
        every_steps(3, lambda s: seen.append(("steps", s.step))),
        on_chunk(lambda s: seen.append(("chunk", s.step))),
        on_epoch_end(lambda s: seen.append(("epoch_end", s.step, s.epoch, s.batch))),
        on_run_end(lambda s: seen.append(("run_end", s.status))),
    ]
    state = run_loop(program, train_data, epochs=2, handlers=handlers)
    assert seen[0] == ("run_begin", 0) and seen[-1] == ("run_end", "completed")
    assert [e[1] for e in seen if e[0] == "steps"] == [3, 6, 9]
    # chunks of at most 4, cut at the step-3 boundaries and at the epoch end (5 steps)
    assert [e[1] for e in seen if e[0] == "chunk"] == [3, 5, 6, 9, 10]
    assert [e[1:] for e in seen if e[0] == "epoch_end"] == [(5, 1, 0), (10, 2, 0)]
    assert state.step == 10 and program.trace_counts == {"train": 1}


def test_resume_mid_epoch_equals_a_straight_run(tmp_path):
    straight, straight_model = program_for(spe=2)
    reference = run_loop(straight, train_data, epochs=3, validation_data=val_data)

    first, _ = program_for(spe=2)
    checkpoints = Checkpoints(tmp_path / "ckpt", first)
    stopped = run_loop(
        first, train_data, epochs=3, validation_data=val_data, handlers=[every_steps(7, lambda s: s.stop("test"))]
    )
    assert (stopped.step, stopped.epoch, stopped.batch) == (7, 1, 2)
    checkpoints.save(stopped)

    resumed, resumed_model = program_for(seed=5, spe=3)  # other initial weights: the restore must win
    state = Checkpoints(tmp_path / "ckpt", resumed).restore_latest(RunState(resumed, 3))
    assert state.history == stopped.history and state.extras["resumed_from_step"] == 7
    final = run_loop(resumed, train_data, epochs=3, validation_data=val_data, state=state)

    assert final.step == reference.step == 15
    for got, want in zip(weights(resumed_model), weights(straight_model), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(final.history, reference.history, strict=True):
        assert {k: v for k, v in got.items() if k != "seconds"} == pytest.approx(
            {k: v for k, v in want.items() if k != "seconds"}, rel=1e-6
        )


@pytest.mark.parametrize("policy", ["raise", "skip", "stop"])
def test_nan_policy(policy):
    program, model = program_for(nan_policy=policy)
    data = with_nan_at((0, 2))
    if policy == "raise":
        before = []
        with pytest.raises(NonFiniteLossError, match="not finite at step 2"):
            run_loop(
                program,
                data,
                epochs=2,
                handlers=[every_steps(2, lambda s: before.extend(weights(model))), *nan_policy(policy)],
            )
        for got, want in zip(weights(model), before, strict=True):
            np.testing.assert_array_equal(got, want)  # the NaN step changed nothing
        assert int(program.global_step) == 3
        return
    state = run_loop(program, data, epochs=2, handlers=nan_policy(policy))
    assert all(np.isfinite(w).all() for w in weights(model))
    assert int(program.nonfinite_steps) == 1
    if policy == "skip":
        assert state.status == "completed" and state.step == 10
    else:
        assert state.status == "stopped_nonfinite" and state.step == 3 and "step 2" in state.reason


def test_nan_policy_is_spelled_as_the_config_spells_it():
    step = cs.compose(classifier_phase(keras.optimizers.SGD(0.1)), models={"model": tiny_model()})
    with pytest.raises(ValueError, match="nan_policy must be None or one of raise, skip, stop, got 'halt'"):
        compile_step(step, nan_policy="halt")
    program = compile_step(step)  # no policy: no check, and the handler refuses it
    assert program.nan_policy is None
    with pytest.raises(ValueError, match=r"compile_step\(nan_policy=...\)"):
        run_loop(program, train_data, epochs=1, handlers=nan_policy("skip"))


def test_best_epoch_and_min_delta():
    history = [{"val_loss": 1.0}, {"val_loss": 0.95}, {"val_loss": 0.5}, {"val_loss": float("nan")}, {}]
    assert best_epoch(history, "val_loss") == 2
    assert best_epoch(history, "val_loss", min_delta=0.6) == 0
    assert best_epoch([{"val_accuracy": 0.5}, {"val_accuracy": 0.7}], "val_accuracy") == 1  # auto: max
    assert best_epoch([{"val_loss": 0.5}], "val_loss", mode="max") == 0
    assert best_epoch([{}], "val_loss") is None


def test_early_stopping_stops_after_patience_and_saves_the_best():
    program, _ = program_for(learning_rate=1e-9)  # no learning: no epoch after the first improves
    improved = []
    handlers = early_stopping("val_loss", patience=2, min_delta=1e-3, on_improve=lambda s: improved.append(s.epoch))
    state = run_loop(program, train_data, epochs=10, validation_data=val_data, handlers=handlers)
    assert state.status == "stopped_early" and len(state.history) == 3
    assert improved == [1] and state.extras["best_epoch"] == 1
    # a resumed run that has already waited long enough stops before training
    again = RunState(program, 10, epoch=3, history=state.history)
    assert run_loop(program, train_data, epochs=10, validation_data=val_data, handlers=handlers, state=again).step == 15
    with pytest.raises(ConfigError, match="early_stopping.monitor: 'val_acc' is not logged"):
        run_loop(program, train_data, epochs=1, validation_data=val_data, handlers=early_stopping("val_acc", 1))


def test_checkpoint_that_does_not_fit_names_the_variables_and_is_kept(tmp_path):
    program, _ = program_for()
    checkpoints = Checkpoints(tmp_path, program)
    path = checkpoints.save(RunState(program, 1))
    wider = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16), keras.layers.Dense(3)])
    other, _ = program_for(width_model=wider)
    with pytest.raises(
        CheckpointError, match=r"does not fit this run: model_model/000 \(.*kernel\) has shape \[5, 8\]"
    ):
        Checkpoints(tmp_path, other).restore(path)
    data_file = glob.glob(path + ".data-*")[0]
    with open(data_file, "r+b") as handle:
        handle.truncate(10)
    with pytest.raises(CheckpointError, match="cannot be read"):
        Checkpoints(tmp_path, program).restore(path)
    assert Checkpoints(tmp_path, program).latest == path  # nothing deleted or renamed
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match="is not writable"):
        Checkpoints(tmp_path / "file" / "ckpt", program)


def test_reports_metric_files_curves_and_tensorboard(tmp_path):
    program, _ = program_for()
    handlers = tensorboard(tmp_path / "tb", every=2)
    state = run_loop(program, train_data, epochs=2, validation_data=val_data, handlers=handlers)
    write_history(tmp_path, state.history)
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and float(rows[1]["val_loss"]) == state.history[1]["val_loss"]
    plot_curves(state.history, tmp_path / "curves.png")
    image = tf.io.decode_png(tf.io.read_file(str(tmp_path / "curves.png")))
    assert image.shape[0] > 100 and image.shape[1] > 300 and float(tf.math.reduce_std(tf.cast(image, tf.float32))) > 1

    def tags(kind: str) -> set[str]:
        found = set()
        for path in glob.glob(str(tmp_path / "tb" / kind / "events.*")):
            for record in tf.data.TFRecordDataset(path):
                found |= {v.tag for v in event_pb2.Event.FromString(record.numpy()).summary.value}
        return found

    assert {"loss", "accuracy", "learning_rate/classifier", "grad_norm/classifier", "steps_per_second"} <= tags("train")
    assert {"loss", "accuracy"} <= tags("val")


def test_schedules():
    from composeloop.step import schedules

    cosine = schedules.cosine(1.0, 100, floor=0.1)
    assert float(cosine(tf.constant(0))) == pytest.approx(1.0)
    assert float(cosine(tf.constant(50))) == pytest.approx(0.55)
    assert float(cosine(tf.constant(500))) == pytest.approx(0.1)
    cyclic = schedules.triangular(0.1, 1.0, cycle_steps=10)
    assert [round(float(cyclic(tf.constant(s))), 4) for s in (0, 5, 10, 15, 2)] == [0.1, 1.0, 0.1, 1.0, 0.46]
    warm = schedules.warmup(schedules.constant(2.0), steps=4)
    assert [float(warm(tf.constant(s))) for s in (0, 3, 4, 100)] == [0.5, 2.0, 2.0, 2.0]
    optimizer = keras.optimizers.SGD(learning_rate=schedules.keras_schedule(cyclic))
    variable = keras.Variable([1.0])
    for _ in range(5):
        optimizer.apply([tf.constant([1.0])], [variable])
    assert float(optimizer.learning_rate) == pytest.approx(1.0)  # evaluated at its 5 updates


def test_event_kinds_are_the_documented_ones():
    assert [e.value for e in Event] == ["run_begin", "epoch_begin", "chunk", "steps", "epoch_end", "run_end"]


def test_progress_bar_on_a_terminal_and_epoch_lines_elsewhere(monkeypatch):
    import io

    from composeloop.engine import progress as progress_module

    monkeypatch.setattr(progress_module, "_REDRAW_SECONDS", 0.0)  # draw after every chunk
    program, _ = program_for()
    terminal, log = io.StringIO(), io.StringIO()
    handlers = [
        *progress_module.progress(terminal, interactive=True),
        *progress_module.progress(log, interactive=False),
    ]
    run_loop(program, train_data, epochs=2, validation_data=val_data, handlers=handlers)
    assert log.getvalue().count("\n") == 2 and log.getvalue().startswith("epoch 1/2  train_loss")
    assert "\r" not in log.getvalue()
    drawn = terminal.getvalue().split("\r")
    assert any("epoch 1/2 3/5 [" in part and "steps/s" in part and "ETA 0:00:" in part for part in drawn)
    assert any("train_loss" in part and "step 8" in part for part in drawn)
