"""A sweep's jobs read back from their directories: one row per job.

This module owns what a row says about a job: its number, overrides, status and error,
final metrics, main metric and best epoch, wall seconds. Rows come from what each job
wrote (``.hydra/overrides.yaml``, ``summary.json``, ``metrics.jsonl``), so the same code
serves the sequential launcher, launchers whose jobs run in other processes or on other
machines, and a sweep cut short. Which way a metric improves is the one rule of
`composeloop.vocabulary`, with the directions a run recorded in its summary.json first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from composeloop.files import read_json, read_jsonl
from composeloop.vocabulary import VAL, higher_is_better

# The quality score of each built-in composition, best first; otherwise the first val_ metric.
MAIN_METRICS = (f"{VAL}_accuracy", "digit_confidence")
# summary.json keys outside `metrics` that are results rather than bookkeeping.
QUALITY_KEYS = ("digit_confidence", "classes_covered")
SKIPPED_METRICS = ("epoch", "seconds")
# Statuses that count as a failed job (the sweep exits non-zero) or one cut short.
FAILED = ("failed", "stopped_nonfinite")
INTERRUPTED = "interrupted"
PRUNED = "pruned"  # a search trial its pruner stopped: not finished, not failed either


def number(value: Any) -> float | int | None:
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


def main_metric(metrics: Mapping[str, Any], declared: str | None = None) -> str | None:
    """The metric a job is judged by: the one its summary names, else val_accuracy, a GAN's
    quality score, else the first val_ metric.

    Example:
      >>> main_metric({"d_loss": 0.7, "g_loss": 1.1, "digit_confidence": 0.8})
      'digit_confidence'
    """
    if declared and declared in metrics:
        return declared
    for name in MAIN_METRICS:
        if name in metrics:
            return name
    return next((name for name in metrics if name.startswith(f"{VAL}_")), next(iter(metrics), None))


def best_epoch(summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]], metric: str | None) -> int | None:
    """summary.json's `best_epoch`, else the epoch of metrics.jsonl where `metric` is best.

    Best is highest or lowest by `composeloop.vocabulary.higher_is_better` (the directions
    summary.json recorded first); NaN never wins.

    Example:
      >>> best_epoch({}, [{"epoch": 1, "val_accuracy": 0.9}, {"epoch": 2, "val_accuracy": 0.8}], "val_accuracy")
      1
    """
    if summary.get("best_epoch") is not None:
        return int(summary["best_epoch"])
    if metric is None:
        return None
    scored = [(value, line.get("epoch")) for line in history if (value := number(line.get(metric))) is not None]
    scored = [(value, epoch) for value, epoch in scored if math.isfinite(value) and epoch is not None]
    if not scored:
        return None
    declared = {name: way == "max" for name, way in (summary.get("directions") or {}).items()}
    pick = max if higher_is_better(metric, declared) else min
    return int(pick(scored, key=lambda pair: pair[0])[1])


def read_job(job_dir: Path, *, missing: str = "failed") -> dict[str, Any]:
    """One job's row: number, overrides, status, error, final metrics, best epoch, wall seconds.

    Args:
      job_dir: a job's output directory (holds ``.hydra/overrides.yaml``).
      missing: the status of a job that left no summary.json ("failed" after a sweep that
        ended, "interrupted" after Ctrl-C).

    Returns:
      A dict with ``job``, ``overrides`` (list), ``status``, ``error``, ``metrics`` (name ->
      float), ``main_metric``, ``higher_is_better``, ``best_epoch``, ``wall_s`` and ``dir``.
    """
    try:
        overrides = [str(item) for item in yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []]
    except (OSError, yaml.YAMLError, TypeError):
        overrides = []
    summary = read_json(job_dir / "summary.json")
    history = read_jsonl(job_dir / "metrics.jsonl")
    if summary is None:
        status = missing
        error = "ended without writing summary.json" if missing == "failed" else ""
        summary = {"metrics": history[-1] if history else {}}
    else:
        status = str(summary.get("status", "completed"))
        # A run that stopped itself (NaN policy, a signal, a pruner) says why in `reason`.
        why = summary.get("reason") if status not in ("completed", "stopped_early") else ""
        error = str(summary.get("error") or why or "")
    reported = {**(summary.get("metrics") or {}), **{key: summary[key] for key in QUALITY_KEYS if key in summary}}
    metrics = {
        name: value
        for name, raw in reported.items()
        if name not in SKIPPED_METRICS and (value := number(raw)) is not None
    }
    metric = main_metric(metrics, summary.get("main_metric"))
    declared = {name: way == "max" for name, way in (summary.get("directions") or {}).items()}
    return {
        "job": _job_number(job_dir),
        "overrides": overrides,
        "status": status,
        "error": error,
        "metrics": metrics,
        "main_metric": metric,
        "higher_is_better": None if metric is None else higher_is_better(metric, declared),
        "best_epoch": best_epoch(summary, history, metric),
        "wall_s": number(summary.get("wall_s")),
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
