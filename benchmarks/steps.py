"""composeloop against hand-written loops and `model.fit`: step time, GAN, input, scale, start-up, communication.

    python -m benchmarks.steps [--quick] [--json FILE] [--rounds N] [--workload NAME ...]
                               [--device DEVICE] [--xla]

One process (communication and start-up start their own). Step workloads (seed_mlp,
compute_mlp, cnn, gan): every variant is built on the same initial weights and data and
warmed up with one epoch (that traces it); then, in each of several rounds, every variant
trains one whole epoch, in an order rotated each round so that no variant always runs
first or last. A variant's ms_per_step is the median over rounds of epoch seconds / steps;
ratios are paired (per round). The machine's dense matmul peak is measured in the same
run, and the compute-bound MLP's composed step is reported as a fraction of it. The other
workloads are described in their modules: `pipeline`, `scale`, `startup`, `communication`.

`--device` pins everything this process runs to one device (e.g. /GPU:0, /CPU:0); by
default TensorFlow places it (a GPU when there is one). XLA: composeloop's `_jit` variant
always runs; `--xla` adds `fit` and the hand-written step under XLA.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import gan, pipeline, scale, startup  # noqa: E402
from benchmarks.measure import current_rss_mb, peak_matmul_gflops, peak_rss_mb, reset_peak  # noqa: E402
from benchmarks.report import ratios, tables, targets  # noqa: E402
from benchmarks.variants import LEARNING_RATE, Runner, make_runner, variant_names  # noqa: E402
from benchmarks.workloads import Workload, datasets, synthetic, workloads  # noqa: E402

ROUNDS = {"full": 5, "quick": 3, "tiny": 1}
MATMUL = {"full": (2048, 10), "quick": (2048, 5), "tiny": (256, 3)}
GAN_STEPS = {"full": (128, 32, 5), "quick": (32, 16, 3), "tiny": (4, 2, 1)}  # steps, K, rounds
STEP_WORKLOADS = ("seed_mlp", "compute_mlp", "cnn")
WORKLOADS = (*STEP_WORKLOADS, "gan", "pipeline", "scale", "startup", "communication")
ROOT = Path(__file__).resolve().parents[1]


def machine(mode: str, matmul: dict[str, float], device: str | None) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "gpus": [gpu.name for gpu in tf.config.list_physical_devices("GPU")],
        "device": device or "automatic placement",
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


def time_variants(
    label: str,
    names: list[str],
    make: Callable[[str], Runner],
    steps: Callable[[str], int],
    rounds: int,
    log: Any,
    matmul_size: int,
    flops: float | None = None,
    probe_each_epoch: bool = False,
) -> dict[str, Any]:
    """Builds, warms up and times variants of one workload, interleaved over rounds.

    Returns {"results": one entry per variant, "matmul_gflops": the per-round peak probes}.
    """
    runners, peaks, growth = {}, {}, {}
    for name in names:
        gc.collect()
        before = current_rss_mb()
        reset_peak()
        runner = make(name)
        runner.reset()
        runner.epoch()  # warm-up: traces, builds, first epoch
        peaks[name] = peak_rss_mb()
        growth[name] = current_rss_mb() - before
        runners[name] = runner
        print(f"  {label}/{name}: ready", file=log, flush=True)
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    probes_after: dict[str, list[float]] = {name: [] for name in names}
    probes = []
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            runners[name].reset()
            reset_peak()
            clock = time.process_time()
            seconds = runners[name].epoch()
            cpu[name].append((time.process_time() - clock) / steps(name) * 1e3)
            peaks[name] = max(peaks[name], peak_rss_mb())
            samples[name].append(seconds / steps(name) * 1e3)
            if probe_each_epoch:
                probes_after[name].append(_matmul_probe(matmul_size))
        probes.append(_matmul_probe(matmul_size))
        print(f"  {label}: round {index + 1}/{rounds} done", file=log, flush=True)
    results = []
    for name in names:
        ms = statistics.median(samples[name])
        entry = {
            "workload": label,
            "variant": name,
            "ms_per_step": ms,
            "cpu_ms_per_step": statistics.median(cpu[name]),
            "cpu_ms_per_step_rounds": [round(c, 4) for c in cpu[name]],
            "peak_rss_mb": round(peaks[name], 1),
            "traces": runners[name].traces(),
            "rss_growth_mb": round(growth[name], 1),
            "ms_per_step_rounds": [round(s, 4) for s in samples[name]],
            "steps_per_epoch": steps(name),
        }
        if flops is not None:
            entry["gflops_per_s"] = flops / (ms / 1e3) / 1e9
            paired = probes_after[name] if probe_each_epoch else probes
            entry["peak_fraction"] = statistics.median(
                flops / (s / 1e3) / (p * 1e9) for s, p in zip(samples[name], paired, strict=True)
            )
            entry["peak_fraction_best"] = flops / (min(samples[name]) / 1e3) / (max(probes + paired) * 1e9)
        results.append(entry)
    del runners
    gc.collect()
    keras.backend.clear_session()
    return {"results": results, "matmul_gflops": probes + [p for each in probes_after.values() for p in each]}


def bench_workload(workload: Workload, rounds: int, seed: int, matmul_size: int, log: Any, xla: bool) -> dict:
    """One step workload: every variant of `variants`, on the same weights and batches."""
    keras.utils.set_random_seed(seed)
    weights = workload.build().get_weights()
    tuples, dicts = datasets(*synthetic(workload, seed))
    data = {"tuples": tuples, "dicts": dicts}
    eager_steps = workload.eager_steps or workload.steps
    k = workload.steps_per_execution
    done = time_variants(
        workload.name,
        variant_names(k, xla),
        lambda name: make_runner(name, workload.build, weights, data, k, eager_steps),
        lambda name: eager_steps if name == "eager" else workload.steps,
        rounds,
        log,
        matmul_size,
        workload.flops_per_step(),
        workload.probe_each_epoch,
    )
    for entry in done["results"]:
        entry.update(steps_per_execution=_spe(entry["variant"], k), batch_size=workload.batch_size)
    return done


def bench_gan(mode: str, rounds: int | None, seed: int, matmul_size: int, log: Any) -> dict:
    steps, k, default_rounds = GAN_STEPS[mode]
    keras.utils.set_random_seed(seed)
    g, d = gan.models()
    weights = (g.get_weights(), d.get_weights())
    real = gan.images(steps, 64 if mode != "tiny" else 4, seed)
    done = time_variants(
        "gan",
        gan.variant_names(k),
        lambda name: gan.make_runner(name, weights, real, k),
        lambda name: steps,
        rounds or default_rounds,
        log,
        matmul_size,
    )
    for entry in done["results"]:
        entry.update(steps_per_execution=_spe(entry["variant"], k), batch_size=real.shape[1])
    return done


def bench_scale(mode: str, rounds: int | None, seed: int, matmul_size: int, log: Any) -> dict[str, Any]:
    """The batch-size x width grid (step tables) and the per-phase overhead."""
    results = []
    for cell in scale.cells(mode):
        keras.utils.set_random_seed(seed)
        weights = cell.build().get_weights()
        tuples, dicts = datasets(*synthetic(cell, seed))
        data = {"tuples": tuples, "dicts": dicts}
        k = cell.steps_per_execution
        done = time_variants(
            f"scale/{cell.name}",
            scale.scale_variants(k),
            lambda name, cell=cell, weights=weights, data=data, k=k: make_runner(
                name, cell.build, weights, data, k, cell.steps
            ),
            lambda name, cell=cell: cell.steps,
            rounds or scale.GRID[mode]["rounds"],
            log,
            matmul_size,
            cell.flops_per_step(),
        )
        for entry in done["results"]:
            entry.update(steps_per_execution=_spe(entry["variant"], k), batch_size=cell.batch_size)
            entry["width"] = cell.dense_layers[1][0]
        results += done["results"]
    phases = scale.bench_phases(mode, rounds or scale.GRID[mode]["rounds"], log)
    return {"results": results, "phases": phases}


def bench_communication(log: Any) -> dict[str, Any]:
    """`python -m benchmarks.communication` in its own process (it needs 2 logical CPUs)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "communication.json"
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.communication", "--json", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"benchmarks.communication failed: {done.stderr[-2000:]}")
        print("  communication: done", file=log, flush=True)
        return json.loads(path.read_text())


