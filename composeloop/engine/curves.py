"""curves.png: a run's train and validation curves, one panel per metric.

This module owns the picture a person opens after a run. It reads only the epoch history
(so it can be redrawn from metrics.jsonl) and draws with matplotlib's file-only backend.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from composeloop.engine.events import Handler, on_run_end
from composeloop.files import write_atomically
from composeloop.vocabulary import TRAIN, VAL

_PREFIXES = {f"{TRAIN}_": TRAIN, f"{VAL}_": VAL}


def _series(history: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for logs in history:
        for key, value in logs.items():
            prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
            if prefix is None or not isinstance(value, int | float):
                continue
            panel = panels.setdefault(key.removeprefix(prefix), {})
            panel.setdefault(_PREFIXES[prefix], []).append((int(logs["epoch"]), float(value)))
    return panels


def plot_curves(
    history: Sequence[Mapping[str, Any]], path: Path, title: str = "", best_epoch: int | None = None
) -> None:
    """Draws each metric's train and validation values against the epoch into `path` (PNG).

    `best_epoch` (1-based), when given, is marked in every panel.

    Example:
      >>> history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2}, {"epoch": 2, "train_loss": 0.6, "val_loss": 0.9}]
      >>> plot_curves(history, run_dir / "curves.png", best_epoch=2)
      >>> (run_dir / "curves.png").read_bytes()[:4]
      b'\\x89PNG'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _series(history)
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.4), squeeze=False)
    for axis, (metric, lines) in zip(axes[0], sorted(panels.items()), strict=False):
        for label, points in lines.items():
            epochs, values = zip(*points, strict=True)
            axis.plot(epochs, values, marker="o", markersize=3, label=label)
        if best_epoch is not None:
            axis.axvline(best_epoch, color="gray", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    plt.close(figure)
    write_atomically(path, png.getvalue())


def curves(path: Path, title: str = "") -> Handler:
    """A run-end handler that draws the history into `path` (also when the run was stopped)."""
    return on_run_end(lambda state: plot_curves(state.history, Path(path), title, state.extras.get("best_epoch")))
