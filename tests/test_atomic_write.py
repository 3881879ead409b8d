"""Atomic writes of run files (`composeloop.files.write_atomically`): whole files, own temporaries.

Two processes writing into one run directory used to share the temporary name
``.metrics.jsonl.tmp``: one renamed the other's temporary away and crashed with
FileNotFoundError. The interleaving is reproduced in-process (deterministic) and with two
real processes (slow).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from composeloop import files


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


def test_a_second_writer_between_write_and_rename_breaks_neither(tmp_path, monkeypatch):
    """Writer A is paused after writing its temporary; writer B writes the same file whole."""
    path = tmp_path / "metrics.jsonl"
    fsync = os.fsync
    interleaved = []

    def fsync_then_let_the_other_writer_in(descriptor: int) -> None:
        fsync(descriptor)
        if not interleaved:
            interleaved.append(True)
            files.write_atomically(path, "from B\n")

    monkeypatch.setattr(os, "fsync", fsync_then_let_the_other_writer_in)
    files.write_atomically(path, "from A\n")  # failed with FileNotFoundError on the fixed name
    assert interleaved and path.read_text() == "from A\n"  # A renamed last: its whole file wins
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    files.write_json_atomically(path, {"status": "completed"})
    before = path.read_text()
    with pytest.raises(UnicodeEncodeError):
        files.write_atomically(path, "half \ud800 written")  # a lone surrogate cannot be encoded
    with pytest.raises(IsADirectoryError):
        files.write_atomically(tmp_path, "the rename fails")
    assert path.read_text() == before
    assert leftovers(tmp_path) == [] and leftovers(tmp_path.parent) == []


def test_written_files_get_the_mode_a_plain_open_gives(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    files.write_atomically(tmp_path / "atomic.txt", "x")
    files.write_atomically(tmp_path / "bytes.bin", b"\x00\x01")
    assert (tmp_path / "atomic.txt").stat().st_mode == plain.stat().st_mode
    assert (tmp_path / "bytes.bin").read_bytes() == b"\x00\x01"


WRITER = """
import sys
from pathlib import Path
import json
from composeloop.engine.report import write_history
directory, name = Path(sys.argv[1]), sys.argv[2]
for epoch in range(400):
    write_history(directory, [{"epoch": epoch, "writer": name}])
    # always one whole file, from one writer or the other: every line parses
    [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
"""


@pytest.mark.slow
def test_two_processes_write_the_same_run_files(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), name], env=env, stderr=subprocess.PIPE, text=True
        )
        for name in ("a", "b")
    ]
    errors = [writer.communicate(timeout=240)[1] for writer in writers]
    assert [writer.returncode for writer in writers] == [0, 0], errors
    assert len(files.read_jsonl(tmp_path / "metrics.jsonl")) == 1
    assert leftovers(tmp_path) == []
