"""The `startup` workload: time to the first step, in one process and as a whole process.

    python -m benchmarks.startup --probe composed|fit [--no-grappler]   # one fresh process

First epoch: in a fresh process each (tracing caches and warmed kernels would flatter a
second measurement in the same process), the embedded digits, the CLI's default MLP,
Adam(3e-3), batch 32, train + validation. composeloop's first epoch is cut into its parts:
tracing the train and evaluate functions (`get_concrete_function`), their first calls
(TensorFlow optimises the graph and instantiates it, then runs one step) and the rest of
the epoch; `model.fit` cannot be cut the same way from outside, so its first epoch is
reported with its second. `--no-grappler` turns TensorFlow's graph optimiser off
(`tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})`) to
show what graph optimisation costs at start and what it buys per step.

Whole process (full mode only): the default `python -m composeloop` run (10 epochs of the digits,
TensorBoard and curves off, a fresh run directory) against `benchmarks.keras_script`, the
plain Keras script that fits and saves the same model; wall seconds of each process,
and the imports both pay (TensorFlow and Keras) and composeloop's CLI adds (Hydra, its
config).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32
REPEATS = {"full": 5, "quick": 1, "tiny": 1}  # tiny runs both probes in one process
PROCESSES = ("composeloop_cli", "keras_script", "import_tf_keras", "import_composeloop_cli")


def _setup(no_grappler: bool) -> tuple[Any, Any]:
    import keras
    import tensorflow as tf

    if no_grappler:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    from composeloop.parts.data import digits
    from composeloop.parts.models import mlp

    keras.utils.set_random_seed(0)
    return digits(), mlp((8, 8), 10, width=128, depth=2)


def _first_pass(program: Any, kind: str, function: Any, run: Any, iterator: Any) -> dict[str, float]:
    """Times one pass of `kind` cut in three: the trace (the benchmark reaches into the
    program's tf.function for it), the first call (graph optimisation, one step), the rest."""
    clock = time.perf_counter()
    function.get_concrete_function(iterator, program._count(1))
    traced = time.perf_counter()
    run(iterator, 1)
    first = time.perf_counter()
    while run(iterator) == program.steps_per_execution:
        pass
    done = time.perf_counter()
    return {
        f"trace_{kind}_s": traced - clock,
        f"first_{kind}_call_s": first - traced,
        f"rest_of_{kind}_s": done - first,
    }


def probe_composed(no_grappler: bool = False) -> dict[str, float]:
    """composeloop's first and second epochs, the first cut into tracing, first calls, rest."""
    import keras

    from composeloop.engine import compile_step, fit
    from composeloop.parts.data import batches
    from composeloop.parts.recipes import classifier_step

    data, model = _setup(no_grappler)
    program = compile_step(classifier_step(model, keras.optimizers.Adam(3e-3)))
    out: dict[str, float] = {}
    started = time.perf_counter()
    train = iter(batches(data.x_train, data.y_train, BATCH, seed=0, epoch=0))
    out.update(_first_pass(program, "train", program._train, program.train, train))
    program.results("train")
    validation = iter(batches(data.x_val, data.y_val, BATCH, shuffle=False))
    out.update(_first_pass(program, "val", program._evaluate, program.evaluate, validation))
    program.results("val")
    out["first_epoch_s"] = time.perf_counter() - started
    history = fit(
        program,
        lambda epoch: batches(data.x_train, data.y_train, BATCH, seed=0, epoch=epoch + 1),
        epochs=1,
        validation_data=lambda: batches(data.x_val, data.y_val, BATCH, shuffle=False),
    )
    out["second_epoch_s"] = history[0]["seconds"]
    out["traces"] = sum(program.trace_counts.values())
    return out


def probe_fit(no_grappler: bool = False) -> dict[str, float]:
    """`model.fit`'s first and second epochs (on_epoch_begin to on_epoch_end, validation in)."""
    import keras

    data, model = _setup(no_grappler)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds.append(time.perf_counter() - self.started)

    call = time.perf_counter()
    model.fit(
        data.x_train,
        data.y_train,
        batch_size=BATCH,
        epochs=2,
        validation_data=(data.x_val, data.y_val),
        verbose=0,
        callbacks=[Timer()],
    )
    call = time.perf_counter() - call
    return {"first_epoch_s": seconds[0], "second_epoch_s": seconds[1], "fit_call_s": call}


def _run(command: list[str], cwd: Path = ROOT) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return seconds, done.stdout


def _probe(kind: str, no_grappler: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.startup", "--probe", kind]
    _, stdout = _run(command + (["--no-grappler"] if no_grappler else []))
    return json.loads(stdout.strip().splitlines()[-1])


def _tiny() -> dict[str, Any]:
    """Both probes in one process: the tests check the report's shape, not its timings."""
    _, stdout = _run([sys.executable, "-m", "benchmarks.startup", "--probe", "both"])
    both = json.loads(stdout.strip().splitlines()[-1])
    ratio = both["composed"]["first_epoch_s"] / both["fit"]["first_epoch_s"]
    return {"first_epoch": both, "first_epoch_composed_vs_fit": ratio}


def _median_of(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}


def process_commands(scratch: Path, index: int) -> dict[str, list[str]]:
    """The whole processes timed in full mode, by name (`PROCESSES`), writing under `scratch`."""
    python = sys.executable
    return {
        "composeloop_cli": [
            *(python, "-m", "composeloop", f"hydra.run.dir={scratch / f'run{index}'}"),
            *("report.tensorboard=false", "report.curves=false"),
        ],
        "keras_script": [python, "-m", "benchmarks.keras_script", str(scratch / f"keras{index}")],
        "import_tf_keras": [python, "-c", "import tensorflow, keras"],
        "import_composeloop_cli": [python, "-c", "import composeloop.app.cli"],
    }


def bench(mode: str, log: Any) -> dict[str, Any]:
    """First-epoch probes (fresh processes, with and without grappler) and whole processes."""
    if mode == "tiny":
        return _tiny()
    repeats = REPEATS[mode]
    probes: dict[str, list[dict[str, float]]] = {}
    for index in range(repeats):
        for kind in ("composed", "fit"):
            for no_grappler in (False, True) if mode == "full" else (False,):
                name = kind + ("_no_grappler" if no_grappler else "")
                probes.setdefault(name, []).append(_probe(kind, no_grappler))
        print(f"  startup: first-epoch probes {index + 1}/{repeats} done", file=log, flush=True)
    first = {name: _median_of(samples) for name, samples in probes.items()}
    out: dict[str, Any] = {"first_epoch": first}
    out["first_epoch_composed_vs_fit"] = statistics.median(
        c["first_epoch_s"] / f["first_epoch_s"] for c, f in zip(probes["composed"], probes["fit"], strict=True)
    )
    if mode != "full":
        return out  # whole processes: full mode only (about 12 s a pair)
    processes: dict[str, list[float]] = {name: [] for name in PROCESSES}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(repeats):
            for name, command in process_commands(Path(scratch), index).items():
                processes[name].append(_run(command)[0])
            print(f"  startup: whole processes {index + 1}/{repeats} done", file=log, flush=True)
    out["process_seconds"] = {name: statistics.median(values) for name, values in processes.items()}
    out["process_seconds_rounds"] = {name: [round(v, 3) for v in values] for name, values in processes.items()}
    out["process_composed_vs_keras"] = statistics.median(
        c / k for c, k in zip(processes["composeloop_cli"], processes["keras_script"], strict=True)
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--probe", choices=("composed", "fit", "both"), required=True)
    parser.add_argument("--no-grappler", action="store_true")
    arguments = parser.parse_args(argv)
    if arguments.probe == "both":
        result: dict[str, Any] = {"composed": probe_composed(), "fit": probe_fit()}
    else:
        result = (probe_composed if arguments.probe == "composed" else probe_fit)(arguments.no_grappler)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
