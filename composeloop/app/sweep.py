"""Multirun sweeps: isolated jobs, a failed job recorded not fatal, and the sweep's summary.

This module owns what a Hydra multirun writes at its sweep root: ``sweep_summary.csv``,
``sweep_summary.md`` (one row per job: overrides, final metrics, best epoch, wall seconds,
status, error; a search's pruned trials counted apart; rows from
`composeloop.app.sweep_rows`) and ``sweep.png`` (see
`composeloop.app.sweep_plot`). It also owns the reset of Keras/TensorFlow global state
that makes a job inside a sweep equal the same job run alone, and the summary.json of a
job that failed. It does not run jobs: Hydra does.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from composeloop.app.sweep_rows import FAILED, INTERRUPTED, PRUNED, parameters, read_sweep, swept_keys
from composeloop.errors import ConfigError
from composeloop.files import read_json, write_atomically, write_json_atomically

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"
PLOT = "sweep.png"


@attrs.frozen
class SweepOutcome:
    """What a sweep left behind: its directory and how many jobs ended how."""

    directory: Path
    jobs: int
    failed: int
    unfinished: int


# The sweep in progress in this process (set by the callback) and the last finished one.
# Module state because Hydra instantiates the callback itself and the CLI must find both.
_current: dict[str, Any] = {"directory": None, "outcome": None}


def current_sweep() -> Path | None:
    """The root of the multirun running in this process, if any."""
    return _current["directory"]


def take_outcome() -> SweepOutcome | None:
    """The outcome of the last multirun this process finished, if any; forgets it."""
    outcome, _current["outcome"] = _current["outcome"], None
    return outcome


# ---------------------------------------------------------------------------- one job


def refuse_earlier_sweep(sweep_dir: Path) -> None:
    """Refuses a multirun into a directory where a sweep already left results.

    Raises:
      ConfigError: names `hydra.sweep.dir` and a file found there.

    Example:
      >>> refuse_earlier_sweep(Path("multirun/2026-01-01/12-00-00"))  # new or empty: fine
    """
    sweep_dir = Path(sweep_dir)
    found = [
        *(sweep_dir / name for name in (SUMMARY_CSV, "multirun.yaml") if (sweep_dir / name).exists()),
        *sweep_dir.glob("*/summary.json"),
        *sweep_dir.glob("*/metrics.jsonl"),
    ]
    if found:
        raise ConfigError(
            f"hydra.sweep.dir: {sweep_dir} already holds a sweep's results ({found[0].relative_to(sweep_dir)});"
            " choose another directory"
        )


def fresh_state(seed: int) -> None:
    """Clears Keras/TensorFlow global state and seeds every generator from `seed`.

    Hydra's basic launcher runs all jobs of a sweep in one process (and joblib reuses its
    workers), so without this a job would inherit layer-name counters, the Keras seed
    generator and TensorFlow's global generator from the jobs before it.

    Example:
      >>> fresh_state(config.seed)
      >>> run(config, directory)  # as if in a new process
    """
    import keras
    import tensorflow as tf

    keras.utils.clear_session(free_memory=True)
    keras.utils.set_random_seed(seed)  # python, numpy, tf.random.set_seed, Keras' seed generator
    tf.random.set_global_generator(tf.random.Generator.from_seed(seed))


def record_failure(directory: Path, error: str, wall_s: float, experiment: str | None = None) -> None:
    """Marks the run in `directory` as failed with its one-line `error` in summary.json.

    Keys the experiment already wrote there are kept; `status`, `error` and (when absent)
    `wall_s` are set. Only call this for a directory this job owns.

    Example:
      >>> record_failure(Path("multirun/0"), "data.path: no such file missing.npz", 0.4)
    """
    path = Path(directory) / "summary.json"
    summary = read_json(path) or {}
    summary.update(status="failed", error=summary.get("error") or error)
    summary.setdefault("wall_s", wall_s)
    if experiment is not None:
        summary.setdefault("experiment", experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, summary)


# ---------------------------------------------------------------------------- writing the summary


def _table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]], str | None]:
    """Column names, cell values and the sweep's main metric."""
    keys = swept_keys(rows)
    mains = [row["main_metric"] for row in rows if row["main_metric"]]
    metric = max(dict.fromkeys(mains), key=mains.count) if mains else None
    names = list(dict.fromkeys([*([metric] if metric else []), *(n for row in rows for n in row["metrics"])]))
    header = ["job", *keys, *names, "best_epoch", "wall_s", "status", "error", "overrides"]
    cells = []
    for row in rows:
        params = parameters(row["overrides"])
        cells.append(
            [
                row["job"],
                *(params.get(key, "") for key in keys),
                *(row["metrics"].get(name) for name in names),
                row["best_epoch"],
                row["wall_s"],
                row["status"],
                row["error"],
                " ".join(row["overrides"]),
            ]
        )
    return header, cells, metric


def _markdown_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_summary(sweep_dir: str | Path, *, missing: str = "failed", plot: bool = True) -> SweepOutcome:
    """Writes sweep_summary.csv, sweep_summary.md and sweep.png at `sweep_dir`.

    Args:
      sweep_dir: the multirun's root (``hydra.sweep.dir``).
      missing: the status of a job without summary.json (see `read_job`).
      plot: also draw sweep.png.

    Returns:
      How many jobs there were, and how many failed or did not finish.

    Example:
      >>> write_summary("multirun/2026-01-01/12-00-00").failed
      0
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    rows = read_sweep(sweep_dir, missing=missing)
    header, cells, metric = _table(rows)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if cell is None else cell for cell in line] for line in cells])
    write_atomically(sweep_dir / SUMMARY_CSV, text.getvalue().encode())

    failed = sum(row["status"] in FAILED for row in rows)
    unfinished = sum(row["status"] == INTERRUPTED for row in rows)
    pruned = sum(row["status"] == PRUNED for row in rows)
    finished = len(rows) - failed - unfinished - pruned
    lines = [
        f"# Sweep {sweep_dir.parent.name}/{sweep_dir.name}",
        "",
        f"{len(rows)} jobs: {finished} finished, "
        + (f"{pruned} pruned, " if pruned else "")
        + f"{failed} failed, {unfinished} interrupted."
        + (f" Main metric: `{metric}`." if metric else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_markdown_cell(cell) for cell in line) + " |" for line in cells),
    ]
    if plot:
        from composeloop.app.sweep_plot import plot_sweep

        plot_sweep(rows, swept_keys(rows), metric, sweep_dir / PLOT)
        lines += ["", f"![{metric} against the swept values]({PLOT})"]
    write_atomically(sweep_dir / SUMMARY_MD, ("\n".join(lines) + "\n").encode())
    return SweepOutcome(sweep_dir, len(rows), failed, unfinished)


class SweepSummary(Callback):
    """The Hydra callback conf/config.yaml registers: summarises every multirun at its end.

    Example (what conf/config.yaml holds):
      hydra.callbacks.sweep_summary._target_: composeloop.app.sweep.SweepSummary
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _current.update(directory=Path(str(config.hydra.sweep.dir)), outcome=None)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _current["outcome"] = write_summary(Path(str(config.hydra.sweep.dir)))
        _current["directory"] = None


def summarize_interrupted() -> SweepOutcome | None:
    """After Ctrl-C: the summary of the running sweep's finished jobs, if a sweep was running."""
    directory = _current["directory"]
    if directory is None:
        return None
    _current["directory"] = None
    return write_summary(directory, missing="interrupted")
