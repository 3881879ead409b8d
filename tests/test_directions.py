"""One higher-is-better rule: early stopping and the sweep summary agree on every metric.

`composeloop.vocabulary.higher_is_better` is the rule; early stopping's `auto` mode and the
sweep summary's best epoch both follow it, and a metric's own declaration
(`Metric(higher_is_better=...)`, recorded in summary.json's `directions`) wins over its name.
"""

from __future__ import annotations

import pytest

from composeloop.app.sweep_rows import best_epoch as sweep_best_epoch
from composeloop.engine.stopping import best_epoch as stopping_best_epoch
from composeloop.vocabulary import higher_is_better

HISTORY_VALUES = [0.5, 0.9, 0.7]  # epoch 2 is best upward, epoch 1 downward


@pytest.mark.parametrize(
    ("metric", "upward"),
    [("val_loss", False), ("val_accuracy", True), ("val_mse", False), ("val_top2_accuracy", True), ("val_f1", True)],
)
def test_early_stopping_and_the_sweep_summary_pick_the_same_epoch(metric, upward):
    history = [{"epoch": epoch, metric: value} for epoch, value in enumerate(HISTORY_VALUES, start=1)]
    assert higher_is_better(metric) is upward
    stopping = stopping_best_epoch(history, metric) + 1  # an index there, an epoch number here
    assert stopping == sweep_best_epoch({}, history, metric) == (2 if upward else 1)


def test_a_user_metrics_declared_direction_wins_over_its_name_in_both():
    metric = "val_surprise"  # by name it would improve downward
    history = [{"epoch": epoch, metric: value} for epoch, value in enumerate(HISTORY_VALUES, start=1)]
    stopping = stopping_best_epoch(history, metric, declared={"surprise": True}) + 1
    summary = {"directions": {metric: "max"}}  # what a run with that metric writes
    assert stopping == sweep_best_epoch(summary, history, metric) == 2
    assert stopping_best_epoch(history, metric) + 1 == sweep_best_epoch({}, history, metric) == 1
