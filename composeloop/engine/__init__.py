"""The engine: a `Step` made into compiled programs, and the loop that runs them."""

from composeloop.engine.checkpoint import Checkpoints
from composeloop.engine.compile import Program, RetraceWarning, compile_step
from composeloop.engine.events import (
    Event,
    Handler,
    RunState,
    every_steps,
    on_chunk,
    on_epoch_begin,
    on_epoch_end,
    on_run_begin,
    on_run_end,
)
from composeloop.engine.loop import fit, run_epoch, run_loop
from composeloop.engine.lr_find import RangeTest, lr_range_test, plot_range_test
from composeloop.engine.stopping import early_stopping, nan_policy

__all__ = [
    "Checkpoints",
    "Event",
    "Handler",
    "Program",
    "RangeTest",
    "RetraceWarning",
    "RunState",
    "compile_step",
    "early_stopping",
    "every_steps",
    "fit",
    "lr_range_test",
    "nan_policy",
    "on_chunk",
    "on_epoch_begin",
    "on_epoch_end",
    "on_run_begin",
    "on_run_end",
    "plot_range_test",
    "run_epoch",
    "run_loop",
]
