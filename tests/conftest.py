"""Shared test settings: Hypothesis profiles, quiet TensorFlow, tiny data, the local SLURM cluster,
and the one-process run that multi-device and multi-worker runs must end equal to."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from composeloop.testing import configure_cpu_replicas, load_profile  # noqa: E402

# Two logical CPUs, so that MirroredStrategy runs with 2 replicas on a CPU-only machine. This
# must happen before TensorFlow touches a device, hence here, before any test module loads.
configure_cpu_replicas(2)

# ci: derandomized and bounded, so CI is deterministic and fast; dev: the default for
# people; thorough: many more examples, for a change to the invariants' code.
load_profile()


SLURM_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm-cluster.sh"


def _slurm_script(command: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(SLURM_SCRIPT), command], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The one-node SLURM cluster of scripts/slurm-cluster.sh, started if it is not running.

    Missing packages are installed first; the test is skipped, with the script's one-line
    reason, only when they cannot be installed here (no root, no apt-get). CI runs the
    script's install and start before the tests, so there nothing is skipped.
    """
    if _slurm_script("status", 60).returncode == 0:
        return
    installed = _slurm_script("install", 900)
    if installed.returncode != 0:
        lines = (installed.stderr + installed.stdout).strip().splitlines()
        pytest.skip(f"SLURM cannot be installed here: {lines[-1] if lines else installed.returncode}")
    started = _slurm_script("start", 300)
    assert started.returncode == 0, f"scripts/slurm-cluster.sh start failed: {started.stdout}{started.stderr}"


# The run every multi-device and multi-worker test repeats: 450 training examples in global
# batches of 9 (50 steps an epoch; 9 never splits evenly over 2 replicas), 2 epochs.
MULTI_RUN = ("data=synthetic", "data.synthetic_examples=600", "data.batch_size=9", "train.epochs=2", "optimizer=sgd")


@pytest.fixture(scope="session")
def one_process_weights(tmp_path_factory) -> list:
    """The final weights of MULTI_RUN on one device, in this process (the CLI's code, without its start-up)."""
    import keras

    from composeloop.app import load_config, run

    directory = tmp_path_factory.mktemp("one-process")
    assert run(load_config(list(MULTI_RUN)), directory)["replicas"] == 1
    return keras.saving.load_model(directory / "model.keras").get_weights()
