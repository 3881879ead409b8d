"""Multirun sweeps: isolated jobs, a failed job recorded not fatal, and the sweep's summary.

This module owns what a Hydra multirun writes at its sweep root: ``sweep_summary.csv``,
``sweep_summary.md`` (one row per job: overrides, final metrics, best epoch, wall seconds,
status, error) and ``sweep.png`` (see `composeloop.config.sweep_plot`). The rows are read
back from the job directories themselves (``.hydra/overrides.yaml``, ``summary.json``,
``metrics.jsonl``), so the same code serves the sequential launcher, a parallel launcher
whose jobs run in other processes, and a sweep cut short by Ctrl-C. It also owns the reset
of Keras/TensorFlow global state that makes a job inside a sweep equal the same job run
alone, and the summary.json of a job that failed. It does not run jobs: Hydra does.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from composeloop.errors import ConfigError

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_MD = "sweep_summary.md"
PLOT = "sweep.png"
# The quality score of each experiment, best first; otherwise the first val_ metric.
MAIN_METRICS = ("val_accuracy", "digit_confidence")
# summary.json keys outside `metrics` that are results rather than bookkeeping.
QUALITY_KEYS = ("digit_confidence", "classes_covered")
SKIPPED_METRICS = ("epoch", "seconds")
# Statuses that count as a failed job (the sweep exits non-zero) or one cut short.
FAILED = ("failed", "stopped_nonfinite")
INTERRUPTED = "interrupted"


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
    from composeloop.engine.report import write_json_atomically

    path = Path(directory) / "summary.json"
    summary = _read_json(path) or {}
    summary.update(status="failed", error=summary.get("error") or error)
    summary.setdefault("wall_s", wall_s)
    if experiment is not None:
        summary.setdefault("experiment", experiment)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, summary)


# ---------------------------------------------------------------------------- reading jobs back


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            break  # a line cut short by an interrupted job: keep what came before
    return records


def _number(value: Any) -> float | int | None:
    """A metric value as a number (summary.json spells NaN and inf as strings), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value  # counts stay counts in the table
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _job_number(job_dir: Path) -> int | None:
    try:
        hydra = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())
        return int(hydra["hydra"]["job"]["num"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return int(job_dir.name) if job_dir.name.isdigit() else None


def main_metric(metrics: Mapping[str, Any]) -> str | None:
    """The metric a sweep is judged by: val_accuracy, a GAN's quality score, else the first val_ one.

    Example:
      >>> main_metric({"d_loss": 0.7, "g_loss": 1.1, "digit_confidence": 0.8})
      'digit_confidence'
    """
    for name in MAIN_METRICS:
        if name in metrics:
            return name
    return next((name for name in metrics if name.startswith("val_")), next(iter(metrics), None))


def best_epoch(summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]], metric: str | None) -> int | None:
    """summary.json's `best_epoch`, else the epoch of metrics.jsonl where `metric` is best.

    A metric named like a loss is best when lowest, any other when highest; NaN never wins.

    Example:
      >>> best_epoch({}, [{"epoch": 1, "val_accuracy": 0.9}, {"epoch": 2, "val_accuracy": 0.8}], "val_accuracy")
      1
    """
    if summary.get("best_epoch") is not None:
        return int(summary["best_epoch"])
    scored = [(value, line.get("epoch")) for line in history if (value := _number(line.get(metric))) is not None]
    scored = [(value, epoch) for value, epoch in scored if math.isfinite(value) and epoch is not None]
    if not scored:
        return None
    lower_is_better = metric is not None and "loss" in metric
    value, epoch = (min if lower_is_better else max)(scored, key=lambda pair: pair[0])
    return int(epoch)


