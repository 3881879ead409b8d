"""Run outputs people and programs read: metrics.jsonl, metrics.csv, summary.json, epoch lines.

This module owns the format of what a run writes into its directory. Every file is
written whole (`composeloop.files.write_atomically`), so a crash never leaves half a file;
the metric files are rewritten from the run's history after each epoch, which also makes a
resumed run's files hold exactly the epochs its checkpoint has seen.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from composeloop.engine.events import Handler, RunState, on_epoch_end, on_run_begin
from composeloop.files import jsonable, write_atomically, write_jsonl_atomically

Rename = Callable[[Mapping[str, Any]], dict[str, Any]]


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_history(directory: Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Writes metrics.jsonl (one JSON object per epoch) and metrics.csv (one row per epoch)."""
    rows = [jsonable(dict(logs)) for logs in history]
    write_jsonl_atomically(directory / "metrics.jsonl", rows)
    write_atomically(directory / "metrics.csv", _csv_text(rows))


def metric_files(directory: Path, rename: Rename = dict) -> list[Handler]:
    """Handlers that keep metrics.jsonl and metrics.csv equal to the run's history.

    Args:
      directory: the run directory.
      rename: maps one epoch's logs to what the files show (e.g. shorter keys).
    """

    def write(state: RunState) -> None:
        write_history(Path(directory), [rename(logs) for logs in state.history])

    return [on_run_begin(write), on_epoch_end(write)]


def format_epoch(logs: Mapping[str, Any], epochs: int) -> str:
    """One readable console line for one epoch's logs."""
    parts = [f"epoch {logs['epoch']}/{epochs}"]
    for key, value in logs.items():
        if key in ("epoch", "seconds"):
            continue
        parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    parts.append(f"{logs.get('seconds', 0.0):.2f}s")
    return "  ".join(parts)
