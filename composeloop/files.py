"""Files a run writes and reads back: whole-file atomic writes, JSON and JSON lines.

This module owns the one way composeloop replaces a file: write a temporary file in the
same directory (a unique name, so two writers never share one), flush and fsync it, then
rename it over the target. A crash never leaves half a file, and a reader sees the old
file or the new one. It also owns the JSON spelling of numbers JSON has no word for (NaN
and infinities are written as strings, so a file stays valid and the value stays
visible) and reading JSON lines back when the last line was cut short. Plain Python: the
engine, the application and the sweep summary all use it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


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


def write_atomically(path: str | Path, content: str | bytes) -> None:
    """Replaces `path` with `content` whole: a temporary file of its own beside it, fsync, rename.

    The temporary's name is unique to this call (pid and a random part), so two writers of
    one file (two processes in one run directory, say) never rename each other's temporary
    away; the last rename wins and readers see one whole file or the other. The temporary
    is removed if anything fails before the rename. Text is written as UTF-8.

    Example:
      >>> write_atomically(run_dir / "notes.txt", "one whole file\\n")
      >>> (run_dir / "notes.txt").read_text()
      'one whole file\\n'
    """
    path = Path(path)
    data = content.encode() if isinstance(content, str) else content
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


def jsonable(value: Any) -> Any:
    """`value` as JSON can hold it: NaN and infinities become the strings "nan", "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def write_json_atomically(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Writes `payload` as indented JSON, atomically.

    Example:
      >>> write_json_atomically(run_dir / "summary.json", {"status": "completed", "loss": float("nan")})
      >>> print((run_dir / "summary.json").read_text())  # NaN, which JSON cannot hold, as a string
      {
        "status": "completed",
        "loss": "nan"
      }
      <BLANKLINE>
    """
    write_atomically(path, json.dumps(jsonable(payload), indent=2, default=str) + "\n")


def write_jsonl_atomically(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Writes one JSON object per line, atomically."""
    write_atomically(path, "".join(json.dumps(jsonable(record), default=str) + "\n" for record in records))


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing or not valid JSON."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, up to the first line that is cut short or invalid.

    Example:
      >>> with open(run_dir / "metrics.jsonl", "w") as out:  # the last line cut short by a crash
      ...     _ = out.write('{"epoch": 1}\\n{"epoch": 2}\\n{"epoch": 3}\\n{"epo')
      >>> [line["epoch"] for line in read_jsonl(run_dir / "metrics.jsonl")]
      [1, 2, 3]
    """
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # a line cut short by a killed writer: keep what came before
    return records
