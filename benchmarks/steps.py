"""Time per training step of composeloop against hand-written loops and `model.fit`.

    python -m benchmarks.steps [--quick] [--json FILE] [--rounds N] [--workload NAME ...]

One process. For each workload, every variant is built on the same initial weights and
data and warmed up with one epoch (that traces it); then, in each of several rounds, every
variant trains one whole epoch, in an order rotated each round so that no variant always
runs first or last. A variant's ms_per_step is the median over rounds of epoch seconds /
steps. The machine's dense matmul peak is measured in the same run, and the compute-bound
MLP's composed step is reported as a fraction of it.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.measure import current_rss_mb, peak_matmul_gflops, peak_rss_mb, reset_peak  # noqa: E402
from benchmarks.variants import LEARNING_RATE, make_runner, variant_names  # noqa: E402
from benchmarks.workloads import Workload, datasets, synthetic, workloads  # noqa: E402

ROUNDS = {"full": 5, "quick": 3, "tiny": 1}
MATMUL = {"full": (2048, 10), "quick": (2048, 5), "tiny": (256, 3)}
SEED_WORKLOAD, COMPUTE_WORKLOAD = "seed_mlp", "compute_mlp"
TARGETS = {
    "composed_vs_handwritten": ("<=", 1.05),
    "composed_spe_vs_fit_spe": ("<=", 1.0),
    "eager_vs_composed": (">=", 10.0),
    "compute_bound_peak_fraction": (">=", 0.8),
}


def machine(mode: str, matmul: dict[str, float]) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "peak_matmul_gflops": matmul["peak_gflops"],
        "best_matmul_gflops": matmul["best_gflops"],
        "matmul_size": matmul["matmul_size"],
        "mode": mode,
        "optimizer": f"SGD(learning_rate={LEARNING_RATE})",
        "peak_rss": "VmHWM over the variant's setup, warm-up and timed epochs (reset per variant via "
        "/proc/self/clear_refs); a process-wide figure, so it includes everything alive then",
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _matmul_probe(size: int) -> float:
    """One quick peak sample (GFLOP/s, median of 3), taken inside every round so that the
    compute-bound fraction compares step and peak under the same machine load."""
    return peak_matmul_gflops(size, repeats=3)["peak_gflops"]


def bench_workload(workload: Workload, rounds: int, seed: int, matmul_size: int, log: Any) -> dict[str, Any]:
    """Builds, warms up and times every variant of one workload, interleaved.

    Returns {"results": one entry per variant, "matmul_gflops": the per-round peak probes}.
    """
    keras.utils.set_random_seed(seed)
    weights = workload.build().get_weights()
    tuples, dicts = datasets(*synthetic(workload, seed))
    data = {"tuples": tuples, "dicts": dicts}
    names = variant_names(workload.steps_per_execution)
    eager_steps = workload.eager_steps or workload.steps
    steps = {name: eager_steps if name == "eager" else workload.steps for name in names}
    runners, peaks, growth = {}, {}, {}
    for name in names:
        gc.collect()
        before = current_rss_mb()
        reset_peak()
        runner = make_runner(name, workload.build, weights, data, workload.steps_per_execution, eager_steps)
        runner.reset()
        runner.epoch()  # warm-up: traces, builds, first epoch
        peaks[name] = peak_rss_mb()
        growth[name] = current_rss_mb() - before
        runners[name] = runner
        print(f"  {workload.name}/{name}: ready", file=log, flush=True)
    samples: dict[str, list[float]] = {name: [] for name in names}
    probes_after: dict[str, list[float]] = {name: [] for name in names}
    probes = []
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            runners[name].reset()
            reset_peak()
            seconds = runners[name].epoch()
            peaks[name] = max(peaks[name], peak_rss_mb())
            samples[name].append(seconds / steps[name] * 1e3)
            if workload.probe_each_epoch:
                probes_after[name].append(_matmul_probe(matmul_size))
        probes.append(_matmul_probe(matmul_size))
        print(f"  {workload.name}: round {index + 1}/{rounds} done", file=log, flush=True)
    flops = workload.flops_per_step()
    results = []
    for name in names:
        ms = statistics.median(samples[name])
        entry = {
            "workload": workload.name,
            "variant": name,
            "ms_per_step": ms,
            "peak_rss_mb": round(peaks[name], 1),
            "traces": runners[name].traces(),
            "rss_growth_mb": round(growth[name], 1),
            "ms_per_step_rounds": [round(s, 4) for s in samples[name]],
            "steps_per_epoch": steps[name],
            "steps_per_execution": _spe(name, workload.steps_per_execution),
            "batch_size": workload.batch_size,
        }
        if flops is not None:
            entry["gflops_per_s"] = flops / (ms / 1e3) / 1e9
            paired = probes_after[name] if workload.probe_each_epoch else probes
            entry["peak_fraction"] = statistics.median(
                flops / (s / 1e3) / (p * 1e9) for s, p in zip(samples[name], paired, strict=True)
            )
            entry["peak_fraction_best"] = flops / (min(samples[name]) / 1e3) / (max(probes + paired) * 1e9)
        results.append(entry)
    del runners
    gc.collect()
    keras.backend.clear_session()
    return {"results": results, "matmul_gflops": probes + [p for each in probes_after.values() for p in each]}


def _spe(variant: str, k: int) -> int | None:
    if variant in ("eager", "tf_function"):
        return None
    return 1 if variant.endswith("spe1") else k


def _rounds(results: list[dict[str, Any]], workload: str, variant: str) -> list[float] | None:
    for entry in results:
        if entry["workload"] == workload and entry["variant"] == variant:
            return entry["ms_per_step_rounds"]
    return None


def _paired(results: list[dict[str, Any]], workload: str, a: str, b: str) -> float | None:
    """Median over rounds of a's time / b's time in the same round: a paired ratio, so a
    burst of load from other processes moves both sides of one sample together."""
    ra, rb = _rounds(results, workload, a), _rounds(results, workload, b)
    if not ra or not rb:
        return None
    return statistics.median(x / y for x, y in zip(ra, rb, strict=True))


def ratios(results: list[dict[str, Any]], all_workloads: list[Workload]) -> dict[str, Any]:
    """The headline ratios on the seed MLP and the compute-bound peak fraction, then the
    same ratios for every workload under "<workload>/<ratio>"."""
    out: dict[str, Any] = {}
    for workload in all_workloads:
        k = workload.steps_per_execution
        pairs = {
            "composed_vs_handwritten": ("composed_spe1", "tf_function"),
            "composed_spe_vs_fit_spe": (f"composed_spe{k}", f"fit_spe{k}"),
            "eager_vs_composed": ("eager", f"composed_spe{k}"),
            "composed_spe1_vs_fit_spe1": ("composed_spe1", "fit_spe1"),
            "composed_spe_vs_handwritten": (f"composed_spe{k}", "tf_function"),
            "jit_vs_composed_spe": (f"composed_spe{k}_jit", f"composed_spe{k}"),
        }
        each = {key: _paired(results, workload.name, a, b) for key, (a, b) in pairs.items()}
        if workload.name == SEED_WORKLOAD:
            out.update({key: each[key] for key in list(TARGETS)[:3]})
        out.update({f"{workload.name}/{key}": value for key, value in each.items()})
        if workload.name == COMPUTE_WORKLOAD:
            fraction = {e["variant"]: e.get("peak_fraction") for e in results if e["workload"] == workload.name}
            out["compute_bound_peak_fraction"] = fraction.get(f"composed_spe{k}")
            out["compute_bound_peak_fraction_jit"] = fraction.get(f"composed_spe{k}_jit")
            out["compute_bound_peak_fraction_handwritten"] = fraction.get("tf_function")
            out["compute_bound_peak_fraction_fit"] = fraction.get(f"fit_spe{k}")
            best = {e["variant"]: e.get("peak_fraction_best") for e in results if e["workload"] == workload.name}
            out["compute_bound_peak_fraction_best"] = best.get(f"composed_spe{k}")
    return dict(sorted(out.items(), key=lambda item: ("/" in item[0], item[0])))


def targets_met(ratios_: dict[str, Any]) -> dict[str, bool | None]:
    met = {}
    for key, (op, bound) in TARGETS.items():
        value = ratios_.get(key)
        met[key] = None if value is None else (value <= bound if op == "<=" else value >= bound)
    return met


def _traces(traces: dict[str, int] | None) -> str:
    return "-" if traces is None else " ".join(f"{k}={v}" for k, v in traces.items())


def table(report: dict[str, Any]) -> str:
    """The results and ratios as fixed-width text."""
    head = (
        f"{'workload':<12} {'variant':<20} {'ms/step':>9} {'GFLOP/s':>8} {'of peak':>7} "
        f"{'peak RSS MB':>11} {'+RSS MB':>8}  traces"
    )
    lines = [head, "-" * len(head)]
    for entry in report["results"]:
        gflops, fraction = entry.get("gflops_per_s"), entry.get("peak_fraction")
        lines.append(
            f"{entry['workload']:<12} {entry['variant']:<20} {entry['ms_per_step']:>9.3f} "
            f"{'' if gflops is None else f'{gflops:.1f}':>8} {'' if fraction is None else f'{fraction:.2f}':>7} "
            f"{entry['peak_rss_mb']:>11.0f} "
            f"{entry['rss_growth_mb']:>8.1f}  {_traces(entry['traces'])}"
        )
    m = report["machine"]
    lines += [
        "",
        f"matmul peak ({m['matmul_size']}^2 float32): {m['peak_matmul_gflops']:.1f} GFLOP/s (median of the "
        f"start and every round), {m['best_matmul_gflops']:.1f} best; load average {m['load_average_start'][0]} "
        f"at start, {m['load_average_end'][0]} at end on {m['cpu_count']} CPUs",
    ]
    met = targets_met(report["ratios"])
    for key, value in report["ratios"].items():
        text = "n/a" if value is None else f"{value:.3f}"
        if key in TARGETS:
            op, bound = TARGETS[key]
            text += f"   target {op} {bound}: {'met' if met[key] else 'MISSED'}"
        lines.append(f"{key:<40} {text}")
    return "\n".join(lines)


def run(mode: str = "full", rounds: int | None = None, seed: int = 0, only: list[str] | None = None) -> dict[str, Any]:
    """Runs the suite; returns {"machine", "results", "ratios"}."""
    log = sys.stderr
    load_start = os.getloadavg()
    size, repeats = MATMUL[mode]
    matmul = peak_matmul_gflops(size, repeats)
    print(f"matmul peak: {matmul['peak_gflops']:.1f} GFLOP/s", file=log, flush=True)
    chosen = [w for w in workloads(mode) if not only or w.name in only]
    results, probes = [], {}
    for workload in chosen:
        done = bench_workload(workload, rounds or ROUNDS[mode], seed, size, log)
        results += done["results"]
        probes[workload.name] = done["matmul_gflops"]
    about = machine(mode, matmul)
    every = [matmul["peak_gflops"]] + [p for each in probes.values() for p in each]
    about["peak_matmul_gflops"] = statistics.median(every)
    about["best_matmul_gflops"] = max([matmul["best_gflops"], *every])
    about["matmul_gflops_rounds"] = {name: [round(p, 1) for p in each] for name, each in probes.items()}
    about["load_average_start"] = [round(x, 2) for x in load_start]
    about["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"machine": about, "results": results, "ratios": ratios(results, chosen)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.steps", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller epochs and fewer rounds: under 2 minutes")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: correctness only
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--rounds", type=int, help="timed rounds per workload (default: 5 full, 3 quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workload", action="append", help="run only this workload (repeatable)")
    arguments = parser.parse_args(argv)
    mode = "tiny" if arguments.tiny else "quick" if arguments.quick else "full"
    report = _jsonable(run(mode, arguments.rounds, arguments.seed, arguments.workload))
    print(table(report))
    if arguments.json:
        with open(arguments.json, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
