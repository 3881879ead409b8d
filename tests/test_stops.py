"""Two workers over TF_CONFIG, on TFRecord shards: a stop signal to ONE worker stops both at the same step.

One run of `python -m composeloop.launch --workers 2` (real processes, real collectives)
over ten shards of uneven size, each worker reading its own files: worker 1 gets SIGTERM
once the chief has finished its first epoch (mid-run, and mid-epoch but for a one-in-a-
hundred chance), both stop after the same step, the chief checkpoints there; the same
command again resumes mid-epoch and must end with the weights of the in-memory run, in
this process, of the same examples in the same global batches (each step's: worker 0's
files' next examples, then worker 1's). The same over SLURM with SIGUSR1 is test_slurm's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_multiworker import assert_same_weights, started, summary
from test_streams import write_shards

pytestmark = pytest.mark.slow

COUNTS = (70, 130, 90, 110, 100, 120, 80, 140, 60, 100)  # 1000 examples: 125 steps an epoch, about
BATCH = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Ten training shards (shard i holds the next COUNTS[i] examples) and two validation shards."""
    directory = tmp_path_factory.mktemp("shards")
    write_shards(directory, COUNTS, validation=(20, 20), seed=1)
    return directory


def overrides(shards: Path) -> list[str]:
    return [
        "data=tfrecord",
        f"data.files={shards / 'train-*.tfrecord'}",
        f"data.val_files={shards / 'val-*.tfrecord'}",
        f"data.batch_size={BATCH}",
        "train.epochs=2",
        "optimizer=sgd",
    ]


@pytest.fixture(scope="module")
def in_memory_weights(shards, tmp_path_factory) -> list:
    """The in-memory run, in this process, of the shards' examples in the 2-worker run's global batches."""
    import keras
    import tensorflow as tf

    from composeloop.app import Parts, load_config, run
    from composeloop.parts import datafiles, streams
    from composeloop.parts.data import Datasets

    files = datafiles.tfrecord_files(str(shards / "train-*.tfrecord"))
    x, y = streams.read_all(files)
    signature = {"x": tf.TensorSpec((None, 4), tf.float32), "y": tf.TensorSpec((None,), tf.int32)}

    def epoch_batches(epoch: int) -> tf.data.Dataset:
        order = streams.global_batches(files, BATCH, 0, epoch, workers=2)
        dataset = tf.data.Dataset.from_generator(
            lambda: ({"x": x[b], "y": y[b]} for b in order), output_signature=signature
        )
        return dataset.apply(tf.data.experimental.assert_cardinality(len(order)))

    data = Datasets(epoch_batches, example_shape=(4,), num_classes=files.num_classes, examples=files.examples)
    directory = tmp_path_factory.mktemp("in-memory")
    run(load_config(overrides(shards)), directory, parts=Parts(data=data))
    return keras.saving.load_model(directory / "model.keras").get_weights()


def launch(directory: Path, shards: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "composeloop.launch", "--workers", "2", "--", "+experiment=multi_gpu"]
    command += ["strategy=multi_worker", *overrides(shards), f"hydra.run.dir={directory}"]
    return started(command, directory.parent)


def worker_pid(launcher: subprocess.Popen, index: int) -> int:
    """The pid of the launcher's worker `index`, found by the TF_CONFIG in its environment."""
    for line in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split():
        environ = Path(f"/proc/{line}/environ").read_bytes().split(b"\0")
        config = next(item for item in environ if item.startswith(b"TF_CONFIG="))
        if json.loads(config.split(b"=", 1)[1])["task"]["index"] == index:
            return int(line)
    raise AssertionError(f"no worker {index} under the launcher")


def signal_after_the_first_epoch(process: subprocess.Popen, first_epoch: str, send) -> str:
    """Calls `send()` once `process` prints the line that ends the first epoch; its whole output."""
    seen = []
    deadline = time.monotonic() + 300
    for line in process.stdout:
        seen.append(line)
        if line.startswith(first_epoch) or time.monotonic() > deadline:
            send()
            break
    output, _ = process.communicate(timeout=300)
    return "".join(seen) + output


def checkpoints(directory: Path) -> list[int]:
    return sorted(int(path.stem.split("-")[1]) for path in (directory / "checkpoints").glob("ckpt-*.index"))


def assert_stopped_together(directory: Path, output: str, how: signal.Signals, steps_per_epoch: int) -> int:
    """Both workers stopped after one step on `how`; the chief said so once and checkpointed there."""
    step = summary(directory)["steps"]
    stops = [line for line in output.splitlines() if "interrupted (" in line]
    assert len(stops) == 1 and f"interrupted ({how.name} on another worker at step {step}); " in stops[0], output
    assert steps_per_epoch < step < 2 * steps_per_epoch and summary(directory)["signal"] == how.name, output
    # One checkpoint for the stop, at its step, beside the one at the end of the first epoch.
    assert checkpoints(directory) == [steps_per_epoch, step], output
    assert "Traceback" not in output and "CollectiveReduce" not in output and "E0000" not in output, output
    return step


def test_sigterm_to_one_worker_stops_both_and_the_rerun_ends_with_the_in_memory_weights(
    tmp_path, shards, in_memory_weights
):
    from composeloop.parts import datafiles, streams

    files = datafiles.tfrecord_files(str(shards / "train-*.tfrecord"))
    steps = [len(streams.global_batches(files, BATCH, 0, epoch, workers=2)) for epoch in (0, 1)]
    directory = tmp_path / "run"
    launcher = launch(directory, shards)
    output = signal_after_the_first_epoch(
        launcher, "[worker 0] epoch 1/", lambda: os.kill(worker_pid(launcher, 1), signal.SIGTERM)
    )
    assert launcher.returncode == 128 + signal.SIGTERM, output
    assert "composeloop.launch: the workers stopped together on SIGTERM (exit 143)" in output
    # Each worker reads its own files; the chief alone says so, and alone shows progress.
    assert "[worker 0] composeloop: data: 10 files sharded by FILE over 2 workers (each reads its own)" in output
    assert "[worker 1] composeloop:" not in output and "[worker 1] epoch" not in output, output
    stopped_at = assert_stopped_together(directory, output, signal.SIGTERM, steps[0])

    rerun = launch(directory, shards)
    output, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, output
    done = summary(directory)
    assert (done["resumed_from_step"], done["steps"], done["replicas"]) == (stopped_at, sum(steps), 2), output
    assert done["epochs"] == 2 and "val_accuracy" in done["metrics"]  # validation read its 2 files, one a worker
    assert_same_weights(directory, in_memory_weights)
