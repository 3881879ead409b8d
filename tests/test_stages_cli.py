"""Issue 18's stages through the real command line: EMA, weight decay, lookahead and a
partition wired into a run (exact resume, every mode on the EMA weights), the range test
of a built-in and of a user's own project, and bad input as one line (the preflight's
other refusals are checked in process: test_stages_config.py). Real processes on tiny
synthetic data, so slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_cli import assert_one_line_error, cli

PROJECT = Path(__file__).resolve().parent.parent / "examples" / "my_project"
TINY = ("data=synthetic", "data.synthetic_examples=64", "report.tensorboard=false", "report.curves=false")
STAGES = (
    "train.ema=0.8",
    "train.lookahead=3",
    "optimizer.weight_decay=0.05",
    "optimizer.weight_decay_exclude=[bias,embedding]",
    "gradient.transforms=[{partition: {groups: [{pattern: 'dense/', transforms: [{scale: {factor: 0.5}}]}], "
    "default: [identity]}}]",
)


def model_weights(run: Path) -> list[np.ndarray]:
    return [w.numpy() for w in keras.models.load_model(run / "model.keras").weights]


def checkpoint_arrays(run: Path, group: str) -> list[np.ndarray]:
    path = tf.train.latest_checkpoint(str(run / "checkpoints"))
    reader = tf.train.load_checkpoint(path)
    names = sorted(name for name, _ in tf.train.list_variables(path) if name.startswith(f"{group}/"))
    return [reader.get_tensor(name) for name in names if name.endswith("VARIABLE_VALUE")]


def summary_warnings(run: Path) -> list[str]:
    return json.loads((run / "summary.json").read_text())["warnings"]


def done(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.mark.slow
def test_stages_from_the_command_line_resume_exactly_and_every_mode_uses_the_ema_weights(tmp_path):
    run = lambda *args: done(cli(*TINY, *STAGES, *args, cwd=tmp_path))  # noqa: E731
    straight = run("train.epochs=2", "hydra.run.dir=straight")
    warnings = [line for line in straight.stderr.splitlines() if line.startswith("composeloop: warning: optimizer")]
    assert len(warnings) == 1 and "optimizer.weight_decay_exclude[1]: 'embedding' matches no variable" in warnings[0]
    assert warnings[0].removeprefix("composeloop: warning: ") in summary_warnings(tmp_path / "straight")
    run("train.epochs=1", "hydra.run.dir=resumed")
    run("train.epochs=2", "hydra.run.dir=resumed")
    one, two = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("straight", "resumed"))
    assert two["resumed_from_step"] == 2 and two["steps"] == one["steps"] == 4
    assert two["metrics"] == {**one["metrics"], "seconds": two["metrics"]["seconds"]}
    for a, b in zip(model_weights(tmp_path / "straight"), model_weights(tmp_path / "resumed"), strict=True):
        np.testing.assert_array_equal(a, b)
    # model.keras holds the EMA shadows (kept in the apply stage's checkpoint group), not the raw weights.
    saved = model_weights(tmp_path / "straight")
    raw = checkpoint_arrays(tmp_path / "straight", "model_model")
    state = checkpoint_arrays(tmp_path / "straight", "apply_classifier")
    assert all(not np.array_equal(s, r) for s, r in zip(saved, raw, strict=True))
    assert all(any(s.shape == v.shape and np.array_equal(s, v) for v in state) for s in saved)
    evaluated = run("train.epochs=2", "mode=evaluate", "hydra.run.dir=straight")
    evaluation = json.loads((tmp_path / "straight" / "evaluation.json").read_text())["metrics"]
    assert evaluation == {k: v for k, v in one["metrics"].items() if k.startswith("val_")}, evaluated.stdout
    run("train.epochs=2", "mode=export", "hydra.run.dir=straight")
    served = tf.saved_model.load(str(tmp_path / "straight" / "export"))
    x = np.random.default_rng(0).normal(size=(3, 8, 8)).astype(np.float32)
    model = keras.models.load_model(tmp_path / "straight" / "model.keras")
    np.testing.assert_allclose(served.serve(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_lr_find_on_a_users_own_project_writes_its_figure_and_suggestion(tmp_path):
    # '+experiment=[mine,lr_find]': the project's experiment with conf/experiment/lr_find.yaml
    # (composeloop's) over it, the same as +experiment=mine mode=lr_find.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    args = ["+experiment=[mine,lr_find]", "lr_find.steps=12", "data.batch_size=16", "hydra.run.dir=find"]
    result = subprocess.run(
        [sys.executable, str(PROJECT / "train.py"), *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    done(result)
    assert "composeloop: lr_find: suggested learning rate" in result.stdout
    summary = json.loads((tmp_path / "find" / "summary.json").read_text())
    assert (summary["experiment"], summary["mode"]) == ("mine", "lr_find") and summary["steps"] <= 12
    assert summary["learning_rates"][0] == pytest.approx(1e-7) and 1e-7 <= summary["suggested_learning_rate"] <= 10
    assert (tmp_path / "find" / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert not any((tmp_path / "find" / name).exists() for name in ("checkpoints", "metrics.jsonl", "model.keras"))
    again = cli("+experiment=lr_find", "hydra.run.dir=find", cwd=tmp_path)
    assert_one_line_error(again, "mode=lr_find:", "already holds a run (summary.json, lr_find.png)")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("train.ema=1.5",), "train.ema: must be between 0 and 1 (exclusive), got 1.5"),
        (("lr_find.start=2", "lr_find.end=1"), "lr_find.start: must be below lr_find.end (1.0), got 2.0"),
        (
            ("optimizer.weight_decay=0.1", "optimizer.weight_decay_exclude=[dense]"),
            "optimizer.weight_decay_exclude: ['dense'] matches every one of the 6 variables",
        ),
    ],
)
def test_bad_stage_input_is_one_line_and_writes_nothing(tmp_path, args, expected):
    assert_one_line_error(cli(*TINY, *args, "hydra.run.dir=run", cwd=tmp_path), expected)
    assert not (tmp_path / "run").exists()
