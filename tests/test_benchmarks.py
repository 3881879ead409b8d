"""Smoke test of the benchmark suite (`python -m benchmarks.steps`) at a tiny size.

Correctness only: the JSON report's shape, a positive finite time for every variant, and
one trace of each composeloop program. Timings on a shared test machine mean nothing, so
nothing here compares them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"eager", "tf_function", "fit_spe1", "fit_spe2", "composed_spe1", "composed_spe2", "composed_spe2_jit"}
WORKLOADS = {"seed_mlp", "compute_mlp", "cnn"}
RATIOS = {"composed_vs_handwritten", "composed_spe_vs_fit_spe", "eager_vs_composed", "compute_bound_peak_fraction"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("bench") / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.steps", "--tiny", "--json", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "composed_vs_handwritten" in done.stdout  # the printed table
    return json.loads(path.read_text())


pytestmark = pytest.mark.slow


def test_report_has_the_documented_shape(report):
    assert set(report) == {"machine", "results", "ratios"}
    machine = report["machine"]
    for key in ("cpu_count", "platform", "tensorflow", "keras", "peak_matmul_gflops"):
        assert key in machine
    assert machine["peak_matmul_gflops"] > 0
    assert set(report["ratios"]) >= RATIOS
    for key in RATIOS:
        value = report["ratios"][key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
    for entry in report["results"]:
        assert {"workload", "variant", "ms_per_step", "peak_rss_mb", "traces"} <= set(entry)
        assert entry["peak_rss_mb"] > 0


def test_every_variant_of_every_workload_ran(report):
    seen = {(entry["workload"], entry["variant"]) for entry in report["results"]}
    assert seen == {(workload, variant) for workload in WORKLOADS for variant in VARIANTS}
    for entry in report["results"]:
        ms = entry["ms_per_step"]
        assert isinstance(ms, float) and math.isfinite(ms) and ms > 0, entry


def test_compiled_variants_trace_once(report):
    for entry in report["results"]:
        if entry["variant"].startswith("composed"):
            assert entry["traces"]["train"] == 1, entry
            assert all(count == 1 for count in entry["traces"].values()), entry
        if entry["variant"] == "tf_function":
            assert entry["traces"] == {"train_step": 1}, entry


def test_a_step_all_reduces_its_gradients_once(tmp_path):
    """Counted elements handed to the cross-device reduce in one step, per trainable
    parameter, on 2 replicas: composeloop within 2% of `model.fit` (gradients once, then
    a few scalars), and the counter does see the gradients of every variant."""
    path = tmp_path / "communication.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.communication", "--json", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(path.read_text())
    figures = {name: entry["per_parameter"] for name, entry in report["variants"].items()}
    assert all(entry["traces"] == 1 for entry in report["variants"].values()), report
    assert figures["fit"] >= 1.0 and figures["hand_written"] >= 1.0, figures
    assert figures["composed"] <= 1.02 * figures["fit"], figures
    assert figures["composed_clip"] <= 1.02 * figures["fit"], figures