def read_job(job_dir: Path, *, missing: str = "failed") -> dict[str, Any]:
    """One job's row: number, overrides, status, error, final metrics, best epoch, wall seconds.

    Args:
      job_dir: a job's output directory (holds ``.hydra/overrides.yaml``).
      missing: the status of a job that left no summary.json ("failed" after a sweep that
        ended, "interrupted" after Ctrl-C).

    Returns:
      A dict with ``job``, ``overrides`` (list), ``status``, ``error``, ``metrics`` (name ->
      float), ``main_metric``, ``best_epoch``, ``wall_s`` and ``dir``.
    """
    try:
        overrides = [str(item) for item in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []]
    except (OSError, yaml.YAMLError, TypeError):
        overrides = []
    summary = _read_json(job_dir / "summary.json")
    history = _read_jsonl(job_dir / "metrics.jsonl")
    if summary is None:
        status = missing
        error = "ended without writing summary.json" if missing == "failed" else ""
        summary = {"metrics": history[-1] if history else {}}
    else:
        status = str(summary.get("status", "completed"))
        # A run that stopped itself (NaN policy, a signal) says why in `reason`.
        why = summary.get("reason") if status in (*FAILED, INTERRUPTED) else ""
        error = str(summary.get("error") or why or "")
    reported = {**(summary.get("metrics") or {}), **{key: summary[key] for key in QUALITY_KEYS if key in summary}}
    metrics = {
        name: number
        for name, value in reported.items()
        if name not in SKIPPED_METRICS and (number := _number(value)) is not None
    }
    metric = main_metric(metrics)
    return {
        "job": _job_number(job_dir),
        "overrides": overrides,
        "status": status,
        "error": error,
        "metrics": metrics,
        "main_metric": metric,
        "best_epoch": best_epoch(summary, history, metric),
        "wall_s": _number(summary.get("wall_s")),
        "dir": job_dir,
    }


def read_sweep(sweep_dir: Path, *, missing: str = "failed") -> list[dict[str, Any]]:
    """The rows of every job under `sweep_dir`, in job order (see `read_job`).

    Example:
      >>> [row["status"] for row in read_sweep("multirun/2026-01-01/12-00-00")]
      ['completed', 'failed']
    """
    sweep_dir = Path(sweep_dir)
    # .hydra/overrides.yaml marks a job; with hydra.output_subdir=null its results still do.
    marked = {path.parent.parent for path in sweep_dir.glob("**/.hydra/overrides.yaml")}
    results = {path.parent for name in ("summary.json", "metrics.jsonl") for path in sweep_dir.glob(f"**/{name}")}
    job_dirs = (marked | results) - {sweep_dir}
    rows = [read_job(job_dir, missing=missing) for job_dir in job_dirs]
    return sorted(rows, key=lambda row: (row["job"] is None, row["job"] or 0, str(row["dir"])))


def parameters(overrides: Sequence[str]) -> dict[str, str]:
    """``["+experiment=gan", "seed=1"]`` -> ``{"experiment": "gan", "seed": "1"}``."""
    pairs = (override.split("=", 1) for override in overrides if "=" in override)
    return {key.lstrip("+~"): value for key, value in pairs}


def swept_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The override keys whose value differs between jobs, in the order they first appear."""
    params = [parameters(row["overrides"]) for row in rows]
    keys = list(dict.fromkeys(key for p in params for key in p))
    return [key for key in keys if len({p.get(key) for p in params}) > 1]


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


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


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
    _write_atomically(sweep_dir / SUMMARY_CSV, text.getvalue().encode())

    failed = sum(row["status"] in FAILED for row in rows)
    unfinished = sum(row["status"] == INTERRUPTED for row in rows)
    lines = [
        f"# Sweep {sweep_dir.parent.name}/{sweep_dir.name}",
        "",
        f"{len(rows)} jobs: {len(rows) - failed - unfinished} finished, {failed} failed, {unfinished} interrupted."
        + (f" Main metric: `{metric}`." if metric else ""),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_markdown_cell(cell) for cell in line) + " |" for line in cells),
    ]
    if plot:
        from composeloop.config.sweep_plot import plot_sweep

        plot_sweep(rows, swept_keys(rows), metric, sweep_dir / PLOT)
        lines += ["", f"![{metric} against the swept values]({PLOT})"]
    _write_atomically(sweep_dir / SUMMARY_MD, ("\n".join(lines) + "\n").encode())
    return SweepOutcome(sweep_dir, len(rows), failed, unfinished)


class SweepSummary(Callback):
    """The Hydra callback conf/config.yaml registers: summarises every multirun at its end.

    Example (what conf/config.yaml holds):
      hydra.callbacks.sweep_summary._target_: composeloop.config.sweep.SweepSummary
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
