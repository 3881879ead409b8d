"""Warnings a run shows, through the real command line: one line each, and in summary.json.

A warning is something that loaded and ran but a person should know: train and validation
holding different classes, a resume that skipped an unreadable checkpoint. Each is one
``composeloop: warning: ...`` line on stderr (never Python's two-line warning format) and an
entry of ``warnings`` in summary.json. A resume with no readable checkpoint is an error: one
line, exit 2, and the run directory as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli

pytestmark = pytest.mark.slow
TINY = (
    "data=synthetic",
    "data.synthetic_examples=64",
    "data.synthetic_classes=3",
    "report.tensorboard=false",
    "report.curves=false",
)


def warning_lines(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert not [line for line in lines if "Warning" in line or "warnings.warn" in line], stderr  # no Python format
    return [line for line in lines if line.startswith("composeloop: warning: ")]


def summary_of(directory: Path) -> dict:
    return json.loads((directory / "summary.json").read_text())


def files(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


def damage(checkpoint: Path) -> None:
    """Truncates a checkpoint's data file to half: TensorFlow's reader refuses it."""
    data = next(checkpoint.parent.glob(f"{checkpoint.name}.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def test_different_train_and_validation_classes_are_one_warning_line_and_listed(tmp_path):
    """Fails on the old code: the note was computed by nobody, so neither shown nor listed."""
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "data.npz",
        x_train=rng.random((24, 4, 4), dtype=np.float32),
        y_train=np.arange(24) % 3,  # classes 0, 1, 2
        x_test=rng.random((6, 4, 4), dtype=np.float32),
        y_test=np.arange(6) % 2,  # classes 0, 1
    )
    run_dir = tmp_path / "run"
    args = ("data=npz", f"data.path={tmp_path / 'data.npz'}", "train.epochs=1", "report.tensorboard=false")
    result = cli(*args, "report.curves=false", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = f"data.path: {tmp_path / 'data.npz'}: train and validation hold different classes"
    [line] = warning_lines(result.stderr)
    assert line.startswith(f"composeloop: warning: {expected}") and "train has classes validation lacks (2)" in line
    assert summary_of(run_dir)["warnings"] == [line.removeprefix("composeloop: warning: ")]


def test_an_unreadable_latest_checkpoint_is_skipped_with_a_warning_and_none_readable_is_one_line(tmp_path):
    """Fails on the old code: Python's two-line CheckpointWarning on stderr, no `warnings` in summary.json."""
    run_dir = tmp_path / "run"
    first = cli(*TINY, "train.epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert warning_lines(first.stderr) == [] and summary_of(run_dir)["warnings"] == []
    per_epoch = summary_of(run_dir)["steps"] // 2
    checkpoints = run_dir / "checkpoints"
    latest, older = checkpoints / f"ckpt-{2 * per_epoch}", checkpoints / f"ckpt-{per_epoch}"
    damage(latest)

    resumed = cli(*TINY, "train.epochs=3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    [line] = warning_lines(resumed.stderr)
    assert f"checkpoint cannot be read: {latest}" in line and f"resumed from {older} (step {per_epoch})" in line
    summary = summary_of(run_dir)
    assert summary["resumed_from_step"] == per_epoch and summary["epochs"] == 3 and summary["status"] == "completed"
    assert summary["warnings"] == [line.removeprefix("composeloop: warning: ")]
    assert Path(f"{older}.index").is_file()  # the restored one

    for index in checkpoints.glob("ckpt-*.index"):
        damage(checkpoints / index.name.removesuffix(".index"))
    before = files(run_dir)
    refused = cli(*TINY, "train.epochs=4", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert_one_line_error(refused, f"no checkpoint in {checkpoints} can be read", "nothing was deleted")
    assert files(run_dir) == before
