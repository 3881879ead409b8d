"""sweep.png: a sweep's main metric against its swept value, seeds drawn as a spread.

This module owns the picture only (matplotlib, Agg, no pyplot state): the first swept key
other than `seed` is the x axis (log-scaled when its values are positive numbers spanning
a decade or more), each combination of the other swept keys is one line through the mean
over seeds, and with several seeds their min-max band and each seed's point are drawn too;
a search's pruned trials are grey crosses at the value they stopped with, on no line.
Rows come from `composeloop.app.sweep_rows.read_sweep`.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from composeloop.app.sweep_rows import FAILED, PRUNED, parameters
from composeloop.files import write_atomically

SEED_KEY = "seed"


def _as_numbers(values: Sequence[str]) -> list[float] | None:
    try:
        return [float(value) for value in values]
    except ValueError:
        return None


def _series(
    rows: Sequence[Mapping[str, Any]], x_key: str | None, group_keys: Sequence[str], metric: str
) -> tuple[dict[str, dict[str, list[float]]], list[tuple[str, float]]]:
    """group label -> x value (as written in the override) -> the metric of each seed; and
    the pruned jobs apart, as (x value, the metric when they stopped)."""
    series: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    pruned: list[tuple[str, float]] = []
    for row in rows:
        value = row["metrics"].get(metric)
        if row["status"] in FAILED or value is None or not math.isfinite(value):
            continue
        params = parameters(row["overrides"])
        x = params.get(x_key, "all") if x_key else "all"
        if row["status"] == PRUNED:
            pruned.append((x, value))
            continue
        label = ", ".join(f"{key}={params.get(key, '')}" for key in group_keys)
        series[label][x].append(value)
    return series, pruned


def plot_sweep(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str | None, path: Path) -> None:
    """Draws `metric` against the first non-seed key of `keys` into the PNG file `path`.

    Args:
      rows: job rows (``overrides``, ``status``, ``metrics``), as `read_sweep` gives them.
      keys: the swept override keys, in order.
      metric: the metric on the y axis; None draws an empty chart saying so.
      path: where the PNG goes (written through a temporary file and a rename).

    Example:
      >>> plot_sweep(read_sweep(root), swept_keys(rows), "val_accuracy", root / "sweep.png")
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    others = [key for key in keys if key != SEED_KEY]
    x_key = others[0] if others else None
    series, pruned = _series(rows, x_key, others[1:], metric) if metric else ({}, [])
    figure = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x_labels = list(dict.fromkeys([*(x for points in series.values() for x in points), *(x for x, _ in pruned)]))
    numbers = _as_numbers(x_labels)
    positions = dict(zip(x_labels, numbers if numbers is not None else range(len(x_labels)), strict=True))
    for label, points in series.items():
        xs = sorted(points, key=positions.__getitem__)
        at = [positions[x] for x in xs]
        means = [sum(points[x]) / len(points[x]) for x in xs]
        line = axes.plot(at, means, marker="o", label=label or None)[0]
        if any(len(points[x]) > 1 for x in xs):
            low, high = [min(points[x]) for x in xs], [max(points[x]) for x in xs]
            axes.fill_between(at, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
            axes.vlines(at, low, high, color=line.get_color(), alpha=0.5)  # visible at a lone x too
            for x in xs:
                axes.scatter([positions[x]] * len(points[x]), points[x], color=line.get_color(), s=12, alpha=0.6)
    if pruned:
        xs, values = [positions[x] for x, _ in pruned], [value for _, value in pruned]
        axes.scatter(xs, values, marker="x", color="grey", zorder=3, label=f"pruned ({len(pruned)}), when stopped")
    if numbers is not None and numbers and min(numbers) > 0 and max(numbers) >= 10 * min(numbers):
        axes.set_xscale("log")
    if numbers is None and x_labels:
        axes.set_xticks(list(positions.values()), x_labels)
    if not series:
        axes.text(0.5, 0.5, f"no finished job reports {metric or 'a metric'}", ha="center", transform=axes.transAxes)
    seeds = any(len(values) > 1 for points in series.values() for values in points.values())
    axes.set_xlabel(x_key or ("all jobs, one point per seed" if SEED_KEY in keys else "all jobs"))
    axes.set_ylabel(metric or "")
    axes.set_title(f"{metric or 'sweep'}" + (" (mean over seeds, band: min to max)" if seeds else ""), fontsize=10)
    axes.grid(True, alpha=0.3)
    if any(series) or pruned:
        axes.legend(fontsize=8)
    png = io.BytesIO()
    figure.savefig(png, format="png")
    write_atomically(path, png.getvalue())
