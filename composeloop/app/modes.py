"""Modes: what a command does with a composed, compiled run (train, evaluate, predict, export).

This module owns each mode's outputs in the run directory. ``train``: the runner's
services, every model saved as ``model.keras`` (one model named "model") or
``<name>.keras``, the composition's own outputs, summary.json, and with ``tracking=mlflow``
all of it in an MLflow run (`composeloop.app.tracking`). ``evaluate``: the latest
(or ``checkpoint=best``) weights on the validation data, plus the composition's own
score, printed and written to evaluation.json. ``predict``: one model applied to the
``x`` array of ``predict.input`` (an .npz), written to predictions.npz. ``export``: a
SavedModel per model for serving (Keras's `model.export`) in ``export/``. Every mode but
train and lr_find needs a checkpoint and refuses a directory without one before anything is
written. ``lr_find``: the learning-rate range test (`composeloop.app.lr_find`).

When the step keeps an exponential moving average of its weights (``train.ema``, or an
`ema` stage of the step builder's), every mode uses the averaged weights: the saved models,
the composition's own outputs, evaluation, prediction and export; the raw weights keep
training and are what checkpoints resume from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from composeloop.app import lr_find, runner
from composeloop.app.compositions import Composition
from composeloop.config.schema import Config
from composeloop.errors import ConfigError, DataError
from composeloop.files import write_json_atomically
from composeloop.vocabulary import VAL, Mode, Weights


@attrs.frozen
class Run:
    """A run ready for its mode: the config, where it reads and writes, and its parts."""

    config: Config
    directory: Path  # the run directory (checkpoints are restored from here)
    outputs: Path  # where this process writes (the run directory, but on non-chief workers)
    composition: Composition
    program: Any
    data: Any
    started: float
    warnings: tuple[str, ...] = ()  # shown before training (the data's); summary.json lists them

    def train_data(self) -> Any:
        if self.composition.train_data is not None:
            return self.composition.train_data
        if hasattr(self.data, "x_train"):
            from composeloop.parts.data import batches

            data, config = self.data, self.config
            return lambda epoch: batches(
                data.x_train, data.y_train, config.data.batch_size, seed=config.seed, epoch=epoch
            )
        return self.data.train

    def validation_data(self) -> Any:
        if not self.composition.validate:
            return None
        if self.composition.validation_data is not None:
            return self.composition.validation_data
        if hasattr(self.data, "x_val"):
            from composeloop.parts.data import batches

            data, batch_size = self.data, self.config.data.batch_size
            return lambda: batches(data.x_val, data.y_val, batch_size, shuffle=False)
        return self.data.validation

    @property
    def models(self) -> dict[str, Any]:
        return dict(self.composition.step.models)


def check_checkpoint(config: Config, directory: Path) -> None:
    """For the modes that restore one: refuses a directory without the checkpoint it would restore."""
    if config.mode in (Mode.train, Mode.lr_find):
        return
    where = runner.checkpoint_directory(config, directory)
    if config.checkpoint.restore is Weights.best:
        where = where / "best"
    if not (where / "checkpoint").is_file():
        which = (
            "best checkpoint (early stopping keeps one)" if config.checkpoint.restore is Weights.best else "checkpoint"
        )
        raise ConfigError(
            f"mode={config.mode.value}: {directory} has no {which} in {where}; give a trained run's directory "
            "with hydra.run.dir=DIR"
        )


def model_files(models: dict[str, Any]) -> dict[str, str]:
    """The file name each model is saved under: model.keras for a lone "model", else <name>.keras."""
    return {name: "model.keras" if list(models) == ["model"] else f"{name}.keras" for name in models}


def train(run: Run) -> dict[str, Any]:
    """Trains with every configured service; saves the models and summary.json (then tracks them)."""
    from composeloop.app import tracking
    from composeloop.engine.strategies import is_chief

    composition = run.composition
    handlers = composition.handlers(run.outputs) if callable(composition.handlers) else composition.handlers
    tracker = tracking.open_run(run.config, run.directory) if is_chief(run.program.strategy) else None
    training = runner.Training(
        run.program,
        run.train_data(),
        run.validation_data(),
        handlers=handlers,
        log_names=composition.log_names,
        images=composition.images,
        warnings=run.warnings,
        tracker=tracker,
    )
    try:
        summary = _train(run, training)
    except Exception as error:
        if tracker is not None:
            tracking.end_run(tracker, run.outputs, {"status": "failed", "error": str(error).split("\n")[0]})
        raise
    if tracker is not None:
        tracking.end_run(tracker, run.outputs, summary)
    return summary


def _train(run: Run, training: runner.Training) -> dict[str, Any]:
    composition = run.composition
    state = runner.train(run.config, run.outputs, training, restore_from=run.directory)
    averaged = runner.averaged_weights(run.program)
    with averaged():
        for name, file in model_files(run.models).items():  # the best epoch's weights when early stopping restored them
            run.models[name].save(run.outputs / file)
    summary = runner.summary(run.config, state, run.started, composition.log_names, composition.main_metric)
    if composition.finish is not None and state.status not in runner.UNFINISHED:
        with averaged():
            summary.update(composition.finish(state, run.outputs))  # not worth it for a run that will resume
        summary["wall_s"] = time.perf_counter() - run.started
    write_json_atomically(run.outputs / "summary.json", summary)
    return summary


def _restore(run: Run) -> tuple[Any, str]:
    """The run's state restored from the configured checkpoint; returns (state, its path)."""
    from composeloop.engine.checkpoint import Checkpoints
    from composeloop.engine.events import RunState

    where = runner.checkpoint_directory(run.config, run.directory)
    checkpoints = Checkpoints(where, run.program, keep=run.config.checkpoint.keep)
    path = checkpoints.latest_best if run.config.checkpoint.restore is Weights.best else checkpoints.latest
    state = RunState(run.program, run.config.train.epochs)
    state.epoch, state.batch = checkpoints.restore(path)
    state.history = checkpoints.history()
    return state, path


