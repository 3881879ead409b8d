"""Checkpoints of a program: rolling ones to resume from, and the best one kept apart.

This module owns what a checkpoint holds (every model, every apply stage's state, the
counters, the metric states, the data position: epoch and batch, and the epoch history), where checkpoints
live (``checkpoints/`` and ``checkpoints/best/``), and the checks before a restore: a
checkpoint that does not fit the program is refused with the variables that differ, before
anything is assigned, and nothing is deleted or overwritten on the way.

Saves go through `tf.train.CheckpointManager`: TensorFlow writes the data under a
temporary name and only then points the ``checkpoint`` state file at it, so a crash or
SIGKILL during a save leaves the previous checkpoint as the latest readable one.

A resume tells "unreadable" from "does not fit". A checkpoint whose files are missing,
truncated or corrupt is skipped with a `CheckpointWarning`, and the newest readable one the
manager retained is restored instead (if none is, a `CheckpointError`). A checkpoint that
does not fit the program is refused as before, never skipped. Nothing is deleted or
rewritten on resume; the first save afterwards writes a state file without the unreadable
checkpoints, so they neither count toward ``keep`` (pushing good ones out) nor become
"latest" again; their files stay where they are.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import tensorflow as tf
from google.protobuf import text_format

from composeloop.engine.compile import Program
from composeloop.engine.events import RunState
from composeloop.errors import CheckpointError
from composeloop.files import write_atomically

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_SHOWN_DIFFERENCES = 4
_BOOKKEEPING = {"save_counter"}  # tf.train.Checkpoint's own
_STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's list of the checkpoints it keeps
_NUMBERED = re.compile(r"^ckpt-(\d+)\.index$")  # the manager's default checkpoint_name


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint's files are missing, truncated or corrupt (not: it does not fit the run)."""


