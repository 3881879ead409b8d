"""Checkpoints of a program: rolling ones to resume from, and the best one kept apart.

This module owns what a checkpoint holds (every model, every apply stage's state, the
counters, the metric states, the data position: epoch and batch, and the epoch history), where checkpoints
live (``checkpoints/`` and ``checkpoints/best/``), and the checks before a restore: a
checkpoint that does not fit the program is refused with the variables that differ, before
anything is assigned, and nothing is deleted or overwritten on the way.

Saves go through `tf.train.CheckpointManager`: TensorFlow writes the data under a
temporary name and only then points the ``checkpoint`` index file at it, so a crash or
SIGKILL during a save leaves the previous checkpoint as the latest readable one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import tensorflow as tf

from composeloop.engine.compile import Program
from composeloop.engine.events import RunState
from composeloop.errors import CheckpointError

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_SHOWN_DIFFERENCES = 4
_BOOKKEEPING = {"save_counter"}  # tf.train.Checkpoint's own


def _escaped(name: str) -> str:
    """A name as TensorFlow spells it in checkpoint keys ("." doubled, "/" as ".S")."""
    return name.replace(".", "..").replace("/", ".S")


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def check_writable(directory: Path) -> None:
    """Creates `directory` and writes a probe file in it; a CheckpointError says why it cannot."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe"):
            pass
    except OSError as error:
        raise CheckpointError(f"checkpoint directory {directory} is not writable: {error.strerror or error}") from None


class Checkpoints:
    """Saves and restores one program's state, with its data position.

    Args:
      directory: where rolling checkpoints go; the best one goes to ``directory/best``.
      program: the compiled program whose state is saved.
      keep: how many rolling checkpoints to keep (the best one is kept apart).
      restore_from: where `latest` looks (default: `directory`). A multi-worker run's
        non-chief workers restore the chief's checkpoints but write their own copies,
        which every worker must do to take part in the save, into a scratch directory.

    Example:
      >>> checkpoints = Checkpoints(run_dir / "checkpoints", program, keep=3)
      >>> state = checkpoints.restore_latest(state)  # resumes where the last run stopped
    """

    def __init__(self, directory: Path, program: Program, keep: int = 3, restore_from: Path | None = None) -> None:
        self.directory = Path(directory)
        self.restore_from = Path(restore_from or directory)
        check_writable(self.directory)
        self.position = {
            "epoch": tf.Variable(0, dtype=tf.int64, trainable=False, name="position_epoch"),
            "batch": tf.Variable(0, dtype=tf.int64, trainable=False, name="position_batch"),
            # The epoch records so far, as JSON: early stopping and the metric files resume from them.
            "history": tf.Variable("[]", dtype=tf.string, trainable=False, name="position_history"),
        }
        self.groups = {**program.checkpoint_variables(), "position": self.position}
        self.checkpoint = tf.train.Checkpoint(**self.groups)
        self.rolling = tf.train.CheckpointManager(self.checkpoint, str(self.directory), max_to_keep=keep)
        self.best = tf.train.CheckpointManager(self.checkpoint, str(self.directory / "best"), max_to_keep=1)

    # -- saving --------------------------------------------------------------------------

    def _save(self, manager: tf.train.CheckpointManager, state: RunState) -> str:
        self.position["epoch"].assign(state.epoch)
        self.position["batch"].assign(state.batch)
        self.position["history"].assign(json.dumps(state.history, default=str))
        try:
            return manager.save(checkpoint_number=state.step)
        except (OSError, tf.errors.OpError) as error:
            raise CheckpointError(f"cannot write a checkpoint in {manager.directory}: {_first_line(error)}") from None

    def save(self, state: RunState) -> str:
        """Writes a rolling checkpoint of the program at `state`'s position; returns its path."""
        return self._save(self.rolling, state)

    def save_best(self, state: RunState) -> str:
        """Writes the best-so-far checkpoint, replacing the previous best only once written."""
        return self._save(self.best, state)

    # -- restoring -----------------------------------------------------------------------

    @property
    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(str(self.restore_from))

    @property
    def latest_best(self) -> str | None:
        return self.best.latest_checkpoint

    def differences(self, path: str) -> list[str]:
        """What differs between the checkpoint at `path` and this program, one phrase each."""
        try:
            listed = tf.train.list_variables(path)
            saved = {name[: -len(_SUFFIX)]: tuple(shape) for name, shape in listed if name.endswith(_SUFFIX)}
        except (tf.errors.OpError, ValueError) as error:
            raise CheckpointError(f"checkpoint {path} cannot be read: {_first_line(error)}") from None
        wanted = {
            f"{_escaped(group)}/{_escaped(key)}": (tuple(variable.shape), getattr(variable, "path", variable.name))
            for group, variables in self.groups.items()
            for key, variable in variables.items()
        }
        found = []
        for key, (shape, name) in wanted.items():
            if key not in saved:
                found.append(f"{key} ({name}) is not in the checkpoint")
            elif saved[key] != shape:
                found.append(f"{key} ({name}) has shape {list(saved[key])} there but {list(shape)} here")
        extra = [key for key in saved if key not in wanted and key not in _BOOKKEEPING]
        found += [f"{key} is in the checkpoint but not in this run" for key in extra]
        return found

    def restore(self, path: str, models_only: bool = False) -> tuple[int, int]:
        """Restores the checkpoint at `path` into the program; returns its (epoch, batch).

        Raises:
          CheckpointError: the checkpoint is unreadable, or does not fit the program (the
            message names the first few variables that differ; then nothing was assigned).
        """
        differences = self.differences(path)
        if differences:
            shown = "; ".join(differences[:_SHOWN_DIFFERENCES])
            more = len(differences) - _SHOWN_DIFFERENCES
            extra = f"; and {more} more" if more > 0 else ""
            raise CheckpointError(f"checkpoint {path} does not fit this run: {shown}{extra}")
        groups = {k: v for k, v in self.groups.items() if k.startswith("model_")} if models_only else self.groups
        try:
            # `differences` has checked that every variable is there with its shape.
            status = tf.train.Checkpoint(**groups).read(path)
            status.expect_partial().assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError, IndexError, OSError) as error:
            raise CheckpointError(f"checkpoint {path} cannot be read: {_first_line(error)}") from None
        return int(self.position["epoch"]), int(self.position["batch"])

    def history(self) -> list[dict]:
        """The epoch records of the checkpoint restored last (empty before any restore)."""
        return json.loads(self.position["history"].numpy().decode())

    def restore_latest(self, state: RunState) -> RunState:
        """Moves `state` to the latest rolling checkpoint's position and history, if there is one."""
        if self.latest is not None:
            state.epoch, state.batch = self.restore(self.latest)
            state.history = self.history()
            state.extras["resumed_from_step"] = state.step
        return state
