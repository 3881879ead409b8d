"""Reasons to end a run early: no improvement, a non-finite loss, a stop signal.

This module owns three loop services, each a list of event handlers: early stopping (a
pure function of the epoch history, so a resumed run stops exactly where a straight one
would), the NaN policy (raise, skip or stop on a non-finite loss), and turning SIGTERM,
SIGINT, SIGUSR1 (SLURM's warning before a time limit or pre-emption) and SIGUSR2 (submitit's)
into a stop request that lets the current step finish and the run save its state. In a multi-worker
run the stop request is agreed: after every compiled call the workers sum, over all of
them, which signals each has received (one small all-reduce), so a signal to any one
worker stops every worker after the same step, and all report the same signal.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from composeloop.engine.distribute import sum_over_workers
from composeloop.engine.events import Handler, RunState, on_chunk, on_epoch_end, on_run_begin
from composeloop.errors import ConfigError, NonFiniteLossError
from composeloop.vocabulary import Direction, NanPolicy, resolve_direction


def declared_directions(program: Any) -> dict[str, bool]:
    """The directions a program's metrics declare (`Metric.higher_is_better`), by metric name."""
    metrics = program.step.metrics if program is not None else ()
    return {metric.name: metric.higher_is_better for metric in metrics if metric.higher_is_better is not None}


def best_epoch(
    history: Sequence[Mapping[str, Any]],
    monitor: str,
    mode: Direction | str = Direction.auto,
    min_delta: float = 0.0,
    declared: Mapping[str, bool] | None = None,
) -> int | None:
    """The index in `history` of the best epoch by `monitor`: the last one that improved on
    every earlier best by more than `min_delta`. None when no epoch logged it.

    With `mode` auto, the direction is `composeloop.vocabulary.higher_is_better`'s, the
    metrics' `declared` directions first.
    """
    sign = 1.0 if resolve_direction(monitor, mode, declared) is Direction.max else -1.0
    best_index, best_value = None, None
    for index, logs in enumerate(history):
        value = logs.get(monitor)
        if not isinstance(value, int | float) or value != value:  # missing or NaN never improves
            continue
        if best_value is None or sign * (value - best_value) > min_delta:
            best_index, best_value = index, value
    return best_index


