"""Modes on a trained run directory: evaluate, predict, export; and their bad input.

One tiny classifier run (in process, through `composeloop.app.run`) is shared by every
case; the exported SavedModel is loaded in a fresh Python that never imports composeloop.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from test_cli import assert_one_line_error, cli

from composeloop.app import load_config, run
from composeloop.errors import ComposeloopError

TINY = (
    "data=synthetic",
    "data.synthetic_examples=64",
    "train.epochs=2",
    "report.tensorboard=false",
    "report.curves=false",
    "early_stopping.patience=5",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("trained")
    summary = run(load_config(list(TINY)), directory)
    assert summary["status"] == "completed"
    return directory


def in_mode(directory, *overrides):
    return run(load_config([*TINY, *overrides]), directory)


def test_evaluate_restores_the_latest_weights_and_writes_evaluation_json(trained):
    final = json.loads((trained / "summary.json").read_text())["metrics"]
    result = in_mode(trained, "mode=evaluate")
    written = json.loads((trained / "evaluation.json").read_text())
    assert written["metrics"] == pytest.approx(result["metrics"])
    assert written["metrics"]["val_accuracy"] == pytest.approx(final["val_accuracy"])
    assert written["metrics"]["val_loss"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert written["weights"] == "latest" and written["checkpoint"].endswith(f"ckpt-{written['step']}")


def test_evaluate_best_uses_the_best_checkpoint(trained):
    result = in_mode(trained, "mode=evaluate", "checkpoint=best")
    assert result["weights"] == "best" and "/best/" in result["checkpoint"]


def test_predict_writes_the_models_outputs_for_an_npz(trained, tmp_path):
    x = np.random.default_rng(1).normal(size=(5, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "new.npz", x=x)
    in_mode(trained, "mode=predict", f"predict.input={tmp_path / 'new.npz'}")
    with np.load(trained / "predictions.npz") as predictions:
        outputs, classes = predictions["outputs"], predictions["classes"]
    expected = keras.models.load_model(trained / "model.keras")(x).numpy()
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(classes, expected.argmax(axis=1))


def test_predict_refuses_examples_of_another_shape(trained, tmp_path):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((3, 5), np.float32))
    with pytest.raises(
        ComposeloopError, match=r"predict.input: x has examples of shape \(5,\) but model 'model' takes \(8, 8\)"
    ):
        in_mode(trained, "mode=predict", f"predict.input={tmp_path / 'wrong.npz'}")


def test_export_loads_without_composeloop_and_gives_the_models_outputs(trained, tmp_path):
    in_mode(trained, "mode=export")
    x = np.random.default_rng(2).normal(size=(4, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = keras.models.load_model(trained / "model.keras")(x).numpy()
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({str(trained / "export")!r})
        outputs = loaded.serve(tf.constant(np.load({str(tmp_path / "x.npy")!r}))).numpy()
        np.save({str(tmp_path / "served.npy")!r}, outputs)
        assert not any(name.startswith("composeloop") for name in sys.modules), "composeloop was imported"
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["evaluate", "predict", "export"])
def test_a_mode_on_a_directory_without_checkpoints_is_one_line_and_writes_nothing(tmp_path, mode):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(f"mode={mode}", f"hydra.run.dir={empty}", cwd=tmp_path)
    assert_one_line_error(result, f"mode={mode}", "has no checkpoint")
    assert list(empty.iterdir()) == []
    missing = cli(f"mode={mode}", f"hydra.run.dir={tmp_path / 'missing'}", cwd=tmp_path)
    assert_one_line_error(missing, f"mode={mode}", "has no checkpoint")
    assert not (tmp_path / "missing").exists()
