"""The benchmark's ratios, targets and printed tables (one per workload, then the targets).

This module owns what the report says: which paired ratios are computed from the timed
rounds, which figures have targets (and which item of the performance issue set them),
and the fixed-width text. It times nothing.
"""

from __future__ import annotations

import statistics
from typing import Any

SEED_WORKLOAD, COMPUTE_WORKLOAD = "seed_mlp", "compute_mlp"
HEADLINE = ("composed_vs_handwritten", "composed_spe_vs_fit_spe", "eager_vs_composed")
CPU = "_cpu"  # suffix of a ratio of CPU times (the process's, over the same epochs)

# (figure, comparison, bound, why): every target the run is checked against.
TARGETS = [
    ("communication/composed_vs_fit", "<=", 1.02, "elements all-reduced per step / parameters, vs fit"),
    ("seed_mlp/composed_vs_handwritten", "<=", 1.05, "composed spe1 / hand-written tf.function step"),
    ("seed_mlp/eager_vs_composed", ">=", 10.0, "what compiling buys"),
    ("compute_bound_peak_fraction", ">=", 0.8, "composed spe K on compute_mlp, of the matmul peak"),
    *[
        target
        for workload in ("seed_mlp", "compute_mlp", "cnn", "gan")
        for target in (
            (f"{workload}/composed_spe1_vs_fit_spe1", "<=", 1.0, "per-step overhead at spe 1"),
            (f"{workload}/composed_spe_vs_fit_spe", "<=", 0.9, "per-step overhead at spe K"),
        )
    ],
    ("gan/composed_vs_handwritten", "<=", 1.05, "composed GAN spe1 / hand-written two-tape step"),
    ("gan/composed_spe_vs_fit_spe", "<=", 1.0, "composed GAN spe K / fit with train_step, spe K"),
    ("pipeline/composed_spe1_vs_fit_spe1", "<=", 1.0, "whole epoch through batches(), vs model.fit(x, y)"),
    ("pipeline/composed_spe16_vs_fit_spe16", "<=", 1.0, "the same at spe 16"),
    ("pipeline/composed_spe16_vs_fit_spe16", "<=", 0.8, "the same at spe 16, the stretch target"),
    ("startup/first_epoch_composed_vs_fit", "<=", 1.0, "first epoch, tracing included, fresh process"),
    ("startup/process_composed_vs_keras", "<=", 1.1, "python -m composeloop vs the plain Keras script"),
]


def _rounds(results: list[dict[str, Any]], workload: str, variant: str, key: str) -> list[float] | None:
    for entry in results:
        if entry["workload"] == workload and entry["variant"] == variant:
            return entry.get(key)
    return None


def paired(
    results: list[dict[str, Any]], workload: str, a: str, b: str, key: str = "ms_per_step_rounds"
) -> float | None:
    """Median over rounds of a's time / b's time in the same round: a paired ratio, so a
    burst of load from other processes moves both sides of one sample together. With
    `key` "cpu_ms_per_step_rounds", the same for the process's CPU time."""
    ra, rb = _rounds(results, workload, a, key), _rounds(results, workload, b, key)
    if not ra or not rb:
        return None
    return statistics.median(x / y for x, y in zip(ra, rb, strict=True))


def _k(results: list[dict[str, Any]], workload: str) -> int:
    return max((e.get("steps_per_execution") or 1 for e in results if e["workload"] == workload), default=1)


