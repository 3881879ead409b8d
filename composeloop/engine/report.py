"""Run outputs people and programs read: the console line, metrics.jsonl, summary.json.

This module owns the format of what a run writes into its directory. Writes of whole files
go through a temporary file and a rename, so a crash never leaves half a summary.json.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible instead of invalid
    return value


def write_json_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    """Writes `payload` as indented JSON to `path` via a temporary file and a rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        json.dump({k: _jsonable(v) for k, v in payload.items()}, handle, indent=2, default=_jsonable)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def format_epoch(logs: Mapping[str, Any], epochs: int) -> str:
    """One readable console line for one epoch's logs."""
    parts = [f"epoch {logs['epoch']}/{epochs}"]
    for key, value in logs.items():
        if key in ("epoch", "seconds"):
            continue
        parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    parts.append(f"{logs.get('seconds', 0.0):.2f}s")
    return "  ".join(parts)


class MetricsLog:
    """Appends each epoch's logs to metrics.jsonl and prints its console line."""

    def __init__(self, directory: Path, epochs: int, stream: TextIO | None = None) -> None:
        self.path = Path(directory) / "metrics.jsonl"
        self.epochs = epochs
        self.stream = stream or sys.stdout

    def __call__(self, logs: Mapping[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({k: _jsonable(v) for k, v in logs.items()}) + "\n")
        print(format_epoch(logs, self.epochs), file=self.stream, flush=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Reads a metrics.jsonl file back."""
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