class CheckpointWarning(UserWarning):
    """A resume skipped unreadable checkpoints (names them and the one restored instead)."""


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
      >>> from composeloop.engine import RunState, compile_step, on_epoch_end, run_loop
      >>> from composeloop.parts.recipes import classifier_step
      >>> checkpoints = Checkpoints(run_dir / "checkpoints", program, keep=3)
      >>> state = run_loop(program, train_data, epochs=1, handlers=[on_epoch_end(checkpoints.save)])
      >>> later = compile_step(classifier_step(keras.models.clone_model(model), keras.optimizers.SGD(0.1)))
      >>> resumed = Checkpoints(run_dir / "checkpoints", later).restore_latest(RunState(later, epochs=2))
      >>> resumed.epoch, resumed.batch, resumed.step  # epoch 1 done, at its first batch, after 2 steps
      (1, 0, 2)
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
        self.keep = keep
        self.restored_from: str | None = None
        self._unreadable: list[str] = []  # skipped on resume: left out of the state file at the next save
        self._state_unreadable = False  # the state file itself: rewritten at the next save
        self._rolling: tf.train.CheckpointManager | None = None
        self.best = tf.train.CheckpointManager(self.checkpoint, str(self.directory / "best"), max_to_keep=1)

    @property
    def rolling(self) -> tf.train.CheckpointManager:
        """The manager of the rolling checkpoints, made at the first save (it reads the state file)."""
        if self._rolling is None:
            skipped = self._unreadable or self._state_unreadable
            if skipped and self.restored_from and self.directory.resolve() == self.restore_from.resolve():
                self._write_state_without_unreadable()
            self._rolling = tf.train.CheckpointManager(self.checkpoint, str(self.directory), max_to_keep=self.keep)
        return self._rolling

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
            raise UnreadableCheckpoint(f"checkpoint {path} cannot be read: {_first_line(error)}") from None
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

        `models_only` restores the weights alone: the models' variables and the apply
        stages' state (optimizer slots, and the EMA shadows or slow weights a swap for
        evaluation reads), not the position, counters or metric states.

        Raises:
          UnreadableCheckpoint: its files are missing, truncated or corrupt.
          CheckpointError: it does not fit the program (the message names the first few
            variables that differ; then nothing was assigned).
        """
        differences = self.differences(path)
        if differences:
            shown = "; ".join(differences[:_SHOWN_DIFFERENCES])
            more = len(differences) - _SHOWN_DIFFERENCES
            extra = f"; and {more} more" if more > 0 else ""
            raise CheckpointError(f"checkpoint {path} does not fit this run: {shown}{extra}")
        weights = ("model_", "apply_")
        groups = {k: v for k, v in self.groups.items() if k.startswith(weights)} if models_only else self.groups
        try:
            # `differences` has checked that every variable is there with its shape.
            status = tf.train.Checkpoint(**groups).read(path)
            status.expect_partial().assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError, IndexError, OSError) as error:
            raise UnreadableCheckpoint(f"checkpoint {path} cannot be read: {_first_line(error)}") from None
        return int(self.position["epoch"]), int(self.position["batch"])

    def history(self) -> list[dict]:
        """The epoch records of the checkpoint restored last (empty before any restore)."""
        return json.loads(self.position["history"].numpy().decode())

    def restore_latest(self, state: RunState) -> RunState:
        """Moves `state` to the latest readable rolling checkpoint's position and history, if any.

        Unreadable checkpoints (missing, truncated or corrupt files) are skipped, newest
        first, with one `CheckpointWarning`; ``state.extras`` gets their names
        (``unreadable_checkpoints``) and the warning's text (``resume_note``). Nothing is
        deleted or rewritten.

        Raises:
          CheckpointError: there are checkpoints but none can be read, or the newest
            readable one does not fit the program.
        """
        candidates = self._candidates()
        unreadable: list[tuple[str, str]] = []
        for path in candidates:
            try:
                state.epoch, state.batch = self.restore(path)
            except UnreadableCheckpoint as error:
                unreadable.append((path, _reason(error)))
                continue
            self.restored_from = path
            break
        else:
            if not candidates:
                return state
            older = f" and the {len(unreadable) - 1} older one(s) listed" if len(unreadable) > 1 else ""
            raise CheckpointError(
                f"no checkpoint in {self.restore_from} can be read: {unreadable[0][0]} ({unreadable[0][1]}){older}; "
                "nothing was deleted"
            )
        state.history = self.history()
        state.extras["resumed_from_step"] = state.step
        if unreadable:
            self._unreadable = [path for path, _ in unreadable]
            state.extras["unreadable_checkpoints"] = list(self._unreadable)
            skipped = "; ".join(f"{path} ({reason})" for path, reason in unreadable)
            note = (
                f"checkpoint cannot be read: {skipped}; resumed from {self.restored_from} "
                f"(step {state.step}), the newest readable one; the unreadable files are left in place"
            )
            state.extras["resume_note"] = note  # for the application's own one-line output and summary
            warnings.warn(f"composeloop: {note}", CheckpointWarning, stacklevel=2)
        return state

    def _candidates(self) -> list[str]:
        """The rolling checkpoints to resume from, newest first, as the state file lists them.

        An unreadable state file (garbled, or empty after a crash) gives every ``ckpt-N``
        beside it, highest N first, and a warning.
        """
        state_file = self.restore_from / _STATE_FILE
        if not state_file.exists():
            return []
        try:
            state = tf.train.get_checkpoint_state(str(self.restore_from))
        except ValueError:  # parses, but names no checkpoint (an empty file)
            state = None
        if state is not None:
            latest = state.model_checkpoint_path
            return [latest, *[path for path in reversed(state.all_model_checkpoint_paths) if path != latest]]
        numbered = sorted(
            (int(match.group(1)), str(self.restore_from / name[: -len(".index")]))
            for name in os.listdir(self.restore_from)
            if (match := _NUMBERED.match(name))
        )
        found = [path for _, path in reversed(numbered)]
        if not found:
            raise CheckpointError(
                f"checkpoint state file {state_file} cannot be read and no ckpt-N checkpoint is beside it; "
                "nothing was deleted: move the file away to start afresh"
            )
        self._state_unreadable = True
        warnings.warn(
            f"composeloop: checkpoint state file {state_file} cannot be read; trying the {len(found)} checkpoint(s) "
            "beside it, newest first",
            CheckpointWarning,
            stacklevel=3,
        )
        return found

    def _write_state_without_unreadable(self) -> None:
        """Rewrites the state file as the manager would, leaving out the unreadable checkpoints.

        Called once, just before the first save after a resume that skipped some, so that
        this save neither deletes good checkpoints to make room for them under ``keep`` nor
        leaves one of them listed. The restored checkpoint becomes the latest.
        """
        try:
            state = tf.train.get_checkpoint_state(str(self.directory))
        except ValueError:
            state = None
        now = time.time()
        if state is not None:
            stamps = list(state.all_model_checkpoint_timestamps) or [now] * len(state.all_model_checkpoint_paths)
            listed = list(zip(state.all_model_checkpoint_paths, stamps, strict=False))
            preserved = state.last_preserved_timestamp
        else:
            listed, preserved = [], 0.0
        # By name: the manager keeps its checkpoints in its own directory, however it is spelt.
        left_out = {os.path.basename(path) for path in [*self._unreadable, self.restored_from]}
        restored = os.path.basename(self.restored_from)
        kept = [(os.path.basename(path), stamp) for path, stamp in listed if os.path.basename(path) not in left_out]
        kept.append((restored, max([now, *(stamp for _, stamp in kept)])))
        proto = tf.compat.v1.train.generate_checkpoint_state_proto(
            os.path.abspath(self.directory),  # absolute: the relative names below are kept as given
            restored,
            all_model_checkpoint_paths=[name for name, _ in kept],
            all_model_checkpoint_timestamps=[stamp for _, stamp in kept],
            last_preserved_timestamp=min([preserved, *(stamp - 1.0 for _, stamp in kept)]),
        )
        write_atomically(self.directory / _STATE_FILE, text_format.MessageToString(proto))


def _reason(error: CheckpointError) -> str:
    """What made a checkpoint unreadable, without the "checkpoint PATH cannot be read: " prefix."""
    return str(error).split(" cannot be read: ", 1)[-1]