def ratios(report: dict[str, Any], workloads: list[Any]) -> dict[str, Any]:
    """Per step workload "<workload>/<ratio>"; the seed MLP's as headline keys; the
    compute-bound peak fractions."""
    results = report["results"]
    out: dict[str, Any] = {}
    for workload in workloads:
        name = getattr(workload, "name", workload)
        k = _k(results, name)
        pairs = {
            "composed_vs_handwritten": ("composed_spe1", "tf_function"),
            "composed_spe_vs_fit_spe": (f"composed_spe{k}", f"fit_spe{k}"),
            "eager_vs_composed": ("eager", f"composed_spe{k}"),
            "composed_spe1_vs_fit_spe1": ("composed_spe1", "fit_spe1"),
            "composed_spe_vs_handwritten": (f"composed_spe{k}", "tf_function"),
            "jit_vs_composed_spe": (f"composed_spe{k}_jit", f"composed_spe{k}"),
            "fit_jit_vs_fit_spe": (f"fit_spe{k}_jit", f"fit_spe{k}"),
        }
        each = {key: paired(results, name, a, b) for key, (a, b) in pairs.items()}
        cpu = {key: paired(results, name, a, b, "cpu_ms_per_step_rounds") for key, (a, b) in pairs.items()}
        if name == SEED_WORKLOAD:
            out.update({key: each[key] for key in HEADLINE})
        out.update({f"{name}/{key}": value for key, value in each.items() if value is not None})
        out.update({f"{name}/{key}{CPU}": value for key, value in cpu.items() if value is not None})
        if name == COMPUTE_WORKLOAD:
            fraction = {e["variant"]: e.get("peak_fraction") for e in results if e["workload"] == name}
            best = {e["variant"]: e.get("peak_fraction_best") for e in results if e["workload"] == name}
            out["compute_bound_peak_fraction"] = fraction.get(f"composed_spe{k}")
            out["compute_bound_peak_fraction_jit"] = fraction.get(f"composed_spe{k}_jit")
            out["compute_bound_peak_fraction_handwritten"] = fraction.get("tf_function")
            out["compute_bound_peak_fraction_fit"] = fraction.get(f"fit_spe{k}")
            out["compute_bound_peak_fraction_best"] = best.get(f"composed_spe{k}")
    return dict(sorted(out.items(), key=lambda item: ("/" in item[0], item[0])))


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """Every figure a target can name: the ratios plus the other workloads' headline figures."""
    out = dict(report.get("ratios", {}))
    if "communication" in report:
        out["communication/composed_vs_fit"] = report["communication"]["composed_vs_fit"]
    for key, value in report.get("pipeline", {}).get("ratios", {}).items():
        out[f"pipeline/{key}"] = value
    startup = report.get("startup", {})
    for key in ("first_epoch_composed_vs_fit", "process_composed_vs_keras"):
        if key in startup:
            out[f"startup/{key}"] = startup[key]
    return out


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the run's value and whether it was met (None: not measured)."""
    values = figures(report)
    out = []
    for key, op, bound, why in TARGETS:
        value = values.get(key)
        met = None if value is None else (value <= bound if op == "<=" else value >= bound)
        row = {"figure": key, "target": f"{op} {bound}", "value": value, "met": met, "what": why}
        out.append({**row, "cpu_value": values.get(key + CPU)})
    return out


# -- text ---------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _traces(traces: dict[str, int] | None) -> str:
    return "-" if traces is None else " ".join(f"{k}={v}" for k, v in traces.items())


def step_table(results: list[dict[str, Any]], workload: str, ratios_: dict[str, Any]) -> list[str]:
    head = (
        f"{'variant':<20} {'ms/step':>9} {'cpu ms':>8} {'GFLOP/s':>8} {'of peak':>7} {'peak RSS MB':>11} "
        f"{'+RSS MB':>8}  traces"
    )
    lines = [head, "-" * len(head)]
    for entry in (e for e in results if e["workload"] == workload):
        gflops, fraction = entry.get("gflops_per_s"), entry.get("peak_fraction")
        lines.append(
            f"{entry['variant']:<20} {entry['ms_per_step']:>9.3f} {entry['cpu_ms_per_step']:>8.3f} "
            f"{'' if gflops is None else f'{gflops:.1f}':>8} {'' if fraction is None else f'{fraction:.2f}':>7} "
            f"{entry['peak_rss_mb']:>11.0f} {entry['rss_growth_mb']:>8.1f}  {_traces(entry['traces'])}"
        )
    mine = [key for key in ratios_ if key.startswith(f"{workload}/") and not key.endswith(CPU)]
    lines += [
        f"  {key.split('/', 1)[1]:<32} {_num(ratios_[key]):>7}   cpu {_num(ratios_.get(key + CPU))}" for key in mine
    ]
    return lines


def pipeline_table(pipe: dict[str, Any]) -> list[str]:
    lines = [
        f"{pipe['train_examples']} train + {pipe['val_examples']} validation examples, batch {pipe['batch_size']}; "
        f"second epoch of each 2-epoch session",
        f"{'variant':<16} {'epoch s':>8} {'examples/s':>11}  traces",
    ]
    for name, entry in pipe["variants"].items():
        lines.append(
            f"{name:<16} {entry['epoch_seconds']:>8.3f} {entry['examples_per_s']:>11.0f}  {_traces(entry['traces'])}"
        )
    lines.append(f"  reading batches() alone (train shuffled + validation): {pipe['read_only_seconds']:.3f} s")
    lines += [
        f"  {key:<32} {_num(value):>7}   cpu {_num(pipe['ratios'].get(key + CPU))}"
        for key, value in pipe["ratios"].items()
        if not key.endswith(CPU)
    ]
    return lines