def _spe(variant: str, k: int) -> int | None:
    if variant in ("eager",) or variant.startswith("tf_function"):
        return None
    return 1 if variant.endswith("spe1") else k


def run(
    mode: str = "full",
    rounds: int | None = None,
    seed: int = 0,
    only: list[str] | None = None,
    device: str | None = None,
    xla: bool = False,
) -> dict[str, Any]:
    """Runs the chosen workloads; returns the report (see `benchmarks/README.md`)."""
    log = sys.stderr
    chosen = [name for name in WORKLOADS if not only or name in only]
    load_start = os.getloadavg()
    size, repeats = MATMUL[mode]
    placement = tf.device(device) if device else contextlib.nullcontext()
    report: dict[str, Any] = {"results": []}
    probes: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, work: Callable[[], Any]) -> Any:
        clock = time.perf_counter()
        value = work()
        seconds[name] = round(time.perf_counter() - clock, 1)
        print(f"{name}: {seconds[name]} s", file=log, flush=True)
        return value

    separate = {"startup": lambda: startup.bench(mode, log), "communication": lambda: bench_communication(log)}
    separate = {name: work for name, work in separate.items() if name in chosen}
    # Tiny mode (tests) times nothing that matters: the two workloads that run in their own
    # processes overlap the rest instead of following it.
    pool = ThreadPoolExecutor(len(separate)) if mode == "tiny" and separate else None
    background = {name: pool.submit(work) for name, work in separate.items()} if pool else {}
    with placement:
        matmul = peak_matmul_gflops(size, repeats)
        print(f"matmul peak: {matmul['peak_gflops']:.1f} GFLOP/s", file=log, flush=True)
        step_workloads = [w for w in workloads(mode) if w.name in chosen]
        for workload in step_workloads:
            done = timed(
                workload.name, lambda w=workload: bench_workload(w, rounds or ROUNDS[mode], seed, size, log, xla)
            )
            report["results"] += done["results"]
            probes[workload.name] = done["matmul_gflops"]
        if "gan" in chosen:
            done = timed("gan", lambda: bench_gan(mode, rounds, seed, size, log))
            report["results"] += done["results"]
            probes["gan"] = done["matmul_gflops"]
        if "pipeline" in chosen:
            report["pipeline"] = timed("pipeline", lambda: pipeline.bench(mode, log))
        if "scale" in chosen:
            report["scale"] = timed("scale", lambda: bench_scale(mode, rounds, seed, size, log))
    for name, work in separate.items():
        report[name] = background[name].result() if name in background else timed(name, work)
    if pool:
        pool.shutdown()
    about = machine(mode, matmul, device)
    every = [matmul["peak_gflops"]] + [p for each in probes.values() for p in each]
    about["peak_matmul_gflops"] = statistics.median(every)
    about["best_matmul_gflops"] = max([matmul["best_gflops"], *every])
    about["matmul_gflops_rounds"] = {name: [round(p, 1) for p in each] for name, each in probes.items()}
    about["load_average_start"] = [round(x, 2) for x in load_start]
    about["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    about["workload_seconds"] = seconds
    report["machine"] = about
    report["ratios"] = ratios(report, step_workloads + (["gan"] if "gan" in chosen else []))
    report["targets"] = targets(report)
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.steps", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller epochs and fewer rounds: under 2 minutes")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: correctness only
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--rounds", type=int, help="timed rounds per workload (default: 5 full, 3 quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workload", action="append", choices=WORKLOADS, help="run only this one (repeatable)")
    parser.add_argument("--device", help="pin the in-process workloads to this device, e.g. /GPU:0 (default: auto)")
    parser.add_argument("--xla", action="store_true", help="also time fit and the hand-written step under XLA")
    arguments = parser.parse_args(argv)
    mode = "tiny" if arguments.tiny else "quick" if arguments.quick else "full"
    report = _jsonable(run(mode, arguments.rounds, arguments.seed, arguments.workload, arguments.device, arguments.xla))
    print(tables(report))
    if arguments.json:
        with open(arguments.json, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
