"""Resuming past unreadable checkpoints (`engine.checkpoint.Checkpoints.restore_latest`).

One tiny program is saved at steps 10, 20 and 30 with its first kernel filled with the
step, so a restore shows which checkpoint it read. The newest is then damaged in each way a
disk or a crash can damage it; the resume must warn, restore step 20, delete nothing, and
the saves after it must keep ``keep`` good checkpoints. A checkpoint that does not fit the
program is still refused, never skipped.
"""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from builders import tiny_model

from composeloop import step as cs
from composeloop.engine import compile_step
from composeloop.engine.checkpoint import Checkpoints, CheckpointWarning
from composeloop.engine.events import RunState
from composeloop.errors import CheckpointError
from composeloop.parts.recipes import classifier_phase

STEPS = (10, 20, 30)


def make_program(model: keras.Model):
    step = cs.compose(classifier_phase(keras.optimizers.Adam(0.01)), models={"model": model})
    return compile_step(step, seed=0)


MODEL = tiny_model()
PROGRAM = make_program(MODEL)  # built once; every test saves and restores this one


def save_at(checkpoints: Checkpoints, step: int) -> str:
    PROGRAM.global_step.assign(step)
    MODEL.weights[0].assign(np.full(MODEL.weights[0].shape, step, np.float32))
    return checkpoints.save(RunState(PROGRAM, 1))


def saved(directory: Path, steps=STEPS) -> Path:
    checkpoints = Checkpoints(directory, PROGRAM, keep=3)
    for step in steps:
        save_at(checkpoints, step)
    return directory


