"""The console while a run trains: a live progress bar on a terminal, epoch lines elsewhere.

This module owns what a person watching sees. On a terminal one line is redrawn at most
ten times a second (step, steps/s, ETA, running loss); in a log or CI, where redrawing
would fill the file, each epoch prints one line and nothing else does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from composeloop.engine.events import Handler, RunState, on_chunk, on_epoch_begin, on_epoch_end
from composeloop.engine.report import format_epoch

_REDRAW_SECONDS = 0.1
_BAR_WIDTH = 24


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_line(state: RunState, steps_per_second: float, running: Mapping[str, float]) -> str:
    """The bar's text: epoch, batches done of the epoch, rate, ETA and running metrics."""
    total = state.steps_in_epoch
    head = f"epoch {state.epoch + 1}/{state.epochs}"
    if total:
        filled = int(_BAR_WIDTH * state.batch / total)
        bar = "=" * filled + (">" if filled < _BAR_WIDTH else "") + " " * (_BAR_WIDTH - filled - 1)
        eta = (total - state.batch) / steps_per_second if steps_per_second > 0 else 0.0
        head += f" {state.batch}/{total} [{bar[:_BAR_WIDTH]}] ETA {_duration(eta)}"
    else:
        head += f" {state.batch}"
    metrics = "  ".join(f"{name} {value:.4f}" for name, value in running.items())
    return f"{head}  {steps_per_second:.1f} steps/s  step {state.step}  {metrics}".rstrip()


def progress(
    stream: TextIO | None = None,
    interactive: bool | None = None,
    rename: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict,
) -> list[Handler]:
    """Console handlers: a redrawn bar when `interactive`, one line per epoch always.

    Args:
      stream: where to print (default: standard output).
      interactive: draw the live bar; None: only when `stream` is a terminal.
      rename: maps an epoch's logs to what the epoch line shows.

    Example:
      >>> from composeloop.engine import fit
      >>> history = fit(program, train_data, epochs=2, handlers=progress())
      epoch 1/2  train_loss ...  train_accuracy ...  ...s
      epoch 2/2  train_loss ...  train_accuracy ...  ...s
    """
    stream = stream or sys.stdout
    live = stream.isatty() if interactive is None else interactive
    clock = {"epoch_start": 0.0, "first_batch": 0, "drawn": 0.0}

    def begin(state: RunState) -> None:
        clock.update(epoch_start=time.perf_counter(), first_batch=state.batch, drawn=0.0)

    def draw(state: RunState) -> None:
        now = time.perf_counter()
        if now - clock["drawn"] < _REDRAW_SECONDS:
            return
        clock["drawn"] = now
        elapsed = now - clock["epoch_start"]
        rate = (state.batch - clock["first_batch"]) / elapsed if elapsed > 0 else 0.0
        running = {f"train_{name}": value for name, value in state.program.results("train").items()}
        print(f"\r{progress_line(state, rate, running)}\033[K", end="", file=stream, flush=True)

    def line(state: RunState) -> None:
        prefix = "\r\033[K" if live else ""
        print(prefix + format_epoch(rename(state.logs), state.epochs), file=stream, flush=True)

    handlers = [on_epoch_begin(begin), on_epoch_end(line)]
    return [*handlers, on_chunk(draw)] if live else handlers
