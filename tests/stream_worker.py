"""One worker of test_streams' 2-worker run over TFRecord shards (run as a script, with TF_CONFIG).

    python tests/stream_worker.py GLOB OUT STOP_AT

Reads the shards with `streams.stream` (sharded by FILE), records which examples (their
index is in x[0]) this worker read in epoch 0, trains tiny_model for EPOCHS epochs from
the checkpoint in OUT if there is one, stops after step STOP_AT when it is not 0, saves a
checkpoint at the end, and the chief writes the final weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
from builders import tiny_model, tiny_step

from composeloop.engine import Checkpoints, RunState, compile_step, every_steps, on_run_end, run_loop
from composeloop.engine.strategies import is_chief, output_directory, place
from composeloop.parts import datafiles, streams

EPOCHS, BATCH, SEED = 2, 8, 0


def main(pattern: str, out: Path, stop_at: int) -> None:
    worker = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = place("multi_worker", connect_timeout_s=120).strategy
    files = datafiles.tfrecord_files(pattern)
    print(streams.sharding(files, 2), flush=True)
    seen = []
    for batch in streams.stream(files, BATCH, SEED, 0, strategy=strategy).distribute_over(strategy):
        for local in strategy.experimental_local_results(batch["x"]):
            seen += [int(round(value)) for value in local.numpy()[:, 0] * 1000]
    (out / f"seen-{worker}.json").write_text(json.dumps(seen))
    with strategy.scope():
        model = tiny_model(features=files.example_shape[0], classes=files.num_classes)
        step = tiny_step(model)
    program = compile_step(step, strategy=strategy)
    mine = output_directory(strategy, out) / "checkpoints"  # the chief's are the run's
    checkpoints = Checkpoints(mine, program, restore_from=out / "checkpoints")
    state = checkpoints.restore_latest(RunState(program, EPOCHS))
    handlers = [on_run_end(checkpoints.save)]
    if stop_at:
        handlers.insert(0, every_steps(stop_at, lambda s: s.stop("interrupted", "asked to")))
    state = run_loop(
        program,
        lambda epoch: streams.stream(files, BATCH, SEED, epoch, strategy=strategy),
        epochs=EPOCHS,
        handlers=handlers,
        state=state,
    )
    print(f"worker {worker}: {state.status} at epoch {state.epoch} batch {state.batch} step {state.step}", flush=True)
    if is_chief(strategy):
        np.savez(out / "weights.npz", *model.get_weights())


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