def scale_table(scale: dict[str, Any]) -> list[str]:
    results = scale["results"]
    cells = sorted({(e["width"], e["batch_size"], e["workload"]) for e in results})
    lines = [
        f"{'width':>6} {'batch':>6} {'handwritten':>12} {'fit speK':>9} {'comp spe1':>10} {'comp speK':>10} "
        f"{'spe1/hand':>10} {'speK/fit':>9} {'cpu':>6} {'cpu':>6}   (ms/step; ratios of wall, then of CPU time)"
    ]
    for width, batch, workload in cells:
        ms = {e["variant"]: e["ms_per_step"] for e in results if e["workload"] == workload}
        k = _k(results, workload)
        hand, fit_k, c1, ck = ms["tf_function"], ms[f"fit_spe{k}"], ms["composed_spe1"], ms[f"composed_spe{k}"]
        pairs = (("composed_spe1", "tf_function"), (f"composed_spe{k}", f"fit_spe{k}"))
        wall = [_num(paired(results, workload, a, b)) for a, b in pairs]
        cpu = [_num(paired(results, workload, a, b, "cpu_ms_per_step_rounds")) for a, b in pairs]
        lines.append(
            f"{width:>6} {batch:>6} {hand:>12.3f} {fit_k:>9.3f} {c1:>10.3f} {ck:>10.3f} "
            f"{wall[0]:>10} {wall[1]:>9} {cpu[0]:>6} {cpu[1]:>6}"
        )
    phases = scale["phases"]
    lines.append(f"phases (trivial, spe {phases['steps_per_execution']}): us per step, wall and CPU")
    for name, us in phases["us_per_step"].items():
        cpu = phases["cpu_us_per_step"][name]
        lines.append(f"  {name:<18} {us:>9.1f} {cpu:>9.1f}   traces {_traces(phases['traces'][name])}")
    lines.append(f"  one more phase: {phases['us_per_extra_phase']:.1f} us per step (CPU "
                 f"{phases['cpu_us_per_extra_phase']:.1f}); one more hand-written tape: "
                 f"{phases['us_per_extra_tape_hand_written']:.1f} us (CPU "
                 f"{phases['cpu_us_per_extra_tape_hand_written']:.1f})")  # fmt: skip
    return lines


def startup_table(start: dict[str, Any]) -> list[str]:
    lines = ["first epoch (train + validation), fresh process each, medians; seconds"]
    for name, parts in start["first_epoch"].items():
        lines.append(f"  {name:<20} " + "  ".join(f"{k.removesuffix('_s')} {v:.3f}" for k, v in parts.items()))
    lines.append(f"  first_epoch composed / fit: {_num(start['first_epoch_composed_vs_fit'])}")
    if "process_seconds" in start:
        lines.append("whole processes, wall seconds (median):")
        lines += [f"  {name:<24} {seconds:.2f}" for name, seconds in start["process_seconds"].items()]
        lines.append(f"  composeloop CLI / Keras script: {_num(start['process_composed_vs_keras'])}")
    return lines


def communication_table(comm: dict[str, Any]) -> list[str]:
    lines = [
        f"MirroredStrategy over {comm['replicas']} logical CPUs, {comm['parameters']} trainable parameters; "
        "elements handed to the cross-device reduce in one training step",
        f"{'variant':<16} {'elements':>10} {'/ params':>9} {'traces':>6}",
    ]
    for name, entry in comm["variants"].items():
        lines.append(f"{name:<16} {entry['elements']:>10} {entry['per_parameter']:>9.4f} {entry['traces']:>6}")
    return lines


def targets_table(rows: list[dict[str, Any]]) -> list[str]:
    """Each target: the run's value (wall time), its verdict, and where there is one, the same
    ratio of CPU times (steadier than wall time on a loaded machine; see the README)."""
    head = f"{'figure':<40} {'value':>7} {'target':>8}  {'':<6} {'cpu':>6}  what"
    lines = [head, "-" * len(head)]
    for row in rows:
        verdict = "n/a" if row["met"] is None else "met" if row["met"] else "MISSED"
        cpu = "" if row.get("cpu_value") is None else _num(row["cpu_value"])
        lines.append(
            f"{row['figure']:<40} {_num(row['value']):>7} {row['target']:>8}  {verdict:<6} {cpu:>6}  {row['what']}"
        )
    return lines


def tables(report: dict[str, Any]) -> str:
    """The whole report as fixed-width text: one table per workload, then the targets."""
    m = report["machine"]
    out = [
        f"{m['processor']}, {m['cpu_count']} CPUs, GPUs: {', '.join(m['gpus']) or 'none'}, device: {m['device']}; "
        f"TensorFlow {m['tensorflow']}, Keras {m['keras']}; mode {m['mode']}",
        f"matmul peak ({m['matmul_size']}^2 float32): {m['peak_matmul_gflops']:.1f} GFLOP/s (median of the start and "
        f"every round), {m['best_matmul_gflops']:.1f} best; load average {m['load_average_start'][0]} at start, "
        f"{m['load_average_end'][0]} at end",
    ]
    workloads = list(dict.fromkeys(e["workload"] for e in report["results"]))
    for workload in workloads:
        out += ["", f"== {workload} =="] + step_table(report["results"], workload, report["ratios"])
    sections = [
        ("pipeline", pipeline_table),
        ("scale", scale_table),
        ("startup", startup_table),
        ("communication", communication_table),
    ]
    for name, table in sections:
        if name in report:
            out += ["", f"== {name} =="] + table(report[name])
    out += ["", "== targets =="] + targets_table(report["targets"])
    return "\n".join(out)
