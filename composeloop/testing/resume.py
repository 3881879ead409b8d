"""Invariant 10: a run stopped, checkpointed and resumed ends exactly where a straight run ends.

This module owns `check_exact_resume`. It runs the real loop (`run_loop`) and the real
`Checkpoints`, the same pieces the CLI uses on a preemption, on programs the caller builds,
and compares every variable a checkpoint holds: model weights, optimizer and other stage
state, counters and the running train-metric sums.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from composeloop.engine.checkpoint import Checkpoints
from composeloop.engine.compile import Program
from composeloop.engine.events import RunState, every_steps
from composeloop.engine.loop import run_loop
from composeloop.testing.violations import InvariantViolation, difference
from composeloop.vocabulary import VAL

_INVARIANT = "exact resume (10)"
_RULE = "N steps, stop, save, resume in a fresh program, then the rest == the whole run straight"


def _compared(program: Program) -> dict[str, Any]:
    groups = program.checkpoint_variables()
    return {
        f"{group}/{key}": variable
        for group, variables in groups.items()
        if group != f"metrics_{VAL}"  # validation sums are reset before every use
        for key, variable in variables.items()
    }


def check_exact_resume(
    build_program: Callable[[], Program],
    train_data: Callable[[int], Any],
    *,
    epochs: int,
    stop_at: int,
    directory: str | Path | None = None,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> None:
    """Checks that stopping after `stop_at` steps and resuming changes nothing.

    Three programs come from `build_program` (fresh models and stages each time, built the
    same way): one trains `epochs` straight; one stops after global step `stop_at` (which
    may fall mid-epoch and mid-chunk) and is checkpointed; the third restores that
    checkpoint and trains to the end. The third must then equal the first.

    Args:
      build_program: () -> a compiled `Program`; its variables may start anywhere (the
        restore must overwrite them all).
      train_data: epoch -> that epoch's batches, a pure function of the epoch.
      epochs: how long the runs train.
      stop_at: the global step to stop after (>= 1, before the end).
      directory: where the checkpoint goes (default: a temporary directory).
      rtol: relative tolerance; 0 (with atol 0) asks for bitwise equality, which CPU kernels give.
      atol: absolute tolerance.

    Raises:
      InvariantViolation: naming the first variable (by checkpoint key) that differs.

    Example:
      >>> from composeloop.engine import compile_step
      >>> from composeloop.parts.data import batches
      >>> from composeloop.parts.recipes import classifier_step
      >>> def build_program():  # fresh models and optimizers each time, as a new process makes them
      ...     keras.utils.set_random_seed(0)
      ...     net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      ...     return compile_step(classifier_step(net, keras.optimizers.Adam(1e-2)), seed=0)
      >>> check_exact_resume(build_program, lambda epoch: batches(x, y, 2, epoch=epoch), epochs=2, stop_at=3)
    """
    straight = build_program()
    run_loop(straight, train_data, epochs=epochs)
    first = build_program()
    stop = every_steps(stop_at, lambda state: state.stop("check_exact_resume"))
    stopped = run_loop(first, train_data, epochs=epochs, handlers=[stop])
    if stopped.status != "check_exact_resume":
        raise ValueError(f"stop_at={stop_at} is not before the end of the run ({stopped.step} steps)")
    with tempfile.TemporaryDirectory() as scratch:
        where = Path(directory or scratch)
        Checkpoints(where, first).save(stopped)
        resumed = build_program()
        state = Checkpoints(where, resumed).restore_latest(RunState(resumed, epochs))
    run_loop(resumed, train_data, epochs=epochs, state=state)
    want, got = _compared(straight), _compared(resumed)
    for key, variable in want.items():
        found = difference(variable, got[key], rtol, atol)
        if found:
            what = f"after stopping at step {stop_at} and resuming, {key} ({variable.name}) differs: {found}"
            raise InvariantViolation(_INVARIANT, what, _RULE)
