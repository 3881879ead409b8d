"""Smoke test of the benchmark suite (`python -m benchmarks.steps`) at a tiny size.

Correctness only: the JSON report's shape, a positive finite time for every variant, one
trace of each compiled program, every workload and target present. Timings on a shared
test machine mean nothing, so nothing here compares them. One figure is counted, not
timed, and is pinned: the elements a training step all-reduces, per parameter, must stay
within 2% of `model.fit`'s (a second all-reduce hidden in the apply would double it).
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
GAN_VARIANTS = {"tf_function", "fit_spe1", "fit_spe2", "composed_spe1", "composed_spe2"}
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
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in ("== seed_mlp ==", "== gan ==", "== pipeline ==", "== scale ==", "== startup ==", "== targets =="):
        assert heading in done.stdout  # the printed tables
    return json.loads(path.read_text())


pytestmark = pytest.mark.slow


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_report_has_the_documented_shape(report):
    assert set(report) == {"machine", "results", "ratios", "pipeline", "scale", "startup", "communication", "targets"}
    machine = report["machine"]
    for key in ("cpu_count", "platform", "tensorflow", "keras", "peak_matmul_gflops", "gpus", "device"):
        assert key in machine
    assert machine["peak_matmul_gflops"] > 0
    assert set(report["ratios"]) >= RATIOS
    for key in RATIOS:
        assert positive(report["ratios"][key]), (key, report["ratios"][key])
    for entry in report["results"]:
        assert {"workload", "variant", "ms_per_step", "peak_rss_mb", "traces"} <= set(entry)
        assert entry["peak_rss_mb"] > 0


def test_every_variant_of_every_workload_ran(report):
    seen = {(entry["workload"], entry["variant"]) for entry in report["results"]}
    expected = {(w, v) for w in WORKLOADS for v in VARIANTS} | {("gan", v) for v in GAN_VARIANTS}
    assert seen == expected
    for entry in report["results"] + report["scale"]["results"]:
        assert positive(entry["ms_per_step"]), entry


def test_compiled_variants_trace_once(report):
    for entry in report["results"] + report["scale"]["results"]:
        if entry["variant"].startswith("composed"):
            assert entry["traces"]["train"] == 1, entry
            assert all(count == 1 for count in entry["traces"].values()), entry
        if entry["variant"] == "tf_function":
            assert entry["traces"] == {"train_step": 1}, entry
    for variant in ("composed_spe1", "composed_spe16"):
        assert report["pipeline"]["variants"][variant]["traces"] == {"train": 1, "val": 1}
    assert all(count == 1 for traces in report["scale"]["phases"]["traces"].values() for count in traces.values())


def test_pipeline_scale_and_startup_report_their_figures(report):
    pipeline = report["pipeline"]
    for entry in pipeline["variants"].values():
        assert positive(entry["epoch_seconds"]) and positive(entry["examples_per_s"])
    assert all(positive(value) for value in pipeline["ratios"].values())
    assert all(positive(us) for us in report["scale"]["phases"]["us_per_step"].values())
    first = report["startup"]["first_epoch"]
    for part in ("trace_train_s", "first_train_call_s", "trace_val_s", "first_epoch_s", "second_epoch_s"):
        assert positive(first["composed"][part]), part
    assert positive(first["fit"]["first_epoch_s"])


def test_every_target_is_listed(report):
    figures = {row["figure"] for row in report["targets"]}
    assert {"communication/composed_vs_fit", "gan/composed_vs_handwritten", "pipeline/composed_spe1_vs_fit_spe1",
            "startup/first_epoch_composed_vs_fit", "startup/process_composed_vs_keras"} <= figures  # fmt: skip
    for row in report["targets"]:
        assert row["met"] in (True, False, None), row


def test_a_step_all_reduces_its_gradients_once(report):
    """Counted elements handed to the cross-device reduce in one step, per trainable
    parameter, on 2 replicas: composeloop within 2% of `model.fit` (gradients once, then
    a few scalars), and the counter does see the gradients of every variant."""
    variants = report["communication"]["variants"]
    figures = {name: entry["per_parameter"] for name, entry in variants.items()}
    assert all(entry["traces"] == 1 for entry in variants.values()), variants
    assert figures["fit"] >= 1.0 and figures["hand_written"] >= 1.0, figures
    assert figures["composed"] <= 1.02 * figures["fit"], figures
    assert figures["composed_clip"] <= 1.02 * figures["fit"], figures


def test_the_whole_processes_timed_in_full_mode_name_modules_that_exist(tmp_path, monkeypatch):
    """Full mode alone starts them (the tiny run does not): a moved module must fail here."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is the repository's, not an installed package
    from benchmarks import startup

    commands = startup.process_commands(tmp_path, 0)
    assert set(commands) == set(startup.PROCESSES)
    for command in commands.values():
        flag, target = command[1], command[2]
        modules = [target] if flag == "-m" else [name.strip() for name in target.removeprefix("import ").split(",")]
        assert all(importlib.util.find_spec(module) is not None for module in modules), command
