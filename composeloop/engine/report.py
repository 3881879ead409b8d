"""Run outputs people and programs read: metrics.jsonl, metrics.csv, summary.json, epoch lines.

This module owns the format of what a run writes into its directory. Every file is
written whole through a temporary file and a rename, so a crash never leaves half a file;
the metric files are rewritten from the run's history after each epoch, which also makes a
resumed run's files hold exactly the epochs its checkpoint has seen.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from composeloop.engine.events import Handler, RunState, on_epoch_end, on_run_begin

Rename = Callable[[Mapping[str, Any]], dict[str, Any]]


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible instead of invalid
    return value


def write_atomically(path: Path, text: str | bytes) -> None:
    """Writes `text` to `path` whole: a temporary file of its own beside it, fsync, rename.

    The temporary name is unique to this call (pid and a random part), so two writers of
    the same file (two processes in one run directory, say) never rename each other's
    temporary away; the last rename wins and readers see one whole file or the other. The
    temporary file is removed if anything fails before the rename. Text is written as UTF-8.

    Example:
      >>> write_atomically(run_dir / "notes.txt", "one whole file\n")
    """
    path = Path(path)
    data = text.encode() if isinstance(text, str) else text
    descriptor, temporary = _create_temporary(path)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Creates and opens an empty file beside `path` under a name no other writer uses.

    Not `tempfile.mkstemp`: its files are private (mode 0600), and the renamed result would
    be too; `os.open` with 0666 gives the mode a plain `open` gives, the umask applied.
    """
    while True:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


def write_json_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    """Writes `payload` as indented JSON to `path` via a temporary file and a rename."""
    text = json.dumps({k: _jsonable(v) for k, v in payload.items()}, indent=2, default=_jsonable)
    write_atomically(path, text + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Reads a metrics.jsonl file back."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


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
    rows = [{k: _jsonable(v) for k, v in logs.items()} for logs in history]
    write_atomically(directory / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
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