def files(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under `directory` with its size and mtime: what 'nothing changed' compares."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            stat = (Path(root) / name).stat()
            found[os.path.relpath(Path(root) / name, directory)] = (stat.st_size, stat.st_mtime_ns)
    return found


def listed(directory: Path) -> list[str]:
    """The checkpoints the state file lists, oldest first, then the latest."""
    lines = (directory / "checkpoint").read_text().splitlines()
    paths = [line.split('"')[1] for line in lines if line.startswith("all_model_checkpoint_paths")]
    latest = next(line.split('"')[1] for line in lines if line.startswith("model_checkpoint_path"))
    return [*paths, latest]


def damage(prefix: str, how: str) -> None:
    data, index = glob.glob(prefix + ".data-*")[0], prefix + ".index"
    if how == "truncated data":
        os.truncate(data, 10)
    elif how == "corrupt data":
        with open(data, "r+b") as handle:
            handle.seek(os.path.getsize(data) // 2)
            handle.write(b"\xff" * 16)
    elif how == "truncated index":
        os.truncate(index, os.path.getsize(index) // 2)
    elif how == "missing shard":
        os.remove(data)
    elif how == "missing index":
        os.remove(index)


def restored_step() -> int:
    return int(MODEL.weights[0].numpy().flat[0])


DAMAGE = ["truncated data", "corrupt data", "truncated index", "missing shard", "missing index"]


@pytest.mark.parametrize("how", DAMAGE)
def test_an_unreadable_latest_checkpoint_falls_back_with_a_warning_and_deletes_nothing(tmp_path, how):
    directory = saved(tmp_path / "checkpoints")
    damage(str(directory / "ckpt-30"), how)
    before = files(directory)
    save_at(Checkpoints(tmp_path / "other", PROGRAM), 99)  # the program holds other values now
    with pytest.warns(CheckpointWarning) as caught:
        state = Checkpoints(directory, PROGRAM, keep=3).restore_latest(RunState(PROGRAM, 1))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"{directory}/ckpt-30 (" in message and f"resumed from {directory}/ckpt-20 (step 20)" in message
    assert "\n" not in message
    assert state.step == 20 and restored_step() == 20 and state.extras["resumed_from_step"] == 20
    assert state.extras["unreadable_checkpoints"] == [f"{directory}/ckpt-30"]
    assert message == f"composeloop: {state.extras['resume_note']}"
    assert files(directory) == before  # nothing deleted, nothing rewritten


def test_saves_after_a_fallback_keep_the_good_checkpoints_and_never_list_the_bad_one(tmp_path):
    directory = saved(tmp_path / "checkpoints")
    damage(str(directory / "ckpt-30"), "corrupt data")
    checkpoints = Checkpoints(directory, PROGRAM, keep=3)
    with pytest.warns(CheckpointWarning):
        checkpoints.restore_latest(RunState(PROGRAM, 1))
    save_at(checkpoints, 25)
    assert listed(directory) == ["ckpt-10", "ckpt-20", "ckpt-25", "ckpt-25"]
    assert (directory / "ckpt-10.index").exists()  # not pushed out by the unreadable one
    save_at(checkpoints, 26)
    assert listed(directory) == ["ckpt-20", "ckpt-25", "ckpt-26", "ckpt-26"]  # keep=3 of the good ones
    assert not (directory / "ckpt-10.index").exists() and (directory / "ckpt-30.index").exists()
    save_at(checkpoints, 30)  # training got there again: a good ckpt-30 replaces the bad files
    assert listed(directory) == ["ckpt-25", "ckpt-26", "ckpt-30", "ckpt-30"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = Checkpoints(directory, PROGRAM, keep=3).restore_latest(RunState(PROGRAM, 1))
    assert state.step == 30 and restored_step() == 30


def test_a_non_chief_falls_back_on_the_chiefs_files_and_writes_only_its_own(tmp_path):
    directory = saved(tmp_path / "checkpoints")
    damage(str(directory / "ckpt-30"), "missing shard")
    before = files(directory)
    worker = Checkpoints(tmp_path / "scratch", PROGRAM, keep=3, restore_from=directory)
    with pytest.warns(CheckpointWarning):
        assert worker.restore_latest(RunState(PROGRAM, 1)).step == 20
    save_at(worker, 25)
    assert files(directory) == before and listed(tmp_path / "scratch")[-1] == "ckpt-25"


@pytest.mark.parametrize("content", ["", "model_checkpoint_path: {{ garbled"])
def test_an_unreadable_state_file_falls_back_to_the_checkpoints_beside_it(tmp_path, content):
    directory = saved(tmp_path / "checkpoints")
    (directory / "checkpoint").write_text(content)
    damage(str(directory / "ckpt-30"), "truncated index")
    before = files(directory)
    checkpoints = Checkpoints(directory, PROGRAM, keep=3)
    with pytest.warns(CheckpointWarning) as caught:
        state = checkpoints.restore_latest(RunState(PROGRAM, 1))
    assert "state file" in str(caught[0].message) and "ckpt-30" in str(caught[1].message)
    assert state.step == 20 and restored_step() == 20 and files(directory) == before
    save_at(checkpoints, 21)
    assert listed(directory) == ["ckpt-20", "ckpt-21", "ckpt-21"]
    assert all((directory / f"ckpt-{step}.index").exists() for step in (10, 20, 21))


def test_no_readable_checkpoint_is_one_line_and_deletes_nothing(tmp_path):
    directory = saved(tmp_path / "checkpoints")
    for step in STEPS:
        damage(str(directory / f"ckpt-{step}"), "truncated data")
    before = files(directory)
    with pytest.raises(CheckpointError) as caught:
        Checkpoints(directory, PROGRAM, keep=3).restore_latest(RunState(PROGRAM, 1))
    message = str(caught.value)
    assert message.startswith(f"no checkpoint in {directory} can be read: {directory}/ckpt-30 (")
    assert "2 older" in message and "nothing was deleted" in message and "\n" not in message
    assert files(directory) == before
    (directory / "checkpoint").write_text("")
    for step in STEPS:
        os.remove(directory / f"ckpt-{step}.index")
    with pytest.raises(CheckpointError, match="state file .* cannot be read and no ckpt-N checkpoint is beside it"):
        Checkpoints(directory, PROGRAM, keep=3).restore_latest(RunState(PROGRAM, 1))


def test_a_latest_checkpoint_that_does_not_fit_is_refused_not_skipped(tmp_path):
    directory = saved(tmp_path / "checkpoints", steps=(10, 20))
    wider = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16), keras.layers.Dense(3)])
    other = make_program(wider)
    other.global_step.assign(30)
    Checkpoints(directory, other, keep=3).save(RunState(other, 1))
    before = files(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match=f"checkpoint {directory}/ckpt-30 does not fit this run"):
            Checkpoints(directory, PROGRAM, keep=3).restore_latest(RunState(PROGRAM, 1))
    assert files(directory) == before
