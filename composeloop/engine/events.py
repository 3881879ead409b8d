"""Loop events: plain functions attached to the moments of a run.

This module owns the event vocabulary (run begin, epoch begin, after each compiled call,
every N steps, epoch end, run end), the `Handler` record that binds a function to one, and
`RunState`, the one object every handler receives. Handlers read the state and may ask the
loop to stop; they never drive the loop themselves. composeloop's own services
(checkpoints, metric logs, progress, TensorBoard, early stopping) are handlers too.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from composeloop.engine.compile import Program


class Event(enum.Enum):
    """The moments of a run a `Handler` can be attached to, in the order a run meets them."""

    RUN_BEGIN = "run_begin"
    EPOCH_BEGIN = "epoch_begin"
    CHUNK = "chunk"  # after every compiled call of `steps_per_execution` steps or fewer
    STEPS = "steps"  # every `every` global steps; chunks are cut so none is skipped
    EPOCH_END = "epoch_end"
    RUN_END = "run_end"


@attrs.define
class RunState:
    """Where a run is and how it is going; handed to every handler.

    `epoch` and `batch` give the position of the NEXT batch to train on: at an epoch's
    end `epoch` already counts that epoch as done and `batch` is 0. Together with the run
    seed they fix the rest of the data, which is what makes a resume exact.
    """

    program: Program
    epochs: int
    epoch: int = 0
    batch: int = 0
    steps_in_epoch: int | None = None
    history: list[dict[str, Any]] = attrs.Factory(list)
    status: str = "running"
    reason: str = ""
    log_keys: tuple[str, ...] = ()  # what each epoch's logs will hold, known before the first
    extras: dict[str, Any] = attrs.Factory(dict)  # handlers' own records, e.g. the best epoch

    @property
    def step(self) -> int:
        """Global training steps done so far."""
        return int(self.program.global_step.numpy())

    @property
    def logs(self) -> Mapping[str, Any]:
        """The latest finished epoch's logs (empty before the first)."""
        return self.history[-1] if self.history else {}

    @property
    def stopping(self) -> bool:
        return self.status != "running"

    def stop(self, status: str, reason: str = "") -> None:
        """Asks the loop to stop after the current compiled call; the first request wins."""
        if not self.stopping:
            self.status, self.reason = status, reason


Callback = Callable[[RunState], Any]


def _positive(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


@attrs.frozen
class Handler:
    """`fn(state)` called at `event` (for `Event.STEPS`, every `every` global steps)."""

    event: Event
    fn: Callback
    every: int = attrs.field(default=1, validator=_positive)


def on_run_begin(fn: Callback) -> Handler:
    """Calls `fn(state)` once before the first step (also when resuming)."""
    return Handler(Event.RUN_BEGIN, fn)


def on_epoch_begin(fn: Callback) -> Handler:
    """Calls `fn(state)` before each epoch's first step (or its first step after a resume)."""
    return Handler(Event.EPOCH_BEGIN, fn)


def on_chunk(fn: Callback) -> Handler:
    """Calls `fn(state)` after every compiled call; for progress displays."""
    return Handler(Event.CHUNK, fn)


def every_steps(every: int, fn: Callback) -> Handler:
    """Calls `fn(state)` whenever the global step reaches a multiple of `every`.

    Example:
      >>> from composeloop.engine import fit
      >>> saved = []
      >>> save = every_steps(3, lambda state: saved.append(state.step))
      >>> history = fit(program, train_data, epochs=4, handlers=[save])  # 2 steps an epoch
      >>> saved
      [3, 6]
    """
    return Handler(Event.STEPS, fn, every)


def on_epoch_end(fn: Callback) -> Handler:
    """Calls `fn(state)` after each epoch's validation; `state.logs` is that epoch's logs.

    Example:
      >>> from composeloop.engine import fit
      >>> show = on_epoch_end(lambda state: print(state.epoch, state.step, sorted(state.logs)))
      >>> history = fit(program, train_data, epochs=2, handlers=[show])
      1 2 ['epoch', 'seconds', 'train_accuracy', 'train_loss']
      2 4 ['epoch', 'seconds', 'train_accuracy', 'train_loss']
    """
    return Handler(Event.EPOCH_END, fn)


def on_run_end(fn: Callback) -> Handler:
    """Calls `fn(state)` once when the run ends by finishing or by a stop request (not on an error)."""
    return Handler(Event.RUN_END, fn)


def dispatch(handlers: Iterable[Handler], event: Event, state: RunState) -> None:
    """Calls the handlers of `event` in order; for `STEPS`, those whose period divides the step."""
    for handler in handlers:
        if handler.event is not event:
            continue
        if event is Event.STEPS and state.step % handler.every:
            continue
        handler.fn(state)


def steps_to_next_event(handlers: Iterable[Handler], step: int) -> int | None:
    """How many steps until the next `STEPS` handler is due after `step`; None without any."""
    periods = [h.every for h in handlers if h.event is Event.STEPS]
    if not periods:
        return None
    return min(period - step % period for period in periods)