def evaluate(run: Run) -> dict[str, Any]:
    """The restored weights on the validation data (and the composition's score): evaluation.json."""
    from composeloop.engine.loop import run_epoch

    state, path = _restore(run)
    metrics: dict[str, Any] = {}
    validation = run.validation_data()
    with runner.averaged_weights(run.program)():
        if validation is not None:
            run.program.reset(VAL)
            run_epoch(run.program, VAL, validation())
            metrics = {f"{VAL}_{name}": value for name, value in run.program.results(VAL).items()}
        if run.composition.finish is not None:
            metrics.update(run.composition.finish(state, run.outputs))
    result = {
        "mode": Mode.evaluate.value,
        "checkpoint": path,
        "weights": run.config.checkpoint.restore.value,
        "step": state.step,
        "epoch": state.epoch,
        "metrics": metrics,
        "wall_s": time.perf_counter() - run.started,
    }
    write_json_atomically(run.outputs / "evaluation.json", result)
    shown = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    print(f"composeloop: evaluated {path} (step {state.step}): {shown}", flush=True)
    return result


def _chosen_model(run: Run) -> tuple[str, Any]:
    models, wanted = run.models, run.config.predict.model
    if wanted is None:
        if len(models) != 1:
            raise ConfigError(f"predict.model: this run has several models ({', '.join(models)}); name one")
        wanted = next(iter(models))
    if wanted not in models:
        raise ConfigError(f"predict.model: no model '{wanted}' in this run; it has {', '.join(models)}")
    return wanted, models[wanted]


def _predict_input(path: str | None) -> np.ndarray:
    from composeloop.parts.data import read_features

    if not path:
        raise ConfigError("predict.input: mode=predict needs an .npz file holding x: set predict.input=FILE.npz")
    return read_features(path, "predict.input")


def predict(run: Run) -> dict[str, Any]:
    """One model on ``predict.input``'s ``x``: predictions.npz (``outputs``, and ``classes`` for logits)."""
    x = _predict_input(run.config.predict.input)  # before restoring: a bad file fails fast
    name, model = _chosen_model(run)
    expected = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if expected is not None and tuple(x.shape[1:]) != expected:
        raise DataError(
            f"predict.input: x has examples of shape {tuple(x.shape[1:])} but model '{name}' takes {expected}"
        )
    _, path = _restore(run)
    with runner.averaged_weights(run.program)():
        outputs = np.asarray(model.predict(x, batch_size=run.config.data.batch_size, verbose=0))
    arrays = {"outputs": outputs}
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        arrays["classes"] = outputs.argmax(axis=1).astype(np.int32)
    target = run.outputs / "predictions.npz"
    np.savez(target, **arrays)
    print(f"composeloop: predicted {len(x)} examples with model '{name}' from {path}: {target}", flush=True)
    return {"mode": Mode.predict.value, "checkpoint": path, "model": name, "examples": len(x), "file": str(target)}


def export(run: Run) -> dict[str, Any]:
    """A SavedModel per model for serving (`model.export`): export/ (or export/<name>/ for several)."""
    _, path = _restore(run)
    root = run.outputs / "export"
    models = run.models
    written = {}
    with runner.averaged_weights(run.program)():
        for name, model in models.items():
            where = root if len(models) == 1 else root / name
            model.export(str(where), verbose=False)
            written[name] = str(where)
    print(f"composeloop: exported {', '.join(written.values())} (SavedModel, endpoint 'serve') from {path}", flush=True)
    return {"mode": Mode.export.value, "checkpoint": path, "exported": written}


MODES = {
    Mode.train: train,
    Mode.evaluate: evaluate,
    Mode.predict: predict,
    Mode.export: export,
    Mode.lr_find: lr_find.lr_find,
}
