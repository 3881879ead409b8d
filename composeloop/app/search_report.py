"""What a search leaves at its sweep root besides the sweep summary: its best trial and its picture.

This module owns ``optimization_results.yaml`` (the study, its metric and direction, how
many trials ended how, and the best trial with the overrides that reproduce it) and
``search.png`` (each trial's metric against the first numeric dimension, colour by the
first choice dimension, pruned trials drawn as crosses at the last value they reported,
the best trial starred). Both are drawn from the study's trials, read through
`trial_rows`; matplotlib's Agg backend, no pyplot state. The per-job table is
`composeloop.config.sweep`'s, which reads the same jobs back from their directories.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

RESULTS_FILE = "optimization_results.yaml"
PLOT_FILE = "search.png"


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One plain dict per trial of an Optuna `study`: number, state, value, params, intermediate values, status.

    Example:
      >>> [row["state"] for row in trial_rows(study)]
      ['complete', 'pruned', 'complete']
    """
    return [
        {
            "number": trial.number,
            "state": trial.state.name.lower(),
            "value": trial.value if trial.values else None,
            "params": dict(trial.params),
            "intermediate": dict(sorted(trial.intermediate_values.items())),
            "status": trial.user_attrs.get("status", ""),
        }
        for trial in study.get_trials(deepcopy=False)
    ]


def best_row(rows: Sequence[Mapping[str, Any]], direction: str) -> Mapping[str, Any] | None:
    """The completed trial with the best value (the first one on a tie), or None."""
    done = [row for row in rows if row["state"] == "complete" and row["value"] is not None]
    if not done:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    return max(done, key=lambda row: (sign * row["value"], -row["number"]))


def write_results(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    study: str,
    storage: str,
    metric: str,
    direction: str,
    overrides: Sequence[str] = (),
) -> None:
    """Writes ``optimization_results.yaml``: the study, counts by state, and the best trial.

    Args:
      path: the file to write.
      rows: from `trial_rows`.
      study, storage, metric, direction: the study's name, URL, objective and direction.
      overrides: the best trial's overrides (they reproduce it as a single run).
    """
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    best = best_row(rows, direction)
    payload: dict[str, Any] = {
        "study": study,
        "storage": storage,
        "metric": metric,
        "direction": direction,
        "trials": counts,
        "best": None
        if best is None
        else {
            "trial": best["number"],
            "value": float(best["value"]),
            "params": best["params"],
            "overrides": list(overrides),
        },
    }
    path.write_text(yaml.safe_dump(payload, sort_keys=False))


def _numeric(rows: Sequence[Mapping[str, Any]], name: str) -> bool:
    values = [row["params"].get(name) for row in rows if name in row["params"]]
    return bool(values) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def plot_search(
    rows: Sequence[Mapping[str, Any]], path: Path, *, metric: str, direction: str, log_x: bool | None = None
) -> None:
    """Draws each trial's `metric` against the first numeric parameter into the PNG `path`.

    Args:
      rows: from `trial_rows`.
      path: where the PNG goes (through a temporary file and a rename).
      metric: the y axis's name.
      direction: "maximize" or "minimize" (which trial gets the star).
      log_x: a log-scaled x axis; None: when the values are positive and span a decade.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from composeloop.files import write_atomically

    names = list(dict.fromkeys(name for row in rows for name in row["params"]))
    x_name = next((name for name in names if _numeric(rows, name)), names[0] if names else None)
    colour_name = next((name for name in names if name != x_name and not _numeric(rows, name)), None)
    colour_name = colour_name or next((name for name in names if name != x_name), None)
    colours = sorted({str(row["params"].get(colour_name)) for row in rows}) if colour_name else [""]
    palette = {value: f"C{index % 10}" for index, value in enumerate(colours)}

    figure = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    pruned = failed = 0
    for row in rows:
        x = row["params"].get(x_name) if x_name else row["number"]
        colour = palette[str(row["params"].get(colour_name))] if colour_name else "C0"
        if row["state"] == "complete" and row["value"] is not None and math.isfinite(row["value"]):
            axes.scatter([x], [row["value"]], color=colour, s=36, zorder=3)
        elif row["state"] == "pruned" and row["intermediate"]:
            pruned += 1
            step, value = list(row["intermediate"].items())[-1]
            axes.scatter([x], [value], color=colour, marker="x", s=44, zorder=3)
            axes.annotate(f"{step}", (x, value), textcoords="offset points", xytext=(4, -9), fontsize=7, color=colour)
        else:
            failed += row["state"] != "running"
    best = best_row(rows, direction)
    if best is not None:
        axes.scatter(
            [best["params"].get(x_name)],
            [best["value"]],
            marker="*",
            s=220,
            facecolor="none",
            edgecolor="black",
            zorder=4,
            label=f"best: trial {best['number']}",
        )
    values = [row["params"].get(x_name) for row in rows if isinstance(row["params"].get(x_name), int | float)]
    if log_x is None:
        log_x = bool(values) and min(values) > 0 and max(values) >= 10 * min(values)
    if log_x:
        axes.set_xscale("log")
    for value, colour in palette.items():
        if colour_name:
            axes.scatter([], [], color=colour, label=f"{colour_name}={value}")
    axes.scatter([], [], color="grey", marker="x", label="pruned (at the epoch shown)")
    axes.legend(fontsize=8, loc="best")
    axes.set_xlabel(x_name or "trial")
    axes.set_ylabel(metric)
    finished = len(rows) - pruned - failed
    axes.set_title(
        f"{metric} of {len(rows)} trials: {finished} finished, {pruned} pruned, {failed} failed", fontsize=10
    )
    axes.grid(alpha=0.3)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png")
    write_atomically(path, png.getvalue())  # one writer's temporaries never meet another's