def early_stopping(
    monitor: str,
    patience: int,
    mode: Direction | str = Direction.auto,
    min_delta: float = 0.0,
    on_improve: Callable[[RunState], Any] | None = None,
) -> list[Handler]:
    """Stops the run when `monitor` has not improved for `patience` epochs.

    Args:
      monitor: a log key, e.g. "val_loss" or "val_accuracy".
      patience: epochs without improvement before stopping (>= 1).
      mode: "min", "max" or "auto" (`composeloop.vocabulary.higher_is_better`, which a
        metric's own `higher_is_better` overrides).
      min_delta: the smallest change that counts as an improvement.
      on_improve: called with the state after an epoch that is the best so far (e.g. to
        save the best checkpoint).

    Returns:
      Handlers: one that checks `monitor` is logged before training, one per epoch.

    Example:
      >>> stop = early_stopping("val_loss", patience=3)
      >>> fit(program, data, epochs=100, validation_data=val, handlers=stop)
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")

    def decide(state: RunState) -> None:
        best = best_epoch(state.history, monitor, mode, min_delta, declared_directions(state.program))
        if best is None:
            return
        state.extras["best_epoch"] = best + 1
        state.extras["best_" + monitor] = state.history[best][monitor]
        waited = len(state.history) - 1 - best
        if waited >= patience and state.epoch < state.epochs:  # at the last epoch the run is complete anyway
            state.stop("stopped_early", f"{monitor} has not improved for {waited} epochs")

    def check_and_decide(state: RunState) -> None:
        if state.log_keys and monitor not in state.log_keys:
            raise ConfigError(f"early_stopping.monitor: '{monitor}' is not logged; logged: {', '.join(state.log_keys)}")
        decide(state)  # a resumed run may already have waited long enough

    def after_epoch(state: RunState) -> None:
        decide(state)
        if on_improve is not None and state.extras.get("best_epoch") == len(state.history):
            on_improve(state)

    return [on_run_begin(check_and_decide), on_epoch_end(after_epoch)]


def nan_policy(policy: NanPolicy | str) -> list[Handler]:
    """What the loop does after a step whose loss is not finite.

    The step's update itself is withheld by the gradient transforms (`skip_nonfinite`);
    this decides what happens next. "raise": a `NonFiniteLossError` naming the step.
    "skip": carry on (the program counts such steps in `nonfinite_steps`). "stop": end the
    run with status "stopped_nonfinite", keeping the last checkpoint saved before it. The
    program must be compiled with a policy (``compile_step(nan_policy=...)``), the same
    one so that under "raise" and "stop" no further step runs first.
    """
    policy = NanPolicy(policy) if isinstance(policy, str) else policy
    seen = {"count": 0}

    def remember(state: RunState) -> None:
        if state.program.nan_policy is None:
            raise ValueError("nan_policy needs a program compiled with compile_step(nan_policy=...)")
        seen["count"] = int(state.program.nonfinite_steps.numpy())

    def check(state: RunState) -> None:
        count = int(state.program.nonfinite_steps.numpy())
        if count == seen["count"] or policy is NanPolicy.skip:
            return
        seen["count"] = count
        # A halting program returns right after the bad step; without halting, the chunk's.
        what = f"the loss was not finite at step {state.step - 1}; its update was not applied"
        if state.program.nan_policy is NanPolicy.skip:
            what = f"the loss was not finite in the steps up to {state.step - 1}; their updates were not applied"
        if policy is NanPolicy["raise"]:
            raise NonFiniteLossError(f"train.nan_policy=raise: {what}")
        state.stop("stopped_nonfinite", what)

    return [on_run_begin(remember), on_chunk(check)]


class SignalStop:
    """Turns SIGTERM, SIGINT and SIGUSR1 into a stop request, while the `installed()` block runs.

    The step in flight finishes, the run's end handlers save a checkpoint and a summary,
    and `received` tells which signal arrived. A second signal restores the default
    behaviour and delivers it, so a stuck run can still be killed with a second Ctrl-C.

    SIGUSR1 is what SLURM sends ahead of a time limit or pre-emption when a job asks for
    it (``sbatch --signal=USR1@60``): the run checkpoints and stops like on SIGTERM, so
    that the job can be requeued (``--requeue``) and resumed from that checkpoint. SIGUSR2
    is the same warning for jobs that submitit started (Hydra's submitit launcher); the
    application hands it on to submitit's own handler once the checkpoint is written.

    Under a multi-worker strategy the handlers agree on the request across workers after
    every compiled call (see the module docstring): every worker stops after the same
    step with the same `signal`, whichever worker got it.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self) -> None:
        self.received: signal.Signals | None = None

    def _on_signal(self, number: int, frame: Any) -> None:
        if self.received is not None:
            signal.signal(number, signal.SIG_DFL)
            signal.raise_signal(number)
        self.received = signal.Signals(number)

    @contextmanager
    def installed(self) -> Iterator[SignalStop]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be caught on the main thread
            return
        previous = {number: signal.signal(number, self._on_signal) for number in self.SIGNALS}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def agreed(self, state: RunState) -> tuple[signal.Signals | None, bool]:
        """The signal every worker acts on (the first of SIGNALS received by any), and
        whether this worker received it itself. A collective under multi-worker strategies."""
        received = self.received  # read once: a signal may arrive while the workers agree
        counts = sum_over_workers(state.program.strategy)([float(received == s) for s in self.SIGNALS])
        agreed = next((s for s, count in zip(self.SIGNALS, counts, strict=True) if count > 0), None)
        return agreed, agreed is not None and agreed == received

    def handlers(self) -> list[Handler]:
        def check(state: RunState) -> None:
            agreed, here = self.agreed(state)
            if agreed is not None:
                state.extras["signal"] = agreed.name
                where = "" if here else " on another worker"
                state.stop("interrupted", f"{agreed.name}{where} at step {state.step}")

        return [on_run_begin(check), on_chunk(check)]
