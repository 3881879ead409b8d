"""``mode=lr_find`` (``+experiment=lr_find``): the learning-rate range test of any composition.

This module owns the mode's outputs: ``lr_find.png`` (the loss against the learning rate,
log axis, the suggestion marked) and ``summary.json`` (``suggested_learning_rate``, the
rate at the lowest loss, whether the test diverged, and every point), in a directory that
holds no earlier run. The test itself (the ramp, the smoothing, the suggestion, the
weights put back) is `composeloop.engine.lr_find`'s; the composition is built as for
training, with every configured stage (weight decay, lookahead, EMA, accumulation,
precision), so the rate suggested is for the update rule the run will use.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from composeloop.app import runner
from composeloop.config.schema import Config
from composeloop.errors import ConfigError
from composeloop.files import read_json, write_json_atomically
from composeloop.vocabulary import Mode

FIGURE = "lr_find.png"


def check_directory(config: Config, directory: Path) -> None:
    """Refuses a directory holding a run (results, a figure or checkpoints): nothing is written over it."""
    found = [name for name in (*runner.RESULT_FILES, FIGURE) if (directory / name).exists()]
    if found == ["summary.json"] and (read_json(directory / "summary.json") or {}).get("status") == "failed":
        found = []
    if runner.has_checkpoint(config, directory):
        found.append("checkpoints")
    if found:
        raise ConfigError(
            f"mode=lr_find: {directory} already holds a run ({', '.join(found)}); choose another hydra.run.dir"
        )


def lr_find(run: Any) -> dict[str, Any]:
    """Runs the range test on the run's composition; writes lr_find.png and summary.json.

    Args:
      run: a `composeloop.app.modes.Run` (its composition built and compiled).

    Returns:
      What summary.json holds.
    """
    from composeloop.engine.lr_find import lr_range_test, plot_range_test

    config, settings = run.config, run.config.lr_find
    try:
        test = lr_range_test(
            run.program.step,
            run.train_data(),
            start=settings.start,
            end=settings.end,
            steps=settings.steps,
            smoothing=settings.smoothing,
            divergence=settings.divergence,
            strategy=run.program.strategy,
            seed=config.seed,
            jit_compile=config.train.jit_compile,
        )
    except ValueError as error:
        raise ConfigError(f"mode=lr_find: {error}") from None
    plot_range_test(test, run.outputs / FIGURE, title=f"{config.experiment}: learning-rate range test")
    result = {
        "experiment": config.experiment,
        "mode": Mode.lr_find.value,
        "status": "completed",
        "start": settings.start,
        "end": settings.end,
        "planned_steps": settings.steps,
        **test.summary(),
        # What a sweep's summary shows for each job (sweeps read a run's `metrics`).
        "metrics": {"suggested_learning_rate": test.suggested, "minimum_loss_learning_rate": test.minimum},
        "wall_s": time.perf_counter() - run.started,
    }
    write_json_atomically(run.outputs / "summary.json", result)
    suggested = "none (too few steps)" if test.suggested is None else f"{test.suggested:.3g}"
    stopped = f", stopped at {test.learning_rates[-1]:.3g} (diverged)" if test.diverged else ""
    print(
        f"composeloop: lr_find: suggested learning rate {suggested} (lowest loss at {test.minimum:.3g}{stopped}); "
        f"{run.outputs / FIGURE}",
        flush=True,
    )
    return result
